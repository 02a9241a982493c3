"""CelebA nets and classifiers, mopoe_style, the average-precision metrics and the multi-label guards."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_celeba import NAMES, source  # noqa: F401  (the CelebA fixture in the published layout)

from mmbench.config import EvalConfig, build_run_config
from mmbench.data.base import DataSplit, Modality, dataset_dir, load_split, prepare
from mmbench.errors import ConfigError, MMBenchError
from mmbench.methods.base import Gaussian, MethodConfig, all_subsets
from mmbench.metrics.average_precision import average_precisions
from mmbench.metrics.classifiers import get_classifiers, mean_ap, train_one
from mmbench.metrics.context import EvalContext
from mmbench.metrics.logistic020 import LogisticRegression020
from mmbench.registry import ARCHITECTURES, DATASETS, METHODS, METRICS
from conftest import train_steps

ROOT = Path(__file__).resolve().parents[1]
CELEBA = DATASETS.get("celeba")()
MODS = CELEBA.modalities("default")


def celeba_batch(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    text = torch.nn.functional.one_hot(torch.randint(0, 71, (n, 256), generator=g), 71).float()
    return {"img": torch.rand(n, 3, 64, 64, generator=g), "text": text}


def test_celeba_nets_shapes():
    torch.manual_seed(0)
    x = celeba_batch()
    nets, clfs = ARCHITECTURES.get("celeba_resnet"), ARCHITECTURES.get("celeba_clf")
    for m in MODS:
        enc, dec, clf = nets.encoder(m, 12), nets.decoder(m, 12), clfs.classifier(m, 40)
        mu, logvar = enc(x[m.name])
        assert mu.shape == logvar.shape == (4, 12)
        assert dec(mu).shape == (4, *m.shape)  # image 3×64×64; text logits 256×71
        assert clf(x[m.name]).shape == (4, 40)
    with pytest.raises(MMBenchError, match="64×64"):
        nets.encoder(Modality("small", (3, 28, 28)), 8)


def test_mopoe_style_interface_on_celeba_nets():
    torch.manual_seed(0)
    model = METHODS.get("mopoe_style")(MODS, MethodConfig("mopoe_style", latent_dim=6, beta=2.5,
                                                          options={"style_dim": 4}), "celeba_resnet")
    x = celeba_batch()
    qs = model.encode_subsets(x, all_subsets(model.names))
    assert [q.mean.shape for q in qs] == [(4, 6)] * 3  # the content posterior
    assert model.sample_prior(2).shape == (2, 6)
    assert model.decode(model.sample_prior(2), "img").shape == (2, 3, 64, 64)
    probs = model.decode(torch.zeros(2, 10), "text")  # content + style given explicitly
    assert probs.shape == (2, 256, 71) and torch.allclose(probs.sum(-1), torch.ones(2, 256))
    assert model.style_betas == {"img": 1.0, "text": 5.0}
    loss, logs = model.loss(x)
    assert torch.isfinite(loss) and set(logs) >= {"loss", "nll", "kl", "kl_content", "kl_style"}
    with pytest.raises(MMBenchError, match="content"):
        model.decode(torch.zeros(2, 7), "img")


POLY = [Modality(f"m{i}", (3, 28, 28)) for i in range(2)]


def small_style(**options):
    torch.manual_seed(0)
    return METHODS.get("mopoe_style")(POLY, MethodConfig("mopoe_style", latent_dim=4, beta=1.0,
                                                         options={"style_dim": 3, **options}), "polymnist_cnn")


def test_mopoe_style_loss_is_eq34_with_the_jobs_weights():
    model = small_style(style_betas={"m1": 5.0})
    g = torch.Generator().manual_seed(0)
    x = {m.name: torch.rand(6, 3, 28, 28, generator=g) for m in POLY}
    model.eval()
    torch.manual_seed(3)
    loss, _ = model.loss(x)
    torch.manual_seed(3)
    outs = {m: model.encoders[m](x[m]) for m in model.names}
    mu = torch.stack([outs[m][0][:, :4] for m in model.names])
    lv = torch.stack([outs[m][1][:, :4] for m in model.names])
    subsets = all_subsets(model.names)  # (m0,), (m1,), (m0, m1): rows 0-1, 2-3, 4-5
    comps = model.poe(mu, lv, model.names, subsets)
    k = torch.tensor([0, 0, 1, 1, 2, 2])
    c = comps[k, torch.arange(6)].rsample()
    total = 0.0
    for m, w in zip(model.names, (1.0, 5.0)):
        style = Gaussian(outs[m][0][:, 4:], outs[m][1][:, 4:])
        s = style.rsample()
        total = total - model.likelihoods[m].log_prob(model.decoders[m](torch.cat([c, s], -1)), x[m])
        total = total + 1.0 * 2.0 * w * style.kl_standard_normal()  # beta · beta_style · style_betas[m]
    total = total + 1.0 * comps.kl_standard_normal().mean(0)  # beta · beta_content · mean subset KL
    assert loss.item() == pytest.approx(total.mean().item(), rel=1e-5)
    # the subset posterior is MoPoE's PoE over the content experts only
    assert torch.allclose(model.encode(x, ("m0", "m1")).mean, comps[2].mu, atol=1e-6)
    with pytest.raises(MMBenchError, match="style_betas"):
        small_style(style_betas={"img": 1.0})


def test_mopoe_style_loss_falls():
    model = small_style()
    g = torch.Generator().manual_seed(1)
    x = {m.name: torch.rand(8, 3, 28, 28, generator=g) for m in POLY}
    losses, _ = train_steps(model, x, 20, require_grad=True)
    assert losses[-1] < 0.8 * losses[0]


# ----- average-precision metrics on known answers ------------------------------------------------
VEC = [Modality("img", (40,), "vector"), Modality("text", (40,), "vector")]


class FakeModel:
    """Posterior mean of S = mean of its modalities' vectors; decode returns z (the 'generated' attributes)."""

    names = ["img", "text"]

    def encode_subsets(self, x, subsets):
        return [Gaussian(torch.stack([x[m] for m in s]).mean(0), torch.full_like(x["img"], -12.0)) for s in subsets]

    def decode(self, z, m):
        return z

    def supports(self, subset):
        return True


