"""Training determinism, checkpoints, resume and model selection; the results store."""
import json
import os
import platform
import re
import resource
import subprocess
import sys
import multiprocessing as mp
from pathlib import Path

import pytest
import torch

from mmbench.config import build_run_config
from mmbench.errors import MMBenchError
from mmbench.results import Run, atomic_json
from mmbench import train as train_mod
from mmbench.train import build_model, load_trained, train
from mmbench.hostmem import tune_host_allocator
from conftest import gpu_tests_asked, on_gpu_if_asked

TINY = {"dataset": "polydigits", "method": {"name": "mopoe", "latent_dim": 8},
        "train": {"epochs": 2, "batch_size": 32, "max_train": 96}}


def cfg(**over):
    d = json.loads(json.dumps(TINY))
    for k, v in over.items():
        d.setdefault(k, {}).update(v) if isinstance(v, dict) else d.__setitem__(k, v)
    return build_run_config(d)


def weights(run):
    return torch.load(run.ckpt_dir / "last.pt", weights_only=False)["model"]


def trained_with_and_without(run_cfg, root, data_root, monkeypatch, name, value):
    """The run trained twice, in root/default and (with the environment's `name` set to `value`) root/asked."""
    default = Run(run_cfg, root / "default")
    train(default, data_root)
    monkeypatch.setenv(name, value)
    asked = Run(run_cfg, root / "asked")
    train(asked, data_root)
    return default, asked


def moved_and_apart(run_cfg, a, b):
    """(training's move of weights a from the run's initialisation, the distance of weights b from a): flattened over
    the floating-point tensors, for tests that hold two trajectories of one run to each other."""
    torch.manual_seed(run_cfg.seed)  # the run's initialisation, as train.train draws it
    init = build_model(run_cfg).state_dict()
    keys = [k for k, w in a.items() if w.is_floating_point()]
    moved = torch.cat([(a[k].cpu() - init[k]).flatten() for k in keys])
    apart = torch.cat([(b[k].cpu() - a[k].cpu()).flatten() for k in keys])
    return moved, apart


def test_same_seed_same_losses(tmp_path, data_root):
    # max_test 64: the per-epoch test loss (seeded noise too) on 2 batches, not the whole 1080-tuple split
    a = train(Run(cfg(train={"max_test": 64}), tmp_path / "a"), data_root)
    b = train(Run(cfg(train={"max_test": 64}), tmp_path / "b"), data_root)
    c = train(Run(cfg(seed=1, train={"max_test": 64}), tmp_path / "c"), data_root)
    assert a["history"] == [{k: v for k, v in h.items()} for h in b["history"]]
    assert a["history"][-1]["train_loss"] != c["history"][-1]["train_loss"]


def test_interrupted_and_resumed_equals_uninterrupted(tmp_path, data_root, monkeypatch):
    """... and the training state lists the code that trained each part (provenance's `trained_with`)."""
    import mmbench.results as results_mod

    on_gpu_if_asked()
    if gpu_tests_asked():  # on a GPU: deterministic cuDNN kernels, so a difference is a lost stream, not atomics
        monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
        monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)

    # max_test 64: each epoch's test loss on 2 batches, not the whole 1080-tuple split (the history compared is
    # computed the same way for both runs)
    full = Run(cfg(train={"epochs": 3, "max_test": 64}), tmp_path / "full")
    assert [c["from_epoch"] for c in train(full, data_root)["trained_with"]] == [0]
    part = Run(cfg(train={"epochs": 3, "max_test": 64}), tmp_path / "part")
    monkeypatch.setattr(results_mod, "git_commit", lambda: "a" * 40)
    s1 = train(part, data_root, stop_after_epoch=1)
    assert s1["epochs"] == 1 and part.status() == "partial"
    with pytest.raises(MMBenchError, match="stopped at epoch 1 of 3"):
        load_trained(part)
    monkeypatch.setattr(results_mod, "git_commit", lambda: "b" * 40)
    s2 = train(part, data_root)
    assert s2["epochs"] == 3
    assert [(c["git_commit"][0], c["from_epoch"]) for c in s2["trained_with"]] == [("a", 0), ("b", 1)]
    wa, wb = weights(full), weights(part)
    worst = max((wa[k].double() - wb[k].double()).abs().max().item() for k in wa)
    assert all(torch.equal(wa[k], wb[k]) for k in wa), f"resumed weights differ by up to {worst:.3g}"
    assert "resumed from" in part.log_path.read_text()


def test_model_selection_best_test_loss(tmp_path, data_root, monkeypatch):
    """A non-monotone test loss (epoch 2 best, epoch 3 worse): `select: best_test_loss` loads epoch 2's
    weights, not the last epoch's."""
    import mmbench.train as train_mod

    losses = iter([5.0, 1.0, 3.0])
    monkeypatch.setattr(train_mod, "test_loss", lambda *a, **k: next(losses))
    run = Run(cfg(train={"epochs": 3, "select": "best_test_loss", "max_test": 32}), tmp_path / "sel")
    summary = train(run, data_root)
    assert [h["test_loss"] for h in summary["history"]] == [5.0, 1.0, 3.0]
    ck = torch.load(run.ckpt_dir / "best.pt", weights_only=False)
    assert ck["epoch"] == 2 and ck["test_loss"] == 1.0
    # epoch 2's weights, obtained independently: the same seed trained for 2 epochs (epoch e's shuffle
    # depends only on (seed, e), so its last weights are the 3-epoch run's weights after epoch 2)
    monkeypatch.undo()
    two = Run(cfg(train={"epochs": 2, "max_test": 32}), tmp_path / "two")
    train(two, data_root)
    at2, at3 = weights(two), weights(run)
    model = load_trained(run)
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], at2[k]) for k in at2)
    assert not all(torch.equal(loaded[k], at3[k]) for k in at3)  # not the last epoch's
    assert not model.training
    # select: last (the default) loads the last epoch's weights
    last_cfg = Run(cfg(train={"epochs": 3, "max_test": 32}), tmp_path / "sel")
    last_cfg.dir = run.dir  # same checkpoints, read with select=last (another run id: last.pt relabelled for it)
    ck = torch.load(run.ckpt_dir / "last.pt", weights_only=False)
    torch.save({**ck, "run_id": last_cfg.id}, run.ckpt_dir / "last.pt")
    loaded_last = load_trained(last_cfg).state_dict()
    assert all(torch.equal(loaded_last[k], at3[k]) for k in at3)


def test_checkpoint_every_n_epochs_resumes_from_the_last_checkpoint(tmp_path, data_root):
    """checkpoint_every=2: a stop after epoch 3 of 4 resumes from epoch 2's checkpoint (epoch 3 is
    trained again) and ends with the uninterrupted run's weights and history. One step an epoch (max_train 32): the
    checkpoints' epochs and the resumed Adam and random streams are what is checked, not an epoch's length."""
    c = cfg(train={"epochs": 4, "checkpoint_every": 2, "max_train": 32, "max_test": 32})
    full = Run(c, tmp_path / "full")
    hist_full = train(full, data_root)["history"]
    part = Run(c, tmp_path / "part")
    train(part, data_root, stop_after_epoch=1)
    assert not (part.ckpt_dir / "last.pt").exists() and part.status() == "pending"  # epoch 1: no checkpoint
    train(part, data_root, stop_after_epoch=3)
    assert torch.load(part.ckpt_dir / "last.pt", weights_only=False)["state"]["epoch"] == 2
    assert part.status() == "partial"
    hist = train(part, data_root)["history"]
    assert "resumed from" in part.log_path.read_text() and "at epoch 2" in part.log_path.read_text()
    assert hist == hist_full
    wa, wb = weights(full), weights(part)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_a_run_stopped_one_epoch_short_is_not_evaluated(tmp_path, data_root):
    """load_trained refuses a run whose last checkpoint is one epoch short of train.epochs."""
    run = Run(cfg(train={"max_test": 32}), tmp_path)
    train(run, data_root, stop_after_epoch=1)
    with pytest.raises(MMBenchError, match="stopped at epoch 1 of 2"):
        load_trained(run)


