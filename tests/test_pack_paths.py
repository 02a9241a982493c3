"""Paths of the trainers that tests/test_pack.py did not reach: a run diverging inside a trained pack, runs resumed at
different epochs, a compile failure after the step drew its noise and moved its step counters (at the first capture
or at a recompile; packed and unpacked), and the number of device reads per epoch of both trainers."""

import math
from pathlib import Path

import pytest
import torch

import mmbench.pack as pack_mod
from mmbench.registry import METHODS
from mmbench.results import Run
from mmbench.pack import train_pack
from mmbench.train import train
from conftest import on_gpu_if_asked
from test_pack import cfg as pack_cfg, last


def cfg(seed=0, beta=None, **train_over):
    """tests/test_pack.py's tiny MoPoE runs, on 64 training and 32 test tuples (at `beta`: default the method's)."""
    c = pack_cfg(seed, **{"max_train": 64, "max_test": 32, **train_over})
    if beta is not None:
        c.method.beta = beta
    return c


def poison(monkeypatch, factors):
    """From the 2nd training step of the full pack (len(factors) runs: after the packability trial, so the pack really
    trains) its runs' losses are multiplied by `factors` (a NaN makes that run diverge). Returns (the unpoisoned
    StackedModel.loss, the count of the full pack's training steps so far)."""
    orig = pack_mod.StackedModel.loss
    calls = {"n": 0}

    def poisoned(self, x, gens, x_dim=0, precision="fp32"):
        losses, logs = orig(self, x, gens, x_dim, precision)
        if self.template.training and self.size == len(factors):
            calls["n"] += 1
            if calls["n"] >= 2:
                losses = losses * torch.tensor(factors)
        return losses, logs

    monkeypatch.setattr(pack_mod.StackedModel, "loss", poisoned)
    monkeypatch.setattr(pack_mod.StackedModel, "loss_backward", summed_backward)
    return orig, calls


def summed_backward(self, x, gens, precision="fp32"):
    """The training step through StackedModel.loss (so through a poisoned one) and one backward of the summed losses:
    what a looped pack's per-run backward computes, to its bits (tests/test_pack.py)."""
    losses, logs = self.loss(x, gens, 0, precision)
    losses.sum().backward()
    return losses, logs


def test_a_run_diverging_inside_the_pack_leaves_it_and_the_others_end_as_alone(tmp_path, data_root, monkeypatch):
    """Run 1's loss turns NaN at the 2nd training step of epoch 1 (after the packability trial, so the pack really
    trains): its parameters go NaN through its own gradient; it leaves the pack as diverged, and runs 0 and 2 finish
    with the weights they get alone (no NaN reaches them, and the shrunk pack keeps *their* slices, and their β: the
    three are a β sweep's)."""
    orig, calls = poison(monkeypatch, [1.0, float("nan"), 1.0])
    betas = (1.0, 2.5, 10.0)
    runs = [Run(cfg(s, betas[s]), tmp_path / "packed") for s in range(3)]
    out = train_pack(runs, data_root)
    assert calls["n"] == 2  # epoch 1's two steps were packed; epoch 2 trained the other two as a pack of 2
    assert isinstance(out[runs[1].id], str) and "diverged" in out[runs[1].id]
    monkeypatch.setattr(pack_mod.StackedModel, "loss", orig)
    for s in (0, 2):
        alone = Run(cfg(s, betas[s]), tmp_path / "alone")
        ref = train(alone, data_root)
        assert out[runs[s].id]["epochs"] == 2
        for a, p in zip(ref["history"], out[runs[s].id]["history"]):
            assert p["test_loss"] == pytest.approx(a["test_loss"], rel=1e-4)
        wa, wp = last(alone)["model"], last(runs[s])["model"]
        assert all(torch.allclose(wp[k], wa[k], rtol=1e-3, atol=1e-4) for k in wa)


