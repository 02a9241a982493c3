"""Per-experiment β conventions (MM-VAMP suite), reconstruction weights (SMVAE and MM-VAMP CelebA entries) and the
mmvmvae CelebA networks (issue 12, points 2-4)."""
import pytest
import torch

from mmbench.config import build_run_config
from mmbench.errors import ConfigError, MMBenchError
from mmbench.methods.base import MethodConfig
from mmbench.registry import ARCHITECTURES, DATASETS, METHODS
from mmbench.suite import load_suite, suites_dir
from mmbench.train import build_model

CELEBA = DATASETS.get("celeba")().modalities("default")


def first_runs(suite: str, tier: str = "smoke"):
    """{(experiment dataset, method): its first resolved run config}."""
    out = {}
    for r in load_suite(suites_dir() / suite).runs(tier):
        out.setdefault((r.dataset, r.method.name), r)
    return out


def test_mmvamp_suite_averages_what_each_experiments_code_averages():
    """The aggregated VAE's Eq. 16 average: variances as mmvmvae's aggregate_latents_avg (PolyMNIST, CelebA);
    standard deviations on the rats, whose code's second encoder output is a log sigma (mmvampvae spike_vae.py)."""
    runs = first_runs("mmvamp.yaml", "full")
    assert {ds: runs[(ds, "aggregated")].method.options.get("average", "variance")
            for ds in ("polymnist", "celeba", "rats")} == {"polymnist": "variance", "celeba": "variance", "rats": "std"}
    from mmbench.methods.aggregated import average_experts
    mu = torch.zeros(2, 1, 1)
    logvar = torch.log(torch.tensor([1.0, 9.0]))[:, None, None]  # sigma 1 and 3
    std = average_experts(mu, logvar, torch.ones(1, 2), "std").logvar.exp().item()  # ((1 + 3) / 2)^2
    var = average_experts(mu, logvar, torch.ones(1, 2), "variance").logvar.exp().item()  # (1 + 9) / 2
    assert (round(std, 5), round(var, 5)) == (4.0, 5.0)