def test_missing_checkpoint_message(tmp_path):
    with pytest.raises(MMBenchError, match="no checkpoint .* train the run first"):
        load_trained(Run(cfg(), tmp_path))


def _hold_lock(run_dir, to_parent, to_child):
    run = Run(cfg(), run_dir)
    with run.lock():
        to_parent.put("locked")
        to_child.get(timeout=30)


def test_lock_stops_a_second_writer(tmp_path):
    ctx = mp.get_context("fork")
    to_parent, to_child = ctx.Queue(), ctx.Queue()
    p = ctx.Process(target=_hold_lock, args=(tmp_path, to_parent, to_child))
    p.start()
    assert to_parent.get(timeout=30) == "locked"
    with pytest.raises(MMBenchError, match="being written by another process"):
        with Run(cfg(), tmp_path).lock():
            pass
    to_child.put("release")
    p.join(30)
    with Run(cfg(), tmp_path).lock():  # free again
        pass


def test_checkpoints_are_written_off_the_training_path_as_the_state_was_when_saved(tmp_path, monkeypatch):
    """CHECKPOINTS.save returns before the file is written (the writer thread is held here until released) and the
    file holds the state as it was at the call, though the caller changes its tensors and lists right after (as
    training goes on); wait() returns once the file is on disk, and the file reads as a synchronous _save's."""
    import threading

    import mmbench.train as train_mod

    gate, real = threading.Event(), train_mod._save
    monkeypatch.setattr(train_mod, "_save", lambda path, state: gate.wait(10) and real(path, state))
    w = train_mod._CheckpointWriter()
    live = {"model": {"w": torch.zeros(3)}, "state": {"history": [1.0]}}
    path = tmp_path / "checkpoints" / "last.pt"
    w.save(path, live)
    assert not path.exists()  # returned while the write is still held
    live["model"]["w"] += 5
    live["state"]["history"].append(2.0)
    gate.set()
    w.wait()
    got = torch.load(path, weights_only=False)
    assert torch.equal(got["model"]["w"], torch.zeros(3)) and got["state"]["history"] == [1.0]
    real(tmp_path / "sync.pt", {"model": {"w": torch.zeros(3)}, "state": {"history": [1.0]}})
    assert path.read_bytes() == (tmp_path / "sync.pt").read_bytes()


def test_a_failed_background_checkpoint_write_is_an_error_naming_the_file_and_leaves_the_old_one(tmp_path, monkeypatch):
    import mmbench.results as results
    import mmbench.train as train_mod

    w = train_mod._CheckpointWriter()
    path = tmp_path / "checkpoints" / "last.pt"
    w.save(path, {"model": {"w": torch.zeros(3)}})
    w.wait()
    old = path.read_bytes()

    def boom(*a, **k):
        raise OSError("No space left on device")

    monkeypatch.setattr(results.os, "replace", boom)
    w.save(path, {"model": {"w": torch.ones(3)}})
    with pytest.raises(MMBenchError, match=f"writing checkpoint {path} failed .*No space left on device.*re-run to resume"):
        w.wait()
    monkeypatch.undo()
    assert path.read_bytes() == old
    w.wait()  # reported once


def test_checkpoints_handed_over_are_on_disk_when_the_process_exits(tmp_path):
    """A process that ends (here by an error) right after handing a checkpoint over still writes it whole: the
    writer's thread finishes its files before the interpreter exits."""
    path = tmp_path / "last.pt"
    code = ("import torch, sys; from mmbench.train import CHECKPOINTS; "
            f"CHECKPOINTS.save({str(path)!r}, {{'model': {{'w': torch.arange(2_000_000.)}}}}); sys.exit(3)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 3, r.stderr
    assert torch.equal(torch.load(path, weights_only=False)["model"]["w"], torch.arange(2_000_000.))


@pytest.mark.parametrize("fail", ["replace", "fsync"])
def test_atomic_writes_leave_the_old_file_when_the_write_fails(tmp_path, monkeypatch, fail):
    """The write itself fails (os.replace or os.fsync inside atomic_write): the old bytes stay, no temp file."""
    import os

    import mmbench.results as results
    from mmbench.train import _save

    path = tmp_path / "m.json"
    atomic_json(path, {"a": 1})
    ckpt = tmp_path / "checkpoints" / "last.pt"
    _save(ckpt, {"model": {"w": torch.zeros(3)}, "epoch": 1})
    old_json, old_ckpt = path.read_bytes(), ckpt.read_bytes()

    def boom(*a, **k):
        raise OSError(f"{fail} failed (disk full)")

    monkeypatch.setenv("MMBENCH_FSYNC", "1")  # the default, synced path (the suite runs with 0: conftest.py)
    monkeypatch.setattr(results.os, fail, boom)
    with pytest.raises(OSError, match="disk full"):
        atomic_json(path, {"a": 2})
    with pytest.raises(OSError, match="disk full"):
        _save(ckpt, {"model": {"w": torch.ones(3)}, "epoch": 2})
    monkeypatch.undo()
    assert path.read_bytes() == old_json and ckpt.read_bytes() == old_ckpt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints", "m.json"]
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["last.pt"]
    assert os.path.exists(path)


def test_mid_epoch_stop_and_resume_equals_uninterrupted(tmp_path, data_root):
    """request_stop (what a Slurm signal handler calls) saves mid-epoch; the resume ends bit-identical."""
    from mmbench.train import TrainingInterrupted, request_stop

    c = cfg(train={"epochs": 2, "max_train": 160, "max_test": 64})  # 5 steps per epoch
    full = Run(c, tmp_path / "full")
    a = train(full, data_root)
    part = Run(c, tmp_path / "part")
    stop_at = {7}  # epoch 2, step 2 of 5

    def progress(phase, done, total):
        if done in stop_at:
            request_stop("test")

    with pytest.raises(TrainingInterrupted, match="at epoch 2, step 2"):
        train(part, data_root, progress)
    ck = torch.load(part.ckpt_dir / "last.pt", weights_only=False)
    assert ck["state"]["epoch"] == 1 and ck["state"]["step"] == 2
    b = train(part, data_root)
    assert "resumed from" in part.log_path.read_text() and "step 2" in part.log_path.read_text()
    assert a["history"] == b["history"]
    wa, wb = weights(full), weights(part)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_the_last_partial_batch_is_dropped(tmp_path, data_root):
    # drop_last, as the authors' loaders: 70 samples at batch 32 give 70 // 32 = 2 steps an epoch, 4 in 2 epochs
    steps = []
    run = Run(cfg(train={"epochs": 2, "max_train": 70, "max_test": 32}), tmp_path)
    train(run, data_root, lambda phase, done, total: steps.append((done, total)))
    assert steps == [(1, 4), (2, 4), (3, 4), (4, 4)]
    adam = torch.load(run.ckpt_dir / "last.pt", weights_only=False)["optimizer"]["state"]
    assert {int(s["step"]) for s in adam.values()} == {4}


def test_checkpoint_minutes_saves_mid_epoch_and_crash_resumes_exactly(tmp_path, data_root):
    """Periodic mid-epoch checkpoints (train.checkpoint_minutes): a crash after one loses only the steps
    since it, and the resumed run's history and weights equal an uninterrupted run's."""
    c = cfg(train={"epochs": 1, "max_train": 192, "max_test": 64, "checkpoint_minutes": 1e-9})  # due after every step
    full = Run(c, tmp_path / "full")
    a = train(full, data_root)
    part = Run(c, tmp_path / "part")

    def crash(phase, done, total):
        if done == 5:  # the checkpoint after step 4 exists, step 5's is not written yet
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        train(part, data_root, crash)
    assert torch.load(part.ckpt_dir / "last.pt", weights_only=False)["state"]["step"] == 4
    b = train(part, data_root)
    assert re.search(r"resumed from \S*last\.pt at epoch 0, step 4\n", part.log_path.read_text())  # not retrained
    assert a["history"] == b["history"]
    wa, wb = weights(full), weights(part)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize("packed", [False, True])
def test_a_clock_stepped_back_does_not_stop_the_mid_epoch_checkpoints(tmp_path, data_root, monkeypatch, packed):
    # train.checkpoint_minutes timed its interval with the wall clock: an NTP step back by an hour (a node's clock
    # corrected at boot) meant no mid-epoch checkpoint for an hour, all lost to a preemption; the trainers, the
    # progress throttle and the workers' grace period now measure intervals with the monotonic clock. The trainer's
    # clocks here: 30 s pass per step, and the wall clock steps back an hour during the first step
    import time as time_mod
    import types

    import mmbench.pack as pack_mod
    import mmbench.train as train_mod
    from mmbench.pack import train_pack

    now, offset = [0.0], [0.0]
    clock = types.SimpleNamespace(**{n: getattr(time_mod, n) for n in dir(time_mod) if not n.startswith("_")})
    clock.monotonic, clock.time = (lambda: now[0]), (lambda: now[0] + offset[0])
    monkeypatch.setattr(train_mod, "time", clock)  # the trainers' clocks alone, not every caller's in the process
    monkeypatch.setattr(pack_mod, "time", clock)
    runs = [Run(cfg(seed=s, train={"epochs": 1, "max_train": 192, "max_test": 64, "checkpoint_minutes": 1.0}),
                tmp_path) for s in range(2 if packed else 1)]

    def steps(phase, done, total):
        now[0] += 30.0
        if done == 1:
            offset[0] = -3600.0
        if done == 5:  # due after steps 2 and 4 (60 s each)
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        train_pack(runs, data_root, steps) if packed else train(runs[0], data_root, steps)
    assert all(torch.load(r.ckpt_dir / "last.pt", weights_only=False)["state"]["step"] == 4 for r in runs)


@pytest.mark.parametrize("packed", [False, True])
def test_checkpoint_minutes_not_yet_due_writes_no_mid_epoch_checkpoint(tmp_path, data_root, packed):
    # train.checkpoint_minutes measured against another clock (the wall clock's time since 1970 against the monotonic
    # clock's since boot) is always due: a checkpoint after every step, 169 MB each for PolyMNIST
    from mmbench.pack import train_pack

    runs = [Run(cfg(seed=s, train={"epochs": 1, "max_train": 192, "max_test": 64, "checkpoint_minutes": 60.0}),
                tmp_path) for s in range(2 if packed else 1)]

    def crash(phase, done, total):
        if done == 5:
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="^killed$"):  # step 5 reached, not an earlier failure
        train_pack(runs, data_root, crash) if packed else train(runs[0], data_root, crash)
    assert not any((r.ckpt_dir / "last.pt").exists() for r in runs)