def test_when_the_first_run_of_a_beta_pack_leaves_the_one_left_keeps_its_own_beta(tmp_path, data_root, monkeypatch):
    """A pack's template is built from its first run (β 1): when that run diverges and leaves, the run left (β 10)
    trains on at its own β, not the template's, and ends as it ends alone (the survivors' βs all equal, but not the
    template's, once made the pack read the template's)."""
    orig, _ = poison(monkeypatch, [float("nan"), 1.0])
    runs = [Run(cfg(s, b), tmp_path / "packed") for s, b in ((0, 1.0), (1, 10.0))]
    out = train_pack(runs, data_root)
    assert isinstance(out[runs[0].id], str) and "diverged" in out[runs[0].id]
    monkeypatch.setattr(pack_mod.StackedModel, "loss", orig)
    ref = train(Run(cfg(1, 10.0), tmp_path / "alone"), data_root)
    assert out[runs[1].id]["epochs"] == len(ref["history"]) == 2  # every epoch compared below
    for a, p in zip(ref["history"], out[runs[1].id]["history"]):
        assert p["test_loss"] == pytest.approx(a["test_loss"], rel=1e-6)


def test_runs_resumed_at_different_epochs_train_apart_and_each_ends_as_alone(tmp_path, data_root):
    """Run a resumes at epoch 1, run b starts at 0: train_pack groups them by resume point (each alone here), and
    each ends with the history it has uninterrupted."""
    a, b = Run(cfg(0), tmp_path / "p"), Run(cfg(1), tmp_path / "p")
    train_pack([a], data_root, stop_after_epoch=1)
    assert last(a)["state"]["epoch"] == 1
    out = train_pack([a, b], data_root)
    ref = train(Run(cfg(0), tmp_path / "ref"), data_root)
    assert out[a.id]["epochs"] == out[b.id]["epochs"] == 2
    assert "resumed from" in a.log_path.read_text() and "resumed from" not in b.log_path.read_text()
    assert "packed_with" not in out[a.id] and "packed_with" not in out[b.id]  # apart: each trained alone
    assert [h["epoch"] for h in out[a.id]["history"]] == [1, 2]
    assert out[a.id]["history"] == ref["history"]


def late_failing_compile(at=1):
    """A torch.compile whose step runs the loss uncaptured for its first at - 1 calls; call `at` runs it too (noise drawn,
    counters moved) and then gives up, as a first capture or a recompile may."""
    def compile(fn, **kw):
        calls = {"n": 0}

        def step(*args, **kwargs):
            calls["n"] += 1
            out = fn(*args, **kwargs)
            if calls["n"] == at:
                raise RuntimeError("the compiler gave up late")
            return out
        return step
    return compile


def late_cfg(seed, method, monkeypatch=None):
    """cfg(seed) on one epoch of 64 tuples; "mmvamp": MM-VAMP with α annealed over its samples, whose loss here (with
    `monkeypatch`) also moves a buffer itself, one more sample per training call, as BatchNorm keeps statistics
    inside the loss (the trainers advance the step counters after the step, outside it: count_step)."""
    c = cfg(seed, epochs=1, max_train=64)
    if method == "mmvamp":
        c.method.name = "mmvamp"
        c.method.options = {"rate": "bound", "alpha": 1.0, "alpha_anneal_steps": 4, "alpha_anneal_batch": 16}
        cls = METHODS.get("mmvamp")
        loss = cls.loss
        if not getattr(loss, "moves_a_buffer", False):
            def moving(self, x):
                if self.training:
                    self.train_samples += 1
                return loss(self, x)
            moving.moves_a_buffer = True
            monkeypatch.setattr(cls, "loss", moving)
    return c


@pytest.mark.parametrize("method,at", [("mopoe", 1), ("mmvamp", 1), ("mmvamp", 2)])
def test_unpacked_compile_failure_after_drawing_noise_trains_with_the_same_numbers(tmp_path, data_root, monkeypatch,
                                                                                    method, at):
    """The failed captured call (the first, or the second as a recompile) ran the loss (noise drawn, a buffer moved):
    the step is recomputed from the state before it, so the run ends as uncaptured, buffers and the α schedule
    included."""
    ref_run = Run(late_cfg(0, method, monkeypatch), tmp_path / "plain")
    ref = train(ref_run, data_root)
    monkeypatch.setenv("MMBENCH_COMPILE", "1")
    monkeypatch.setenv("MMBENCH_COMPILE_BACKEND", "aot_eager")
    monkeypatch.setattr(torch, "compile", late_failing_compile(at))
    run = Run(late_cfg(0, method, monkeypatch), tmp_path / "failed")
    out = train(run, data_root)
    assert "torch.compile failed" in run.log_path.read_text()
    assert out["history"] == ref["history"]
    a, b = last(ref_run)["model"], last(run)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    if method == "mmvamp":
        assert int(b["train_steps"]) == 2 and int(b["train_samples"]) == 64 + 2


