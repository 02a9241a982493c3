"""The training losses can be captured whole: a pack's (`mmbench run --compile`, `bench steps --pack N --compile`)
and an unpacked run's (`mmbench run --compile --pack 1`, `bench steps --compile`: mrVAE, MM-VAMP, SMVAE, VGON), with torch.compile
mode "reduce-overhead", i.e. CUDA graphs, on a GPU.

CUDA graphs replay one captured graph; a graph break (a Python branch on a tensor's value, a read back to the
host, an operation the compiler cannot trace) splits the step into pieces run between Python code, which is what
the capture is meant to remove. No GPU is needed to find them: TorchDynamo traces the same Python on the CPU, and
`fullgraph=True` turns any break into an error. The graph is run with the "aot_eager" backend (traced forward and
backward, run by the eager kernels: no C++ compiler needed), and its losses must equal the uncaptured pack's.
Every packable method's pack is traced whole by TorchDynamo (where graph breaks are decided); AOTAutograd's trace of
forward and backward (twice the cost on the CPU) runs for the methods with the most distinct operations (AOT_TRACED).
"""
import os

import pytest
import torch

from mmbench.data.base import Modality
from mmbench.methods.base import MethodConfig, trainer_counts
from mmbench.pack import StackedModel
from mmbench.registry import METHODS

MODS = [Modality(f"m{i}", (3, 28, 28)) for i in range(3)]  # three: a subset of two that is not the full set
PACKABLE = [m for m in METHODS.names() if METHODS.get(m).packable]
# a step counter read from a buffer (mrVAE's) and permutations; mixtures' component indexing (MoPoE); a
# mixture with modality-specific latents; JMVAE's joint encoder beside the unimodal ones; a gradient inside the loss
# differentiated again (VGON's inner step); a weight computed from step counters (MM-VAMP's annealed α)
AOT_TRACED = {"mrvae", "mopoe", "mmvae_style", "jmvae", "vgon", "mmvamp"}


def pack_losses(method: str, capture: bool, steps: int = 2, betas=None, options=None, with_grads: bool = False):
    """Per-run losses of `steps` packed training steps (2 runs, vmapped as on a GPU; `betas`: the runs' β, a β sweep's
    pack; `options`: the method's); `with_grads`: and the first step's gradients, flattened."""
    cls = METHODS.get(method)
    cfg = MethodConfig(method, latent_dim=8, beta=1.0, options=options or {})
    states = []
    for s in range(2):
        torch.manual_seed(s)
        states.append(cls(MODS, cfg, "polymnist_cnn").state_dict())
    sm = StackedModel(cls(MODS, cfg, "polymnist_cnn").train(), states, [None, None], 1e-3, torch.device("cpu"),
                      betas=betas)
    sm.vectorised = True  # the GPU's way: one vmapped loss over the runs
    if capture:
        sm._replay = torch.compile(sm._replay, fullgraph=True, backend="aot_eager" if method in AOT_TRACED else "eager")
    gens = [torch.Generator().manual_seed(s) for s in range(2)]
    g = torch.Generator().manual_seed(0)
    x = {m.name: torch.rand(2, 6, 3, 28, 28, generator=g) for m in MODS}
    out, grads = [], None
    for _ in range(steps):
        losses, logs = sm.loss(x, gens, 0)
        assert all(torch.is_tensor(v) and v.shape == (2,) for v in logs.values())
        sm.opt.zero_grad(set_to_none=True)
        losses.sum().backward()
        if grads is None:
            grads = torch.cat([p.grad.flatten() for p in sm.params.values() if p.grad is not None])
        sm.opt.step()
        sm.step_taken(6)  # as the packed trainer: the counters advance once per step, after the update
        out.append(losses.detach())
    if "model.step" in sm.buffers:  # a step counter kept in a buffer (mrVAE) advances per run, captured or not
        assert sm.buffers["model.step"].tolist() == [steps, steps]
    return (torch.stack(out), grads) if with_grads else torch.stack(out)


