"""MVAE and MMVAE with modality-specific latents (MoPoE Table 5's rows): interface, training, the authors' loss."""
import pytest
import torch

from mmbench.data.base import Modality
from mmbench.errors import MMBenchError
from mmbench.methods.base import Gaussian, MethodConfig, Mixture, all_subsets
from mmbench.methods.style import StyleLatents
from mmbench.registry import METHODS
from conftest import train_steps

POLY = [Modality(f"m{i}", (3, 28, 28)) for i in range(2)]
CONTENT, STYLE = 4, 3


def make(name, rec_weights=None, **options):
    torch.manual_seed(0)
    return METHODS.get(name)(POLY, MethodConfig(name, latent_dim=CONTENT, beta=1.5, rec_weights=rec_weights,
                                                options={"style_dim": STYLE, **options}), "polymnist_cnn")


def batch(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {m.name: torch.rand(n, 3, 28, 28, generator=g) for m in POLY}


@pytest.mark.parametrize("name", ["mvae_style", "mmvae_style", "mopoe_style"])
def test_style_methods_share_the_style_machinery_and_the_interface(name):
    model = make(name)
    assert isinstance(model, StyleLatents)
    x = batch()
    subsets = all_subsets(model.names)
    for s, q in zip(subsets, model.encode_subsets(x, subsets)):
        assert q.mean.shape == (6, CONTENT) and q.rsample().shape == (6, CONTENT)  # the content posterior
        for m in model.names:
            assert model.decode(q.rsample(), m).shape == (6, 3, 28, 28)  # a prior style is drawn
            assert model.rec_log_prob(q.rsample(), x, m).shape == (6,)
    assert model.decode(torch.zeros(2, CONTENT + STYLE), "m0").shape == (2, 3, 28, 28)
    assert model.sample_prior(3).shape == (3, CONTENT)


def test_two_training_steps_are_finite():
    for name in ("mvae_style", "mmvae_style"):
        model = make(name)
        losses, logs = train_steps(model, batch(8, seed=1), 2, require_grad=True, every_step=True)
        assert all(torch.isfinite(torch.tensor(losses))) and set(logs) >= {"loss", "nll", "kl", "kl_content", "kl_style"}


def test_mmvae_style_posteriors_are_mixtures_of_unimodal_content_experts():
    model = make("mmvae_style")
    x = batch()
    q = model.encode(x, ("m0", "m1"))
    assert isinstance(q, Mixture)
    outs = [model.encoders[m](x[m]) for m in model.names]
    assert torch.allclose(q.components.mu, torch.stack([o[0][:, :CONTENT] for o in outs]), atol=1e-6)


def styles_and_content(model, x):
    outs = {m: model.encoders[m](x[m]) for m in model.names}
    mu = torch.stack([outs[m][0][:, :CONTENT] for m in model.names])
    lv = torch.stack([outs[m][1][:, :CONTENT] for m in model.names])
    styles = {m: Gaussian(outs[m][0][:, CONTENT:], outs[m][1][:, CONTENT:]) for m in model.names}
    return mu, lv, styles


def loss_and_parts(name, seed, **options):
    """The method's loss and logs on a batch, and (replaying the same random numbers) its content experts and
    styles."""
    model = make(name, **options)
    model.eval()
    x = batch()
    torch.manual_seed(seed)
    loss, logs = model.loss(x)
    torch.manual_seed(seed)
    return (model, x, loss, logs, *styles_and_content(model, x))


def nll(model, c, s, x, m):
    return -model.likelihoods[m].log_prob(model.decoders[m](torch.cat([c, s], -1)), x[m])


def test_mmvae_style_loss_is_the_authors_factorized_moe_objective():
    """m1 with rec_weight 3 and style_beta 5: its reconstruction term weighs 3, its style KL β·beta_style·5."""
    model, x, loss, logs, mu, lv, styles = loss_and_parts("mmvae_style", 3, rec_weights={"m1": 3.0},
                                                          style_betas={"m1": 5.0})
    comps = Gaussian(mu, lv)  # the unimodal content experts (no prior expert)
    c = comps[torch.tensor([0, 0, 0, 1, 1, 1]), torch.arange(6)].rsample()  # rows 0-2: m0's, 3-5: m1's
    nlls, kl_content, kl_style = 0.0, comps.kl_standard_normal().mean(0), 0.0
    for m, rw, w in zip(model.names, (1.0, 3.0), (1.0, 5.0)):
        nlls = nlls + rw * nll(model, c, styles[m].rsample(), x, m)
        kl_style = kl_style + w * styles[m].kl_standard_normal()
    kl = 1.0 * kl_content + 2.0 * kl_style
    assert logs["kl_content"].item() == pytest.approx(kl_content.mean().item(), rel=1e-5)
    assert logs["kl_style"].item() == pytest.approx(kl_style.mean().item(), rel=1e-5)
    # the KL part on its own: beside a reconstruction term of ~1e4 nats a KL term of 0.1 hides in the loss's rounding
    assert logs["kl"].item() == pytest.approx(kl.mean().item(), rel=1e-5)
    assert loss.item() == pytest.approx((nlls + 1.5 * kl).mean().item(), rel=1e-4)


def test_mvae_style_loss_is_the_authors_factorized_poe_objective():
    model, x, loss, logs, mu, lv, styles = loss_and_parts("mvae_style", 4, beta_content=0.5)

    def poe(idx):  # with the N(0, I) expert
        prec = 1 + (1 / lv[idx].exp()).sum(0)
        return Gaussian((mu[idx] / lv[idx].exp()).sum(0) / prec, -prec.log())

    qs = [poe([0, 1]), poe([0]), poe([1])]
    c = Gaussian(torch.stack([q.mu for q in qs]), torch.stack([q.logvar for q in qs])).rsample()
    nlls, kl = 0.0, 0.5 * qs[0].kl_standard_normal()
    for m in model.names:  # joint ELBO
        nlls = nlls + nll(model, c[0], styles[m].rsample(), x, m)
        kl = kl + 2.0 * model.style_betas[m] * styles[m].kl_standard_normal()
    for i, m in enumerate(model.names):  # unimodal ELBOs: own content, own style (its KL again), weight 1
        nlls = nlls + nll(model, c[i + 1], styles[m].rsample(), x, m)
        kl = kl + 0.5 * qs[i + 1].kl_standard_normal() + 2.0 * model.style_betas[m] * styles[m].kl_standard_normal()
    # the KL part on its own: beside a reconstruction term of ~1e4 nats a KL term of 0.1 hides in the loss's rounding
    assert logs["kl"].item() == pytest.approx(kl.mean().item(), rel=1e-5)
    assert loss.item() == pytest.approx((nlls + 1.5 * kl).mean().item(), rel=1e-4)


@pytest.mark.parametrize("bad", [0, -2, True, 2.5, "3"])
def test_style_dim_must_be_a_positive_integer(bad):
    with pytest.raises(MMBenchError, match=r"^method\.options\.style_dim: (expected an integer|must be an integer >= 1), got"):
        make("mopoe_style", style_dim=bad)


def test_style_betas_given_replace_the_jobs_defaults_and_others_weigh_one():
    """style.py: style_betas default to the CelebA job's (img 1.0, text 5.0), a modality not named weighs 1.0, and the
    ones given replace the defaults."""
    mods = [Modality("img", (3, 28, 28)), Modality("text", (3, 28, 28)), Modality("m2", (3, 28, 28))]

    def betas(**options):
        return METHODS.get("mopoe_style")(mods, MethodConfig("mopoe_style", latent_dim=CONTENT,
                                                             options={"style_dim": STYLE, **options}),
                                          "polymnist_cnn").style_betas

    assert betas() == {"img": 1.0, "text": 5.0, "m2": 1.0}
    assert betas(style_betas={"text": 0.5, "m2": 3}) == {"img": 1.0, "text": 0.5, "m2": 3.0}


def test_styled_terms_weigh_the_reconstruction_only_when_weighted():
    """styled_terms: w_m = rec_weight, or 1 with weighted=False (MVAE's unimodal ELBOs); the style KL is the same."""
    model = make("mvae_style", rec_weights={"m1": 3.0})
    x = batch()
    _, _, styles = model.encode_all(x, model.names)
    c = torch.zeros(6, CONTENT)
    torch.manual_seed(1)
    nll_w, kl_w = model.styled_terms(c, x, styles, ["m0", "m1"])
    torch.manual_seed(1)
    nll_u, kl_u = model.styled_terms(c, x, styles, ["m0", "m1"], weighted=False)
    torch.manual_seed(1)
    nll_0, _ = model.styled_terms(c, x, styles, ["m0"], weighted=False)
    assert torch.allclose(nll_w, nll_0 + 3.0 * (nll_u - nll_0), rtol=1e-5)
    assert torch.equal(kl_w, kl_u)


def test_decoding_a_z_of_another_size_is_refused():
    model = make("mmvae_style")
    for dims in (CONTENT - 1, CONTENT + 1, CONTENT + STYLE + 1):
        with pytest.raises(MMBenchError, match=rf"decodes z of {CONTENT} \(content\) or {CONTENT + STYLE} "
                                               rf"\(content\+style\) dims, got {dims}$"):
            model.decode(torch.zeros(2, dims), "m0")


# ----- behaviours a mutation pass (style methods' objectives) found unguarded -----
# Beside a reconstruction term of ~1e4 nats, which content sample feeds which ELBO (and β itself) hides in the
# loss's rounding; these tests spy on styled_terms: they see each call's content sample and weighting, and
# replace its NLL by a tag (10^j for call j), so the loss is Σ tags + β·kl to float precision.
def spied_loss(name, seed, **options):
    model, x, _, _, mu, lv, styles = loss_and_parts(name, seed, **options)
    calls, real = [], model.styled_terms

    def spy(c, x, styles, modalities, weighted=True):
        nll, kl = real(c, x, styles, modalities, weighted)
        calls.append((c.detach(), tuple(modalities), weighted))
        return torch.full_like(nll, 10.0 ** (len(calls) - 1)), kl

    model.styled_terms = spy
    torch.manual_seed(seed)
    loss, logs = model.loss(x)
    torch.manual_seed(seed)
    return model, loss, logs, calls, mu, lv


def test_mvae_style_joint_elbo_uses_the_joint_content_and_unimodal_elbos_their_own():
    """MoPoE run_epochs.py basic_routine_epoch (modality_poe) with utils/utils.py calc_elbo: the joint ELBO decodes every
    modality from the joint PoE's c with rec_weights; modality m's ELBO decodes x_m from q(c | x_m)'s c with weight 1;
    elbo = rec + β·div. The logs' nll, kl_content and kl_style are the joint ELBO's."""
    model, loss, logs, calls, mu, lv = spied_loss("mvae_style", 5, rec_weights={"m1": 3.0}, beta_content=0.5)

    def poe(idx):  # with the N(0, I) expert
        prec = 1 + (1 / lv[idx].exp()).sum(0)
        return Gaussian((mu[idx] / lv[idx].exp()).sum(0) / prec, -prec.log())

    qs = [poe([0, 1]), poe([0]), poe([1])]  # joint, then m0's and m1's unimodal content posteriors
    c = Gaussian(torch.stack([q.mu for q in qs]), torch.stack([q.logvar for q in qs])).rsample()
    assert [(mods, weighted) for _, mods, weighted in calls] == [(("m0", "m1"), True), (("m0",), False),
                                                                 (("m1",), False)]
    for i, (ci, _, _) in enumerate(calls):
        assert torch.allclose(ci, c[i], atol=1e-5), i
    assert loss.item() == pytest.approx(111.0 + 1.5 * logs["kl"].item(), rel=1e-6)  # tags 1 + 10 + 100, β = 1.5
    assert logs["nll"].item() == 1.0  # the joint ELBO's reconstruction only
    assert logs["kl_content"].item() == pytest.approx(qs[0].kl_standard_normal().mean().item(), rel=1e-5)
    kl_style = sum(model.style_betas[m] * s.kl_standard_normal() for m, s in styles_and_content(model, batch())[2].items())
    assert logs["kl_style"].item() == pytest.approx(kl_style.mean().item(), rel=1e-5)


@pytest.mark.parametrize("name,subsets", [("mmvae_style", [(0,), (1,)]), ("mopoe_style", [(0,), (1,), (0, 1)])])
def test_mixture_style_rows_take_their_stratified_components_content_and_beta_content_weighs_it(name, subsets):
    """mixture_style_loss: row b's c is drawn from component k(b) (contiguous blocks, MoPoE utils/utils.py
    mixture_component_selection); kl = beta_style·Σ_m style_betas[m] KL(s_m) + beta_content·mean_S KL(q_S(c))
    (run_epochs.py basic_routine_epoch: beta_style·kld_style + beta_content·kld_content), loss = NLL + β·kl."""
    model, loss, logs, calls, mu, lv = spied_loss(name, 6, beta_content=0.5)
    comps = model.poe(mu, lv, model.names, [tuple(model.names[i] for i in s) for s in subsets])
    k = torch.arange(6) // (6 // len(subsets))  # 6 rows: 3 per component (MMVAE), 2 per component (MoPoE)
    c = comps[k, torch.arange(6)].rsample()
    assert len(calls) == 1 and calls[0][1:] == (("m0", "m1"), True)
    assert torch.allclose(calls[0][0], c, atol=1e-5)
    kl_style = sum(model.style_betas[m] * s.kl_standard_normal() for m, s in styles_and_content(model, batch())[2].items())
    want = 2.0 * kl_style + 0.5 * comps.kl_standard_normal().mean(0)
    assert logs["kl"].item() == pytest.approx(want.mean().item(), rel=1e-5)
    assert loss.item() == pytest.approx(1.0 + 1.5 * logs["kl"].item(), rel=1e-6)


@pytest.mark.parametrize("name", ["mvae_style", "mmvae_style", "mopoe_style"])
def test_each_style_method_defaults_to_the_celeba_jobs_weights_and_style_dim(name):
    """MoPoE job_celeba: beta_style 2.0, beta_content 1.0, beta_m1_style (img) 1.0, beta_m2_style (text) 5.0;
    App. E.2: a 32-dimensional style latent per modality."""
    mods = [Modality("img", (3, 28, 28)), Modality("text", (3, 28, 28))]
    model = METHODS.get(name)(mods, MethodConfig(name, latent_dim=CONTENT), "polymnist_cnn")
    assert model.style_dim == 32 and model.latent_dim == CONTENT
    assert model.style_betas == {"img": 1.0, "text": 5.0}
    assert (model.opt["beta_style"], model.opt["beta_content"]) == (2.0, 1.0)
    assert model.encoders["img"](torch.zeros(1, 3, 28, 28))[0].shape == (1, CONTENT + 32)


def test_a_content_sized_z_is_decoded_with_a_prior_style_draw():
    """style.py (MoPoE utils/BaseMMVae.py cond_generation/generate): a content-sized z gets s_m ~ N(0, I)."""
    model = make("mopoe_style")
    model.eval()
    z = torch.zeros(2, CONTENT)
    torch.manual_seed(7)
    got = model.decode(z, "m0")
    torch.manual_seed(7)
    want = model.likelihoods["m0"].mean(model.decoders["m0"](torch.cat([z, torch.randn(2, STYLE)], -1)))
    assert torch.allclose(got, want, atol=1e-6)
    assert not torch.allclose(model.decode(z, "m0"), got)
