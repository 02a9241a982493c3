"""Decoder likelihoods against known answers (numpy / scipy written here, none of the package's code)."""
import numpy as np
import torch
from scipy import stats

from mmbench.likelihoods import Categorical, Gaussian, Laplace

OUT = np.array([[[0.3, -1.2, 2.0], [1.5, 0.1, -0.4]]])  # (B=1, L=2, V=3) logits
X = np.array([[[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]])  # one-hot per position l


def test_categorical_normalises_over_the_last_axis():
    # Σ_l (out[l, x_l] - logsumexp_v out[l, v]), numpy; the mean (probabilities) sums to 1 over v
    want = sum(OUT[0, l, X[0, l].argmax()] - np.log(np.exp(OUT[0, l]).sum()) for l in range(2))
    got = Categorical.log_prob(torch.tensor(OUT), torch.tensor(X))
    assert got.shape == (1,) and np.isclose(got.item(), want, rtol=1e-12, atol=0)
    p = Categorical.mean(torch.tensor(OUT)).numpy()
    assert np.allclose(p.sum(-1), 1.0) and np.allclose(p, np.exp(OUT) / np.exp(OUT).sum(-1, keepdims=True))


def test_gaussian_and_laplace_match_scipy_summed_over_the_dims():
    # per-sample Σ over all dims of scipy's norm(out, 0.1) / laplace(out, 0.75) log-densities
    rng = np.random.default_rng(0)
    out, x = rng.normal(size=(2, 3, 4)), rng.normal(size=(2, 3, 4))
    for cls, dist, scale in ((Gaussian, stats.norm, 0.1), (Laplace, stats.laplace, 0.75)):
        assert cls.scale == scale
        want = dist(out, scale).logpdf(x).reshape(2, -1).sum(1)
        got = cls.log_prob(torch.tensor(out), torch.tensor(x)).numpy()
        assert np.allclose(got, want, rtol=1e-12, atol=1e-9)


def test_summed_squared_error_is_a_gaussian_of_variance_half_without_its_constant():
    # -log p = Σ_i (x_i - mu_i)² (mmvmvae-hippocampal spike_vae.py); a N(mu, 1/2) log-density plus N/2·log π
    from mmbench.likelihoods import SummedSquaredError

    rng = np.random.default_rng(1)
    out, x = rng.normal(size=(3, 2, 5)), rng.normal(size=(3, 2, 5))
    got = SummedSquaredError.log_prob(torch.tensor(out), torch.tensor(x)).numpy()
    assert np.allclose(got, -((x - out) ** 2).reshape(3, -1).sum(1), rtol=1e-12, atol=0)
    gauss = stats.norm(out, np.sqrt(0.5)).logpdf(x).reshape(3, -1).sum(1)
    assert np.allclose(got, gauss + 10 / 2 * np.log(np.pi), rtol=1e-12, atol=1e-9)
    assert SummedSquaredError.normalised is False


def test_image_likelihood_applies_to_image_modalities_only():
    # method.image_likelihood overrides the dataset's likelihood of image modalities; text and vectors keep theirs
    from mmbench.data.base import Modality
    from mmbench.likelihoods import likelihood_name

    img = Modality("img", (3, 4, 4), kind="image", likelihood="laplace")
    text = Modality("text", (8, 5), kind="text", likelihood="categorical")
    vec = Modality("v", (3,), kind="vector", likelihood="gaussian")
    assert likelihood_name(img, "gaussian") == "gaussian" and likelihood_name(img, None) == "laplace"
    assert likelihood_name(text, "gaussian") == "categorical" and likelihood_name(vec, "laplace") == "gaussian"