@pytest.mark.parametrize("method", PACKABLE)
def test_packed_loss_is_captured_as_one_graph_with_the_same_losses(method):
    torch._dynamo.reset()
    eager = pack_losses(method, capture=False)
    captured = pack_losses(method, capture=True)  # fullgraph=True: a graph break raises here
    torch.testing.assert_close(captured, eager, rtol=1e-6, atol=1e-3)


def test_a_two_stage_pack_is_compiled_once_per_stage_with_the_same_losses():
    """SMVAE two_stage picks each step's stage on the host. The captured step specialises on the stage, not on the step
    count (a graph per step once, until TorchDynamo's recompile limit ran the step uncaptured with a warning): over 5
    steps with stage 2 from step 3, two graphs, and the uncaptured pack's losses."""
    from torch._dynamo.utils import counters

    options = {"schedule": "two_stage", "stage1_steps": 2}
    torch._dynamo.reset()
    counters.clear()
    eager = pack_losses("smvae", capture=False, steps=5, options=options)
    captured = pack_losses("smvae", capture=True, steps=5, options=options)
    assert counters["stats"]["unique_graphs"] == 2
    torch.testing.assert_close(captured, eager, rtol=1e-6, atol=1e-3)


@pytest.mark.parametrize("method", ["mopoe", "jmvae"])
def test_a_beta_sweeps_pack_is_captured_as_one_graph_with_the_same_losses(method):
    """A pack whose runs differ in β (each run's β a vmapped input, read through MultimodalVAE.beta inside
    methods.base.use_beta; JMVAE's α follows it) is traced whole too, with the uncaptured pack's losses, and β
    reaches the losses (the same weights at another β give others)."""
    torch._dynamo.reset()
    eager = pack_losses(method, capture=False, betas=[0.5, 500.0])
    captured = pack_losses(method, capture=True, betas=[0.5, 500.0])  # fullgraph=True: a graph break raises here
    torch.testing.assert_close(captured, eager, rtol=1e-6, atol=1e-3)
    assert not torch.allclose(eager, pack_losses(method, capture=False), rtol=1e-3)


ANNEALED_MMVAMP = {"alpha": 1.0, "alpha_anneal_steps": 2}  # α moves at every one of the 3 steps