def test_checkpoint_minutes_at_default_keeps_run_ids():
    base = cfg()
    # the id of the default polydigits config before checkpoint_minutes existed (tests/test_config.py)
    assert build_run_config({"dataset": "polydigits"}).run_id() == "polydigits-vanilla-mopoe-s0-a78aea8e21"
    assert cfg(train={"checkpoint_minutes": None}).run_id() == base.run_id()
    assert cfg(train={"checkpoint_minutes": 5}).run_id() != base.run_id()
    with pytest.raises(MMBenchError, match="train.checkpoint_minutes"):
        cfg(train={"checkpoint_minutes": 0})


ALLOC_PROBE = """
import resource, torch
from mmbench.hostmem import tune_host_allocator
import os


def median_faults():
    faults = []
    for _ in range(20):  # 40 MB each: above glibc's largest mmap threshold (32 MiB)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        x = torch.ones(10_000_000)
        del x
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    # the steady state: the median page faults of the last 8 allocations (on the heap, the first few may each grow
    # it until a freed block fits the next one; how many depends on what the process allocated before)
    return sorted(faults[-8:])[4]


# glibc's defaults first (MMBENCH_MALLOC=default changes nothing), then the tuned setting, in the same process
for setting in ("default", "tuned"):
    os.environ["MMBENCH_MALLOC"] = setting
    applied = tune_host_allocator()
    print(applied, median_faults())
"""


def _thp_always() -> bool:
    try:
        return "[always]" in Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return False


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the allocator setting is glibc's")
@pytest.mark.skipif(_thp_always(), reason="transparent huge pages 'always': glibc's default faults few pages anyway")
def test_host_allocator_reuses_freed_tensors_instead_of_faulting_pages_in_again(monkeypatch):
    """tune_host_allocator (cli, worker and Slurm entry points): a freed 40 MB tensor's pages are reused by the next
    one, where glibc's default unmaps them and every allocation faults its pages in again (the median of the last 8
    of 20: a busy machine may release or grow the heap now and then); a wrong MMBENCH_MALLOC
    is refused by name."""
    pages = 40_000_000 // resource.getpagesize()  # one allocation's pages

    # one fresh process (this one's allocator is tuned by conftest) measures glibc's defaults, then the tuned
    # setting (a process per setting cost an import of torch each, ~3 s)
    env = dict(os.environ)
    for k in ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_"):
        env.pop(k, None)
    out = subprocess.run([sys.executable, "-c", ALLOC_PROBE], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-500:]
    default, tuned = [(applied == "True", int(faults)) for applied, faults in map(str.split, out.stdout.splitlines())]
    assert tuned[0] and not default[0]
    assert default[1] > 0.9 * pages, (default, pages)  # the reference: an allocation faults its pages in
    assert tuned[1] < 0.1 * pages, (tuned, pages)  # reused: the median allocation faults (almost) none
    # the refusal comes before any mallopt, so it is checked in this process (a third interpreter cost ~3 s)
    monkeypatch.setenv("MMBENCH_MALLOC", "off")
    with pytest.raises(MMBenchError, match="MMBENCH_MALLOC must be 'tuned'"):
        tune_host_allocator()


class _Libc:
    """glibc's mallopt, recorded: (parameter, value) of each call; returns `ok` in turn."""

    def __init__(self, ok=(1, 1)):
        self.calls, self.ok = [], list(ok)

    def mallopt(self, param, value):
        self.calls.append((param, value))
        return self.ok[len(self.calls) - 1]


@pytest.mark.parametrize("case", ["unset", "user's values", "default", "refused by glibc", "not a number", "not glibc"])
def test_host_allocator_settings_what_it_asks_of_glibc_and_passes_to_children(monkeypatch, case):
    """Unset, MMBENCH_MALLOC means tuned: mallopt(M_MMAP_MAX=-4, 0) and mallopt(M_TRIM_THRESHOLD=-1, 2**31-1), the same
    exported as MALLOC_MMAP_MAX_ / MALLOC_TRIM_THRESHOLD_ for the workers; values the user exported are kept; with
    MMBENCH_MALLOC=default, a mallopt that fails, a value that is no number, or another libc, nothing is set and it
    says so (False). glibc is stood in for, so the probe test's fresh process is not needed."""
    import mmbench.hostmem as hostmem

    names = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MMBENCH_MALLOC")
    for k in names:  # recorded, so whatever the call sets is undone
        monkeypatch.setenv(k, "x")
        monkeypatch.delenv(k)
    libc = _Libc(ok=(1, 0) if case == "refused by glibc" else (1, 1))
    monkeypatch.setattr(hostmem.ctypes, "CDLL", lambda name: libc)
    monkeypatch.setattr(hostmem.platform, "libc_ver", lambda: ("" if case == "not glibc" else "glibc", "2.35"))
    if case == "user's values":
        monkeypatch.setenv("MALLOC_MMAP_MAX_", "65536")
        monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "1000000")
    if case == "default":
        monkeypatch.setenv("MMBENCH_MALLOC", "default")
    if case == "not a number":
        monkeypatch.setenv("MALLOC_MMAP_MAX_", "lots")
    applied = tune_host_allocator()
    env = {k: os.environ.get(k) for k in names[:2]}
    if case == "unset":
        assert applied and libc.calls == [(-4, 0), (-1, 2 ** 31 - 1)]
        assert env == {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2 ** 31 - 1)}
    elif case == "user's values":
        assert applied and libc.calls == [(-4, 65536), (-1, 1000000)]
        assert env == {"MALLOC_MMAP_MAX_": "65536", "MALLOC_TRIM_THRESHOLD_": "1000000"}
    else:
        assert applied is False
        assert libc.calls == {"refused by glibc": [(-4, 0), (-1, 2 ** 31 - 1)]}.get(case, [])
        assert env == {"MALLOC_MMAP_MAX_": "lots" if case == "not a number" else None, "MALLOC_TRIM_THRESHOLD_": None}