def labels(n, seed):
    rng = np.random.default_rng(seed)
    rates = np.linspace(0.1, 0.5, 40)
    return torch.from_numpy((rng.random((n, 40)) < rates).astype(np.int64))


def split(y, noise, seed, shuffle=False):
    g = torch.Generator().manual_seed(seed)
    src = y[torch.randperm(len(y), generator=g)] if shuffle else y
    x = {m.name: src.float() + noise * torch.randn(len(y), 40, generator=g) for m in VEC}
    return DataSplit(VEC, x, y)


class ReversedTextFake(FakeModel):
    """The text representation holds the attributes in reversed slots (as readable as the image's to a regression
    fitted on it); the joint representation (img+text) is the image's."""

    def encode_subsets(self, x, subsets):
        code = {"img": x["img"], "text": x["text"].flip(1)}
        return [Gaussian(code["text" if s == ("text",) else "img"], torch.full_like(x["img"], -12.0)) for s in subsets]


def context(tmp_path, spec, train, test, model=None, **cfg):
    d = dataset_dir(spec.registry_name, "default", tmp_path)
    d.mkdir(parents=True, exist_ok=True)
    (d / "manifest.json").write_text(json.dumps({"dataset": "celeba", "variant": "default", "arrays": {}, "attributes": NAMES}))
    ctx = EvalContext(model=model or FakeModel(), spec=spec, variant="default", train=train, test=test, test_full=test,
                      cfg=EvalConfig(lr_train_samples=300, batch_size=128, **cfg), device=torch.device("cpu"),
                      data_root=tmp_path)
    ctx._classifiers = {m: (lambda v: 10 * (v - 0.5)) for m in FakeModel.names}
    return ctx