@pytest.mark.parametrize("method,at", [("mopoe", 1), ("mmvamp", 1), ("mmvamp", 2)])
def test_packed_compile_failure_after_drawing_noise_trains_with_the_same_numbers(tmp_path, data_root, monkeypatch,
                                                                                  method, at):
    monkeypatch.setenv("MMBENCH_PACK_MODE", "vmap")  # only a vmapped pack is captured
    plain = [Run(late_cfg(s, method, monkeypatch), tmp_path / "plain") for s in range(2)]
    ref = train_pack(plain, data_root)
    monkeypatch.setenv("MMBENCH_COMPILE", "1")
    monkeypatch.setenv("MMBENCH_COMPILE_BACKEND", "aot_eager")
    monkeypatch.setattr(torch, "compile", late_failing_compile(at))
    runs = [Run(late_cfg(s, method, monkeypatch), tmp_path / "failed") for s in range(2)]
    out = train_pack(runs, data_root)
    for p, r in zip(plain, runs):
        assert "torch.compile failed" in r.log_path.read_text()
        assert out[r.id]["history"] == ref[r.id]["history"]
        a, b = last(p)["model"], last(r)["model"]
        assert all(torch.equal(a[k], b[k]) for k in a)
        if method == "mmvamp":
            assert int(b["train_steps"]) == 2 and int(b["train_samples"]) == 64 + 2


def test_a_captured_pack_out_of_device_memory_splits_into_captured_halves(tmp_path, data_root, monkeypatch):
    """The first capture's second step runs out of device memory (raised here on the CPU): the pack is split, not
    run uncaptured; the compiler's caches (a GPU's CUDA-graph memory pool) are reset, and each half is captured."""
    monkeypatch.setenv("MMBENCH_PACK_MODE", "vmap")
    monkeypatch.setenv("MMBENCH_COMPILE", "1")
    monkeypatch.setenv("MMBENCH_COMPILE_BACKEND", "aot_eager")
    captures, resets = [], []

    def compile(fn, **kw):
        captures.append(0)
        first = len(captures) == 1

        def step(*args, **kwargs):
            captures[-1] += 1 if first else 0
            if first and captures[0] == 2:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
            return fn(*args, **kwargs)
        return step

    monkeypatch.setattr(torch, "compile", compile)
    real_reset = torch._dynamo.reset
    monkeypatch.setattr(torch._dynamo, "reset", lambda: (resets.append(1), real_reset()))
    runs = [Run(cfg(s, epochs=1), tmp_path) for s in range(3)]
    out = train_pack(runs, data_root)
    assert len(resets) == 1 and len(captures) == 3  # the pack of 3, then the pair and the run alone, each captured
    for r in runs:
        log = r.log_path.read_text()
        assert out[r.id]["epochs"] == 1 and "torch.compile failed" not in log
        assert "the pack of 3 ran out of device memory" in log
        assert log.count("training step captured with torch.compile") == 2, log


OOM = "CUDA out of memory. Tried to allocate 1.00 GiB"