def test_an_mmvamp_pack_annealing_alpha_on_the_device_is_captured_as_one_graph():
    """A packed MM-VAMP run computes its annealed α on the device from its own step counters: the pack is traced
    whole, with the uncaptured gradients and losses, over steps at which α moves (from 1, over 2 steps)."""
    torch._dynamo.reset()
    options = ANNEALED_MMVAMP
    eager, eager_grads = pack_losses("mmvamp", capture=False, steps=3, betas=[50.0, 500.0], options=options,
                                     with_grads=True)
    captured, captured_grads = pack_losses("mmvamp", capture=True, steps=3, betas=[50.0, 500.0], options=options,
                                           with_grads=True)
    torch.testing.assert_close(captured_grads, eager_grads, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(captured, eager, rtol=1e-6, atol=1e-3)
    # α reaches the losses (β large: at initialisation the rates are a thousandth of the reconstruction)
    assert not torch.allclose(eager, pack_losses("mmvamp", capture=False, steps=3, betas=[50.0, 500.0]), rtol=1e-3)


def test_a_pack_with_matmul_convolutions_is_captured_as_one_graph(monkeypatch):
    """MMBENCH_PACK_CONV=bmm (mmbench/packconv.py: unfold, matmul, fold under vmap) is traced whole too, forward and
    backward, with the uncaptured pack's losses."""
    import mmbench.packconv as packconv

    monkeypatch.setenv("MMBENCH_PACK_CONV", "bmm")
    swapped = []
    real = packconv.matmul_convs
    monkeypatch.setattr(packconv, "matmul_convs", lambda m: swapped.append(1) or real(m))
    torch._dynamo.reset()
    eager = pack_losses("mopoe", capture=False)
    captured = pack_losses("mopoe", capture=True)
    assert len(swapped) == 2  # both packs computed their convolutions as matmuls
    torch.testing.assert_close(captured, eager, rtol=1e-6, atol=1e-3)


# Unpacked steps are captured too (--pack 1, a group of one, options that do not pack: mrVAE's objective r, SMVAE's
# two_stage): the methods with a buffer or a host counter in their step, and VGON, whose posterior is a gradient taken
# inside the loss (torch.func.grad, traced whole; torch.autograd.grad was a graph break).
UNPACKED = ["mrvae", "mmvamp", "smvae", "vgon"]


def unpacked_losses(method: str, capture: bool, steps: int = 3, options=None):
    """(the losses of `steps` training steps of one run, its first step's gradients flattened), the step as
    train.train takes it: the loss (captured or not) inside trainer_counts, backward, Adam, then the step counted."""
    cls = METHODS.get(method)
    torch.manual_seed(0)
    model = cls(MODS, MethodConfig(method, latent_dim=8, beta=1.0, options=dict(options or {})), "polymnist_cnn").train()
    if method == "mrvae":
        model.cut_rows = False  # what a GPU computes: every row of the prior draws (no read back of their sizes)
    loss_fn = torch.compile(model.loss, fullgraph=True, backend="aot_eager") if capture else model.loss
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(1)
    x = {m.name: torch.rand(6, 3, 28, 28, generator=g) for m in MODS}
    torch.manual_seed(5)
    out, grads = [], None
    for _ in range(steps):
        with trainer_counts():
            loss, _ = loss_fn(x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grads is None:
            grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        opt.step()
        model.step_taken(6)
        out.append(loss.detach())
    return torch.stack(out), grads


@pytest.mark.parametrize("method,options", [(m, {}) for m in UNPACKED] + [("mrvae", {"anneal_rate": 0.05}),
                                                                          ("mmvamp", ANNEALED_MMVAMP)])
def test_unpacked_step_is_captured_once_with_the_same_losses(method, options):
    """One graph for every step (a step counter kept as a host number would be specialised on, recompiling every
    step; mrVAE's annealed temperatures and MM-VAMP's annealed α are computed on the device from its counters), and
    the same random numbers, gradients and losses as uncaptured (SMVAE's two stages: once per stage,
    test_a_captured_unpacked_two_stage_run_compiles_once_per_stage). The counters advance after the step
    (MultimodalVAE.count_step): counted inside the captured loss, MM-VAMP's annealed α reached the backward at the
    next step's value (AOT autograd recomputed its read of the updated buffer there) and these gradients differed
    by 0.7."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    eager, eager_grads = unpacked_losses(method, capture=False, options=options)
    captured, captured_grads = unpacked_losses(method, capture=True, options=options)
    assert counters["stats"]["unique_graphs"] == 1
    torch.testing.assert_close(captured_grads, eager_grads, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(captured, eager, rtol=1e-6, atol=1e-3)


def test_a_graph_break_in_a_loss_is_found():
    """The check can fail: a loss with a graph break (here an explicit one, which eager code and vmap ignore, as they
    would a call the compiler cannot trace) is refused when captured whole."""
    cls = METHODS.get("mopoe")

    class Breaks(cls):
        def loss(self, x):
            loss, logs = super().loss(x)
            torch._dynamo.graph_break()
            return loss * 1.0, logs

    METHODS._items["_breaks"] = Breaks
    try:
        torch._dynamo.reset()
        pack_losses("_breaks", capture=False, steps=1)  # runs uncaptured
        with pytest.raises(Exception, match="(?i)graph.break"):
            pack_losses("_breaks", capture=True, steps=1)
    finally:
        del METHODS._items["_breaks"]


# 3 of polydigits' 5 modalities for the runs trained end to end (as MODS: a subset of two that is not the full set):
# what they check, captured equals uncaptured through train.train, holds at any number; the traced loss of 5 (MoPoE:
# 31 subsets) took about twice as long to compile
THREE = ["m0", "m1", "m2"]


def test_a_captured_unpacked_two_stage_run_compiles_once_per_stage(tmp_path, data_root, monkeypatch):
    """An unpacked run's trainer counts SMVAE's host-side steps after each step (host_step, methods.base.trainer_counts),
    as a pack's does, so its captured loss reads no changing host number: over 3 epochs of 2 steps with stage 2 from
    step 3, two graphs (the loss counting inside once made one per step), and the uncaptured run's history."""
    from torch._dynamo.utils import counters

    from mmbench.config import build_run_config
    from mmbench.results import Run
    from mmbench.train import train

    def config():
        return build_run_config({"dataset": "polydigits", "modalities": THREE, "method": {
            "name": "smvae", "latent_dim": 4, "options": {"schedule": "two_stage", "stage1_steps": 2}},
            "train": {"epochs": 3, "batch_size": 50, "max_train": 100, "max_test": 50}})

    ref = train(Run(config(), tmp_path / "plain"), data_root)
    torch._dynamo.reset()
    counters.clear()
    monkeypatch.setenv("MMBENCH_COMPILE", "1")
    monkeypatch.setenv("MMBENCH_COMPILE_BACKEND", "aot_eager")
    run = Run(config(), tmp_path / "captured")
    out = train(run, data_root)
    assert "training step captured with torch.compile" in run.log_path.read_text()
    assert counters["stats"]["unique_graphs"] == 2
    assert [h["train_div"] for h in out["history"]][0] == 0.0 < out["history"][-1]["train_div"]
    for a, b in zip(ref["history"], out["history"]):
        assert b == pytest.approx(a, rel=1e-6)


@pytest.mark.parametrize("method", [{"name": "mopoe", "latent_dim": 4},
                                    {"name": "mmvamp", "latent_dim": 4, "options": ANNEALED_MMVAMP}])
def test_mmbench_run_compile_captures_unpacked_training_with_the_same_results(tmp_path, data_root, monkeypatch, method):
    """`mmbench run --compile` (MMBENCH_COMPILE=1) captures an unpacked run's step too (on a GPU with CUDA graphs; here
    traced with the aot_eager backend): the run says so in its log and ends with the history and weights of the
    uncaptured run (same random numbers; MoPoE, and MM-VAMP with α annealed from step counters, whose gradients a
    counter updated inside the captured loss made wrong). A compiler failure is logged and the run goes on
    uncaptured.
    Under MMBENCH_GPU_TESTS=1 (docs/gpu-runs/device-check.sh) it runs on the GPU with the real backend (inductor,
    CUDA graphs): its fused kernels round differently from the eager ones, so there the bounds are 1e-3 relative
    on the history and on each weight tensor's norm of difference (an estimate, not yet measured on a GPU: a
    failure prints the sizes)."""
    from conftest import on_gpu_if_asked
    from mmbench.config import build_run_config
    from mmbench.results import Run
    from mmbench.train import train

    def config():  # trained by the unpacked trainer (train.train), as --pack 1 and a group of one are
        return build_run_config({"dataset": "polydigits", "modalities": THREE, "method": dict(method),
                                 "train": {"epochs": 2, "batch_size": 50, "max_train": 100, "max_test": 50}})

    on_gpu_if_asked()
    gpu = torch.cuda.is_available()  # only under MMBENCH_GPU_TESTS=1: the suite hides GPUs from every test
    plain = Run(config(), tmp_path / "plain")
    ref = train(plain, data_root)
    torch._dynamo.reset()
    monkeypatch.setenv("MMBENCH_COMPILE", "1")
    if not gpu:
        monkeypatch.setenv("MMBENCH_COMPILE_BACKEND", "aot_eager")
    cap = Run(config(), tmp_path / "captured")
    out = train(cap, data_root)
    assert "training step captured with torch.compile" in cap.log_path.read_text()
    assert ("on cuda" in cap.log_path.read_text()) == gpu
    for a, b in zip(ref["history"], out["history"]):
        assert a.keys() == b.keys() and all(b[k] == pytest.approx(a[k], rel=1e-3 if gpu else 1e-6) for k in a), (a, b)
    wa, wb = (torch.load(r.ckpt_dir / "last.pt", weights_only=False)["model"] for r in (plain, cap))
    if gpu:
        rel = {k: float((wa[k].float() - wb[k].float()).norm() / wa[k].float().norm().clamp_min(1e-12)) for k in wa}
        assert max(rel.values()) <= 1e-3, sorted(rel.items(), key=lambda kv: -kv[1])[:3]
    else:
        assert all(torch.allclose(wa[k].float(), wb[k].float(), rtol=1e-5, atol=1e-6) for k in wa)
    # a captured step that fails (here: every call raises): logged, trained uncaptured, the same results
    def fails(*args, **kwargs):
        raise RuntimeError("the compiler gave up")

    monkeypatch.setattr(torch, "compile", lambda fn, **kw: fails)
    failed = Run(config(), tmp_path / "failed")
    again = train(failed, data_root)
    assert "torch.compile failed (RuntimeError: the compiler gave up); training uncaptured" in failed.log_path.read_text()
    same = [h["test_loss"] for h in ref["history"]]  # a GPU's cuDNN may sum a weight gradient in another order
    assert [h["test_loss"] for h in again["history"]] == (pytest.approx(same, rel=1e-5) if gpu else same)


def inductor_on_cpu() -> bool:
    """Whether inductor can compile here (it writes and builds C++ on the CPU)."""
    import shutil

    return shutil.which(os.environ.get("CXX", "g++")) is not None


@pytest.mark.skipif(not inductor_on_cpu(), reason="inductor on the CPU needs a C++ compiler (g++ or $CXX)")
def test_an_annealed_mmvamp_pack_captured_by_inductor_has_its_uncaptured_gradients():
    """The backend `mmbench run --compile` uses (inductor; here on the CPU, 2 runs of a small MLP pack, α annealed from
    1 over 2 steps) gives a packed MM-VAMP step the uncaptured gradients. With the step counters updated inside the
    captured loss, inductor's backward recomputed α from the updated buffers: gradients of up to ~1,000 were off by
    822 at the first step (aot_eager, which the other tests trace with, kept α and hid it). About 35 s with an empty
    inductor cache (the C++ build), 7 s with the kernels cached."""
    mods = [Modality(f"m{i}", (4, 5), "spikes", "sse", 1.0) for i in range(2)]
    cls, cfg = METHODS.get("mmvamp"), MethodConfig("mmvamp", latent_dim=4, beta=1.0, options=ANNEALED_MMVAMP)

    def grads(capture: bool):
        states = []
        for s in range(2):
            torch.manual_seed(s)
            states.append(cls(mods, cfg, "rat_mlp").state_dict())
        sm = StackedModel(cls(mods, cfg, "rat_mlp").train(), states, [None, None], 1e-3, torch.device("cpu"),
                          betas=[50.0, 500.0])
        sm.vectorised = True  # the GPU's way: one vmapped loss over the runs
        if capture:
            sm._replay = torch.compile(sm._replay, fullgraph=True, backend="inductor")
        gens = [torch.Generator().manual_seed(s) for s in range(2)]
        x = {m.name: torch.rand(2, 6, 4, 5, generator=torch.Generator().manual_seed(i)) for i, m in enumerate(mods)}
        out = []
        for _ in range(2):
            losses, _ = sm.loss(x, gens, 0)
            sm.opt.zero_grad(set_to_none=True)
            losses.sum().backward()
            out.append(torch.cat([p.grad.flatten() for p in sm.params.values() if p.grad is not None]))
            sm.opt.step()
            sm.step_taken(6)
        return torch.stack(out)

    torch._dynamo.reset()
    eager, captured = grads(False), grads(True)
    assert eager.abs().max() > 100  # β large: the rates, where α acts, carry the gradients
    torch.testing.assert_close(captured, eager, rtol=1e-4, atol=1e-3)