@pytest.mark.parametrize("scores", ["hard", "proba"])
def test_latent_ap_known_answers(tmp_path, scores):
    y_train, y_test = labels(300, 0), labels(300, 1)
    y_test[:, 7] = 0  # an attribute without a positive test tuple has no AP
    good = METRICS.get("latent_ap")(context(tmp_path, CELEBA, split(y_train, 0.15, 0), split(y_test, 0.15, 1),
                                            ap_scores=scores))
    assert good["ap_attributes_scored"] == 39 and f"latent_ap/img/{NAMES[7]}" not in good
    for s in ("img", "text", "img+text"):
        assert good[f"latent_ap/{s}"] > 0.95
        assert len([k for k in good if k.startswith(f"latent_ap/{s}/")]) == 39
    assert good["latent_ap_by_n/1"] == pytest.approx((good["latent_ap/img"] + good["latent_ap/text"]) / 2)
    bad = METRICS.get("latent_ap")(context(tmp_path, CELEBA, split(y_train, 0.3, 0, shuffle=True),
                                           split(y_test, 0.3, 1), ap_scores=scores))
    base = np.delete(y_test.float().mean(0).numpy(), 7).mean()  # AP of an uninformative score = base rate
    assert abs(bad["latent_ap/img+text"] - base) < 0.06


def test_latent_ap_follows_the_lr_protocol(tmp_path):
    """SMVAE §5 (eval.lr_protocol smvae): the regressions are fitted on the full set's representations and read
    every subset's, so text's reversed slots score near the base rate; fitted per subset (mopoe) they score
    high. mmvamp scores the unimodal subsets only (MM-VAMP App. B.2.2). latent_ap once ignored the protocol."""
    y_train, y_test = labels(300, 0), labels(300, 1)
    base = y_test.float().mean(0).numpy().mean()
    out = {p: METRICS.get("latent_ap")(context(tmp_path, CELEBA, split(y_train, 0.15, 0), split(y_test, 0.15, 1),
                                                model=ReversedTextFake(), lr_protocol=p))
           for p in ("mopoe", "smvae", "mmvamp")}
    for p in out:
        assert out[p]["latent_ap/img"] > 0.95, p
    assert out["mopoe"]["latent_ap/text"] > 0.95 and out["mopoe"]["latent_ap/img+text"] > 0.95
    assert out["smvae"]["latent_ap/img+text"] > 0.95 and abs(out["smvae"]["latent_ap/text"] - base) < 0.1
    assert out["mmvamp"]["latent_ap/text"] > 0.95
    assert "latent_ap/img+text" not in out["mmvamp"] and "latent_ap_by_n/2" not in out["mmvamp"]


def test_coherence_ap_known_answers(tmp_path):
    y = labels(200, 2)
    out = METRICS.get("coherence_ap")(context(tmp_path, CELEBA, split(y, 0.2, 0), split(y, 0.2, 3)))
    assert set(k for k in out if k.count("/") == 1) >= {"coherence_ap/img->text", "coherence_ap/img+text->img"}
    assert out["coherence_ap/img->text"] > 0.95 and out["coherence_ap_by_n/1"] > 0.95
    assert f"coherence_ap/text->img/{NAMES[0]}" in out
    noisy = METRICS.get("coherence_ap")(context(tmp_path, CELEBA, split(y, 0.2, 0), split(y, 0.2, 3, shuffle=True)))
    assert abs(noisy["coherence_ap/img->text"] - y.float().mean().item()) < 0.06


def test_average_precisions_of_perfect_and_constant_scores():
    y = np.array([[1, 0], [0, 0], [1, 0], [0, 0]])
    ap = average_precisions(y, np.array([[0.9, 0.1], [0.1, 0.2], [0.8, 0.3], [0.2, 0.4]]))
    assert ap[0] == 1.0 and np.isnan(ap[1])
    assert average_precisions(y[:, :1], np.zeros((4, 1)))[0] == 0.5  # constant score: the base rate