def test_an_unpacked_captured_step_out_of_device_memory_says_so_and_goes_on_uncaptured(tmp_path, data_root,
                                                                                       monkeypatch):
    """A run alone has no smaller pack to go to: its captured step out of memory is retried uncaptured from the state
    before it (as a compiler failure is), after the compiler's caches (a GPU's CUDA-graph pool) are reset, and the
    log says what happened."""
    ref_run = Run(late_cfg(0, "mopoe"), tmp_path / "plain")
    ref = train(ref_run, data_root)
    monkeypatch.setenv("MMBENCH_COMPILE", "1")
    monkeypatch.setenv("MMBENCH_COMPILE_BACKEND", "aot_eager")

    def compile(fn, **kw):
        def step(*args, **kwargs):
            fn(*args, **kwargs)  # its noise drawn, as a capture that failed late
            raise torch.OutOfMemoryError(OOM)
        return step

    monkeypatch.setattr(torch, "compile", compile)
    resets, real_reset = [], torch._dynamo.reset
    monkeypatch.setattr(torch._dynamo, "reset", lambda: (resets.append(1), real_reset()))
    run = Run(late_cfg(0, "mopoe"), tmp_path / "oom")
    out = train(run, data_root)
    log = run.log_path.read_text()
    assert f"the captured step ran out of device memory (OutOfMemoryError: {OOM}); training uncaptured" in log
    assert "torch.compile failed" not in log and resets == [1] and out["history"] == ref["history"]


def test_a_run_that_diverged_before_its_pack_ran_out_of_memory_keeps_its_error(tmp_path, data_root, monkeypatch):
    """Run 1 diverges in epoch 1 and leaves the pack; building the pack without it then runs out of device memory.
    The split trains runs 0 and 2 on; run 1 is not put back into a half (its result stays its divergence)."""
    poison(monkeypatch, [1.0, float("nan"), 1.0])
    real_shrink = pack_mod._shrink

    def shrink(*a, **k):
        raise torch.OutOfMemoryError(OOM)

    monkeypatch.setattr(pack_mod, "_shrink", shrink)
    runs = [Run(cfg(s, epochs=2), tmp_path) for s in range(3)]
    out = train_pack(runs, data_root)
    monkeypatch.setattr(pack_mod, "_shrink", real_shrink)
    assert isinstance(out[runs[1].id], str) and "diverged" in out[runs[1].id]
    assert "split in two" not in runs[1].log_path.read_text() and not (runs[1].ckpt_dir / "last.pt").exists()
    for r in (runs[0], runs[2]):
        assert out[r.id]["epochs"] == 2 and "the pack of 3 ran out of device memory" in r.log_path.read_text()


def test_a_run_alone_out_of_memory_fails_without_splitting_its_pack(tmp_path, data_root, monkeypatch):
    """A pack whose trial refuses it trains its runs alone inside its attempt: a run alone that runs out of memory is
    that run's error (raised, as before packing), not the pack's; nothing is split or trained twice."""
    import mmbench.train as train_mod

    monkeypatch.setattr(pack_mod, "trial", lambda sm, x, gens: "the packed loss differs (faked)")
    real_train, attempts = train_mod.train, []

    def alone(run, *a, **k):
        if run.cfg.seed == 1:
            attempts.append(run.id)
            raise torch.OutOfMemoryError(OOM)
        return real_train(run, *a, **k)

    monkeypatch.setattr(train_mod, "train", alone)
    runs = [Run(cfg(s, epochs=1), tmp_path) for s in range(3)]
    with pytest.raises(torch.OutOfMemoryError):
        train_pack(runs, data_root)
    assert attempts == [runs[1].id] and not any("split in two" in r.log_path.read_text() for r in runs[:2])


def test_a_split_pack_gives_back_its_memory_before_each_half_stacks(tmp_path, data_root, monkeypatch):
    """A pack of 4 runs out of memory while stacking (its runs' weights read, not yet stacked): when each half of 2
    stacks its own, neither the failed pack's host copies of its runs' weights nor the first half's stacked model
    (a reference cycle, so held until Python's collector runs: disabled here) are still alive."""
    import gc
    import weakref

    real_init, real_member = pack_mod.StackedModel.__init__, pack_mod._Member.__init__
    member_states, stacks, alive_at_stacking = [], [], []

    def member(self, *a, **k):
        real_member(self, *a, **k)
        member_states.append(weakref.ref(next(iter(self.model_state.values()))))

    def stacked(self, template, states, *a, **k):
        if len(states) == 4:
            raise torch.OutOfMemoryError(OOM)
        alive_at_stacking.append((sum(r() is not None for r in member_states[:4]),
                                  sum(r() is not None for r in stacks)))
        real_init(self, template, states, *a, **k)
        stacks.append(weakref.ref(next(iter(self.params.values()))))

    monkeypatch.setattr(pack_mod._Member, "__init__", member)
    monkeypatch.setattr(pack_mod.StackedModel, "__init__", stacked)
    runs = [Run(cfg(s, epochs=1), tmp_path) for s in range(4)]
    gc.disable()
    try:
        out = train_pack(runs, data_root)
    finally:
        gc.enable()
    assert all(out[r.id]["epochs"] == 1 and out[r.id]["packed_with"] == 2 for r in runs)
    assert alive_at_stacking == [(0, 0), (0, 0)]  # (the failed pack's weight copies, earlier stacked models)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="a real device allocation failure needs a GPU "
                    "(docs/gpu-runs/device-check.sh runs it; the CPU tests above raise the error themselves)")