def test_test_loss_and_checkpoints_keep_every_random_stream(tmp_path, data_root):
    """The per-epoch test loss reseeds inside a fork of the random streams: on a GPU torch.manual_seed reseeds the
    GPU's stream too, so the fork must hold it as well, or every epoch after the first would train on the same
    noise. A checkpoint holds the GPU's stream next to the CPU's (that a resumed run continues both:
    test_interrupted_and_resumed_equals_uninterrupted). On the CPU the GPU parts are absent;
    docs/gpu-runs/device-check.sh runs both tests on a GPU."""
    from mmbench.devices import device_of
    from mmbench.train import build_model, load_data, read_checkpoint, rng_states, test_loss

    on_gpu_if_asked()
    device = device_of()
    c = cfg(train={"epochs": 2, "max_test": 64})
    _, test = load_data(c, data_root)
    torch.manual_seed(3)
    model = build_model(c).to(device)
    before = rng_states(device)
    assert (before[1] is not None) == (device.type == "cuda")
    test_loss(model, test.subset(64), 32, 0, device)
    after = rng_states(device)
    assert torch.equal(before[0], after[0])
    assert (before[1] is None) == (after[1] is None) and (before[1] is None or torch.equal(before[1], after[1]))
    run = Run(c, tmp_path / "r")
    train(run, data_root)
    ck = read_checkpoint(run.ckpt_dir / "last.pt")
    assert ("rng_device" in ck) == (device.type == "cuda")


def test_gpu_tests_refuse_to_pass_on_the_cpu_when_a_gpu_is_asked(monkeypatch):
    """device-check.sh sets MMBENCH_GPU_TESTS=1: its GPU tests then fail without a GPU instead of passing on the CPU
    (the suite hides the GPU from every other test, which once hid it from these too)."""
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: the refusal cannot be shown here")
    on_gpu_if_asked()  # not asked: nothing to check
    monkeypatch.setenv("MMBENCH_GPU_TESTS", "1")
    with pytest.raises(AssertionError, match="no GPU is visible"):
        on_gpu_if_asked()


def _first(ck):
    return next(k for k, v in ck["model"].items() if v.dim() == 2)


SMALL = {"epochs": 1, "max_train": 32, "max_test": 32}


@pytest.fixture(scope="module")
def small_trained(tmp_path_factory, data_root):
    """One run of cfg(train=SMALL) trained once; copy_to(parent) gives a copy of its directory (checkpoints, log) as
    the same run under `parent`, for the tests that edit its checkpoint (training it for each took ~0.5 s)."""
    import shutil

    run = Run(cfg(train=SMALL), tmp_path_factory.mktemp("small"))
    train(run, data_root)

    def copy_to(parent):
        copy = Run(cfg(train=SMALL), parent)
        shutil.copytree(run.dir, copy.dir)
        return copy

    return copy_to


@pytest.mark.parametrize("edit, problem", [
    (lambda ck: ck["model"].__setitem__(_first(ck), torch.zeros(3, 3)),
     r"does not fit this run's model \(size mismatch for "),
    (lambda ck: ck["model"].pop(_first(ck)), r"does not fit this run's model \(Missing key\(s\) in state_dict: \"\w"),
    (lambda ck: ck["model"].__setitem__("extra.w", torch.zeros(2)),
     r"does not fit this run's model \(Unexpected key\(s\) in state_dict: \"extra.w\"\)"),
    (lambda ck: ck.pop("state"), r"holds no training state \(its 'state' entry\)"),
    (lambda ck: ck["state"].__setitem__("epoch", 1.5), "records epoch 1.5, not a whole number of epochs"),
    (lambda ck: ck["state"].__setitem__("epoch", "1"), "records epoch '1', not a whole number of epochs"),
    (lambda ck: ck.pop("rng"), r"holds no random-number state"),
    (lambda ck: ck.__setitem__("rng", torch.zeros(10, dtype=torch.uint8)), r"holds a random-number state of 10 bytes"),
    (lambda ck: ck["state"].__setitem__("code", "abc"), r"records the code that trained it \('code'\)"),
    (lambda ck: ck["state"].__setitem__("code", [1]), r"records the code that trained it \('code'\)"),
    (lambda ck: ck.__setitem__("rng_device", "abc"), r"holds a GPU random-number state \(rng_device\) that is not one"),
    (lambda ck: ck["state"].__setitem__("history", [1]), r"has a training history whose entries are not"),
    (lambda ck: ck["state"].update(step=1, sums=[1]), r"records the running sums of a mid-epoch checkpoint"),
    (lambda ck: ck["state"].__setitem__("epoch", 5), r"records epoch 5, beyond this run's train.epochs 1"),
    (lambda ck: ck["model"].__setitem__(_first(ck), ck["model"][_first(ck)].round().long()),
     r"does not fit this run's model \(\S+ is torch.int64, the model's torch.float32\)"),
])
def test_a_checkpoint_that_does_not_fit_is_one_line_and_kept(tmp_path, data_root, edit, problem, small_trained):
    """last.pt of other shapes or keys, without its training state or with a non-integer epoch: resuming and
    evaluating each fail with one line naming the file, the problem and the fix; the file stays as it was."""
    from mmbench.train import MISFIT

    run = small_trained(tmp_path)
    path = run.ckpt_dir / "last.pt"
    ck = torch.load(path, weights_only=False)
    edit(ck)
    torch.save(ck, path)
    before = path.read_bytes()
    for attempt in (lambda: train(run, data_root), lambda: load_trained(run)):
        with pytest.raises(MMBenchError, match=f"checkpoint {path}.* {problem}") as e:
            attempt()
        assert str(e.value).endswith(MISFIT) and "\n" not in str(e.value)
    assert path.read_bytes() == before


@pytest.mark.parametrize("edit, problem", [
    (lambda ck: [g.__setitem__("lr", "x") for g in ck["optimizer"]["param_groups"]],
     r": its optimiser state sets lr to 'x', not the number\(s\) Adam takes"),
    (lambda ck: ck["state"].__setitem__("step", 99), r" records step 99 of an epoch of 1 steps"),
    (lambda ck: ck["state"].__setitem__("step", 1), r" records step 1 of an epoch of 1 steps"),  # the first past the last
    (lambda ck: [g.__setitem__("betas", (0.9, 0.999, 0.5)) for g in ck["optimizer"]["param_groups"]],
     r": its optimiser state sets betas to \(0.9, 0.999, 0.5\), not the number\(s\) Adam takes"),
])
def test_a_resume_refuses_a_checkpoint_beyond_its_plan_or_with_adam_settings_that_are_no_numbers(
        tmp_path, data_root, edit, problem, small_trained):
    """A step at or after the epoch's last (the loop trained none and recorded an epoch without losses) and an Adam
    setting that is no number (a TypeError at Adam's first step) are the checkpoint's misfit, named; the file stays."""
    from mmbench.train import MISFIT

    run = small_trained(tmp_path)
    path = run.ckpt_dir / "last.pt"
    ck = torch.load(path, weights_only=False)
    ck["state"]["epoch"] = 0  # at the start of its one epoch
    edit(ck)
    torch.save(ck, path)
    before = path.read_bytes()
    with pytest.raises(MMBenchError, match=f"checkpoint {path}{problem}") as e:
        train(run, data_root)
    assert str(e.value).endswith(MISFIT) and "\n" not in str(e.value) and path.read_bytes() == before