def test_metric_guards(tmp_path, data_root):
    poly = DATASETS.get("polydigits")()
    y = labels(20, 0)
    ctx = context(tmp_path, CELEBA, split(y, 0.1, 0), split(y, 0.1, 1))
    with pytest.raises(MMBenchError, match="use latent_ap"):
        METRICS.get("latent_classification")(ctx)
    with pytest.raises(MMBenchError, match="use coherence_ap"):
        METRICS.get("coherence")(ctx)
    single = load_split(poly, "vanilla", "test", data_root).subset(8)
    ctx = EvalContext(model=FakeModel(), spec=poly, variant="vanilla", train=single, test=single, test_full=single,
                      cfg=EvalConfig(), device=torch.device("cpu"), data_root=data_root)
    with pytest.raises(MMBenchError, match="use latent_classification"):
        METRICS.get("latent_ap")(ctx)
    with pytest.raises(MMBenchError, match="use coherence in"):
        METRICS.get("coherence_ap")(ctx)
    with pytest.raises(ConfigError, match="ap_scores"):
        build_run_config({"dataset": "celeba", "eval": {"ap_scores": "soft"}})
    # refused when the run is configured, before any training
    with pytest.raises(ConfigError, match=r"eval.metrics\[1\]: coherence does not apply .*; use coherence_ap"):
        build_run_config({"dataset": "celeba", "eval": {"metrics": ["latent_ap", "coherence"]}})
    with pytest.raises(ConfigError, match="use latent_classification"):
        build_run_config({"dataset": "polydigits", "eval": {"metrics": ["latent_ap"]}})
    assert build_run_config({"dataset": "celeba", "eval": {"metrics": ["latent_ap", "coherence_ap"]}})
    # without eval.metrics a CelebA run gets the default's multi-label counterparts (`mmbench train celeba mopoe`)
    assert build_run_config({"dataset": "celeba"}).eval.metrics == ["latent_ap", "coherence_ap"]
    assert build_run_config({"dataset": "celeba", "eval": {"ll_samples": 3}}).eval.metrics == ["latent_ap", "coherence_ap"]
    assert build_run_config({"dataset": "polydigits"}).eval.metrics == ["latent_classification", "coherence"]


def test_multilabel_classifiers_on_the_fixture(tmp_path, source):  # noqa: F811  (the imported fixture)
    src, _ = source
    root = tmp_path / "d"
    prepare(CELEBA, None, seed=0, data_root=root, options={"source": str(src)})
    train, test = (load_split(CELEBA, None, s, root) for s in ("train", "test"))
    assert train.labels.shape == (5, 40)
    clf = train_one(CELEBA, CELEBA.check_variant(None), train, "text", 1, torch.device("cpu"), lambda *a: None)  # BCE on multi-hot labels
    # mean AP = sklearn's average precision of the classifier's scores per attribute with a positive test row,
    # averaged over those attributes (computed here independently of metrics/)
    from sklearn.metrics import average_precision_score

    from mmbench.data.base import to_float

    mod = next(m for m in test.modalities if m.name == "text")
    with torch.no_grad():
        scores = clf.eval()(to_float(mod, test.x["text"])).numpy()
    labels = test.labels.numpy()
    cols = [j for j in range(labels.shape[1]) if labels[:, j].any()]
    expected = float(np.mean([average_precision_score(labels[:, j], scores[:, j]) for j in cols]))
    assert mean_ap(clf, test, "text", torch.device("cpu")) == pytest.approx(expected, rel=1e-6)
    # training or loading classifiers mid-evaluation leaves the evaluation's random stream where it was
    torch.manual_seed(123)
    before = torch.get_rng_state()
    with pytest.raises(MMBenchError, match="eval.classifier_min_ap=1.0"):
        get_classifiers(CELEBA, "default", train, test, EvalConfig(classifier_epochs=1, classifier_min_ap=1.0),
                        root, lambda *a: None)
    assert torch.equal(torch.get_rng_state(), before)
    train_one(CELEBA, CELEBA.check_variant(None), train, "img", 1, torch.device("cpu"), lambda *a: None)
    assert torch.equal(torch.get_rng_state(), before)
    accs = json.loads(next((root / "classifiers").glob("celeba-*")).joinpath("accuracy.json").read_text())
    assert set(accs) == {"img", "text"}
    clfs, _ = get_classifiers(CELEBA, "default", train, test, EvalConfig(classifier_epochs=1, classifier_min_ap=0.0),
                              root, lambda *a: None)  # the cached ones: the stored scores are theirs
    assert torch.equal(torch.get_rng_state(), before)  # building them drew no initial weights from it
    for name, clf in clfs.items():
        assert accs[name] == pytest.approx(mean_ap(clf, test, name, torch.device("cpu")), rel=1e-6)