def test_a_pack_out_of_real_gpu_memory_splits_and_its_halves_start_from_what_it_gave_back(tmp_path, data_root,
                                                                                          monkeypatch):
    """On a GPU: at its second step, after the backward (gradients, Adam moments from the first step and the traceback
    holding them all), the pack of 4 asks the caching allocator for terabytes, so the error and its message are the
    allocator's own. Each half of 2 starts stacking with no more device memory allocated than the pack of 4 had at
    that point (a leak of one run's weights, gradients and Adam moments is ~18 MB here)."""
    on_gpu_if_asked()
    train_pack([Run(cfg(s, epochs=1), tmp_path / "warm") for s in (7, 8)], data_root)  # the libraries' workspaces
    real_step, real_init = pack_mod.StackedModel.loss_backward, pack_mod.StackedModel.__init__
    before_stacking, steps_of_four = [], []

    def step(self, *a, **k):
        out = real_step(self, *a, **k)
        if self.size == 4:
            steps_of_four.append(1)
            if len(steps_of_four) == 2:
                torch.empty(2**40, device="cuda")  # 4 TiB of float32
        return out

    def stacked(self, *a, **k):
        torch.cuda.synchronize()
        before_stacking.append(torch.cuda.memory_allocated())
        real_init(self, *a, **k)

    monkeypatch.setattr(pack_mod.StackedModel, "loss_backward", step)
    monkeypatch.setattr(pack_mod.StackedModel, "__init__", stacked)
    runs = [Run(cfg(s, epochs=1), tmp_path / "split") for s in range(4)]  # 64 tuples at batch 32: 2 steps
    out = train_pack(runs, data_root)
    assert all(out[r.id]["epochs"] == 1 and out[r.id]["packed_with"] == 2 for r in runs)
    log = runs[0].log_path.read_text()
    assert "the pack of 4 ran out of device memory (OutOfMemoryError: CUDA out of memory" in log
    assert len(steps_of_four) == 2 and len(before_stacking) == 3
    assert max(before_stacking[1:]) <= before_stacking[0] + 2**21, before_stacking


def _reads(monkeypatch):
    """Count reads of tensor values back to the host (the calls that block on a GPU: a value read, or a copy to the
    host's memory) made by mmbench's code (the trainers', and any helper of mmbench's they call)."""
    import sys

    n = {"reads": 0}
    for name in ("__bool__", "item", "tolist", "__float__", "__int__", "cpu", "numpy"):
        orig = getattr(torch.Tensor, name)

        def counted(self, *a, _orig=orig, **k):
            if "/mmbench/" in sys._getframe(1).f_code.co_filename:
                n["reads"] += 1
            return _orig(self, *a, **k)
        monkeypatch.setattr(torch.Tensor, name, counted)
    return n


@pytest.mark.parametrize("packed", [False, True])
def test_trainers_read_the_device_a_fixed_number_of_times_per_epoch(tmp_path, data_root, monkeypatch, packed):
    """Losses stay on the device and are read once per epoch: the reads of one epoch do not grow with its steps."""
    counts = []
    for steps in (2, 4):
        runs = [Run(cfg(s, epochs=1, max_train=32 * steps, max_test=32), tmp_path / str(steps)) for s in range(2)]
        with monkeypatch.context() as m:
            n = _reads(m)
            if packed:
                train_pack(runs, data_root)
            else:
                train(runs[0], data_root)
        counts.append(n["reads"])
    assert counts[0] == counts[1] and counts[0] > 0, counts  # (> 0: the counter sees the per-epoch reads)