def test_a_packed_resume_refuses_a_checkpoint_beyond_the_runs_epochs(tmp_path, small_trained):
    """The packed trainer reads last.pt as the unpacked one does: an epoch after train.epochs is another run's."""
    from mmbench.pack import _Member

    run = small_trained(tmp_path)
    path = run.ckpt_dir / "last.pt"
    ck = torch.load(path, weights_only=False)
    for epoch in (3, 2):  # 2: the first epoch past the run's one
        ck["state"]["epoch"] = epoch
        torch.save(ck, path)
        with pytest.raises(MMBenchError, match=f"checkpoint {path} records epoch {epoch}, beyond this run's train.epochs 1"):
            _Member(run, "cpu")


def test_a_best_pt_with_records_of_other_types_is_named_on_resume(tmp_path, data_root, small_trained):
    """A resume compares best.pt's epoch and test loss with last.pt's: a string there raised TypeError."""
    run = small_trained(tmp_path)
    best = run.ckpt_dir / "best.pt"
    kept = torch.load(best, weights_only=False)
    for field, value, said in (("epoch", "2", "epoch '2' and test loss .*"), ("test_loss", True, "epoch 1 and test loss True")):
        torch.save({**kept, field: value}, best)
        with pytest.raises(MMBenchError, match=f"checkpoint {best} records {said}, not the whole number "
                                               f"and number mmbench writes; move or delete the folder"):
            train(run, data_root)


def test_a_last_pt_link_to_nowhere_is_named_not_trained_over(tmp_path, data_root, small_trained):
    """last.pt a symbolic link whose target is gone (a scratch disk not mounted): the run trained from the start
    without a word and wrote its best.pt over the one kept; now it is an unreadable checkpoint, named."""
    run = small_trained(tmp_path)
    last, best = run.ckpt_dir / "last.pt", run.ckpt_dir / "best.pt"
    kept = best.read_bytes()
    last.unlink()
    last.symlink_to(tmp_path / "scratch" / "last.pt")
    from mmbench.pack import _Member

    for attempt in (lambda: train(run, data_root), lambda: load_trained(run), lambda: _Member(run, "cpu")):
        with pytest.raises(MMBenchError, match=f"checkpoint {last} cannot be read \\(FileNotFoundError"):
            attempt()
    assert best.read_bytes() == kept and last.is_symlink()


def test_a_checkpoint_copied_from_another_run_is_named_and_kept(tmp_path, data_root, small_trained):
    """Checkpoints record the run that wrote them: another seed's last.pt or best.pt (same architecture, so its
    weights load) copied into a run's folder is refused by a resume, an evaluation and a packed resume, naming both
    runs, and stays as it is; a checkpoint that names no run (written before the field) is read as before."""
    import shutil

    from mmbench.pack import train_pack

    run = small_trained(tmp_path)
    assert torch.load(run.ckpt_dir / "last.pt", weights_only=False)["run_id"] == run.id
    other = Run(cfg(train=SMALL, seed=1), tmp_path / "other")
    other.ckpt_dir.mkdir(parents=True)
    shutil.copy(run.ckpt_dir / "last.pt", other.ckpt_dir / "last.pt")
    kept = (other.ckpt_dir / "last.pt").read_bytes()
    for attempt in (lambda: train(other, data_root), lambda: load_trained(other),
                    lambda: train_pack([other], data_root)[other.id]):
        try:
            said = attempt()
        except MMBenchError as e:
            said = str(e)
        assert f"was written by run {run.id}, not {other.id}" in str(said), said
    assert (other.ckpt_dir / "last.pt").read_bytes() == kept

    best_of = {s: Run(cfg(train={**SMALL, "select": "best_test_loss"}, seed=s), tmp_path / "best") for s in (0, 1)}
    for r in best_of.values():
        train(r, data_root)
    assert torch.load(best_of[0].ckpt_dir / "best.pt", weights_only=False)["run_id"] == best_of[0].id
    shutil.copy(best_of[0].ckpt_dir / "best.pt", best_of[1].ckpt_dir / "best.pt")
    with pytest.raises(MMBenchError, match=f"best.pt was written by run {best_of[0].id}, not {best_of[1].id}"):
        load_trained(best_of[1])

    ck = torch.load(run.ckpt_dir / "last.pt", weights_only=False)
    del ck["run_id"]
    torch.save(ck, run.ckpt_dir / "last.pt")
    load_trained(run)  # a checkpoint from before the field


def test_best_checkpoint_that_does_not_fit_is_named(tmp_path, data_root):
    run = Run(cfg(train={"epochs": 1, "max_train": 32, "max_test": 32, "select": "best_test_loss"}), tmp_path)
    train(run, data_root)
    best = run.ckpt_dir / "best.pt"
    ck = torch.load(best, weights_only=False)
    ck["model"][_first(ck)] = torch.zeros(3, 3)
    torch.save(ck, best)
    with pytest.raises(MMBenchError, match=f"checkpoint {best} does not fit this run's model"):
        load_trained(run)


def test_a_truncated_checkpoint_message_keeps_its_first_sentence(tmp_path, small_trained):
    """torch's long message for a truncated file is cut after its first sentence, not mid-word."""
    run = small_trained(tmp_path)
    path = run.ckpt_dir / "last.pt"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(MMBenchError) as e:
        load_trained(run)
    assert "(RuntimeError: PytorchStreamReader failed reading zip archive: failed finding central directory.)" \
        in str(e.value)


def test_brief_cuts_at_a_sentence_or_a_word():
    from mmbench.errors import brief

    assert brief(ValueError("short")) == "ValueError: short"
    assert brief(ValueError("First sentence here. " + "x" * 200), 40) == "ValueError: First sentence here."
    long = ValueError("a very long sentence without a stop " * 5)
    assert brief(long, 30) == "ValueError: a very long sentence without…"


class _MeanOfX(torch.nn.Module):
    """loss = the batch's mean of x plus one uniform draw (rand_scale), so weighting and seeding both show."""

    def __init__(self, rand_scale=0.0):
        super().__init__()
        self.rand_scale = rand_scale

    def loss(self, x):
        return x["a"].double().mean() + self.rand_scale * torch.rand((), dtype=torch.float64), {}


def test_test_loss_weights_each_batch_by_its_rows_and_reseeds():
    from mmbench.data.base import DataSplit, Modality
    from mmbench.train import test_loss

    split = DataSplit([Modality("a", (1,), kind="vector")], {"a": torch.tensor([[1.0], [2.0], [3.0], [4.0], [10.0]])},
                      torch.zeros(5, dtype=torch.long))
    # batches [1, 2], [3, 4], [10]: the tuple mean 20 / 5 = 4 (the mean of the batch means would be 5)
    assert test_loss(_MeanOfX(), split, 2, seed=0, device="cpu") == pytest.approx(4.0, abs=1e-12)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = test_loss(_MeanOfX(1.0), split, 5, seed=7, device="cpu")
    assert torch.rand(1) == before  # the caller's stream is left where it was
    g = torch.Generator().manual_seed(7)
    assert a == pytest.approx(4.0 + torch.rand((), dtype=torch.float64, generator=g).item(), abs=1e-12)
    assert test_loss(_MeanOfX(1.0), split, 5, seed=7, device="cpu") == a  # every epoch draws the same numbers


def test_a_diverging_run_fails_and_keeps_its_last_finite_checkpoint(tmp_path, data_root, monkeypatch):
    """The loss turns NaN at step 2 of 3 (checkpoint_minutes due after every step): the run fails with the epoch
    named, and its last.pt stays the one written after step 1, with finite weights (nothing saved is diverged)."""
    from mmbench.methods.mopoe import MoPoE

    real, calls = MoPoE.loss, {"n": 0}

    def poisoned(self, x):
        loss, logs = real(self, x)
        calls["n"] += 1
        return (loss * float("nan"), logs) if calls["n"] >= 2 else (loss, logs)

    monkeypatch.setattr(MoPoE, "loss", poisoned)
    run = Run(cfg(train={"epochs": 1, "max_train": 96, "max_test": 32, "checkpoint_minutes": 1e-9}), tmp_path)
    with pytest.raises(MMBenchError, match=r"training diverged \(a non-finite loss\) in epoch 1"):
        train(run, data_root)
    ck = torch.load(run.ckpt_dir / "last.pt", weights_only=False)
    assert (ck["state"]["epoch"], ck["state"]["step"]) == (0, 1)
    assert all(torch.isfinite(v).all() for v in ck["model"].values())