def test_coherence_ap_by_n_counts_only_targets_outside_the_subset(tmp_path):
    class TextScrambles(FakeModel):  # decoding "text" reverses the attribute slots: ->text APs near the base rate
        def decode(self, z, m):
            return z if m == "img" else z.flip(1)

    y = labels(200, 2)
    out = METRICS.get("coherence_ap")(context(tmp_path, CELEBA, split(y, 0.2, 0), split(y, 0.2, 3),
                                              model=TextScrambles()))
    assert out["coherence_ap/img->img"] > out["coherence_ap/img->text"] + 0.2
    assert out["coherence_ap_by_n/1"] == pytest.approx(
        (out["coherence_ap/img->text"] + out["coherence_ap/text->img"]) / 2, abs=1e-12)


class WideFake(FakeModel):
    """FakeModel with q(z | X_S) = N(mean of its vectors, 2² I): a draw is the attributes plus wide noise."""

    def encode_subsets(self, x, subsets):
        return [Gaussian(q.mu, torch.full_like(q.mu, 2 * np.log(2.0))) for q in super().encode_subsets(x, subsets)]


def test_coherence_ap_scores_a_posterior_draw_not_its_mean(tmp_path):
    # as coherence (MoPoE App. B, its cond_generation reparameterises): x̂_m = decode(z, m), z ~ q(z | X_S) once per
    # tuple; the known answer is the AP of y + 0.2 ε + 2 ε' (this test's own draws), not the mean's AP (> 0.95)
    y = labels(400, 2)
    torch.manual_seed(0)
    out = METRICS.get("coherence_ap")(context(tmp_path, CELEBA, split(y, 0.2, 0), split(y, 0.2, 3), model=WideFake()))
    g = torch.Generator().manual_seed(9)
    sim = y.float() + 0.2 * torch.randn(400, 40, generator=g) + 2.0 * torch.randn(400, 40, generator=g)
    want = np.nanmean(average_precisions(y.numpy(), sim.numpy()))
    assert want < 0.8 and abs(want - y.float().mean().item()) > 0.1  # between chance and the mean's AP
    for key in ("img->text", "text->img", "img+text->img"):
        assert out[f"coherence_ap/{key}"] == pytest.approx(want, abs=0.04), key


def test_latent_ap_fits_on_the_regression_tuples(tmp_path):
    """latent_ap's regressions are fitted on EvalContext.regression_tuples (eval.lr_train_samples seeded rows, as
    latent_classification), not the whole train split: every train row outside that sample has its attributes
    inverted, which a fit on the whole split would average away."""
    y_train, y_test = labels(600, 0), labels(300, 1)
    ctx = context(tmp_path, CELEBA, split(y_train, 0.15, 0), split(y_test, 0.15, 1))
    rows = ctx.regression_tuples().x["img"]
    sampled = (ctx.train.x["img"][:, None, :] == rows[None]).all(-1).any(1)
    assert int(sampled.sum()) == 300 == ctx.cfg.lr_train_samples
    ctx.train.labels = torch.where(sampled[:, None], y_train, 1 - y_train)
    out = METRICS.get("latent_ap")(ctx)
    for s in ("img", "text", "img+text"):
        assert out[f"latent_ap/{s}"] > 0.95


@pytest.mark.parametrize("scores", ["hard", "proba"])
def test_latent_ap_ranks_what_eval_ap_scores_says(tmp_path, scores):
    """eval.ap_scores hard (default): the AP of each regression's 0/1 predictions, as the MoPoE and MMVM codes call
    average_precision_score on clf.predict; proba: of its probabilities. Re-derived with sklearn's AP on the means,
    fitted by the mopoe protocol's regression (scikit-learn 0.20's, tests/test_metrics_latent.py)."""
    from sklearn.metrics import average_precision_score

    y_train, y_test = labels(300, 0), labels(300, 1)
    cfg = {} if scores == "hard" else {"ap_scores": "proba"}
    assert EvalConfig().ap_scores == "hard"
    ctx = context(tmp_path, CELEBA, split(y_train, 0.6, 0), split(y_test, 0.6, 1), **cfg)
    out = METRICS.get("latent_ap")(ctx)
    z_train, z_test = ctx.regression_tuples().x["img"].numpy(), ctx.test.x["img"].numpy()
    for a in (0, 20, 39):
        # the mopoe protocol's fit: scikit-learn 0.20's (metrics/logistic020.py, tests/test_metrics_latent.py)
        clf = LogisticRegression020(max_iter=1000).fit(z_train, ctx.regression_tuples().labels[:, a].numpy())
        ap = {"hard": average_precision_score(y_test[:, a], clf.predict(z_test)),
              "proba": average_precision_score(y_test[:, a], clf.predict_proba(z_test)[:, 1])}
        assert abs(ap["hard"] - ap["proba"]) > 0.02  # noisy enough that the two differ
        assert out[f"latent_ap/img/{NAMES[a]}"] == pytest.approx(ap[scores], abs=1e-6)