def test_a_pack_checkpoints_every_n_epochs_and_at_the_last(tmp_path, data_root):
    """checkpoint_every=2 of 3 epochs, packed as alone: epoch 2's last.pt after 2 (none after 1: it would hold
    epoch 1), and the last epoch's at the end (3 is not a multiple of 2); best.pt is the lowest test loss's epoch."""
    runs = [Run(cfg(s, epochs=3, checkpoint_every=2, max_train=32), tmp_path) for s in range(2)]
    train_pack(runs, data_root, stop_after_epoch=2)
    assert [last(r)["state"]["epoch"] for r in runs] == [2, 2]
    out = train_pack(runs, data_root)
    assert all(out[r.id]["packed_with"] == 2 for r in runs)
    assert [last(r)["state"]["epoch"] for r in runs] == [3, 3]
    for r in runs:  # best.pt: the epoch of the lowest test loss
        tl = [h["test_loss"] for h in out[r.id]["history"]]
        best = torch.load(r.ckpt_dir / "best.pt", weights_only=False)
        assert (best["epoch"], best["test_loss"]) == (tl.index(min(tl)) + 1, min(tl))


def test_a_run_diverging_between_mid_epoch_checkpoints_keeps_its_last_finite_one(tmp_path, data_root, monkeypatch):
    """train.checkpoint_minutes (due after every step here) in a pack: run 1's loss turns NaN at step 2 of 3, so its
    last.pt stays the one after step 1 (finite weights); the others save every step and end the epoch. Every run's
    event log (train.tensorboard; a stand-in writer) is closed, the diverged run's too, and the others' provenance
    still says they trained in a pack of 3."""
    import sys
    import types

    events = []

    class Writer:
        def __init__(self, log_dir):
            self.dir = log_dir

        def add_scalar(self, *a):
            pass

        def flush(self):
            pass

        def close(self):
            events.append(self.dir)

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=Writer))
    orig = pack_mod.StackedModel.loss
    calls = {"n": 0}

    def poisoned(self, x, gens, x_dim=0, precision="fp32"):
        losses, logs = orig(self, x, gens, x_dim, precision)
        if self.template.training:
            calls["n"] += 1
            if calls["n"] >= 2:
                losses = losses * torch.tensor([1.0, float("nan"), 1.0])
        return losses, logs

    monkeypatch.setattr(pack_mod.StackedModel, "loss", poisoned)
    monkeypatch.setattr(pack_mod.StackedModel, "loss_backward", summed_backward)
    runs = [Run(cfg(s, epochs=1, max_train=96, checkpoint_minutes=1e-9, tensorboard=True), tmp_path) for s in range(3)]
    out = train_pack(runs, data_root)
    assert calls["n"] == 3 and "diverged" in out[runs[1].id]
    assert sorted(events) == sorted(str(r.dir / "tensorboard") for r in runs)
    assert out[runs[0].id]["packed_with"] == out[runs[2].id]["packed_with"] == 3
    ck = last(runs[1])
    assert (ck["state"]["epoch"], ck["state"]["step"]) == (0, 1)
    assert all(torch.isfinite(v).all() for v in ck["model"].values())
    for r in (runs[0], runs[2]):
        assert out[r.id]["epochs"] == 1 and last(r)["state"]["epoch"] == 1 and "step" not in last(r)["state"]