def test_bf16_computes_under_bfloat16_autocast_and_fp32_without():
    from mmbench.train import autocast

    x, w = torch.ones(2, 3), torch.ones(4, 3)
    with autocast("bf16", "cpu"):
        assert torch.nn.functional.linear(x, w).dtype == torch.bfloat16
    with autocast("fp32", "cpu"):
        assert torch.nn.functional.linear(x, w).dtype == torch.float32


@pytest.mark.parametrize("edit,problem", [
    (lambda ck: None, None),
    (lambda ck: ck["state"].__setitem__("step", 4), None),
    (lambda ck: ck["state"].__setitem__("step", -1), "records step -1, not a whole number of steps"),
    (lambda ck: ck["state"].__setitem__("step", 2.0), "records step 2.0, not a whole number of steps"),
    (lambda ck: ck["state"].__setitem__("epoch", True), "records epoch True, not a whole number of epochs"),
    (lambda ck: ck["state"].__setitem__("epoch", -1), "records epoch -1, not a whole number of epochs"),
    (lambda ck: ck["state"].pop("history"), "has a training state without its history or best test loss"),
    (lambda ck: ck["state"].__setitem__("best_test_loss", None), "has a training state without its history or best test loss"),
    (lambda ck: ck["state"].__setitem__("best_test_loss", 12.5), None),
    (lambda ck: ck["state"].__setitem__("best_test_loss", 10 ** 400), None),  # an int, finite (no float overflow)
    (lambda ck: ck["state"].__setitem__("best_test_loss", -3.5), None),  # a Gaussian likelihood's loss may be negative
    # NaN is never beaten (best.pt would stay where it is for the rest of the training); -inf neither
    (lambda ck: ck["state"].__setitem__("best_test_loss", float("nan")),
     "records a best test loss of nan, not a test loss or +inf (none measured yet)"),
    (lambda ck: ck["state"].__setitem__("best_test_loss", -float("inf")),
     "records a best test loss of -inf, not a test loss or +inf (none measured yet)"),
    (lambda ck: ck["state"].__setitem__("best_test_loss", False),
     "records a best test loss of False, not a test loss or +inf (none measured yet)"),
    (lambda ck: ck.__setitem__("optimizer", None), "holds no optimiser state"),
    (lambda ck: ck.__setitem__("rng", torch.zeros(3)), "holds no random-number state (rng)"),
])
def test_resume_problem_names_what_a_checkpoint_lacks(edit, problem):
    """What train.resume_problem accepts in a last.pt (a mid-epoch one has a whole step), and each thing it refuses."""
    from mmbench.train import resume_problem

    ck = {"model": {}, "optimizer": {"state": {}}, "rng": torch.get_rng_state(),
          "state": {"epoch": 1, "history": [], "best_test_loss": float("inf")}}
    edit(ck)
    assert resume_problem(ck) == problem


def test_note_code_adds_the_code_that_takes_over_at_its_epoch_and_step(monkeypatch):
    """trained_with: a run resumed mid-epoch under another commit lists both, the second from the epoch and step it
    took over at; resumed under the same code it lists one."""
    import mmbench.results as results_mod
    from mmbench import __version__
    from mmbench.train import note_code

    monkeypatch.setattr(results_mod, "git_commit", lambda: "aaa")
    state = {"epoch": 0}
    note_code(state, {})
    state.update(epoch=1, step=4)
    note_code(state, {})
    assert state["code"] == [{"git_commit": "aaa", "mmbench_version": __version__, "from_epoch": 0, "from_step": 0}]
    monkeypatch.setattr(results_mod, "git_commit", lambda: "bbb")
    note_code(state, {})
    assert state["code"][1:] == [{"git_commit": "bbb", "mmbench_version": __version__, "from_epoch": 1, "from_step": 4}]


def test_a_checkpoint_with_non_finite_weights_is_refused_in_one_line(tmp_path, data_root):
    """A last.pt holding NaN weights (mmbench never saves one; another tool or a copied file might) is an error
    naming the file, the tensor and the fix, before any metric feeds NaN latents to a regression."""
    run = Run(cfg(train={"epochs": 1, "max_train": 32, "max_test": 32}), tmp_path)
    train(run, data_root)
    ck = torch.load(run.ckpt_dir / "last.pt", weights_only=False)
    key = next(k for k, v in ck["model"].items() if v.is_floating_point())
    ck["model"][key] = torch.full_like(ck["model"][key], float("nan"))
    torch.save(ck, run.ckpt_dir / "last.pt")
    with pytest.raises(MMBenchError, match=rf"^checkpoint .*last.pt holds non-finite weights \({key}\): a diverged "
                                           rf"model; move or delete the folder .*checkpoints to train this run again$"):
        load_trained(run)