def celeba_batch(n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    text = torch.nn.functional.one_hot(torch.randint(0, 71, (n, 256), generator=g), 71).float()
    return {"img": torch.rand(n, 3, 64, 64, generator=g), "text": text}


def test_mmvamp_suite_applies_each_beta_convention_where_the_papers_code_does():
    runs = first_runs("mmvamp.yaml", "full")
    conv = {k: r.method.options.get("beta_convention") for k, r in runs.items()}
    # the paper's β: mmvampvae defines PolyMNIST no betas (its unimodal loss cannot run); mmvmvae's β² is option code
    assert conv[("polymnist", "independent")] == "paper"
    assert conv[("celeba", "independent")] == "paper"  # CelebADataConfig beta_img = beta_text = 1.0: β
    assert conv[("rats", "independent")] == "paper"  # stdnormweight = 1: β·Σ KL
    for ds in ("polymnist", "celeba", "rats"):
        assert conv[(ds, "aggregated")] == "code"  # one KL of the joint posterior per modality: β·M
    # The KL weight each resolved run trains with (M = 3 PolyMNIST views, 2 CelebA modalities, 5 rats).
    expected = {("polymnist", "independent"): lambda b: b, ("celeba", "independent"): lambda b: b,
                ("rats", "independent"): lambda b: b, ("polymnist", "aggregated"): lambda b: 3 * b,
                ("celeba", "aggregated"): lambda b: 2 * b, ("rats", "aggregated"): lambda b: 5 * b}
    for key, w in expected.items():
        cfg = runs[key]
        cfg.method.latent_dim = 4  # the weight does not depend on the size; keeps the nets small
        model = build_model(cfg)
        assert model.kl_weight() == pytest.approx(w(cfg.method.beta)), key


def test_independent_loss_scales_the_kl_by_the_convention():
    """Same encoder outputs and noise: loss - nll = β·KL (paper) or β²·KL (code), on the CelebA run's nets."""
    runs = first_runs("mmvamp.yaml", "smoke")
    cfg = runs[("celeba", "independent")]
    cfg.method.latent_dim, cfg.method.beta = 8, 8.0
    x = celeba_batch()
    out = {}
    for conv in ("paper", "code"):
        cfg.method.options = {**cfg.method.options, "beta_convention": conv}
        torch.manual_seed(0)
        model = build_model(cfg).eval()
        with torch.no_grad():  # a KL large against the NLL, so float32 keeps the comparison exact enough
            for enc in model.encoders.values():
                enc.mu.weight.mul_(300)
        torch.manual_seed(1)
        loss, logs = model.loss(x)
        logs = {k: float(v) for k, v in logs.items()}  # the trainer's read-back of the logged device tensors
        out[conv] = logs
        assert loss.item() - logs["nll"] == pytest.approx(model.kl_weight() * logs["kl"], rel=1e-3)
    assert out["paper"]["kl"] == pytest.approx(out["code"]["kl"])
    assert 8 * (out["paper"]["loss"] - out["paper"]["nll"]) == pytest.approx(out["code"]["loss"] - out["code"]["nll"],
                                                                           rel=1e-3)  # β² / β = 8 at β = 8


def test_rec_weights_per_suite_entry():
    smvae = first_runs("smvae_iclr22.yaml")
    for name in ("mvae", "mmvae", "mopoe", "jmvae", "smvae", "smvgon", "vae", "vgon"):
        assert smvae[("celeba", name)].method.rec_weights == {"img": 1.0, "text": 48.0}  # SMVAE §5: largest = 1
    assert smvae[("mnist-svhn-text", "mopoe")].method.rec_weights is None  # the dataset's already match §5
    mopoe = first_runs("mopoe_iclr21.yaml")
    for name in ("mvae_style", "mmvae_style", "mopoe_style"):  # MoPoE App. B: the dominant modality at 1.0
        assert mopoe[("celeba", name)].method.rec_weights == {"img": 1.0, "text": 48.0}  # the code: 1/3, 16
    mmvamp = first_runs("mmvamp.yaml")
    for name in ("independent", "aggregated", "mmvamp"):
        r = mmvamp[("celeba", name)]
        assert r.method.rec_weights == {"img": 1.0, "text": 16.0} and r.method.architecture == "celeba_mmvm"


def test_rec_weights_scale_the_likelihood_terms():
    torch.manual_seed(0)
    x = celeba_batch()
    base = MethodConfig("mopoe", latent_dim=4, beta=1.0)
    plain = METHODS.get("mopoe")(CELEBA, base, "celeba_mmvm").eval()
    assert plain.rec_weights == {"img": pytest.approx(1 / 3), "text": 16.0}  # the dataset's (MoPoE code)
    smvae = METHODS.get("mopoe")(CELEBA, MethodConfig("mopoe", 4, 1.0, rec_weights={"img": 1.0, "text": 48.0}),
                                 "celeba_mmvm").eval()
    smvae.load_state_dict(plain.state_dict())
    z = torch.randn(2, 4)
    nll = {m: -plain.rec_log_prob(z, x, m) for m in plain.names}
    assert torch.allclose(plain.weighted_nll(z, x), nll["img"] / 3 + 16 * nll["text"], rtol=1e-5)
    assert torch.allclose(smvae.weighted_nll(z, x), nll["img"] + 48 * nll["text"], rtol=1e-5)
    # only the named modality changes
    part = METHODS.get("mopoe")(CELEBA, MethodConfig("mopoe", 4, 1.0, rec_weights={"img": 1.0}), "celeba_mmvm")
    assert part.rec_weights == {"img": 1.0, "text": 16.0}


def test_rec_weights_are_validated_and_keep_old_run_ids():
    base = {"dataset": "celeba", "eval": {"metrics": ["latent_ap"]}}
    with pytest.raises(ConfigError, match=r"method.rec_weights.image.*img, text"):
        build_run_config({**base, "method": {"rec_weights": {"image": 1.0}}})
    with pytest.raises(ConfigError, match=r"method.rec_weights.text.*> 0"):
        build_run_config({**base, "method": {"rec_weights": {"text": 0}}})
    with pytest.raises(MMBenchError, match="not a modality"):
        METHODS.get("mopoe")(CELEBA, MethodConfig("mopoe", 4, rec_weights={"m0": 1.0}), "celeba_mmvm")
    # a field added later stays out of the run id at its default (existing runs keep their directories)
    assert build_run_config({"dataset": "polydigits"}).run_id() == "polydigits-vanilla-mopoe-s0-a78aea8e21"
    a = build_run_config({**base, "method": {"rec_weights": {"img": 1.0}}})
    assert a.run_id() != build_run_config(base).run_id()


def test_mmvm_celeba_nets_follow_the_authors_layers():
    nets = ARCHITECTURES.get("celeba_mmvm")
    img, text = CELEBA
    enc_i, enc_t, dec_i, dec_t = nets.encoder(img, 16), nets.encoder(text, 16), nets.decoder(img, 16), nets.decoder(text, 16)
    for enc in (enc_i, enc_t):
        assert enc.mu.bias is None and enc.logvar.bias is None and enc.mu.in_features == 320  # 5 · filter_dim 64
    blocks = [m for net in (enc_i, enc_t, dec_i, dec_t) for m in net.modules() if hasattr(m, "shortcut")]
    assert len(blocks) == 4 + 6 + 4 + 6 and all(b.a == 1.0 and b.b == 1.0 for b in blocks)
    convs = [m for m in enc_i.trunk.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs[0].out_channels == 64 and max(c.out_channels for c in convs) == 320
    assert dec_i[0].bias is not None and dec_i[0].out_features == 320  # the decoders' first linear keeps its bias
    x = celeba_batch()
    enc_i.eval(), enc_t.eval(), dec_i.eval(), dec_t.eval()
    mu, logvar = enc_i(x["img"])
    assert mu.shape == logvar.shape == (2, 16)
    assert dec_i(mu).shape == (2, 3, 64, 64) and dec_t(enc_t(x["text"])[0]).shape == (2, 256, 71)
    # the MoPoE nets keep DIM 128, a = 2, b = 0.3 and biased heads
    mopoe = ARCHITECTURES.get("celeba_resnet").encoder(img, 16)
    assert mopoe.mu.bias is not None and mopoe.mu.in_features == 640
    assert {(b.a, b.b) for b in mopoe.modules() if hasattr(b, "shortcut")} == {(2.0, 0.3)}