@pytest.mark.parametrize("packed", [False, True])
def test_fewer_tuples_than_a_batch_train_one_step_an_epoch(tmp_path, data_root, packed):
    """max_train 20 at batch 32: max(20 // 32, 1) = 1 step an epoch on all 20 tuples (not none), by both trainers."""
    steps = []
    runs = [Run(cfg(s, epochs=2, max_train=20), tmp_path) for s in range(2)]
    progress = lambda phase, done, total: steps.append((done, total))  # noqa: E731
    out = train_pack(runs, data_root, progress) if packed else {runs[0].id: train(runs[0], data_root, progress)}
    assert steps == [(1, 2), (2, 2)]
    for r in runs[:1 + packed]:
        assert out[r.id]["epochs"] == 2 and all(math.isfinite(h["train_loss"]) for h in out[r.id]["history"])
        assert {int(s["step"]) for s in last(r)["optimizer"]["state"].values()} == {2}


@pytest.mark.parametrize("packed", [False, True])
def test_a_stop_requested_in_the_last_step_lets_the_run_finish(tmp_path, data_root, packed):
    """A stop request (Slurm's pre-timeout signal) during the last step of the last epoch: nothing is left to resume,
    so the run ends normally with its final checkpoint instead of raising TrainingInterrupted."""
    import mmbench.train as train_mod

    runs = [Run(cfg(s, epochs=1, max_train=32), tmp_path) for s in range(2)]
    progress = lambda phase, done, total: train_mod.request_stop("test stop")  # noqa: E731
    try:
        out = train_pack(runs, data_root, progress) if packed else {runs[0].id: train(runs[0], data_root, progress)}
    finally:
        train_mod.clear_stop()
    for r in runs[:1 + packed]:
        assert out[r.id]["epochs"] == 1 and last(r)["state"]["epoch"] == 1 and "step" not in last(r)["state"]


def test_a_run_whose_test_loss_is_not_finite_leaves_the_pack_as_diverged(tmp_path, data_root, monkeypatch):
    """Finite training losses, but epoch 2's test loss of run 1 is NaN (a last step that left non-finite weights):
    run 1 fails as diverged with nothing of that epoch saved (its checkpoint stays at epoch 1); run 0 finishes."""
    orig = pack_mod._test_losses

    def poisoned(sm, split, batch_size, seeds, device, precision):
        out = orig(sm, split, batch_size, seeds, device, precision)
        epoch = poisoned.calls = getattr(poisoned, "calls", 0) + 1
        return [math.nan if (s == 1 and epoch == 2) else v for s, v in zip(seeds, out)]

    monkeypatch.setattr(pack_mod, "_test_losses", poisoned)
    runs = [Run(cfg(s), tmp_path) for s in range(2)]
    out = train_pack(runs, data_root)
    assert out[runs[1].id] == "training diverged (a non-finite loss) in epoch 2; lower train.lr or check the data"
    assert last(runs[1])["state"]["epoch"] == 1 and not math.isnan(last(runs[1])["state"]["best_test_loss"])
    assert out[runs[0].id]["epochs"] == 2


def test_a_run_whose_test_loss_is_not_finite_fails_as_diverged(tmp_path, data_root, monkeypatch):
    """The same for a run trained alone: it fails naming the epoch, and saves nothing of it."""
    import mmbench.train as train_mod
    from mmbench.errors import MMBenchError

    orig = train_mod.test_loss
    seen = []

    def poisoned(*a, **k):
        seen.append(1)
        return math.nan if len(seen) == 2 else orig(*a, **k)

    monkeypatch.setattr(train_mod, "test_loss", poisoned)
    run = Run(cfg(0), tmp_path)
    with pytest.raises(MMBenchError, match=r"^training diverged \(a non-finite loss\) in epoch 2; lower train.lr"):
        train(run, data_root)
    assert last(run)["state"]["epoch"] == 1