def test_an_unreadable_best_checkpoint_names_the_folder_whose_removal_retrains(tmp_path, data_root):
    """select: best_test_loss with a corrupt best.pt: the fix named (delete the checkpoints folder) really retrains
    the run; deleting best.pt alone would leave a complete last.pt and no way to rebuild best.pt."""
    import shutil

    run = Run(cfg(train={"epochs": 1, "max_train": 32, "max_test": 32, "select": "best_test_loss"}), tmp_path)
    train(run, data_root)
    (run.ckpt_dir / "best.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(MMBenchError, match=r"best.pt cannot be read .*; move or delete the folder (\S+) to train") as e:
        load_trained(run)
    folder = e.value.args[0].split("move or delete the folder ")[1].split(" to train")[0]
    assert folder == str(run.ckpt_dir)
    shutil.rmtree(folder)
    train(run, data_root)
    load_trained(run)  # best.pt rebuilt


def test_bf16_on_a_cpu_without_bfloat16_instructions_is_noted(monkeypatch):
    """bf16 is emulated (slower than fp32) on a CPU without AVX512-BF16/AMX: the run's log says so, only there."""
    import mmbench.train as tr

    monkeypatch.setattr(tr, "cpu_has_bf16", lambda: False)
    note = tr.slow_bf16_note("bf16", "cpu", "training (train.precision)")
    assert note.startswith("note: training (train.precision) in bf16 on a CPU without bfloat16 instructions")
    assert tr.slow_bf16_note("fp32", "cpu", "x") is None and tr.slow_bf16_note("bf16", "cuda", "x") is None
    monkeypatch.setattr(tr, "cpu_has_bf16", lambda: True)
    assert tr.slow_bf16_note("bf16", "cpu", "x") is None


def test_the_bf16_probe_reads_the_bf16_flags_not_plain_avx512(monkeypatch):
    """cpu_has_bf16 is yes for avx512_bf16 or amx_bf16 in /proc/cpuinfo, not for AVX-512 alone (which emulates bf16)."""
    import io

    import mmbench.train as tr

    for flags, has in (("fpu avx2 avx512f avx512bw", False), ("avx512f avx512_bf16", True), ("avx2 amx_bf16", True)):
        monkeypatch.setattr(tr, "open", lambda *a, f=flags, **k: io.StringIO(f"flags\t\t: {f}\n"), raising=False)
        assert tr.cpu_has_bf16() is has, flags


def test_the_bf16_probe_agrees_with_onednn():
    """On this machine: a CPU with bfloat16 instructions (cpu_has_bf16) is one oneDNN runs bf16 on too."""
    from mmbench.train import cpu_has_bf16

    assert not cpu_has_bf16() or torch.ops.mkldnn._is_mkldnn_bf16_supported()


def test_a_trainer_that_fails_has_its_checkpoints_on_disk_when_its_error_arrives(tmp_path, monkeypatch):
    """settles_checkpoints: an error leaves a trainer only once the files it handed over are written (a test or a
    caller reading last.pt right after the error reads the file whole); a write failing meanwhile does not replace the
    trainer's own error."""
    import threading

    import mmbench.train as train_mod

    gate, real, done = threading.Event(), train_mod._save, []
    monkeypatch.setattr(train_mod, "_save", lambda path, state: (gate.wait(10), real(path, state), done.append(path)))
    path = tmp_path / "last.pt"

    @train_mod.settles_checkpoints
    def trainer(target):
        train_mod.CHECKPOINTS.save(target, {"model": {"w": torch.ones(2)}})
        threading.Timer(0.2, gate.set).start()
        raise MMBenchError("diverged at epoch 2")

    with pytest.raises(MMBenchError, match="diverged at epoch 2"):
        trainer(path)
    assert done == [path] and path.exists()
    gate.clear()

    @train_mod.settles_checkpoints
    def returns(target):  # and one that returns: its return waits the same
        train_mod.CHECKPOINTS.save(target, {"model": {"w": torch.ones(2)}})
        threading.Timer(0.2, gate.set).start()
        return "summary"

    assert returns(tmp_path / "returned.pt") == "summary" and (tmp_path / "returned.pt").exists()
    (tmp_path / "a-file").write_text("")  # a folder that cannot be made: the write fails, the trainer's error stands
    with pytest.raises(MMBenchError, match="diverged at epoch 2"):
        trainer(tmp_path / "a-file" / "last.pt")
    assert train_mod.CHECKPOINTS._pending == []


def test_a_wait_cut_short_keeps_the_files_not_yet_written(monkeypatch):
    """Ctrl-C during wait(): the files whose writes were not yet waited for stay pending, so the next wait (the
    trainer's on its way out) still waits for them and still reports their failure."""
    import mmbench.train as train_mod

    class Future:
        calls = 0

        def exception(self):
            Future.calls += 1
            if Future.calls == 1:
                raise KeyboardInterrupt
            return OSError("No space left on device")

    w = train_mod._CheckpointWriter()
    w._pending = [(Path("last.pt"), Future(), 0)]
    with pytest.raises(KeyboardInterrupt):
        w.wait()
    assert len(w._pending) == 1
    with pytest.raises(MMBenchError, match="writing checkpoint last.pt failed"):
        w.wait()
    assert w._pending == []


def _save_in_forked_child(path):
    from mmbench.train import CHECKPOINTS

    CHECKPOINTS.save(path, {"model": {"w": torch.ones(2)}})
    CHECKPOINTS.wait()


def test_a_forked_child_writes_its_checkpoints_with_a_thread_of_its_own(tmp_path):
    """A child forked after the parent wrote a checkpoint has no writer thread of the parent's; it starts its own
    (before, its first save waited forever)."""
    from mmbench.train import CHECKPOINTS

    CHECKPOINTS.save(tmp_path / "parent.pt", {"model": {"w": torch.zeros(2)}})
    CHECKPOINTS.wait()
    child = mp.get_context("fork").Process(target=_save_in_forked_child, args=(tmp_path / "child.pt",))
    child.start()
    child.join(60)
    alive = child.is_alive()
    if alive:
        child.kill()
    assert not alive and child.exitcode == 0
    assert torch.equal(torch.load(tmp_path / "child.pt", weights_only=False)["model"]["w"], torch.ones(2))


def test_resume_refuses_an_optimiser_state_of_another_form_in_one_line(tmp_path):
    """An optimiser state that is not Adam's state_dict (its per-parameter state not a mapping) is the checkpoint's
    misfit, named, not a traceback from loading it."""
    from mmbench.train import build_model, new_adam, restore

    model = build_model(cfg())
    opt = new_adam(model.parameters(), 1e-3)
    ck = {"model": model.state_dict(), "optimizer": {"state": [], "param_groups": opt.state_dict()["param_groups"]}}
    with pytest.raises(MMBenchError, match=r"last\.pt: its optimiser state does not fit this run's model"):
        restore(model, opt, ck, tmp_path / "last.pt")


def test_a_later_best_pt_is_read_for_its_records_only(tmp_path, monkeypatch):
    """A resume's look at a best.pt beyond its epoch maps the file's tensors (torch.load mmap=True): it reads the
    epoch and test loss, not a big model's weights into memory."""
    from mmbench.train import adopt_later_best

    run = Run(cfg(), tmp_path / "runs")
    run.ckpt_dir.mkdir(parents=True, exist_ok=True)
    torch.save({"model": {"w": torch.zeros(3)}, "epoch": 2, "test_loss": 1.0}, run.ckpt_dir / "best.pt")
    real, seen = torch.load, []
    monkeypatch.setattr(torch, "load", lambda *a, **k: seen.append(k.get("mmap")) or real(*a, **k))
    state = {"epoch": 1, "best_test_loss": 2.0}
    adopt_later_best(run, state)
    assert seen == [True] and state["best_test_loss"] == 1.0


def test_a_best_pt_beyond_the_resumed_epoch_is_kept_and_a_foreign_one_refused(tmp_path, data_root):
    """A run stopped between writing best.pt and last.pt (or checkpointing every k epochs) resumes from an earlier
    epoch while best.pt already holds a later epoch's weights (the earlier best is gone): it is kept and its test loss
    is the one to beat, so last.pt's record and the file agree; a best.pt whose test loss is not the one last.pt
    records is refused when the run is evaluated."""
    c = cfg(train={"epochs": 2, "max_test": 64, "select": "best_test_loss"})
    run = Run(c, tmp_path / "runs")
    train(run, data_root, stop_after_epoch=1)
    best = run.ckpt_dir / "best.pt"
    later = torch.load(best, weights_only=False)
    later.update(epoch=2, test_loss=-1e9)  # as if epoch 2 of the lost run had been saved as best before last.pt
    torch.save(later, best)
    state = train(run, data_root)
    kept = torch.load(best, weights_only=False)
    assert kept["test_loss"] == state["best_test_loss"] == -1e9 and kept["epoch"] == 2
    assert "is the best the retrained epochs must beat" in (run.dir / "log.txt").read_text()
    load_trained(run)  # consistent: evaluates
    kept["test_loss"] = -2e9
    torch.save(kept, best)
    with pytest.raises(MMBenchError, match=r"best\.pt holds the weights of a test loss of .* records a best of .*: it is "
                                           r"not this training's best; delete .* and train the run again"):
        load_trained(run)


# ----- behaviours a mutation pass of training found unguarded -----
def test_each_epoch_shuffles_anew_and_the_test_loss_reads_the_test_split_with_one_seed(tmp_path, data_root, monkeypatch):
    """Epoch e's order differs from epoch e-1's (a permutation seeded by the run seed alone would repeat it); the
    per-epoch test loss, which picks best.pt, is computed on the test split's max_test tuples (not the training
    data) with the same seed every epoch, so the epochs' losses are comparable."""
    import mmbench.train as train_mod
    from mmbench.train import load_data

    c = cfg(train={"epochs": 2, "max_train": 64, "max_test": 32})
    perms, calls = [], []
    real_randperm, real_test_loss = torch.randperm, train_mod.test_loss

    def randperm(n, *a, **k):
        p = real_randperm(n, *a, **k)
        perms.append(p.clone())
        return p

    def spy(model, split, batch_size, seed, *a, **k):
        calls.append((split, seed))
        return real_test_loss(model, split, batch_size, seed, *a, **k)

    monkeypatch.setattr(torch, "randperm", randperm)
    monkeypatch.setattr(train_mod, "test_loss", spy)
    train(Run(c, tmp_path), data_root)
    epochs = [p for p in perms if len(p) == 64]  # the epochs' orders of the 64 training tuples
    assert len(epochs) == 2 and not torch.equal(epochs[0], epochs[1])
    assert [s for _, s in calls] == [c.seed, c.seed]
    want = load_data(c, data_root)[1].subset(32, seed=c.data_seed + 1)
    for split, _ in calls:
        got, ref = split.batch(torch.arange(len(split))), want.batch(torch.arange(len(want)))
        assert len(split) == 32 and all(torch.equal(got[k], ref[k]) for k in ref)


def test_the_last_epoch_is_checkpointed_when_checkpoint_every_does_not_divide_the_epochs(tmp_path, data_root):
    run = Run(cfg(train={"epochs": 3, "checkpoint_every": 2, "max_train": 32, "max_test": 32}), tmp_path)
    train(run, data_root)
    assert torch.load(run.ckpt_dir / "last.pt", weights_only=False)["state"]["epoch"] == 3
    assert not load_trained(run).training  # the trained run is evaluable


def test_a_non_finite_loss_at_an_epochs_last_step_fails_the_run_though_the_weights_stay_finite(tmp_path, data_root,
                                                                                               monkeypatch):
    """The loss is NaN at step 3 of 3 by a term without gradient: the weights and the test loss stay finite, so only
    the end-of-epoch check of the training losses notices; the run fails and writes no checkpoint."""
    from mmbench.methods.mopoe import MoPoE

    real, calls = MoPoE.loss, {"n": 0}

    def poisoned(self, x):
        loss, logs = real(self, x)
        if not self.training:  # the test loss stays finite
            return loss, logs
        calls["n"] += 1
        return (loss + float("nan") * loss.detach(), logs) if calls["n"] == 3 else (loss, logs)

    monkeypatch.setattr(MoPoE, "loss", poisoned)
    run = Run(cfg(train={"epochs": 1, "max_train": 96, "max_test": 32}), tmp_path)
    with pytest.raises(MMBenchError, match=r"training diverged \(a non-finite loss\) in epoch 1"):
        train(run, data_root)
    assert calls["n"] == 3 and not (run.ckpt_dir / "last.pt").exists() and not (run.ckpt_dir / "best.pt").exists()


def test_throughput_counts_only_the_steps_a_resumed_epoch_trains(tmp_path, data_root, monkeypatch):
    """Stopped after step 1 of 3 and resumed: the resumed epoch trained 2 steps of 32 tuples, not 3."""
    from mmbench.train import Throughput, TrainingInterrupted, request_stop

    tuples, real_stop = [], Throughput.stop
    monkeypatch.setattr(Throughput, "stop", lambda self, n: (tuples.append(n), real_stop(self, n))[1])
    run = Run(cfg(train={"epochs": 1, "max_train": 96, "max_test": 32}), tmp_path)
    with pytest.raises(TrainingInterrupted, match="at epoch 1, step 1"):
        train(run, data_root, lambda phase, done, total: request_stop("test") if done == 1 else None)
    train(run, data_root)
    assert tuples == [64]


def test_test_loss_evaluates_in_eval_mode_and_hands_the_model_back_in_training_mode():
    """Dropout, batch norm and the methods' `self.training` branches (smvae, mrvae, mmvamp): the test loss sees eval
    mode, and the epochs after it train in training mode again."""
    from mmbench.data.base import DataSplit, Modality
    from mmbench.train import test_loss

    class Modes(_MeanOfX):
        def loss(self, x):
            seen.append(self.training)
            return super().loss(x)

    seen = []
    split = DataSplit([Modality("a", (1,), kind="vector")], {"a": torch.ones(4, 1)}, torch.zeros(4, dtype=torch.long))
    model = Modes()
    model.train()
    test_loss(model, split, 2, seed=0, device="cpu")
    assert seen == [False, False] and model.training


def test_a_checkpoint_trained_on_another_prepared_copy_is_neither_resumed_nor_evaluated(tmp_path):
    """A `prepare --force` with another build between two epochs (or before the evaluation) would train on, or score
    on, data the model was not trained on under the same run id: training refuses to resume, packed or not, and the
    evaluation refuses the checkpoint, each naming the copy it was trained on and the way out."""
    from mmbench.data.base import prepare
    from mmbench.evaluate import evaluate
    from mmbench.pack import train_pack
    from mmbench.registry import DATASETS

    spec, data = DATASETS.get("polydigits")(), tmp_path / "data"
    prepare(spec, "vanilla", seed=0, data_root=data)
    runs = [Run(cfg(seed=s, train={"max_test": 32}), tmp_path / "runs") for s in (0, 1)]
    for r in runs:
        train(r, data, stop_after_epoch=1)
    one = Run(cfg(seed=2, train={"max_test": 32, "epochs": 1},
                  eval={"metrics": ["reconstruction"], "test_samples": 64}), tmp_path / "runs")
    train(one, data)
    state = torch.load(runs[0].ckpt_dir / "last.pt", weights_only=False)["state"]
    assert state["data"] == train_mod.data_identity(runs[0].cfg, data) and state["data"]["seed"] == 0
    prepare(spec, "vanilla", seed=1, data_root=data, force=True)
    trained_on = (rf"trained on polydigits \(vanilla\) digest {state['data']['digest']}, built by default, but the "
                  rf"prepared copy is now digest \w+, built with seed 1: prepare the copy it was trained on again "
                  rf"\(`mmbench prepare polydigits --variant vanilla --force`, with the files it was built from\)")
    with pytest.raises(MMBenchError, match=trained_on + ", or delete"):
        train(runs[0], data)
    out = train_pack(runs, data)  # the pack leaves them to train alone, which refuses each
    assert all(re.search(trained_on, str(out[r.id])) for r in runs), out
    with pytest.raises(MMBenchError, match=trained_on + r"$"):  # an evaluation does not advise deleting the checkpoint
        evaluate(one, data)
    assert not one.metrics_path.exists()
    prepare(spec, "vanilla", seed=0, data_root=data, force=True)  # the copy it was trained on, built again
    train(runs[0], data)
    assert evaluate(one, data)


def test_the_checkpoint_copies_waiting_to_be_written_are_bounded(tmp_path, monkeypatch):
    """The background writer holds at most held_cap bytes of copies: a save (or make_room before an owned copy) past
    it waits for the oldest files first, so a pack of large models does not hold every run's epoch-end copy at once."""
    import mmbench.train as train_mod

    monkeypatch.setattr(train_mod._CheckpointWriter, "held_cap", staticmethod(lambda: 1000))
    w, held = train_mod._CheckpointWriter(), []
    for i in range(4):
        w.save(tmp_path / f"{i}.pt", {"w": torch.zeros(100)})  # 400 bytes each
        held.append(sum(p[2] for p in w._pending))
    w.make_room(900)
    assert max(held) <= 1000 and held[-1] == 800 and len(w._pending) == 0, held
    w.wait()
    assert all(torch.equal(torch.load(tmp_path / f"{i}.pt")["w"], torch.zeros(100)) for i in range(4))


def test_a_checkpoints_data_record_is_compared_as_builds_are_and_an_older_record_is_renewed(tmp_path):
    """The record keeps the manifest's options, compared through built_by on both sides: a copy whose manifest names
    an option at its default (or one the variant does not read) is the copy a checkpoint recorded without it; arrays
    that are the same but trained otherwise (mnist-svhn-text's text_start) are not; a record in an older form (or
    none) is replaced by the copy training goes on with."""
    poly = {"dataset": "polymnist", "variant": "extended", "digest": "d1", "seed": 0,
            "options": {"mnist_source": "test-halves"}}
    state = {"data": {**poly, "options": {"mnist_source": "test-halves", "rebuild": True, "multiplicity": 1}}}
    train_mod.check_data(state, poly, tmp_path / "last.pt", record=False)
    msvt = {"dataset": "mnist-svhn-text", "variant": "default", "digest": "d2", "seed": 0, "options": {}}
    with pytest.raises(MMBenchError, match=r"built by default, but the prepared copy is now digest d2, built with "
                                           r"text_start=per_epoch"):
        train_mod.check_data({"data": msvt}, {**msvt, "options": {"text_start": "per_epoch"}}, tmp_path / "last.pt")
    for older in ({"data": "d2 (rounds=3)"}, {}):
        train_mod.check_data(older, msvt, tmp_path / "last.pt")
        assert older["data"] == msvt