def test_grouped_average_precisions_are_sklearns_with_ties_and_empty_groups():
    """One vectorised AP serves the whole split and MoPoE's per-batch means: it is sklearn's average_precision_score
    (tied scores one threshold: 0/1 predictions, rounded and continuous scores), NaN where a group has no positive."""
    from sklearn.metrics import average_precision_score

    from mmbench.metrics.precision import grouped_average_precisions

    rng = np.random.default_rng(0)
    for kind in ("hard", "rounded", "continuous"):
        y = (rng.random((6, 50, 7)) < [0.02, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0]).astype(np.int64)
        y[2, :, 3] = 0
        s = {"hard": rng.integers(0, 2, y.shape).astype(float), "rounded": np.round(rng.random(y.shape), 1),
             "continuous": rng.random(y.shape)}[kind]
        got = grouped_average_precisions(y, s)
        assert got.shape == (6, 7) and np.isnan(got[2, 3])
        for g in range(6):
            for a in range(7):
                if y[g, :, a].any():
                    assert got[g, a] == pytest.approx(average_precision_score(y[g, :, a], s[g, :, a]), abs=1e-12)
                else:
                    assert np.isnan(got[g, a])
    assert np.isnan(grouped_average_precisions(np.zeros((2, 0, 3)), np.zeros((2, 0, 3)))).all()  # no rows: no AP
    with pytest.raises(ValueError, match="finite"):
        grouped_average_precisions(np.ones((1, 2, 1)), np.array([[[0.5], [np.nan]]]))


def test_average_precisions_are_the_pinned_scikit_learns():
    """Known answers of the scikit-learn versions the authors' code pins, run themselves (docs/sklearn_pins.py `fit`
    scored average_precision_score per attribute on the script's hard, tied and continuous scores of 256 rows, as
    MoPoE's eval_label scores a test batch; tests/data/sklearn_pins.npz): equal to float rounding; NaN where MoPoE's
    0.20.0 gives NaN (an attribute without a positive), where 1.4.0 (mmvmvae's) gives 0 -- such an attribute is left
    out of the means (metrics/average_precision.py); on CelebA's whole test split every attribute has positives."""
    from conftest import sklearn_pins
    from mmbench.metrics.precision import average_precisions

    script, ref = sklearn_pins()
    for name, (y, s) in script.ap_problems().items():
        got = average_precisions(y, s)
        assert np.isnan(got).sum() == 1 and not y[:, np.isnan(got)].any()  # the attribute without a positive
        for version in ("0.20.0", "1.4.0"):
            assert script.digest((y, s)) == str(ref[f"{version}|{name}|digest"]), f"{name}: other inputs than {version} scored"
            want = ref[f"{version}|{name}|ap"]
            if version == "1.4.0":
                assert not np.isnan(want).any() and want[np.isnan(got)] == 0
                want = np.where(np.isnan(got), np.nan, want)
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-12, err_msg=f"{name}, {version}")


class SharpFake(FakeModel):
    """FakeModel whose posterior draws are its means to float32 precision (σ = e^-30): coherence scores known."""

    def encode_subsets(self, x, subsets):
        return [Gaussian(q.mu, torch.full_like(q.mu, -60.0)) for q in super().encode_subsets(x, subsets)]


def mopoe_batch_mean(y, scores, batches):
    """MoPoE's average, re-derived with sklearn: per attribute the mean over batches with a positive of its AP,
    then the mean over attributes."""
    from sklearn.metrics import average_precision_score

    per_attribute = []
    for a in range(y.shape[1]):
        aps = [average_precision_score(y[b, a], scores[b, a]) for b in batches if y[b, a].any()]
        if aps:
            per_attribute.append(np.mean(aps))
    return float(np.mean(per_attribute))