def test_cudnn_benchmark_mode_is_switched_on_for_gpu_runs_only_and_said_in_each_log(tmp_path, data_root, monkeypatch):
    """`mmbench run --cudnn-benchmark` (MMBENCH_CUDNN_BENCHMARK=1): train.cudnn_autotune switches cuDNN's benchmark
    mode on where the run is on a GPU, not on the CPU nor unasked; the unpacked trainer and every run of a pack log it
    (here with the device check stubbed, since this machine has no GPU)."""
    import mmbench.train as train_mod

    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    assert train_mod.cudnn_autotune(torch.device("cuda")) is None and not torch.backends.cudnn.benchmark  # unasked
    monkeypatch.setenv("MMBENCH_CUDNN_BENCHMARK", "1")
    assert train_mod.cudnn_autotune(torch.device("cpu")) is None and not torch.backends.cudnn.benchmark
    note = train_mod.cudnn_autotune(torch.device("cuda"))
    assert torch.backends.cudnn.benchmark and note.startswith("cuDNN benchmark mode on cuda")
    real = train_mod.cudnn_autotune
    monkeypatch.setattr(train_mod, "cudnn_autotune", lambda device: real(torch.device("cuda")))
    runs = [Run(cfg(0, epochs=1), tmp_path / "alone")] + [Run(cfg(s, epochs=1), tmp_path / "pack") for s in range(2)]
    train(runs[0], data_root)
    train_pack(runs[1:], data_root)
    for r in runs:
        assert "cuDNN benchmark mode on cuda (mmbench run --cudnn-benchmark)" in r.log_path.read_text()


def test_both_trainers_write_their_checkpoints_on_the_writer_thread(tmp_path, data_root, monkeypatch):
    """train and train_pack hand last.pt and best.pt to train.CHECKPOINTS (written off the training path), not to a
    write in the training thread; the files are on disk when they return."""
    import threading

    import mmbench.train as train_mod

    threads, real = [], train_mod._save
    monkeypatch.setattr(train_mod, "_save", lambda path, state: threads.append(
        (Path(path).name, threading.current_thread().name)) or real(path, state))
    alone = Run(cfg(0, epochs=1), tmp_path / "alone")
    train(alone, data_root)
    packed = [Run(cfg(s, epochs=1), tmp_path / "pack") for s in range(2)]
    train_pack(packed, data_root)
    assert sorted(name for name, _ in threads) == ["best.pt"] * 3 + ["last.pt"] * 3
    assert all(t.startswith("mmbench-checkpoints") for _, t in threads), threads
    assert all((r.ckpt_dir / "last.pt").exists() and (r.ckpt_dir / "best.pt").exists() for r in [alone, *packed])


def test_a_pack_wide_failure_is_in_every_run_log(tmp_path, data_root, monkeypatch):
    """A failure of the pack's training as a whole (here a checkpoint write that failed) still stops the worker with
    that error, and every run of the pack has it in its log.txt (before, only the worker's output had it)."""
    from mmbench.errors import MMBenchError
    from mmbench.pack import execute_pack

    def fails(runs, *a, **k):
        raise MMBenchError("writing checkpoint /x/last.pt failed (OSError: No space left on device)")

    monkeypatch.setattr(pack_mod, "train_pack", fails)
    runs = [Run(cfg(s, epochs=1), tmp_path) for s in range(2)]
    with pytest.raises(MMBenchError, match="No space left on device"):
        execute_pack(runs, data_root)
    for r in runs:
        assert "error: writing checkpoint /x/last.pt failed (OSError: No space left on device) (the pack's training " \
               "stopped)" in r.log_path.read_text()


def test_a_packed_resume_keeps_a_best_pt_saved_after_the_resumed_epoch(tmp_path, data_root):
    """As the unpacked trainer (tests/test_train.py): a pack resumed from epoch 1 while each best.pt already holds a
    later epoch's weights keeps them, and their test loss is the one the retrained epochs must beat."""
    runs = [Run(cfg(s), tmp_path / "p") for s in range(2)]
    train_pack(runs, data_root, stop_after_epoch=1)
    for i, r in enumerate(runs):
        later = torch.load(r.ckpt_dir / "best.pt", weights_only=False)
        later.update(epoch=2, test_loss=-1e9 - i)  # as if the lost epoch 2 had been saved as best before last.pt
        torch.save(later, r.ckpt_dir / "best.pt")
    out = train_pack(runs, data_root)
    for i, r in enumerate(runs):
        kept = torch.load(r.ckpt_dir / "best.pt", weights_only=False)
        assert kept["epoch"] == 2 and kept["test_loss"] == out[r.id]["best_test_loss"] == last(r)["state"]["best_test_loss"] == -1e9 - i
        assert "is the best the retrained epochs must beat" in r.log_path.read_text()
