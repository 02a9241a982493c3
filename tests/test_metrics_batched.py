"""The batched evaluation passes (metrics/batched.py) equal the unbatched loops they replaced.

The references below are the per-sample loops of loglik and coherence as they were before batching. Both
versions draw their random numbers in the same order (sample by sample, subset by subset), so on a fixed
seed they agree to float rounding; the chunk size is set to a few rows so chunks cut across subsets,
samples and test tuples.
"""
import copy
import math

import numpy as np
import pytest
import torch

from mmbench.config import EvalConfig
from mmbench.data.base import DataSplit, Modality
from mmbench.methods.base import MethodConfig, all_subsets, subset_key
from mmbench.metrics import batched
from mmbench.metrics.coherence import coherence
from mmbench.metrics.context import EvalContext
from mmbench.metrics.loglik import importance_sampled, loglik, prior_log_prob
from mmbench.registry import ARCHITECTURES, DATASETS, METHODS

MODS = [Modality(f"m{i}", (3, 28, 28)) for i in range(3)]
NAMES = [m.name for m in MODS]


def make(name):
    torch.manual_seed(0)
    return METHODS.get(name)(MODS, MethodConfig(name, latent_dim=8, beta=1.0), "polymnist_cnn").eval()


def split(n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = {m: (torch.rand(n, 3, 28, 28, generator=g) * 255).to(torch.uint8) for m in NAMES}
    return DataSplit(MODS, x, torch.randint(0, 10, (n,), generator=g))


def context(model, data, **cfg):
    ctx = EvalContext(model=model, spec=DATASETS.get("polydigits")(), variant="vanilla", train=data, test=data,
                      test_full=data, cfg=EvalConfig(**cfg), device=torch.device("cpu"))
    torch.manual_seed(3)
    clf = ARCHITECTURES.get("polymnist_clf").classifier(MODS[0], 10)
    ctx._classifiers = {m: copy.deepcopy(clf).eval() for m in NAMES}
    return ctx


@torch.no_grad()
def reference_importance_sampled(model, x, subsets, K):
    """The unbatched estimator: one decoder call per modality and sample, x repeated per subset."""
    qs = model.encode_subsets(x, subsets)
    S = len(subsets)
    xs = {m: x[m].repeat(S, *([1] * (x[m].dim() - 1))) for m in model.names}
    lw_joint, lw_mod = [], []
    for _ in range(K):
        z = torch.stack([q.rsample() for q in qs])
        log_q = torch.stack([q.log_prob(z[s]) for s, q in enumerate(qs)])
        B = z.shape[1]
        flat = z.reshape(S * B, -1)
        log_pz = prior_log_prob(model, flat).view(S, B)
        rec = torch.stack([model.rec_log_prob(flat, xs, m).view(S, B) for m in model.names], -1)
        base = log_pz - log_q
        lw_mod.append(rec + base[..., None])
        lw_joint.append(rec.sum(-1) + base)
    return (torch.logsumexp(torch.stack(lw_joint), 0) - math.log(K),
            torch.logsumexp(torch.stack(lw_mod), 0) - math.log(K))


@torch.no_grad()
def reference_coherence(ctx):
    """The unbatched coherence: every subset's draws through each decoder and classifier in one call."""
    model, clfs, names = ctx.model, ctx.classifiers(), ctx.model.names
    subsets = all_subsets(names)
    correct, n_total = np.zeros((len(subsets), len(names))), 0
    for idx, x in ctx.batches(ctx.test):
        y = ctx.test.labels[idx]
        z = torch.cat([q.rsample() for q in model.encode_subsets(x, subsets)])
        for j, m in enumerate(names):
            pred = clfs[m](model.decode(z, m)).argmax(1).view(len(subsets), -1)
            correct[:, j] += (pred == y[None]).sum(1).numpy()
        n_total += len(idx)
    out = {f"coherence/{subset_key(s)}->{m}": correct[k, j] / n_total
           for k, s in enumerate(subsets) for j, m in enumerate(names)}
    agree, done = 0, 0
    while done < ctx.cfg.joint_samples:
        n = min(ctx.cfg.batch_size, ctx.cfg.joint_samples - done)
        z = model.sample_prior(n)
        preds = torch.stack([clfs[m](model.decode(z, m)).argmax(1) for m in names])
        agree += (preds == preds[0:1]).all(0).sum().item()
        done += n
    out["coherence/joint"] = agree / done
    return out


@pytest.mark.parametrize("name", ["mopoe", "mmvae"])  # Gaussian and Mixture subset posteriors
@pytest.mark.parametrize("rows", [5, 512])  # chunks cutting across tuples, subsets and samples; one chunk
def test_importance_sampled_equals_the_unbatched_loop(monkeypatch, name, rows):
    monkeypatch.setattr(batched, "CPU_ROWS", rows)
    model, subsets = make(name), all_subsets(NAMES)
    x = split(6).batch(torch.arange(6), torch.device("cpu"))
    torch.manual_seed(7)
    ref_joint, ref_mod = reference_importance_sampled(model, x, subsets, K=4)
    torch.manual_seed(7)
    joint, per_mod = importance_sampled(model, x, subsets, K=4)
    assert joint.shape == (len(subsets), 6) and per_mod.shape == (len(subsets), 6, len(NAMES))
    torch.testing.assert_close(joint, ref_joint, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(per_mod, ref_mod, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("chunk", [5, 8, 12, 100])  # chunks cutting across tuples, whole blocks (reused), one call
def test_rec_log_probs_score_row_r_against_tuple_r_mod_b(chunk):
    model = make("mopoe")
    x = split(4).batch(torch.arange(4), torch.device("cpu"))
    z = torch.randn(5 * 4 + 2, 8)  # five blocks of the four tuples and a part block
    out = batched.rec_log_probs(model, z, x, NAMES, chunk=chunk)
    want = torch.stack([model.rec_log_prob(z, {m: x[m].repeat(6, 1, 1, 1)[:len(z)]}, m) for m in NAMES], -1)
    torch.testing.assert_close(out, want)


class Projection(torch.nn.Module):
    """A row-wise classifier whose class moves with the decoded image (an untrained CNN's barely does, and an
    untrained decoder's images differ little): a fixed random projection of the image's difference from the
    decoding of z = 0."""

    def __init__(self, seed, reference):
        super().__init__()
        self.w = torch.randn(10, 3 * 28 * 28, generator=torch.Generator().manual_seed(seed))
        self.reference = reference.flatten(1)

    def forward(self, x):
        return (x.flatten(1) - self.reference) @ self.w.T


@pytest.mark.parametrize("rows", [7, 512])
def test_coherence_equals_the_unbatched_loop(monkeypatch, rows):
    monkeypatch.setattr(batched, "CPU_ROWS", rows)
    ctx = context(make("mopoe"), split(20), batch_size=8, joint_samples=19)
    with torch.no_grad():
        ctx._classifiers = {m: Projection(j, ctx.model.decode(torch.zeros(1, 8), m)) for j, m in enumerate(NAMES)}
    torch.manual_seed(5)
    ref = reference_coherence(ctx)
    torch.manual_seed(5)
    out = coherence(ctx)
    assert {k: out[k] for k in ref} == ref
    # the classifiers' predictions vary over subsets and targets, so rows mixed up between them would show
    assert len({v for k, v in ref.items() if "->" in k}) >= 5


def test_loglik_metric_equals_the_unbatched_loop(monkeypatch):
    monkeypatch.setattr(batched, "CPU_ROWS", 9)
    model, data = make("mopoe"), split(10)
    ctx = context(model, data, batch_size=4, ll_samples=3)
    torch.manual_seed(2)
    out = loglik(ctx)
    torch.manual_seed(2)
    subsets = all_subsets(NAMES)
    sums = torch.zeros(len(subsets), dtype=torch.float64)
    for _, x in ctx.batches(data):
        sums += reference_importance_sampled(model, x, subsets, 3)[0].double().sum(1)
    for k, s in enumerate(subsets):
        assert out[f"loglik/{subset_key(s)}"] == pytest.approx(sums[k].item() / len(data), rel=1e-6)


def test_channels_last_evaluation_copy_decodes_and_classifies_the_same():
    model = make("mopoe")
    clf = context(model, split(2))._classifiers["m0"]
    z = torch.randn(64, 8)
    with torch.no_grad():
        before = clf(model.decode(z, "m1"))
        fast_model, fast_clf = batched.for_eval(copy.deepcopy(model), "cpu"), batched.for_eval(copy.deepcopy(clf), "cpu")
        assert fast_model.decoders["m1"].net[3].weight.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(fast_clf(fast_model.decode(z, "m1")), before, rtol=1e-5, atol=1e-5)


def test_metrics_modules_import_each_other_without_a_cycle():
    """Inside mmbench/metrics the relative imports are at module level and form no cycle."""
    import ast
    from pathlib import Path

    import mmbench.metrics

    root = Path(mmbench.metrics.__file__).parent
    graph = {}
    for path in root.glob("*.py"):
        tree = ast.parse(path.read_text())
        top = set(tree.body)
        deps = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                assert node in top, f"{path.name}:{node.lineno} imports .{node.module} inside a function"
                deps.add(node.module)
        graph[path.stem] = deps
    state = {}

    def visit(m, chain):
        assert state.get(m) != "open", f"import cycle: {' -> '.join(chain + [m])}"
        if state.get(m) is None:
            state[m] = "open"
            for d in graph.get(m, ()):
                visit(d, chain + [m])
            state[m] = "done"

    for m in graph:
        visit(m, [])


def test_bf16_evaluation_decodes_in_bfloat16_and_keeps_everything_else_fp32():
    """eval.precision bf16: each decoder runs as a bfloat16 copy (so its output differs from fp32 by bf16
    rounding, not more), the output and every density after it are float32, encoders are untouched, and the
    importance-sampled log-likelihood moves by a small fraction of a nat per pixel."""
    model = make("mopoe")
    z = torch.randn(64, 8)
    x = split(6).batch(torch.arange(6), torch.device("cpu"))
    with torch.no_grad():
        ref = model.decode(z, "m1")
        torch.manual_seed(5)
        ref_ll = importance_sampled(model, x, all_subsets(NAMES), 3)[0]
        low = batched.for_eval(copy.deepcopy(model), "cpu", "bf16")
        assert isinstance(low.decoders["m1"], batched.Bfloat16Decoder)
        assert low.decoders["m1"].inner.net[0].weight.dtype == torch.bfloat16
        assert all(p.dtype == torch.float32 for p in low.encoders.parameters())
        out = low.decode(z, "m1")
        assert out.dtype == torch.float32 and out.shape == ref.shape
        err = (out - ref).abs().max().item()
        assert 0 < err < 0.05 * ref.abs().max().item()  # bf16 was used (outputs differ), and only by its rounding
        torch.manual_seed(5)
        ll = importance_sampled(low, x, all_subsets(NAMES), 3)[0]
    assert ll.dtype == torch.float32
    pixels = 3 * 3 * 28 * 28
    assert 0 < (ll - ref_ll).abs().max().item() < 0.01 * pixels
    # applying it twice does not wrap twice
    again = batched.for_eval(low, "cpu", "bf16")
    assert isinstance(again.decoders["m1"].inner, torch.nn.Module) and not isinstance(again.decoders["m1"].inner,
                                                                                      batched.Bfloat16Decoder)


def test_bf16_evaluation_is_refused_where_it_would_change_posteriors():
    from mmbench.errors import MMBenchError

    vgon = make("vgon")
    with pytest.raises(MMBenchError, match="method vgon encodes through its decoders.*use eval.precision fp32"):
        batched.for_eval(vgon, "cpu", "bf16")
    with pytest.raises(MMBenchError, match="eval.precision 'fp16' is not allowed; choose fp32 or bf16"):
        batched.for_eval(make("mopoe"), "cpu", "fp16")


@pytest.mark.parametrize("metric, setting, values", [
    ("latent_classification", "lr_train_samples", (40, 12)), ("loglik", "lr_train_samples", (40, 12)),
    ("coherence", "joint_samples", (64, 7)), ("coherence", "ll_samples", (15, 2)),
    ("loglik", "ll_samples", (3, 2)), ("reconstruction", "ll_samples", (3, 2)),
    ("latent_classification", "precision", ("fp32", "bf16")), ("coherence", "precision", ("fp32", "bf16")),
    ("reconstruction", "precision", ("fp32", "bf16"))])
def test_a_metric_key_moves_only_with_the_settings_the_budget_check_says_it_reads(metric, setting, values):
    """budgets.reads decides which settings take a key's number off the paper's budget (or keep two claim sides
    apart): every key that moves when the setting alone changes must read it, and where a key reads it, one moves."""
    from mmbench.budgets import reads
    from mmbench.registry import METRICS

    model, data = make("mopoe"), split(40)
    out = []
    for v in values:
        low = batched.for_eval(copy.deepcopy(model), "cpu", v) if setting == "precision" else model
        ctx = context(low, data, **({} if setting == "precision" else {setting: v}))
        with torch.no_grad():  # classifiers whose class moves with the decoded image (an untrained CNN's barely does)
            ctx._classifiers = {m: Projection(j, model.decode(torch.zeros(1, 8), m)) for j, m in enumerate(NAMES)}
        out.append(METRICS.get(metric)(ctx))
    moved = {k for k in out[0] if out[0][k] != out[1][k]}
    said = {k for k in out[0] if reads(f"eval.{setting}", k)}
    assert moved <= said, f"keys move with eval.{setting} that budgets.READ_BY says do not read it: {moved - said}"
    assert bool(moved) == bool(said), (moved, said)