def test_batch_mean_aps_average_shuffled_batches_of_256_as_the_mopoe_code(tmp_path):
    """MoPoE Table 5's APs are means of per-batch APs over the test split shuffled into batches of 256, the last
    partial one dropped (celeba/experiment.py eval_label, mean_eval_metric): re-derived here with sklearn for the
    latent regressions' 0/1 predictions and the coherence classifiers' scores, on a rare attribute too (one
    positive: the batches without it are left out and counted). Not eval.batch_size's batches, not the whole split."""
    from mmbench.metrics.average_precision import ap_batches

    y_train, y_test = labels(300, 0), labels(700, 1)
    y_test[:, 5] = 0
    y_test[3, 5] = 1  # one positive among 700
    y_test[:, 9] = 0  # none: no AP anywhere, so not counted among the empty cells either
    ctx = context(tmp_path, CELEBA, split(y_train, 0.6, 0), split(y_test, 0.6, 1), model=SharpFake())
    batches = ap_batches(ctx)
    assert batches.shape == (2, 256) and len(set(batches.ravel().tolist())) == 512
    assert not np.array_equal(np.sort(batches.ravel()), np.arange(512))  # shuffled, not the first 512 rows
    ctx.run_seed = 1
    assert not np.array_equal(ap_batches(ctx), batches)  # another run seed, other batches (as a fresh shuffle)
    ctx.run_seed = 0
    latent = METRICS.get("latent_ap")(ctx)
    y = y_test.numpy()
    with_rare = int(any(3 in b for b in batches))
    assert latent["ap_batchmean_batches"] == 2 and latent["ap_batchmean_empty"] == 2 - with_rare
    assert latent["ap_attributes_scored"] == 39
    z_train, z_test = ctx.regression_tuples().x["img"].numpy(), ctx.test.x["img"].numpy()
    hard = np.stack([LogisticRegression020(max_iter=1000).fit(z_train, ctx.regression_tuples().labels[:, a].numpy())
                     .predict(z_test) for a in range(40)], 1).astype(float)
    want = mopoe_batch_mean(y, hard, batches)
    assert latent["latent_ap_batchmean/img"] == pytest.approx(want, abs=1e-9)
    assert abs(want - latent["latent_ap/img"]) > 1e-4  # the fixture tells the two averages apart (1e-9 above)

    coherence = METRICS.get("coherence_ap")(ctx)
    assert coherence["ap_batchmean_empty"] == latent["ap_batchmean_empty"]
    x = {"img": ctx.test.x["img"], "text": ctx.test.x["text"]}
    for key, mean in (("img->text", x["img"]), ("text->img", x["text"]), ("img+text->img", (x["img"] + x["text"]) / 2)):
        scores = torch.sigmoid(10 * (mean - 0.5)).numpy()
        assert coherence[f"coherence_ap_batchmean/{key}"] == pytest.approx(mopoe_batch_mean(y, scores, batches),
                                                                           abs=1e-9), key
    ctx.cfg.batch_size = 64  # eval.batch_size is a compute setting: the AP batches stay the authors' 256
    assert METRICS.get("latent_ap")(ctx)["latent_ap_batchmean/img"] == latent["latent_ap_batchmean/img"]


def test_batch_mean_keys_are_absent_below_256_test_tuples_and_table_5_compares_them(tmp_path):
    out = METRICS.get("latent_ap")(context(tmp_path, CELEBA, split(labels(300, 0), 0.2, 0), split(labels(255, 1), 0.2, 1)))
    assert out["ap_batchmean_batches"] == 0 and not [k for k in out if "batchmean/" in k]
    assert "latent_ap/img" in out
    from mmbench.references import load_reference_files

    cells, _ = load_reference_files(ROOT / "reference_results")
    ap = [c for c in cells if c.metric.split("/")[0] in ("latent_ap", "coherence_ap", "latent_ap_batchmean",
                                                         "coherence_ap_batchmean")]
    assert {c.table for c in ap if "batchmean" in c.metric} == {"MoPoE Table 5"}
    assert not [c for c in ap if c.table == "MoPoE Table 5" and "batchmean" not in c.metric]
