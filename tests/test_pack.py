"""Packed runs (mmbench/pack.py): a pack trains each run exactly as it trains alone, resumes after a kill,
loses only a diverged run, and falls back to unpacked training (with the reason logged) when it cannot pack."""
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mmbench.config import build_run_config, deep_merge
from mmbench.methods.base import Gaussian
from mmbench.methods.mopoe import MoPoE
from mmbench.pack import pack_key, train_pack, unpackable_reason
from mmbench.results import Run
from mmbench.runner import make_packs
from mmbench.train import build_model, train
from conftest import fake_popen, on_gpu_if_asked
from test_train import moved_and_apart

TINY = {"dataset": "polydigits", "method": {"name": "mopoe", "latent_dim": 8},
        "train": {"epochs": 2, "batch_size": 32, "max_train": 96, "max_test": 64}}


def shapes_head(where="GPU Z", batch=32, latent=8, m=5):
    """The header `mmbench bench steps` writes above a step table: the shapes its rates were measured at."""
    return (f"Run-steps per second, unpacked and packed (mmbench/pack.py), PolyMNIST-shaped batches (M = {m} × "
            f"3×28×28, PolyMNIST CNN), batch {batch}, latent {latent}, fp32, median of 5 steps; {where}, torch")


def mopoe_suite(path: Path, seeds, train: str = "epochs: 2, batch_size: 32") -> Path:
    """A suite file of one polydigits MoPoE experiment (latent 8) over `seeds`, `train` its defaults' train block."""
    path.write_text("name: s\ndescription: d\ndefaults:\n  method: {latent_dim: 8}\n"
                    f"  train: {{{train}}}\nexperiments:\n  - name: e\n    reproduces: [T]\n"
                    f"    dataset: polydigits\n    methods: [mopoe]\n    seeds: {list(seeds)}\n")
    return path


def cfg(seed=0, **train_over):
    d = json.loads(json.dumps(TINY))
    d["seed"] = seed
    d["train"].update(train_over)
    return build_run_config(d)


def last(run):
    return torch.load(run.ckpt_dir / "last.pt", weights_only=False)


# How closely a packed run's trajectory follows the same run trained alone. Looped over its runs, a pack computes
# each run's loss with the kernels the run uses alone: equal to float rounding (bitwise on the CPUs measured). Vmapped,
# it computes with batched kernels (a grouped convolution) that round differently -- one step's loss and gradient
# agree to 3e-5 relative (test_a_vmapped_step_gives_each_run_its_own_loss_and_gradient) -- but from the second step
# on a few weights move ~lr apart (a discrete event in the forward, most likely a ReLU whose pre-activation lies
# within that rounding of 0 switching for one tuple) and the runs then drift apart chaotically.
# Measured over 6 steps (MoPoE seeds 0-2, mrVAE seeds 0-1, with ATEN_CPU_CAPABILITY=avx2 and =default): up to 3.7 %
# of the distance the weights moved and 2.4e-4 relative in an epoch's metrics; a pack that hands a run another run's
# noise or batches moves it 44-79 % away and its metrics 2e-3 to 0.7 relative.
# Vmapped with the convolutions as batched matmuls (MMBENCH_PACK_CONV=bmm, mmbench/packconv.py): other kernels, the
# same rounding-level difference.
TRAJECTORY_TOL = {"loop": {"metric": 1e-4, "moved": 1e-2}, "vmap": {"metric": 1e-3, "moved": 0.15}}
TRAJECTORY_TOL["vmap-bmm"] = TRAJECTORY_TOL["vmap"]


def set_pack_mode(monkeypatch, mode):
    """loop, vmap or vmap-bmm (vmapped, its convolutions as batched matmuls) for the packs built after the call."""
    monkeypatch.setenv("MMBENCH_PACK_MODE", mode.split("-")[0])
    monkeypatch.setenv("MMBENCH_PACK_CONV", "bmm" if mode.endswith("-bmm") else "grouped")


def assert_same_trajectory(run_cfg, alone_summary, alone_ck, packed_summary, packed_ck, mode, steps):
    """The packed run's history and final weights (after `steps` Adam steps) are the alone run's, to
    TRAJECTORY_TOL[mode]."""
    tol = TRAJECTORY_TOL[mode]
    ha, hp = alone_summary["history"], packed_summary["history"]
    assert [h["epoch"] for h in hp] == [h["epoch"] for h in ha]
    for a, p in zip(ha, hp):
        assert set(a) == set(p)
        for k in a:
            assert p[k] == pytest.approx(a[k], rel=tol["metric"]), (run_cfg.seed, k)
    moved, apart = moved_and_apart(run_cfg, alone_ck["model"], packed_ck["model"])
    assert float(moved.norm()) > 0
    assert torch.linalg.norm(apart) <= tol["moved"] * torch.linalg.norm(moved), run_cfg.seed
    # Adam moves a weight by at most ~lr a step, so two trajectories from one start stay within 2·lr·steps
    assert apart.abs().max() <= 2 * run_cfg.train.lr * steps, run_cfg.seed


@pytest.fixture(scope="module")
def trained_alone(tmp_path_factory, data_root):
    """The unpacked reference runs of the loop/vmap pairs, trained once for both modes (MMBENCH_PACK_MODE is read
    by the packed trainer only): train_once(name, configs) -> (directory, {index: train's summary})."""
    done = {}

    def train_once(name, configs):
        ids = [c.run_id() for c in configs]
        if name not in done:
            d = tmp_path_factory.mktemp(f"alone-{name}")
            done[name] = d, {i: train(Run(c, d), data_root) for i, c in enumerate(configs)}, ids
        d, summaries, trained = done[name]
        assert ids == trained, f"{name!r} was trained with other runs: {trained}"  # not another test's references
        return d, summaries

    return train_once


@pytest.mark.parametrize("mode", ["loop", "vmap", "vmap-bmm"])
def test_pack_of_three_equals_three_alone(tmp_path, data_root, monkeypatch, mode, trained_alone):
    # The same runs (same ids) trained alone and as one pack: per-run generators replay each run's own noise
    # stream (on the CPU the stream the run draws from alone), so only float rounding of the batched kernels
    # differs (TRAJECTORY_TOL). Every way of computing a pack's loss: looped over parameter views (a CPU's
    # default), vmapped (a GPU's), and vmapped with the convolutions as batched matmuls (MMBENCH_PACK_CONV=bmm).
    on_gpu_if_asked()
    set_pack_mode(monkeypatch, mode)
    alone_dir, alone = trained_alone("three", [cfg(s) for s in range(3)])
    runs = [Run(cfg(s), tmp_path / "packed") for s in range(3)]
    packed = train_pack(runs, data_root)
    for s, r in enumerate(runs):
        assert r.id == Run(cfg(s), alone_dir).id
        assert packed[r.id]["packed_with"] == 3
        assert "packed with 2 other run(s)" in r.log_path.read_text()
        # polydigits' MoPoE: 5 modalities, 3 convolutions in each encoder and 3 transposed ones in each decoder
        assert ("the pack's 30 convolutions computed as batched matmuls (MMBENCH_PACK_CONV=bmm)"
                in r.log_path.read_text()) == (mode == "vmap-bmm")
        assert [h["epoch"] for h in packed[r.id]["history"]] == [1, 2]
        ca, cp = last(Run(cfg(s), alone_dir)), last(r)
        assert_same_trajectory(cfg(s), alone[s], ca, packed[r.id], cp, mode, steps=2 * (96 // 32))
        assert torch.equal(ca["rng"], cp["rng"])  # the run's stream ends in the same state
        assert set(ca["optimizer"]["state"]) == set(cp["optimizer"]["state"])
    # seeds really differ inside the pack
    assert packed[runs[0].id]["history"][-1]["train_loss"] != packed[runs[1].id]["history"][-1]["train_loss"]


@pytest.mark.parametrize("mode", ["loop", "vmap"])
def test_bf16_pack_draws_the_numbers_it_draws_alone(tmp_path, data_root, monkeypatch, mode, trained_alone):
    """Under bf16 autocast a method's noise is shaped like bf16 activations and drawn in bf16; on a CPU such
    normals are not the fp32 ones rounded where the count is not a multiple of 16 (batch 24 × latent 7 here), so
    the pack records its draws from a forward as alone, under autocast. And a bf16 pack loops over its runs even
    where packs are vmapped: under vmap autocast misses the convolutions (they would run in fp32). Equal to
    float rounding."""
    on_gpu_if_asked()
    monkeypatch.setenv("MMBENCH_PACK_MODE", mode)

    def bf16(seed):
        d = json.loads(json.dumps(TINY))
        d["seed"], d["method"]["latent_dim"] = seed, 7
        d["train"].update(epochs=1, batch_size=24, precision="bf16", max_train=48, max_test=24)  # 2 steps
        return build_run_config(d)

    monkeypatch.setattr("mmbench.train.cpu_has_bf16", lambda: False)  # the log says where bf16 is emulated
    alone_dir, alone = trained_alone("bf16", [bf16(s) for s in range(2)])
    runs = [Run(bf16(s), tmp_path / "packed") for s in range(2)]
    packed = train_pack(runs, data_root)
    slow = "training (train.precision) in bf16 on a CPU without bfloat16 instructions"
    on_cpu = not torch.cuda.is_available()  # the note is the CPU's: a GPU run (MMBENCH_GPU_TESTS=1) must not log it
    for s, r in enumerate(runs):
        assert (slow in r.log_path.read_text()) == on_cpu and (slow in Run(bf16(s), alone_dir).log_path.read_text()) == on_cpu
        assert packed[r.id]["packed_with"] == 2
        for k, v in alone[s]["history"][0].items():
            assert packed[r.id]["history"][0][k] == pytest.approx(v, rel=1e-5, abs=1e-6), (s, k)
        assert torch.equal(last(Run(bf16(s), alone_dir))["rng"], last(r)["rng"])


def test_packed_checkpoint_resumes_unpacked(tmp_path, data_root):
    runs = [Run(cfg(s, epochs=2), tmp_path) for s in range(2)]
    train_pack(runs, data_root, stop_after_epoch=1)
    assert all(last(r)["state"]["epoch"] == 1 for r in runs)
    s = train(runs[0], data_root)  # the unpacked trainer reads the packed run's checkpoint
    assert s["epochs"] == 2 and "resumed from" in runs[0].log_path.read_text()


def test_a_resume_removes_the_half_checkpoints_a_killed_writer_left(tmp_path, data_root):
    # train.clear_killed_writes: a process killed outright while atomic_write wrote last.pt (a Slurm preemption's
    # SIGKILL) left its temporary file, half a checkpoint (169 MB for PolyMNIST), in checkpoints/ for ever; the run's
    # next trainer, alone or packed, removes it, and those of the run's own records (metrics.json's, history.json's)
    import time

    runs = [Run(cfg(s, epochs=2), tmp_path) for s in range(3)]
    train_pack(runs, data_root, stop_after_epoch=1)
    old, recent = (time.time() - 3600, time.time() - 3600), (time.time() - 60, time.time() - 60)
    for r in runs:
        (r.ckpt_dir / ".last.pt.k1ll3d_x").write_bytes(b"PK\x03\x04 half a checkpoint")  # only the run lock's holder
        # writes checkpoints: a half one goes at once; the run's folder (`mmbench slurm` writes slurm.json there
        # unlocked): only those older than files.SHARED_TEMP_AGE_S
        (r.dir / ".history.json.k1ll3d_z").write_text('{"half": ')
        os.utime(r.dir / ".history.json.k1ll3d_z", old)
        (r.dir / ".slurm.json.wr1t1ng_").write_text('{"job')
        os.utime(r.dir / ".slurm.json.wr1t1ng_", recent)
        (r.ckpt_dir / ".notes").write_text("the user's")  # hidden, not a temporary file's name: kept
        (r.ckpt_dir / ".staging.k1ll3d_y").mkdir()  # a folder, whatever its name: not a write's temporary file
    train(runs[0], data_root)
    train_pack(runs[1:], data_root)  # a pack of two (one run alone would train unpacked)
    for r in runs:
        assert sorted(p.name for p in r.ckpt_dir.iterdir()) == [".notes", ".staging.k1ll3d_y", "best.pt", "last.pt"]
        assert [p.name for p in r.dir.iterdir() if p.name.startswith(".")] == [".slurm.json.wr1t1ng_"]
        log = r.log_path.read_text()
        assert f"removed {r.ckpt_dir / '.last.pt.k1ll3d_x'}: a write that a process killed outright" in log
        assert f"removed {r.dir / '.history.json.k1ll3d_z'}: a write that a process killed outright" in log


def test_the_clean_up_of_killed_writes_waits_for_this_process_own_checkpoint_writes(tmp_path, monkeypatch):
    # train.clear_killed_writes: a checkpoint this process handed to its writer thread and has not waited for (a
    # wait cut short by Ctrl-C leaves the rest) is being written: its temporary file is not a killed write's
    import time

    import mmbench.train as train_mod
    from mmbench.files import temp_beside

    run = Run(cfg(0), tmp_path)
    run.ckpt_dir.mkdir(parents=True)

    def slow_save(path, state):  # atomic_write's steps, slowly: the temporary file exists half a second
        fd, tmp = temp_beside(path)
        time.sleep(0.5)
        with os.fdopen(fd, "wb") as f:
            f.write(b"a checkpoint")
        os.replace(tmp, path)

    monkeypatch.setattr(train_mod, "_save", slow_save)
    train_mod.CHECKPOINTS.save(run.ckpt_dir / "last.pt", {"epoch": 1})
    time.sleep(0.1)
    train_mod.clear_killed_writes(run)
    train_mod.CHECKPOINTS.wait()  # the write was not cut from under it
    assert [p.name for p in run.ckpt_dir.iterdir()] == ["last.pt"]


def test_a_packed_resume_refuses_a_step_past_the_epochs_last_and_checkpoints_name_their_run(tmp_path, data_root):
    """The packed trainer's last.pt and best.pt record the run that wrote them (a copy into another seed's folder is
    refused); a resumed step at the epoch's last (96 // 32 = 3 steps: step 3 is past it) is each run's misfit, named,
    and its checkpoint stays as it is."""
    runs = [Run(cfg(s), tmp_path) for s in range(2)]
    train_pack(runs, data_root, stop_after_epoch=1)
    for r in runs:
        assert last(r)["run_id"] == r.id
        assert torch.load(r.ckpt_dir / "best.pt", weights_only=False)["run_id"] == r.id
        ck = last(r)
        ck["state"]["step"] = 3
        torch.save(ck, r.ckpt_dir / "last.pt")
    kept = [(r.ckpt_dir / "last.pt").read_bytes() for r in runs]
    out = train_pack(runs, data_root)
    for r, before in zip(runs, kept):
        assert isinstance(out[r.id], str) and "last.pt records step 3 of an epoch of 3 steps" in out[r.id], out[r.id]
        assert (r.ckpt_dir / "last.pt").read_bytes() == before


def test_one_diverged_run_leaves_the_pack(tmp_path, data_root):
    """A run that starts with NaN weights fails the pack's trial step, so all three train unpacked here; a run
    diverging inside a trained pack: tests/test_pack_paths.py."""
    runs = [Run(cfg(s), tmp_path) for s in range(3)]
    torch.manual_seed(1)
    bad = build_model(runs[1].cfg)
    sd = bad.state_dict()
    first = next(k for k in sd if k.endswith("weight"))
    sd[first] = torch.full_like(sd[first], float("nan"))
    opt = torch.optim.Adam(bad.parameters())
    runs[1].ckpt_dir.mkdir(parents=True)
    torch.save({"model": sd, "optimizer": opt.state_dict(), "rng": torch.get_rng_state(),
                "state": {"epoch": 0, "history": [], "best_test_loss": float("inf")}}, runs[1].ckpt_dir / "last.pt")
    out = train_pack(runs, data_root)
    assert isinstance(out[runs[1].id], str) and "diverged" in out[runs[1].id]
    assert "diverged" in runs[1].log_path.read_text()
    assert last(runs[1])["state"]["epoch"] == 0  # nothing saved for the diverged epoch
    for r in (runs[0], runs[2]):
        assert out[r.id]["epochs"] == 2 and last(r)["state"]["epoch"] == 2
        assert all(torch.isfinite(v).all() for v in last(r)["model"].values())


def test_a_pack_out_of_device_memory_splits_and_each_half_resumes_from_its_checkpoints(tmp_path, data_root,
                                                                                       monkeypatch, trained_alone):
    # A GPU's OutOfMemoryError, raised here on the CPU: first in the trial of the pack of 3 (before any step), then
    # in the pack of 2 it split into, at the first step of epoch 2 (after epoch 1's checkpoints). Each half resumes
    # from its runs' checkpoints, down to runs alone, and every run ends as it ends trained alone.
    from mmbench import pack

    set_pack_mode(monkeypatch, "loop")
    alone_dir, alone = trained_alone("three", [cfg(s) for s in range(3)])
    oom = "CUDA out of memory. Tried to allocate 2.00 GiB"
    real_looped, real_step = pack.StackedModel._looped, pack.StackedModel.loss_backward
    steps_of_two = []

    def looped(self, *a, **k):
        if self.size == 3 and not torch.is_grad_enabled():  # the trial's forward (no_grad)
            raise torch.OutOfMemoryError(oom)
        return real_looped(self, *a, **k)

    def loss_backward(self, *a, **k):
        if self.size == 2:
            steps_of_two.append(1)
            if len(steps_of_two) == 96 // 32 + 1:
                raise torch.OutOfMemoryError(oom)
        return real_step(self, *a, **k)

    monkeypatch.setattr(pack.StackedModel, "_looped", looped)
    monkeypatch.setattr(pack.StackedModel, "loss_backward", loss_backward)
    runs = [Run(cfg(s), tmp_path) for s in range(3)]
    out = train_pack(runs, data_root)
    logs = [r.log_path.read_text() for r in runs]
    for s, r in enumerate(runs):
        assert out[r.id]["epochs"] == 2, out[r.id]
        assert [h["epoch"] for h in last(r)["state"]["history"]] == [1, 2]
        assert_same_trajectory(cfg(s), alone[s], last(Run(cfg(s), alone_dir)), out[r.id], last(r), "loop",
                               steps=2 * (96 // 32))
        assert f"the pack of 3 ran out of device memory (OutOfMemoryError: {oom}); split in two" in logs[s]
    assert "in a pack of 2" in logs[0] and "in a pack of 2" in logs[1] and "in a pack of 1" in logs[2]
    for s in (0, 1):  # the pair trained epoch 1 packed, then split again, each resuming from its epoch-1 checkpoint
        assert "packed with 1 other run(s)" in logs[s]
        assert logs[s].index("the pack of 2 ran out of device memory") < logs[s].index("resumed from")
        assert "in a pack of 1" in logs[s].split("the pack of 2 ran out")[1]
    assert "packed with" not in logs[2] and "training unpacked" not in "".join(logs)


def test_only_a_device_out_of_memory_error_splits_a_pack():
    from mmbench.devices import out_of_memory

    assert out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB"))
    assert out_of_memory(RuntimeError("CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported"))
    assert out_of_memory(RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"))
    assert out_of_memory(RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"))
    assert out_of_memory(RuntimeError("HIP error: out of memory"))
    assert not out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not out_of_memory(RuntimeError("CUDA error: an illegal memory access was encountered"))
    assert not out_of_memory(MemoryError())  # the host's: a smaller pack is `mmbench run --pack N`'s to choose


def test_unpackable_method_trains_unpacked_with_reason(tmp_path, data_root, monkeypatch):
    monkeypatch.setattr(MoPoE, "packable", False)
    runs = [Run(cfg(s, epochs=1), tmp_path) for s in range(2)]
    out = train_pack(runs, data_root)
    for r in runs:
        assert out[r.id]["epochs"] == 1 and "packed_with" not in out[r.id]
        assert "training unpacked: method mopoe is not packable" in r.log_path.read_text()


@pytest.mark.parametrize("mode,why", [("vmap", "the packed loss fails under vmap"),
                                      ("loop", "the packed loss draws random numbers outside the noise source")])
def test_noise_outside_the_source_is_caught_not_shared(tmp_path, data_root, monkeypatch, mode, why):
    # A method drawing noise from torch directly would give every run of a pack the same numbers under
    # vmap(randomness="same") or silently different streams; the trial refuses to pack it instead: vmapped,
    # the draw fails (randomness="error"); looped, the draw moves the global random stream.
    monkeypatch.setenv("MMBENCH_PACK_MODE", mode)
    monkeypatch.setattr(Gaussian, "rsample", lambda self: self.mu + torch.randn_like(self.mu) * (0.5 * self.logvar).exp())
    runs = [Run(cfg(s, epochs=1), tmp_path) for s in range(2)]
    out = train_pack(runs, data_root)
    for r in runs:
        assert out[r.id]["epochs"] == 1 and "packed_with" not in out[r.id]
        assert f"training unpacked: {why}" in r.log_path.read_text()


def beta_cfg(seed, beta):
    c = cfg(seed)
    c.method.beta = beta
    return c


def test_make_packs_packs_a_beta_sweep_at_most_default_cap_a_pack(tmp_path):
    """A β sweep's runs pack with its seeds (one key); unasked, a pack holds at most DEFAULT_PACK_CAP runs (the
    largest pack measured on a GPU), --pack N sets it, and the CLI's help says the default."""
    from mmbench.cli import app
    from mmbench.runner import DEFAULT_PACK_CAP
    import typer.main

    runs = [Run(beta_cfg(s, b), tmp_path) for b in (0.5, 1.0, 2.5, 5.0, 10.0, 20.0) for s in range(3)]
    assert len({r.id for r in runs}) == 18 and len({pack_key(r.cfg) for r in runs}) == 1
    assert [len(p) for p in make_packs(runs, None)] == [DEFAULT_PACK_CAP, 18 - DEFAULT_PACK_CAP]
    assert [len(p) for p in make_packs(runs, None, workers=2)] == [9, 9]
    assert [len(p) for p in make_packs(runs, 18)] == [18]
    help_text = typer.main.get_command(app).commands["run"].params
    assert any(f"at most {DEFAULT_PACK_CAP} a pack" in (p.help or "") for p in help_text)


def packed_against_alone(name, cfgs, tmp_path, data_root, trained_alone, mode):
    """`cfgs` trained alone (once per `name`, trained_alone) and as one pack: per run (alone summary, its last.pt,
    packed summary, its last.pt), each checked to have trained in the pack of all and to end as it ends alone
    (assert_same_trajectory over the 2 epochs of 96 tuples in batches of 32)."""
    alone_dir, alone = trained_alone(name, cfgs)
    runs = [Run(c, tmp_path / "packed") for c in cfgs]
    packed = train_pack(runs, data_root)
    out = []
    for i, r in enumerate(runs):
        assert packed[r.id]["packed_with"] == len(cfgs), r.log_path.read_text()
        assert f"packed with {len(cfgs) - 1} other run(s)" in r.log_path.read_text()
        ca, cp = last(Run(cfgs[i], alone_dir)), last(r)
        assert_same_trajectory(cfgs[i], alone[i], ca, packed[r.id], cp, mode, steps=2 * (96 // 32))
        out.append((alone[i], ca, packed[r.id], cp))
    return out


@pytest.mark.parametrize("mode", ["loop", "vmap"])
def test_a_pack_of_a_beta_sweep_equals_its_runs_alone(tmp_path, data_root, monkeypatch, mode, trained_alone):
    """Three runs of one seed at β = 0.5, 2.5 and 10 (a β sweep) trained as one pack: each ends as it ends alone, to
    TRAJECTORY_TOL (looped: each run's loss reads its β as the Python float it reads alone; vmapped: a tensor of the
    runs' β), and β really changes the runs (their losses differ)."""
    on_gpu_if_asked()
    set_pack_mode(monkeypatch, mode)
    cfgs = [beta_cfg(0, b) for b in (0.5, 2.5, 10.0)]
    runs = packed_against_alone("betas", cfgs, tmp_path, data_root, trained_alone, mode)
    assert all(torch.equal(ca["rng"], cp["rng"]) for _, ca, _, cp in runs)
    assert len({summary["history"][-1]["train_loss"] for _, _, summary, _ in runs}) == 3


def mmvamp_cfg(seed, beta, rate):
    """MM-VAMP with the authors' annealed prior weight (α from 1 toward 0), fast: over 4 steps of 16 rows."""
    c = cfg(seed)
    c.method.name, c.method.beta = "mmvamp", beta
    c.method.options = {"rate": rate, "alpha": 1.0, "alpha_anneal_steps": 4, "alpha_anneal_batch": 16}
    return c


@pytest.mark.parametrize("mode,rate", [("loop", "bound"), ("vmap", "bound"), ("vmap", "mc")])
def test_mmvamp_packs_with_each_runs_own_annealed_alpha(tmp_path, data_root, monkeypatch, mode, rate, trained_alone):
    """MM-VAMP computes its annealed α on the device from its step counters, a packed run from its own (the stacked
    buffers, advanced after each step: StackedModel.step_taken). A β sweep's pack of three (β = 0.5, 1, 4,
    α annealed over the first 4 steps of 16 rows, both rates) ends as its runs alone (TRAJECTORY_TOL), with each
    run's counters at its own 6 steps and the α it logged alone."""
    on_gpu_if_asked()
    set_pack_mode(monkeypatch, mode)
    cfgs = [mmvamp_cfg(s, b, rate) for s, b in enumerate((0.5, 1.0, 4.0))]
    for alone, ca, packed, cp in packed_against_alone(f"mmvamp-{rate}", cfgs, tmp_path, data_root, trained_alone,
                                                      mode):
        assert int(cp["model"]["train_steps"]) == int(ca["model"]["train_steps"]) == 2 * 3
        assert int(cp["model"]["train_samples"]) == int(ca["model"]["train_samples"]) == 2 * 96
        alphas = [h["train_alpha"] for h in alone["history"]]  # each epoch's mean α over its steps
        assert [h["train_alpha"] for h in packed["history"]] == pytest.approx(alphas, rel=1e-6)
        if mode == "loop":  # α is float64 in both: a pack's logs were float32 (1e-8 apart from alone's)
            assert [h["train_alpha"] for h in packed["history"]] == alphas
    assert 0.3 < alphas[0] < 1 and 0 < alphas[1] < 1e-3  # the schedule really moved α: from 1 toward 0


def test_a_split_smaller_than_its_batch_counts_the_rows_it_trains_on(tmp_path, data_root):
    """A training split smaller than train.batch_size trains on one batch of all its rows per epoch: the step
    counters count those rows, not batch_size (MM-VAMP's α anneals per row seen), alone and in a pack of two."""
    def small(seed):
        c = mmvamp_cfg(seed, 1.0, "bound")
        c.train.batch_size, c.train.max_train, c.train.epochs = 64, 40, 2
        return c

    alone = Run(small(0), tmp_path / "alone")
    train(alone, data_root)
    packed = [Run(small(s), tmp_path / "packed") for s in range(2)]
    train_pack(packed, data_root)
    for run in [alone] + packed:
        model = last(run)["model"]
        assert (int(model["train_steps"]), int(model["train_samples"])) == (2, 80), run.dir


def smvae_cfg(seed, beta, **options):
    c = beta_cfg(seed, beta)
    c.method.name, c.method.options = "smvae", options
    return c


def test_smvae_packs_end_to_end(tmp_path, data_root, monkeypatch, trained_alone):
    """SMVAE end to end (the paper's schedule) packs: its step counter is a per-run buffer that picks nothing; a pack
    of two (β = 1, 4) ends as its runs alone, vmapped as on a GPU."""
    on_gpu_if_asked()
    set_pack_mode(monkeypatch, "vmap")
    cfgs = [smvae_cfg(s, b) for s, b in enumerate((1.0, 4.0))]
    for _, ca, _, cp in packed_against_alone("smvae", cfgs, tmp_path, data_root, trained_alone, "vmap"):
        assert int(cp["model"]["train_steps"]) == int(ca["model"]["train_steps"]) == 2 * 3


@pytest.mark.parametrize("mode", ["loop", "vmap", "vmap-bmm"])
def test_smvae_two_stage_packs_and_switches_stage_with_its_runs_alone(tmp_path, data_root, monkeypatch, mode,
                                                                      trained_alone):
    """SMVAE two_stage (App. D; MoPoE-style Fig. 3 of SMVAE) picks each step's stage from a host count and the run's
    planned length (2/3 of its 6 steps: stage 2 from step 5, in epoch 2). A pack's runs share both (one pack key,
    one resume point), so its template keeps them: planned as train.train plans a run, counted once per packed step
    (host_step; looped, the loss runs once per run; with batched-matmul convolutions on a copy of the template).
    A pack of two (β = 1, 4) ends as its runs alone, the stage switched where it switches alone (epoch 1 has no
    divergence term, epoch 2 has)."""
    on_gpu_if_asked()
    set_pack_mode(monkeypatch, mode)
    cfgs = [smvae_cfg(s, b, schedule="two_stage") for s, b in enumerate((1.0, 4.0))]
    for alone, ca, _, cp in packed_against_alone("smvae-two", cfgs, tmp_path, data_root, trained_alone,
                                                 mode.split("-")[0]):
        assert int(cp["model"]["train_steps"]) == int(ca["model"]["train_steps"]) == 2 * 3
        assert alone["history"][0]["train_div"] == 0.0 < alone["history"][1]["train_div"]


def test_a_resumed_two_stage_pack_takes_its_step_count_from_the_checkpoints(tmp_path, data_root, trained_alone):
    """Stopped after epoch 1 (3 of its 6 steps, still in stage 1) and resumed, a two_stage pack's template counts on
    from its runs' checkpoints (train_steps 3), not from 0: it switches at step 5 as its runs alone do (a count
    from 0 would stay in stage 1 to the end)."""
    cfgs = [smvae_cfg(s, b, schedule="two_stage") for s, b in enumerate((1.0, 4.0))]
    alone_dir, alone = trained_alone("smvae-two", cfgs)
    runs = [Run(c, tmp_path / "resumed") for c in cfgs]
    train_pack(runs, data_root, stop_after_epoch=1)
    assert [int(last(r)["model"]["train_steps"]) for r in runs] == [3, 3]
    out = train_pack(runs, data_root)
    for i, r in enumerate(runs):
        assert "resumed from" in r.log_path.read_text() and out[r.id]["epochs"] == 2
        assert_same_trajectory(cfgs[i], alone[i], last(Run(cfgs[i], alone_dir)), out[r.id], last(r), "loop",
                               steps=2 * 3)


def test_two_stage_runs_whose_step_counts_differ_at_one_resume_point_train_apart(tmp_path, data_root):
    """The template holds one step count for the pack: runs resumed at one epoch whose checkpoints count different
    steps (one counted a step twice: a compile failure before that was fixed) train unpacked, the reason in their
    logs, each on from its own count."""
    cfgs = [smvae_cfg(s, 1.0, schedule="two_stage") for s in range(2)]
    runs = [Run(c, tmp_path) for c in cfgs]
    train_pack(runs, data_root, stop_after_epoch=1)
    ck = last(runs[1])
    ck["model"]["train_steps"] += 1
    torch.save(ck, runs[1].ckpt_dir / "last.pt")
    out = train_pack(runs, data_root)
    assert all(out[r.id]["epochs"] == 2 for r in runs)
    for r, steps in zip(runs, (6, 7)):
        assert "their host-side training states differ (3, 4)" in r.log_path.read_text()
        assert int(last(r)["model"]["train_steps"]) == steps


@pytest.mark.parametrize("method,mode", [("vgon", "loop"), ("vgon", "vmap"), ("smvgon", "vmap")])
def test_vgon_and_smvgon_pack_through_their_inner_gradient_step(tmp_path, data_root, monkeypatch, method, mode,
                                                                 trained_alone):
    """VGON's posterior is a gradient step through the decoders (SMVAE Eq. 9), taken with torch.func.grad, which vmap
    batches and the outer backward differentiates (second order; tests/test_smvae_methods.py checks it against
    torch.autograd.grad with create_graph). A pack of two (β = 1, 4; SMVGON end to end) ends as its runs alone
    (TRAJECTORY_TOL; each packed step's gradients are each run's alone: the β-pack test over every packable method)."""
    on_gpu_if_asked()
    set_pack_mode(monkeypatch, mode)
    cfgs = [beta_cfg(s, b) for s, b in enumerate((1.0, 4.0))]
    for c in cfgs:
        c.method.name = method
    runs = packed_against_alone(method, cfgs, tmp_path, data_root, trained_alone, mode)
    assert len({packed["history"][-1]["train_loss"] for _, _, packed, _ in runs}) == 2


@pytest.mark.parametrize("method", ["independent", "aggregated"])
def test_a_vmapped_beta_packs_derived_kl_weights_are_those_of_its_runs_alone(method):
    """A weight derived from β (the "code" convention: β² for independent VAEs, β·M for the aggregated VAE) is computed
    from a vmapped pack's per-run β in double, as each run alone computes it from its Python float, and meets the
    fp32 KL as the same fp32 number (β = 0.1, 1e-4 and 2.5e-3: squares and multiples not exact in fp32; the rats'
    sweep uses the last two)."""
    from mmbench.data.base import Modality
    from mmbench.methods.base import MethodConfig, use_beta
    from mmbench.pack import StackedModel
    from mmbench.registry import METHODS

    betas = [0.1, 1e-4, 2.5e-3]
    mods = [Modality(f"m{i}", (3, 28, 28)) for i in range(5)]
    cls = METHODS.get(method)
    mcfg = MethodConfig(method, latent_dim=4, beta=1.0, options={"beta_convention": "code"})
    sm = StackedModel(cls(mods, mcfg, "polymnist_cnn"), [cls(mods, mcfg, "polymnist_cnn").state_dict()] * 3, [None] * 3,
                      1e-3, torch.device("cpu"), betas=betas)
    kl = torch.full((4,), 3.0, dtype=torch.float32)  # a batch's KL terms
    for r, b in enumerate(betas):
        alone = cls(mods, MethodConfig(method, latent_dim=4, beta=b, options={"beta_convention": "code"}), "polymnist_cnn")
        with use_beta(sm.extra[0][r]):
            packed = sm.template.model.kl_weight() * kl
        assert packed.dtype == torch.float32 and torch.equal(packed, alone.kl_weight() * kl), (method, b)


def test_every_method_packs_and_one_that_cannot_says_why(monkeypatch, tmp_path):
    """Every method packs at its default options (some options do not: pack_refusal). A method marked unpackable
    (packable = False) trains its runs alone, the reason (`unpackable_why`) in make_packs' split, the step bench and the
    runs' logs."""
    from mmbench.bench import pack_step_time
    from mmbench.errors import MMBenchError
    from mmbench.registry import METHODS

    assert [n for n in METHODS.names() if not METHODS.get(n).packable] == []
    monkeypatch.setattr(METHODS.get("smvgon"), "packable", False)
    monkeypatch.setattr(METHODS.get("smvgon"), "unpackable_why", "a reason of its own")
    c = build_run_config({**TINY, "method": {"name": "smvgon", "latent_dim": 8}})
    assert unpackable_reason(c) == "method smvgon is not packable (a reason of its own)"
    other = build_run_config({**TINY, "seed": 1, "method": {"name": "smvgon", "latent_dim": 8}})
    assert [len(p) for p in make_packs([Run(c, tmp_path), Run(other, tmp_path)], None)] == [1, 1]
    with pytest.raises(MMBenchError, match=r"not packable \(a reason of its own\)"):
        pack_step_time("smvgon", 2, n_modalities=2, batch_size=8, latent_dim=4, steps=1, warmup=0)


def test_a_method_planning_its_steps_packs_only_where_it_says_so(monkeypatch):
    """A packable method with a step plan (plan_steps: the run's length) must say in pack_refusal which options pack
    (SMVAE: end_to_end); one that does not is not packed."""
    from mmbench.registry import METHODS

    class Planned(MoPoE):
        def plan_steps(self, total):
            self.total = total

    monkeypatch.setitem(METHODS._items, "planned", Planned)
    c = cfg(0)
    c.method.name = "planned"
    assert "plans a step schedule (plan_steps) and does not say when it packs" in unpackable_reason(c)
    monkeypatch.setattr(Planned, "pack_refusal", classmethod(lambda cls, options: None))
    assert unpackable_reason(c) is None


@pytest.mark.parametrize("mode", ["loop", "vmap"])
def test_every_packable_method_gives_each_run_of_a_beta_pack_its_own_beta(monkeypatch, mode):
    """For every packable method, a pack of runs at β = 0.5, 50 and 5000 computes each run's loss and gradient as that
    run's own model (built with its own β, not the template's) computes them alone, from the same weights, batch and
    noise: a method that copied β at construction (as JMVAE's α once did) gives every run the template's β and fails
    here. The check can fail: each run's loss at another run's β is told apart (β far apart: at initialisation the
    KL terms are a thousandth of the reconstruction's)."""
    from mmbench.data.base import Modality
    from mmbench.methods.base import MethodConfig, use_noise
    from mmbench.pack import StackedModel, _Replay, draw
    from mmbench.registry import METHODS

    monkeypatch.setenv("MMBENCH_PACK_MODE", mode)
    monkeypatch.setenv("MMBENCH_PACK_CONV", "grouped")
    betas = [0.5, 50.0, 5000.0]
    mods = [Modality(f"m{i}", (3, 28, 28)) for i in range(3)]
    g = torch.Generator().manual_seed(0)
    x = {m.name: torch.rand(3, 8, 3, 28, 28, generator=g) for m in mods}
    for name in [m for m in METHODS.names() if METHODS.get(m).packable]:
        cls = METHODS.get(name)

        def model(seed, beta):
            torch.manual_seed(seed)
            return cls(mods, MethodConfig(name, latent_dim=8, beta=beta), "polymnist_cnn").train()

        own = [model(r, b) for r, b in enumerate(betas)]
        sm = StackedModel(model(0, 2.0), [m.state_dict() for m in own], [None] * 3, 1e-3, torch.device("cpu"),
                          betas=betas)
        assert sm.vectorised == (mode == "vmap")
        noise = draw(sm.draws_for(x, 0, True), [torch.Generator().manual_seed(s) for s in range(3)], "cpu")
        if sm.vectorised:
            packed, _ = torch.func.vmap(sm.vmapped_fn(), in_dims=sm.in_dims(0), randomness="error")(
                sm.params, sm.fresh_buffers(), x, noise, *sm.extra)
        else:
            packed, _ = sm._looped(x, 0, noise, sm.fresh_buffers())
        names = list(sm.params)
        g_packed = torch.autograd.grad(packed.sum(), [sm.params[n] for n in names], allow_unused=True)
        for r in range(3):
            x_r, noise_r = {k: v[r] for k, v in x.items()}, [n[r] for n in noise]
            with use_noise(_Replay(noise_r)):
                alone, _ = own[r].loss(x_r)
            with use_noise(_Replay(noise_r)):  # the same run at the next run's β: told apart from its own
                other, _ = model(r, betas[(r + 1) % 3]).loss(x_r)
            assert packed[r].item() == pytest.approx(alone.item(), rel=1e-6), (name, r)
            assert packed[r].item() != pytest.approx(other.item(), rel=1e-4), (name, r)
            mine = dict(own[r].named_parameters())
            g_alone = torch.autograd.grad(alone, [mine[n[len("model."):]] for n in names], allow_unused=True)
            used = [i for i, t in enumerate(g_alone) if t is not None]
            a = torch.cat([g_alone[i].flatten() for i in used])
            p = torch.cat([g_packed[i][r].flatten() for i in used])
            assert torch.linalg.norm(p - a) <= 2e-4 * torch.linalg.norm(a), (name, r)


def test_make_packs_groups_by_key_epoch_and_cap(tmp_path, data_root, monkeypatch):
    a = [Run(cfg(s), tmp_path) for s in range(5)]
    other = Run(cfg(0, lr=5e-4), tmp_path)
    assert pack_key(a[0].cfg) == pack_key(a[3].cfg) != pack_key(other.cfg)
    assert [len(p) for p in make_packs(a + [other], None)] == [5, 1]
    assert [len(p) for p in make_packs(a, 2)] == [2, 2, 1]
    assert [len(p) for p in make_packs(a, None, workers=2)] == [3, 2]
    assert [len(p) for p in make_packs(a, 1)] == [1] * 5
    train_pack(a[:2], data_root, stop_after_epoch=1)  # two runs now resume at epoch 1, three start at 0
    assert sorted(len(p) for p in make_packs(a, None)) == [2, 3]
    from mmbench.registry import METHODS

    monkeypatch.setattr(METHODS.get("mrvae"), "pack_refusal", classmethod(  # a method refusing some options
        lambda cls, options: "objective r refused here" if options.get("objective") == "r" else None))
    two = {"name": "mrvae", "latent_dim": 8, "options": {"objective": "r"}}  # refused by its options
    sm = build_run_config({**TINY, "method": two})
    assert "objective r refused here" in unpackable_reason(sm)
    assert [len(p) for p in make_packs([Run(sm, tmp_path), Run(build_run_config(
        {**TINY, "seed": 1, "method": two}), tmp_path)], None)] == [1, 1]


def test_measured_caps_split_a_methods_packs_and_say_so(tmp_path, monkeypatch):
    """`--step-times`: a method whose packs measured slower than a run alone (as mopoe_eq5's, by a little, on an H200,
    docs/step_times_h200.md) trains its runs alone; one fastest at 2 of 1-3 in packs of at most 2; a method absent
    from the table, measured unpacked only, or fastest at its largest measured size packs as before. Each run split says so; run_all writes it to the run's log."""
    from mmbench import runner
    from mmbench.projection import best_packs

    rates = {"mopoe": {1: 27.0, 5: 23.0, 15: 21.0}, "mvae": {1: 10.0, 2: 30.0, 3: 25.0}, "mmvae": {1: 40.0},
             "aggregated": {1: 50.0, 5: 120.0, 15: 210.0}}
    caps = best_packs(rates)
    assert caps == {"mopoe": 1, "mvae": 2}  # mmvae: one size measured; aggregated: fastest at its largest measured
    assert best_packs({"mopoe": {5: 20.0, 1: 20.0, 15: 10.0}}) == {"mopoe": 1}  # a tie: the smaller pack, whatever the order
    a = [Run(cfg(s), tmp_path) for s in range(3)]
    mv = [Run(build_run_config({**TINY, "seed": s, "method": {"name": "mvae", "latent_dim": 8}}), tmp_path)
          for s in range(3)]
    notes = []
    packs = make_packs(a + mv, None, caps=caps, note=lambda r, t: notes.append((r.id, t)))
    assert [len(p) for p in packs] == [1, 1, 1, 2, 1]
    assert [r for r, _ in notes] == [r.id for r in a + mv]
    assert "packs of mopoe capped at 1 run(s) instead of 3" in notes[0][1]
    assert [len(p) for p in make_packs(a, None, caps={"mvae": 1})] == [3]  # another method's cap
    assert [len(p) for p in make_packs(a, 2, caps={"mopoe": 5})] == [2, 1]  # a cap above --pack changes nothing
    notes.clear()
    make_packs(a[:1], None, caps=caps, note=lambda r, t: notes.append(t))
    assert notes == []  # a lone run is not split
    assert [len(p) for p in make_packs(a, 5, caps={"mopoe": 3}, note=lambda r, t: notes.append(t))] == [3]
    assert notes == []  # a cap below --pack but not below the group's size splits nothing, so says nothing

    # run_all passes the caps and logs the note (workers stubbed: this is about the grouping)
    seen = []

    def fake_worker(cmd, **kw):
        seen.append(len(cmd) - 3)
        return subprocess.CompletedProcess(cmd, 1)

    monkeypatch.setattr(runner.subprocess, "Popen", fake_popen(fake_worker))
    runner.run_all([r.cfg for r in a], tmp_path / "runs", None, pack=None, caps={"mopoe": 1})
    assert seen == [1, 1, 1]
    assert all("capped at 1 run(s)" in Run(r.cfg, tmp_path / "runs").log_path.read_text() for r in a)


def test_a_table_measuring_a_larger_pack_fastest_grows_unasked_packs_to_it(tmp_path):
    """`--step-times`: where a table's fastest size is its largest and above DEFAULT_PACK_CAP (mopoe fastest at 30
    of 1-30), packs made without --pack grow to it, each run told so; where the fastest is the default or below
    (mvae at 15), or a smaller size measured faster (mmvae, capped at 5), nothing grows. An asked --pack is never
    raised, and workers still split a group evenly."""
    from mmbench.projection import measured_caps
    from mmbench.runner import DEFAULT_PACK_CAP

    assert DEFAULT_PACK_CAP == 15
    rates = {"mopoe": {1: 30.0, 5: 120.0, 15: 250.0, 30: 400.0}, "mvae": {1: 10.0, 15: 90.0},
             "mmvae": {1: 10.0, 5: 60.0, 30: 40.0}}
    caps = measured_caps(rates, DEFAULT_PACK_CAP)
    assert dict(caps) == {"mmvae": 5} and caps.grow == {"mopoe": 30}
    runs = [Run(cfg(s), tmp_path) for s in range(40)]
    notes = []
    assert [len(p) for p in make_packs(runs, None, caps=caps, note=lambda r, t: notes.append(t))] == [30, 10]
    assert len(notes) == 40 and "packs of mopoe of up to 30 run(s), beyond the default 15" in notes[0]
    assert [len(p) for p in make_packs(runs, None, workers=2, caps=caps)] == [20, 20]
    assert [len(p) for p in make_packs(runs, 10, caps=caps)] == [10] * 4  # asked: never raised
    assert [len(p) for p in make_packs(runs, None)] == [15, 15, 10]  # no table: the default
    mv = [Run(build_run_config({**TINY, "seed": s, "method": {"name": "mvae", "latent_dim": 8}}), tmp_path)
          for s in range(20)]
    assert [len(p) for p in make_packs(mv, None, caps=caps)] == [15, 5]  # fastest at the default: no growth
    notes.clear()
    assert [len(p) for p in make_packs(runs[:12], None, caps=caps, note=lambda r, t: notes.append(t))] == [12]
    assert notes == []  # a group the default already holds is not told of growth


def test_killed_pack_resumes_every_run(tmp_path, data_root, monkeypatch):
    # A worker training a pack of 3 is SIGKILLed mid-epoch (after the first epoch's checkpoints); running
    # the same worker again resumes all three from their checkpoints and finishes them. The killed worker is a
    # process (it imports torch: ~3 s); the second is the worker's entry point, mmbench.worker.main, called in this
    # process (a second interpreter added ~3-5 s and tested nothing the kill does not: the resume is the trainers').
    from mmbench import worker

    runs = []
    for s in range(3):
        c = cfg(s, epochs=2, max_train=64)
        c.eval.metrics = []  # this test is about training; evaluation after a pack is test_runner's
        r = Run(c, tmp_path)
        r.init()
        runs.append(r)
    env = dict(os.environ, MMBENCH_DATA=str(data_root), PYTHONPATH=str(Path(__file__).resolve().parents[1]),
               OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "mmbench.worker", *(str(r.dir) for r in runs)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:  # wait for the epoch-1 checkpoints, then for epoch 2 to be under way
        p = runs[0].dir / "progress.json"
        try:
            done = json.loads(p.read_text())["done"] if p.exists() else 0
        except ValueError:
            done = 0
        if all((r.ckpt_dir / "last.pt").exists() for r in runs) and done >= 2 + 1:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert all(r.status() == "partial" for r in runs)  # killed mid-run, not after it
    monkeypatch.setenv("MMBENCH_DATA", str(data_root))
    assert worker.main(*(str(r.dir) for r in runs)) == 0
    for r in runs:
        assert r.status() == "done"
        log = r.log_path.read_text()
        assert "(packed)" in log and "resumed from" in log
        assert [h["epoch"] for h in last(r)["state"]["history"]] == [1, 2]


def test_bench_pack_step_time_counts_run_steps(monkeypatch):
    from mmbench.bench import pack_step_time
    from mmbench.errors import MMBenchError
    from mmbench.registry import METHODS

    r = pack_step_time("mopoe", 2, n_modalities=2, batch_size=8, latent_dim=4, steps=1, warmup=0)
    assert r["pack"] == 2 and r["run_steps_per_s"] == pytest.approx(2 / r["median_s"])
    from mmbench.bench import pack_table
    rows = pack_table(["mopoe"], [4], batch_size=8, latent_dim=4, steps=1, n_modalities=2)
    unpacked, packed = rows
    assert (unpacked["pack"], packed["pack"]) == (1, 4)
    # a pack of 4 issues its operations once for all runs: well under half an unpacked step's per run-step
    assert 0 < packed["ops_per_run_step"] < unpacked["ops_per_run_step"] / 2
    monkeypatch.setattr(METHODS.get("smvgon"), "packable", False)  # every method packs today (default options)
    with pytest.raises(MMBenchError, match="not packable"):
        pack_step_time("smvgon", 2, n_modalities=2, batch_size=8, latent_dim=4, steps=1, warmup=0)
    na = pack_table(["smvgon"], [2], batch_size=8, latent_dim=4, steps=1, n_modalities=2)[1]
    assert na["mode"].startswith("n/a: MMBenchError: ") and "not packable" in na["mode"] and "|" not in na["mode"]
    with pytest.raises(MMBenchError, match="needs --device cuda"):
        pack_step_time("mopoe", 2, n_modalities=2, batch_size=8, latent_dim=4, steps=1, compile=True)
    from mmbench.bench import pack_step, step_time
    with pytest.raises(MMBenchError, match=r"loops over its runs \(bf16"):  # only a vmapped fp32 pack is captured
        pack_step("mopoe", 2, n_modalities=2, batch_size=8, latent_dim=4, precision="bf16", compile=True)
    with pytest.raises(MMBenchError, match="needs --device cuda"):  # unpacked capture: a GPU's too
        step_time("mrvae", n_modalities=2, batch_size=8, latent_dim=4, steps=1, compile=True)


def test_a_gpu_step_table_gives_each_rows_peak_device_memory_and_a_cpu_table_none(monkeypatch, tmp_path):
    # The GPU's allocator, simulated: _timed resets its peak before the warm-up and reads it after the timed steps.
    from mmbench import bench, cli, projection

    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    monkeypatch.setattr(bench, "release_device_memory", lambda dev, **kw: calls.append(("release", dev.type)))
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda dev: calls.append(("reset", dev.type)))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda dev: calls.append(("peak", dev.type)) or 3 * 2**30)
    r = bench._timed(lambda: calls.append("step"), 1, 2, torch.device("cuda"), [torch.zeros(3)])
    # earlier rows' leftovers given back first (reference cycles), so the peak is this step's
    assert calls == [("release", "cuda"), ("reset", "cuda"), "step", "step", "step", ("peak", "cuda")]
    assert r["peak_gib"] == 3.0
    assert "peak_gib" not in bench._timed(lambda: None, 0, 1, torch.device("cpu"), [torch.zeros(3)])
    assert bench._memory_col(r, "cuda") == {"peak_gib": 3.0} and bench._memory_col(r, "cpu") == {}
    cpu_rows = bench.pack_table(["mopoe"], [2], batch_size=8, latent_dim=4, steps=1, n_modalities=2)
    assert all("peak_gib" not in row for row in cpu_rows)
    # A suite's table on a GPU has the column (blank for a row that failed), and its rates still read back.
    key = dict(zip(projection.KEY_COLUMNS, ("polydigits", "vanilla", "5", "polymnist_cnn", "mopoe", "", "32", "8",
                                            "fp32")))
    rows = [{**key, "runs": 3, "pack": 1, "mode": "unpacked", "median_s": 0.02, "run_steps_per_s": 50.0,
             "peak_gib": 0.5},
            {**key, "runs": 3, "pack": 3, "mode": "n/a: OutOfMemoryError: CUDA out of memory", "median_s": math.nan,
             "run_steps_per_s": math.nan}]
    monkeypatch.setattr(bench, "suite_step_rows", lambda *a, **k: rows)
    suite = mopoe_suite(tmp_path / "s.yaml", [0, 1, 2])
    md = "\n".join(cli._suite_step_table(suite, "full", None, [3], 1, "cuda", False, None, "GPU Z"))
    lines = md.splitlines()  # the header above the table, a blank line, the table's head, its rule, its 2 rows
    head, ok, failed = ([c.strip() for c in lines[i].strip("|").split("|")] for i in (2, 4, 5))
    assert head[-1] == "peak_gib" and ok[-1] == "0.50" and failed[-1] == ""
    assert "peak_gib: the most device memory the step held" in md
    (tmp_path / "t.md").write_text(md)
    assert projection.read_step_times(tmp_path / "t.md")[tuple(key.values())] == {1: 50.0}
    assert "peak_gib" not in "\n".join(cli._suite_step_table(suite, "full", None, [3], 1, "cpu", False, None, "CPU"))


def test_pack_table_row_for_an_error_without_a_message(monkeypatch):
    from mmbench import bench

    monkeypatch.setattr(bench, "pack_step_time", lambda *a, **k: (_ for _ in ()).throw(RuntimeError()))
    rows = bench.pack_table(["mopoe"], [2], batch_size=8, latent_dim=4, steps=1, n_modalities=2)
    assert rows[1]["mode"] == "n/a: RuntimeError"  # out of memory and the like, whatever their text


def test_step_table_reports_each_method_against_the_bare_network_floor():
    from mmbench.bench import step_table

    res = step_table(["mopoe", "mvae"], [], [2], batch_size=8, latent_dim=4, steps=1)
    rows = {r["method"]: r for r in res["methods"]}
    floor = rows.pop("(bare networks: floor)")
    assert floor["x_floor"] == 1.0 and floor["params_m"] > 0
    for r in rows.values():  # the ratio is the method's median over the floor's median
        assert r["x_floor"] == pytest.approx(r["median_s"] / floor["median_s"])
    # the floor has the same networks as the methods: the same parameter count as MVAE (no extra heads)
    assert floor["params_m"] == pytest.approx(rows["mvae"]["params_m"])
    # device operations per step: MVAE's product of experts over subsets adds to MoPoE's... both above zero
    assert all(isinstance(r["ops"], int) and r["ops"] > 100 for r in [floor, *rows.values()])


def test_captured_step_table_records_a_method_that_cannot_be_captured(monkeypatch):
    """bench steps --compile: a method whose capture fails (any exception, even one without a message) gets a row
    saying so, in the method table and the scaling table, instead of ending the command."""
    from mmbench import bench

    def fails(method, *a, **k):
        if k.get("compile"):
            raise AssertionError() if method == "mvae" else RuntimeError("no graph\nmore")
        return {"median_s": 1.0, "min_s": 1.0, "max_s": 1.0, "params_m": 1.0, "run_steps_per_s": 1.0}

    monkeypatch.setattr(bench, "step_time", fails)
    res = bench.step_table(["mopoe", "mvae"], ["mopoe"], [2], batch_size=8, latent_dim=4, steps=1, compile=True)
    names = [r["method"] for r in res["methods"]]
    assert names[:2] == ["mopoe (not captured: RuntimeError: no graph)", "mvae (not captured: AssertionError)"]
    assert res["scaling"][0]["method"] == "mopoe (not captured: RuntimeError: no graph)"
    with pytest.raises(RuntimeError):  # uncaptured timing errors are not swallowed
        monkeypatch.setattr(bench, "step_time", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("x")))
        bench.step_table(["mopoe"], [], [2], batch_size=8, latent_dim=4, steps=1)


def test_gpu_projection_uses_pack_rates(tmp_path):
    from mmbench.projection import projected_seconds, read_step_times

    f = tmp_path / "times.md"
    f.write_text("Run-steps per second ...; NVIDIA X, torch 2\n\n| method | pack | mode | median_s | run_steps_per_s |\n"
                 "|---|---|---|---|---|\n| mopoe | 1 | unpacked | 0.100 | 10.000 |\n"
                 "| mopoe | 2 | packed | 0.133 | 15.000 |\n"
                 "| mvae | 2 | n/a: x | nan | nan |\n")
    rates = read_step_times(f)
    assert rates == {"mopoe": {1: 10.0, 2: 15.0}} and rates.failed == {"mvae": {2}}
    runs = [Run(cfg(s), tmp_path) for s in range(3)]
    packed = projected_seconds(make_packs(runs, None), rates, lambda r: 100)
    assert sum(packed.values()) == pytest.approx(3 * 100 / 15)  # one pack of 3 at the pack-2 rate
    alone = projected_seconds(make_packs(runs, 1), rates, lambda r: 100)
    assert sum(alone.values()) == pytest.approx(3 * 100 / 10)
    assert projected_seconds(make_packs(runs, 1), rates, lambda r: None)[runs[0].id] is None



def test_pack_rate_is_the_largest_measured_pack_not_above_the_pack():
    """Measured packs 1, 5 and 15 (10, 40, 90 run-steps/s): a pack of 5 runs at 40, of 14 at 40, of 15 and 20 at
    90; measured only 5 and 15, a pack of 2 runs at the smallest measured (40)."""
    from mmbench.projection import pack_rate

    rates = {1: 10.0, 5: 40.0, 15: 90.0}
    assert [pack_rate(rates, n) for n in (1, 4, 5, 14, 15, 20)] == [10.0, 10.0, 40.0, 40.0, 90.0, 90.0]
    assert pack_rate({5: 40.0, 15: 90.0}, 2) == 40.0


def test_read_step_times_from_the_step_table(tmp_path):
    """The step table (no --pack) gives the unpacked rate 1 / median_s (0.25 s -> 4 run-steps/s); where a file holds
    both tables, the pack table's measured pack 1 is kept."""
    from mmbench.projection import read_step_times

    steps = "| method | M | median_s | min_s |\n|---|---|---|---|\n| mopoe | 5 | 0.25 | 0.2 |\n| mvae | 5 | 0.5 | 0.4 |\n"
    packs = ("| method | pack | mode | median_s | run_steps_per_s |\n|---|---|---|---|---|\n"
             "| mopoe | 1 | unpacked | 0.1 | 10 |\n| mopoe | 5 | packed | 0.125 | 40 |\n")
    f = tmp_path / "t.md"
    f.write_text("head\n\n" + steps)
    assert read_step_times(f) == {"mopoe": {1: 4.0}, "mvae": {1: 2.0}}
    f.write_text("head\n\n" + packs + "\n" + steps)
    assert read_step_times(f) == {"mopoe": {1: 10.0, 5: 40.0}, "mvae": {1: 2.0}}
    # `--pack 1` writes an unpacked and a packed row of pack 1: a lone run trains unpacked, so the unpacked one counts
    f.write_text("head\n\n" + packs.replace("| mopoe | 5 | packed | 0.125 | 40 |", "| mopoe | 1 | packed | 0.2 | 5 |"))
    assert read_step_times(f) == {"mopoe": {1: 10.0}}


def test_dry_run_projection_counts_the_trainers_steps(tmp_path, data_root):
    """`run --dry-run --step-times`: 2 epochs of max_train 100 at batch 32 are 2 x floor(100 / 32) = 6 steps a run
    (drop_last, as the trainer); three unfinished runs are one pack of 3 at the pack-3 rate, 30 run-steps/s:
    3 x 6 / 30 = 0.6 s, 0.2 s a run. A finished run (seed 3) is not projected. Batch 128 > 100 rows: 1 step an
    epoch, 2 a run, alone at 10 run-steps/s: 0.2 s."""
    from mmbench.cli import _gpu_projection
    from mmbench.data.base import dataset_dir, read_manifest

    assert read_manifest(dataset_dir("polydigits", "vanilla", data_root))["counts"]["train"] > 128
    times = tmp_path / "t.md"
    times.write_text(shapes_head() + "\n\n| method | pack | mode | median_s | run_steps_per_s |\n"
                     "|-|-|-|-|-|\n| mopoe | 1 | unpacked | 0.1 | 10 |\n| mopoe | 3 | packed | 0.1 | 30 |\n")
    runs_dir = tmp_path / "runs"
    configs = [cfg(s, max_train=100) for s in range(4)]
    done = Run(configs[3], runs_dir)
    done.init()
    done.write_metrics({"coherence/joint": 0.5}, eval_precision=configs[3].eval.precision)
    assert done.status() == "done"
    gpu = _gpu_projection(configs, runs_dir, data_root, times, None)
    assert gpu["per_run"] == {Run(c, runs_dir).id: pytest.approx(0.2) for c in configs[:3]}
    assert "for 3 of 3 unfinished run(s) in 1 pack(s)" in gpu["summary"] and "(GPU Z," in gpu["summary"]
    big = cfg(0, max_train=100, batch_size=128)
    times.write_text(times.read_text().replace("batch 32,", "batch 128,"))  # a table measured at the run's batch
    assert _gpu_projection([big], runs_dir, data_root, times, None)["per_run"] == {
        Run(big, runs_dir).id: pytest.approx(0.2)}


def test_dry_run_projects_only_runs_at_the_step_tables_shapes(tmp_path, data_root):
    """A step table's rates hold for the shapes it was measured at (its header: PolyMNIST CNN, M, batch, latent,
    precision): a run at another latent size, batch, precision, architecture or number of modalities, or of a
    dataset without 3×28×28 images, is not projected from it, and the summary says why. A table whose header does
    not say its shapes is refused."""
    from mmbench.cli import _gpu_projection
    from mmbench.errors import MMBenchError

    times = tmp_path / "t.md"
    times.write_text(shapes_head() + "\n\n| method | pack | mode | median_s | run_steps_per_s |\n"
                     "|-|-|-|-|-|\n| mopoe | 1 | unpacked | 0.1 | 10 |\n")
    runs_dir = tmp_path / "runs"
    ok = cfg(0, max_train=100)

    def other(update):
        return build_run_config(deep_merge(TINY, update))

    cases = {"latent 16, not 8": other({"method": {"latent_dim": 16}}),
             "batch 64, not 32": other({"train": {"batch_size": 64}}),
             "precision bf16, not fp32": other({"train": {"precision": "bf16"}}),
             "architecture polymnist_resnet, not polymnist_cnn": other({"method": {"architecture": "polymnist_resnet"}}),
             "3 modalities, not 5": other({"modalities": ["m0", "m1", "m2"]}),
             "modalities of mnist-svhn-text not 3×28×28 images": other({"dataset": "mnist-svhn-text"})}
    for why, c in cases.items():
        gpu = _gpu_projection([ok, c], runs_dir, data_root, times, None)
        assert gpu["per_run"][Run(c, runs_dir).id] is None, why
        assert gpu["per_run"][Run(ok, runs_dir).id] == pytest.approx(0.6), why  # 2 x floor(100 / 32) / 10
        assert f"1 not at the table's shapes (PolyMNIST CNN, M=5, batch 32, latent 8, fp32; {why}: 1)" in gpu["summary"]
    bare = tmp_path / "bare.md"
    bare.write_text("median of 5 steps; GPU Z\n\n| method | pack | mode | median_s | run_steps_per_s |\n"
                    "|-|-|-|-|-|\n| mopoe | 1 | unpacked | 0.1 | 10 |\n")
    with pytest.raises(MMBenchError, match="does not say the shapes"):
        _gpu_projection([ok], runs_dir, data_root, bare, None)


def test_dry_run_projects_an_unprepared_polymnist_from_its_default_recipe(tmp_path, mmbench_here):
    """Before `prepare`, a PolyMNIST run is sized by the split its default recipe builds (60,000 tuples: 234 steps
    of 256 an epoch), said to be expected; 2 epochs, 3 seeds in one pack at 30 run-steps/s: 3 x 468 / 30 = 46.8 s.
    MNIST-SVHN-Text is sized likewise (1,121,360 triples a default build pairs: 2 epochs, ~2,242,720), but not
    projected from a PolyMNIST table; a dataset whose size only a build tells (the rats) stays unknown; the table keeps
    every run id whole in a narrow terminal and names each paper once in "reproduces"."""
    suite = tmp_path / "suite.yaml"
    suite.write_text("name: s\ndescription: d\ndefaults:\n  method: {latent_dim: 512}\n  train: {epochs: 2, batch_size: 256}\n"
                     "experiments:\n"
                     "  - name: e\n    reproduces: [MoPoE Fig. 3, MoPoE Fig. 11]\n    dataset: polymnist\n"
                     "    methods: [mopoe]\n    seeds: [0, 1, 2]\n"
                     "  - name: t\n    reproduces: [MoPoE Table 2]\n    dataset: mnist-svhn-text\n    methods: [mopoe]\n"
                     "  - name: r\n    reproduces: [MMVAMP Fig. 5]\n    dataset: rats\n    methods: [mopoe]\n")
    times = tmp_path / "t.md"
    times.write_text(shapes_head(batch=256, latent=512) + "\n\n| method | pack | mode | median_s | run_steps_per_s |\n"
                     "|-|-|-|-|-|\n| mopoe | 1 | unpacked | 0.1 | 10 |\n| mopoe | 3 | packed | 0.1 | 30 |\n")
    env = {"MMBENCH_DATA": str(tmp_path / "data"), "MMBENCH_RUNS": str(tmp_path / "runs")}
    r = mmbench_here("run", suite, "--dry-run", "--step-times", times, env=env, width=80)
    assert r.returncode == 0, r.stderr
    out = " ".join(r.stdout.split())
    assert "47 s for 3 of 5 unfinished run(s)" in out, out
    assert "~: 4 run(s) sized by their dataset's default recipe (not prepared here)" in out
    assert "s (full): 5 runs" in out and "distinct" not in out  # no run shared by two experiments: nothing to say
    cells = [[c.strip() for c in line.split("│")[1:-1]] for line in r.stdout.splitlines() if line.startswith("│")]
    assert [row[3] for row in cells if row[3].startswith(("~", "?"))] == ["~120,000"] * 3 + ["~2,242,720", "? (not"]
    ids = "".join(row[0] for row in cells)  # the folded id's pieces, read down the column
    for seed in range(3):
        assert f"polymnist-vanilla-mopoe-s{seed}-" in ids
    assert "MoPoE Fig. 3, Fig. 11" in " ".join(" ".join(row[1] for row in cells).split())


def test_the_dry_run_gives_the_checkpoints_disk_space_and_a_run_warns_when_they_will_not_fit(tmp_path, data_root,
                                                                                              mmbench_here, monkeypatch):
    # cli._checkpoint_space and _warn_if_no_room: the checkpoints of a table's runs are gigabytes (a PolyMNIST MoPoE
    # run's last.pt and best.pt: 225 MB; MoPoE's suite: 23 GB), which a run found out when the disk filled; the
    # estimate counts the runs not started (seed 0 here has a checkpoint) once each, and is the checkpoints' real size
    from mmbench import runner, suite as suite_mod
    from mmbench.suite import checkpoint_bytes, human_bytes, load_suite

    suite = tmp_path / "suite.yaml"
    mopoe_suite(suite, range(3), "epochs: 1, batch_size: 32, max_train: 64, max_test: 64")
    runs_dir = tmp_path / "runs [x]"  # rich's markup, printed as named
    configs = load_suite(suite).runs("full")
    train(Run(configs[0], runs_dir), data_root)  # its checkpoints, as they are written
    real = sum((Run(configs[0], runs_dir).ckpt_dir / f).stat().st_size for f in ("last.pt", "best.pt"))
    per = checkpoint_bytes(configs[1])
    assert 0.95 < real / per < 1.05, (real, per)
    env = {"MMBENCH_DATA": str(data_root), "MMBENCH_RUNS": str(runs_dir)}
    r = mmbench_here("run", suite, "--dry-run", env=env, width=300)
    out = " ".join(r.stdout.split())
    assert r.returncode == 0 and f"checkpoints of the 2 run(s) not started: ~{human_bytes(2 * per)} on disk" in out, out
    assert "not enough" not in out
    monkeypatch.setattr(suite_mod, "free_bytes", lambda folder: per)  # room for one run's
    out = " ".join(mmbench_here("run", suite, "--dry-run", env=env, width=300).stdout.split())
    assert f"{human_bytes(per)} free in {runs_dir} — not enough" in out, out
    trained = []
    monkeypatch.setattr(runner, "run_all", lambda configs, *a, **k: trained.append(len(configs)) or [])
    monkeypatch.setattr("mmbench.cli._prepare_for", lambda configs, data_root: None)  # no classifiers to train
    r = mmbench_here("run", suite, env=env, width=300)
    err = " ".join(r.stderr.split())
    assert trained == [3] and f"warning: the checkpoints of the 2 run(s) not started will take ~{human_bytes(2 * per)}" \
        in err and f"and {runs_dir} has {human_bytes(per)} free; free space" in err, err
    monkeypatch.setattr(suite_mod, "free_bytes", lambda folder: 2 * per)  # room for both, exactly
    assert "warning" not in mmbench_here("run", suite, env=env, width=300).stderr
    assert "not enough" not in mmbench_here("run", suite, "--dry-run", env=env, width=300).stdout
    wider = build_run_config({**configs[1].to_dict(), "method": {**configs[1].to_dict()["method"], "latent_dim": 16}})
    assert checkpoint_bytes(wider) > per  # sized per model, not per dataset
    assert [human_bytes(n) for n in (225e6, 999e6, 1e9, 2.28e10)] == ["225 MB", "999 MB", "1.0 GB", "22.8 GB"]
    import mmbench.train as train_mod

    def unbuildable(cfg):
        raise NotImplementedError("an operation meta tensors lack")

    monkeypatch.setattr(train_mod, "build_model", unbuildable)  # a model that cannot be sized: the run still runs
    monkeypatch.setattr(suite_mod, "_PARAMETERS", {})  # sized afresh, and the cache put back afterwards
    r = mmbench_here("run", suite, env=env, width=300)
    assert r.returncode == 0 and trained == [3, 3, 3] and "warning" not in r.stderr, r.stderr


def test_dry_run_estimates_only_the_training_left_and_packs_as_asked(tmp_path, data_root, mmbench_here, monkeypatch):
    """`run --dry-run --step-times` on a prepared dataset: seeds 0-2 of mopoe (192 tuples, 6 steps of 32 a run), seed 0
    resumed at epoch 1 of 2, seed 3 a rescore (evaluated again, not trained), a mopoe run at latent 16 (not the table's
    shapes) and an mvae run (no step time). At 1 s a tuple here, the 4 mopoe runs to train: 96 + 3 x 192 = 672 s ≈ 11 min. On the GPU: seed 0's 3
    steps alone at 0.05 run-steps/s (60 s), seeds 1-2 one pack of 2 at 0.1 (120 s): 3 min for 3 of the 5 unfinished runs
    in 4 packs, one not at the table's shapes and one without a step time; `--pack 1`: every run alone, 5 min. The
    train tuples of a prepared copy carry no "~"."""
    from mmbench import runner, suite as suite_mod
    from mmbench.projection import step_key
    from mmbench.suite import load_suite

    suite = tmp_path / "suite.yaml"
    suite.write_text("name: s\ndescription: d\ndefaults:\n  method: {latent_dim: 8}\n"
                     "  train: {epochs: 2, batch_size: 32, max_train: 96}\nexperiments:\n"
                     "  - name: e\n    reproduces: [T]\n    dataset: polydigits\n    methods: [mopoe]\n"
                     "    seeds: [0, 1, 2, 3]\n"
                     "  - name: wide\n    reproduces: [T]\n    dataset: polydigits\n    methods: [mopoe]\n"
                     "    seeds: [5]\n    overrides: {method: {latent_dim: 16}}\n"
                     "  - name: other\n    reproduces: [T]\n    dataset: polydigits\n    methods: [mvae]\n")
    times = tmp_path / "t.md"
    times.write_text(shapes_head() + "\n\n| method | pack | mode | median_s | run_steps_per_s |\n"
                     "|-|-|-|-|-|\n| mopoe | 1 | unpacked | 20 | 0.05 |\n| mopoe | 2 | packed | 20 | 0.1 |\n")
    runs_dir = tmp_path / "runs"
    configs = load_suite(suite).runs("full")
    rescore = Run(configs[3], runs_dir)
    rescore.init()
    rescore.metrics_path.write_text("[1, 2]")  # evaluated before, unreadable now: evaluated again, not trained
    assert rescore.status() == "rescore"
    # finished runs timed at the shapes of the latent-8 MoPoE runs only (the latent-16 one gets no estimate)
    monkeypatch.setattr(suite_mod, "seconds_per_sample", lambda *a: {step_key(configs[0]): 1.0})
    monkeypatch.setattr(runner, "resume_point", lambda r: (1, 0) if r.cfg.seed == 0 and r.cfg.method.name == "mopoe"
                        and r.cfg.method.latent_dim == 8 else (0, 0))
    env = {"MMBENCH_DATA": str(data_root), "MMBENCH_RUNS": str(runs_dir)}
    r = mmbench_here("run", suite, "--dry-run", "--step-times", times, env=env, width=300)
    assert r.returncode == 0, r.stderr
    out = " ".join(r.stdout.split())
    assert ("remaining training of 3 timed run(s) ≈ 8 min at the pace of finished runs of the same step shapes "
            "(dataset, variant, modalities, architecture, method and its options, batch, latent size, precision); 2 "
            "run(s) without an estimate (no finished run of their step shapes)") in out, out
    assert "3 min for 3 of 5 unfinished run(s) in 2 of 4 pack(s); 1 not at the table's shapes" in out, out
    assert "; 1 without a step time for their method" in out, out
    cells = {row[0]: row for row in ([c.strip() for c in line.split("│")[1:-1]] for line in r.stdout.splitlines()
                                     if line.startswith("│"))}
    s0, s3 = Run(configs[0], runs_dir).id, rescore.id
    assert cells[s0][3:5] == ["192", "96 s"] and cells[s0][6] == "60 s", cells[s0]
    assert cells[s3][4:7] == ["- (evaluation only)", "rescore", "-"], cells[s3]
    r = mmbench_here("run", suite, "--dry-run", "--step-times", times, "--pack", "1", env=env, width=300)
    assert r.returncode == 0, r.stderr
    assert "5 min for 3 of 5 unfinished run(s) in 3 of 5 pack(s)" in " ".join(r.stdout.split())


def test_precision_field_validated_and_id_stable(data_root, tmp_path):
    from mmbench.errors import ConfigError

    with pytest.raises(ConfigError, match="train.precision"):
        cfg(precision="fp16")
    assert cfg(precision="fp32").run_id() == cfg().run_id()  # a new field at its default keeps run ids
    assert cfg(precision="bf16").run_id() != cfg().run_id()
    s = train(Run(cfg(precision="bf16", epochs=1), tmp_path), data_root)  # autocast on the CPU
    assert s["epochs"] == 1 and all(v == v for v in s["history"][0].values())


def test_cli_dry_run_grows_unasked_packs_to_a_larger_size_measured_fastest(tmp_path, data_root, mmbench_here):
    """18 seeds and a table measuring a pack of 30 fastest: the dry run projects them as one pack of 18 (not 15 + 3)
    and says why on stderr; with --pack 15, as two packs."""
    suite = tmp_path / "suite.yaml"
    mopoe_suite(suite, range(18))
    times = tmp_path / "t.md"
    times.write_text(shapes_head("NVIDIA Y") + "\n\n| method | pack | mode | median_s | run_steps_per_s |\n"
                     "|-|-|-|-|-|\n| mopoe | 1 | unpacked | 0.01 | 100 |\n| mopoe | 15 | packed | 0.01 | 300 |\n"
                     "| mopoe | 30 | packed | 0.01 | 450 |\n")
    env = {"MMBENCH_DATA": str(data_root), "MMBENCH_RUNS": str(tmp_path / "runs"), "COLUMNS": "200"}
    r = mmbench_here("run", suite, "--dry-run", "--step-times", times, env=env)
    assert r.returncode == 0, r.stderr
    assert "for 18 of 18 unfinished run(s) in 1 pack(s)" in " ".join(r.stdout.split())
    assert "packs made without --pack grow beyond 15 to the fastest measured size: mopoe 30" in " ".join(r.stderr.split())
    r = mmbench_here("run", suite, "--dry-run", "--step-times", times, "--pack", "15", env=env)
    assert r.returncode == 0, r.stderr
    assert "for 18 of 18 unfinished run(s) in 2 pack(s)" in " ".join(r.stdout.split())


def test_a_pack_size_that_failed_in_the_step_table_caps_the_packs_below_it(tmp_path, data_root, mmbench_here):
    """A step table whose pack of 6 failed (out of memory): 6 runs are packed, capped and projected at the largest size
    that ran (3), and the cap says why; a captured step's failure caps only runs trained captured (--compile)."""
    from mmbench.projection import measured_caps, read_step_times, step_table_shapes

    suite = tmp_path / "suite.yaml"
    mopoe_suite(suite, range(6))
    times = tmp_path / "t.md"
    times.write_text(shapes_head("NVIDIA Y") + "\n\n| method | pack | mode | median_s | run_steps_per_s |\n"
                     "|-|-|-|-|-|\n| mopoe | 1 | unpacked | 0.010 | 100.000 |\n"
                     "| mopoe | 3 | packed | 0.010 | 300.000 |\n"
                     "| mopoe | 6 | n/a: RuntimeError: CUDA out of memory | nan | nan |\n"
                     "| mopoe | 3 | n/a (compiled): RuntimeError: CUDA out of memory | nan | nan |\n")
    rates = read_step_times(times)
    assert rates == {"mopoe": {1: 100.0, 3: 300.0}} and rates.failed == {"mopoe": {6}}
    caps = measured_caps(rates, 15)
    assert dict(caps) == {"mopoe": 3} and caps.failed == {"mopoe": 6} and caps.grow == {}
    assert dict(measured_caps(read_step_times(times, compiled=True), 15)) == {"mopoe": 1}  # its pack of 3 failed
    # a captured row that ran stands over the uncaptured failure of its size (compiled runs); a "not packable" row is
    # no failure (such runs train alone anyway)
    both = tmp_path / "both.md"
    unpackable = "| mvae | 3 | n/a: MMBenchError: not packable"
    both.write_text(times.read_text().replace("| mopoe | 3 | n/a (compiled)", unpackable)
                    + "| mopoe | 6 | packed (compiled) | 0.010 | 600.000 |\n")
    assert read_step_times(both).failed == {"mopoe": {6}} and read_step_times(both, compiled=True).failed == {}
    assert dict(measured_caps(read_step_times(both, compiled=True), 15)) == {}
    notes = []
    runs = [Run(cfg(s), tmp_path / "r") for s in range(6)]
    packs = make_packs(runs, None, 1, caps, note=lambda r, t: notes.append(t))
    assert [len(p) for p in packs] == [3, 3] and len(notes) == 6
    assert ("capped at 3 run(s) instead of 6: the largest that ran in the step-time table given, where a pack of 6 "
            "failed") in notes[0]
    # a table keyed by method caps only the runs at the shapes it was measured at (latent 16 is not: one pack of 6)
    caps.shapes = step_table_shapes(times)
    wide = [Run(build_run_config(deep_merge(TINY, {"seed": s, "method": {"latent_dim": 16}})), tmp_path / "r")
            for s in range(6)]
    assert [len(p) for p in make_packs(wide, None, 1, caps)] == [6]
    assert [len(p) for p in make_packs(runs, None, 1, caps)] == [3, 3]
    env = {"MMBENCH_DATA": str(data_root), "MMBENCH_RUNS": str(tmp_path / "runs"), "COLUMNS": "200"}
    r = mmbench_here("run", suite, "--dry-run", "--step-times", times, env=env)
    assert r.returncode == 0, r.stderr
    assert "for 6 of 6 unfinished run(s) in 2 pack(s)" in " ".join(r.stdout.split())
    assert ("mopoe 3 (the largest that ran: its pack of 6 failed in the table) (runs at the table's shapes only: "
            "PolyMNIST CNN, M=5, batch 32, latent 8, fp32)") in " ".join(r.stderr.split())
    # nothing of a method ran (its unpacked row absent, its pack failed); a header without M names no M
    text = times.read_text().replace("| mopoe | 1 | unpacked | 0.010 | 100.000 |\n", "")
    text = text.replace("| mopoe | 3 | packed | 0.010 | 300.000 |\n", "| mvae | 1 | unpacked | 0.010 | 100.000 |\n")
    times.write_text(text.replace("(M = 5 × ", "("))
    r = mmbench_here("run", suite, "--dry-run", "--step-times", times, env=env)
    assert r.returncode == 0, r.stderr
    assert ("mopoe 1 (alone) (no pack of it ran in the table: its pack of 6 failed) (runs at the table's shapes only: "
            "PolyMNIST CNN, batch 32, latent 8, fp32)") in " ".join(r.stderr.split())


def test_a_step_tables_rate_is_read_at_the_precision_of_its_step_time(tmp_path):
    """A rate cell rounded coarser than its step time (a slow CPU step: 0.01 for 1 / 71.4286 s, 0.00 for 1 / 250 s) is
    read from the step time; a 0 rate with no step time is no rate (not a division by zero later)."""
    from mmbench.errors import MMBenchError
    from mmbench.projection import read_step_times

    f = tmp_path / "t.md"
    f.write_text("| method | pack | mode | median_s | run_steps_per_s |\n|-|-|-|-|-|\n"
                 "| mopoe | 1 | unpacked | 71.4286 | 0.01 |\n| mopoe | 2 | packed | 250.0000 | 0.00 |\n"
                 "| mvae | 1 | unpacked | | 0.00 |\n| mmvae | 1 | unpacked | 0.024 | 42.500 |\n"
                 "| mrvae | 1 | unpacked | n/a | 0.01 |\n| jmvae | 1 | unpacked | inf | 0.50 |\n"
                 "| aggregated | 1 | unpacked | nan | 2.00 |\n")
    rates = read_step_times(f)
    assert rates == {"mopoe": {1: pytest.approx(1 / 71.4286), 2: pytest.approx(2 / 250)}, "mmvae": {1: 42.5},
                     "mrvae": {1: 0.01}, "jmvae": {1: 0.5}, "aggregated": {1: 2.0}}  # an odd step-time cell: the rate
    # the step table (method | M | median_s): a step printed as 0.000 (under 0.5 ms) or nan is no rate, not a crash
    f.write_text("| method | M | median_s |\n|-|-|-|\n| mopoe | 5 | 0.000 |\n| mvae | 5 | nan |\n"
                 "| mmvae | 5 | 0.020 |\n")
    assert read_step_times(f) == {"mmvae": {1: pytest.approx(50.0)}}
    f.write_text("| method | pack | mode | median_s | run_steps_per_s |\n|-|-|-|-|-|\n"
                 "| mopoe | 1 | n/a: RuntimeError: CUDA out of memory | nan | nan |\n")
    with pytest.raises(MMBenchError, match="every timed row of the table failed"):
        read_step_times(f)


def test_cli_pack_options(tmp_path, data_root, mmbench_here, monkeypatch):
    """The dry run and three of the four refusals in this process (conftest._mmbench_here: cli.main's exit 2 and
    one line for an MMBenchError); one refusal through the real entry point, a new interpreter (~2.5 s of
    importing torch each, what the other four added), for cli.main's exit code and its one line on stderr."""
    import subprocess as sp

    suite = tmp_path / "suite.yaml"
    mopoe_suite(suite, range(3))
    times = tmp_path / "t.md"
    times.write_text(shapes_head("NVIDIA Y") + "\n\n| method | pack | mode | median_s | run_steps_per_s |\n"
                     "|-|-|-|-|-|\n| mopoe | 1 | unpacked | 0.01 | 100 |\n| mopoe | 3 | packed | 0.01 | 300 |\n")
    env = {"MMBENCH_DATA": str(data_root), "MMBENCH_RUNS": str(tmp_path / "runs"), "COLUMNS": "200"}

    def mm(*args, env):  # a new interpreter, called as mmbench_here is
        return sp.run([sys.executable, "-m", "mmbench", *map(str, args)], capture_output=True, text=True,
                      env={**os.environ, **env})

    r = mmbench_here("run", suite, "--dry-run", "--step-times", times, env=env)
    assert r.returncode == 0, r.stderr
    # 3 runs x 2 epochs x (polydigits train split // 32) steps in one pack of 3 at 300 run-steps/s
    out = " ".join(r.stdout.split())
    assert "one GPU (NVIDIA Y," in out and "for 3 of 3 unfinished run(s) in 1 pack(s)" in out
    # a table where packing is slower: the projection packs as the run would, every run alone, and says why
    times.write_text(times.read_text().replace("| 3 | packed | 0.01 | 300 |", "| 3 | packed | 0.01 | 50 |"))
    r = mmbench_here("run", suite, "--dry-run", "--step-times", times, env=env)
    assert r.returncode == 0, r.stderr
    assert "for 3 of 3 unfinished run(s) in 3 pack(s)" in " ".join(r.stdout.split())
    assert "packs capped at the fastest measured size: mopoe 1 (alone)" in " ".join(r.stderr.split())
    # runs trained captured (--compile) from a table without captured rows: the uncaptured rates, and it says so
    r = mmbench_here("run", suite, "--dry-run", "--step-times", times, "--compile", "--gpus", "0", env=env)
    assert r.returncode == 0, r.stderr
    assert ("for 3 of 3 unfinished run(s) in 3 pack(s) (3 of them from uncaptured step times: the table has no "
            "captured row for mopoe at their pack size)") in " ".join(r.stdout.split())
    # runs trained captured (--compile) are projected and capped from the captured rows: there packing pays
    with open(times, "a") as f:
        f.write("| mopoe | 3 | packed (compiled) | 0.01 | 300 |\n")
    r = mmbench_here("run", suite, "--dry-run", "--step-times", times, "--compile", "--gpus", "0", env=env)
    assert r.returncode == 0, r.stderr
    assert "for 3 of 3 unfinished run(s) in 1 pack(s)" in " ".join(r.stdout.split()) and "capped" not in r.stderr
    assert "uncaptured" not in r.stdout
    # and a run, not only its dry run, hands the caps to the runner (the runner stubbed: the grouping is tested above)
    import mmbench.runner

    got = {}

    def fake_run_all(configs, runs_dir, data_root, **kw):
        got.update(kw)
        return []

    monkeypatch.setattr(mmbench.runner, "run_all", fake_run_all)
    monkeypatch.setattr("mmbench.cli._prepare_for", lambda configs, data_root: None)  # no classifiers to train
    r = mmbench_here("run", suite, "--step-times", times, env=env)
    assert r.returncode == 0, r.stderr
    assert got["caps"] == {"mopoe": 1} and got["pack"] is None
    # --cudnn-benchmark reaches the workers through their environment (train.cudnn_autotune reads it there)
    monkeypatch.setenv("MMBENCH_CUDNN_BENCHMARK", "0")  # restored after the test: the CLI sets it in this process
    monkeypatch.setattr(mmbench.runner, "check_gpus_visible", lambda ids: None)  # no GPU here
    monkeypatch.setattr(mmbench.runner, "run_all", lambda *a, **k: got.update(
        cudnn=os.environ.get("MMBENCH_CUDNN_BENCHMARK")) or [])
    r = mmbench_here("run", suite, "--gpus", "0", "--cudnn-benchmark", env=env)
    assert r.returncode == 0, r.stderr
    assert got["cudnn"] == "1"
    for run, args, msg in [(mm, ("run", suite, "--pack", "0"), "--pack 0: must be >= 1"),
                           (mmbench_here, ("run", suite, "--compile"), "--compile captures CUDA graphs; use it with --gpus"),
                           (mmbench_here, ("run", suite, "--cudnn-benchmark"),
                            "--cudnn-benchmark tunes cuDNN's convolutions on GPU workers; use it with --gpus"),
                           (mmbench_here, ("bench", "steps", "--cudnn-benchmark"),
                            "--cudnn-benchmark tunes cuDNN's convolutions; use it with --device cuda"),
                           (mmbench_here, ("bench", "steps", "--pack", "0"), "pack sizes must be >= 1"),
                           (mmbench_here, ("bench", "steps", "--compile"),
                            "--compile captures CUDA graphs; use it with --device cuda")]:
        r = run(*args, env=env)
        assert r.returncode == 2 and msg in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_stopped_pack_resumes_mid_epoch_bit_identically(tmp_path, data_root, monkeypatch):
    # A stop request (Slurm's pre-timeout signal, train.request_stop) after step 2 of epoch 1 (3 steps an
    # epoch): every run of the pack saves its next step, log sums and random stream, the pack raises
    # TrainingInterrupted, and a second train_pack resumes all runs mid-epoch as one pack. The stacked
    # arithmetic is the same as the uninterrupted pack's, so weights, RNG and history are bit-identical.
    import mmbench.train as train_mod
    from mmbench.train import TrainingInterrupted

    whole = [Run(cfg(s), tmp_path / "whole") for s in range(2)]
    ref = train_pack(whole, data_root)
    runs = [Run(cfg(s), tmp_path / "stopped") for s in range(2)]
    calls = []

    def progress(phase, done, total):
        calls.append(done)
        if done == 2:
            train_mod.request_stop("test stop")

    with pytest.raises(TrainingInterrupted, match="step 2 of 3"):
        train_pack(runs, data_root, progress)
    assert train_mod.stop_requested() is None  # the request is consumed
    for r in runs:
        ck = last(r)
        assert ck["state"]["epoch"] == 0 and ck["state"]["step"] == 2 and set(ck["state"]["sums"])
        assert "stopped (test stop) at epoch 1, step 2 of 3 (packed)" in r.log_path.read_text()
    assert make_packs(runs, None) == [runs]  # same resume point (0, 2): one pack again
    out = train_pack(runs, data_root)
    for w, r in zip(whole, runs):
        assert out[r.id]["history"] == ref[w.id]["history"]
        assert "at epoch 0, step 2 (packed)" in r.log_path.read_text()  # where it resumed, as a run alone says
        a, b = last(w), last(r)
        assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
        assert torch.equal(a["rng"], b["rng"])
    # a run resumed at another step packs apart
    train_pack([Run(cfg(7), tmp_path / "stopped")], data_root, stop_after_epoch=1)
    assert all("step" not in last(r)["state"] for r in runs)
    assert sorted(len(p) for p in make_packs(runs + [Run(cfg(7), tmp_path / "stopped")], None)) == [1, 2]


def test_runs_stopped_at_different_steps_of_one_epoch_resume_apart(tmp_path, data_root, trained_alone):
    """Run 0 stopped after step 1, run 1 after step 2 of epoch 1: they are not packed together (a pack trains its
    members from one step), and each resumes to exactly what it trains uninterrupted alone."""
    import mmbench.train as train_mod
    from mmbench.train import TrainingInterrupted

    alone_dir, _ = trained_alone("three", [cfg(s) for s in range(3)])  # test_pack_of_three's references
    alone = {s: Run(cfg(s), alone_dir) for s in (0, 1)}
    runs = [Run(cfg(s), tmp_path / "stopped") for s in (0, 1)]
    for r, at in zip(runs, (1, 2)):
        def progress(phase, done, total, at=at):
            if done == at:
                train_mod.request_stop("test stop")

        with pytest.raises(TrainingInterrupted):
            train_pack([r], data_root, progress)
        assert last(r)["state"]["epoch"] == 0 and last(r)["state"]["step"] == at
    assert sorted(len(p) for p in make_packs(runs, None)) == [1, 1]
    train_pack(runs, data_root)  # both at once: grouped by resume point, so each alone
    for s, r in zip((0, 1), runs):
        assert "resumed from" in r.log_path.read_text()  # from its step, not trained again
        a, b = last(alone[s]), last(r)
        assert a["state"]["history"] == b["state"]["history"]
        assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_locked_run_is_left_out_of_the_pack_and_waited_for(tmp_path, data_root, monkeypatch):
    # Another process holds one run's lock (a second submission of the suite): the pack trains the others
    # and then waits for that run; once the holder lets go it finds the run unfinished and does it here.
    import threading

    from mmbench.pack import execute_pack

    runs = []
    for s in range(3):
        c = cfg(s, epochs=1)
        c.eval.metrics = []
        runs.append(Run(c, tmp_path))
    held, release = threading.Event(), threading.Event()

    def holder():
        with runs[2].lock():
            held.set()
            release.wait(60)

    t = threading.Thread(target=holder)
    t.start()
    held.wait(10)
    # The holder lets go only once the pack blocks on the run's lock: the first blocking LOCK_EX on run.lock
    # checks that the lock is still held (the wait is real), then lets the holder go and waits for it
    import fcntl

    real_flock, waits = fcntl.flock, []

    def flock(f, op):
        if op == fcntl.LOCK_EX and Path(f.name) == runs[2].dir / "run.lock" and not release.is_set():
            with pytest.raises(BlockingIOError):  # still held by the holder when the waiting starts
                real_flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            waits.append(op)
            release.set()
        return real_flock(f, op)

    monkeypatch.setattr(fcntl, "flock", flock)
    try:
        out = execute_pack(runs, data_root)
    finally:
        release.set()
    t.join()
    assert out == {r.id: None for r in runs}
    assert all(r.status() == "done" for r in runs)
    assert "left out of the pack" in runs[2].log_path.read_text()
    assert "locked by another process; waiting" in runs[2].log_path.read_text()
    assert waits == [fcntl.LOCK_EX]  # the pack blocked on the held lock once
    assert "pack of 2" in runs[0].log_path.read_text()


# 3 of polydigits' 5 modalities where a test is about what a pack does, at any number of modalities (the tests that
# count the pack's convolutions or project at a step table's shapes, M = 5, keep TINY's 5)
THREE = ["m0", "m1", "m2"]
MRVAE = {"dataset": "polydigits", "modalities": THREE, "method": {"name": "mrvae", "latent_dim": 8,
                                             "options": {"hidden": 16, "anneal_rate": 0.01}},
         "train": {"epochs": 2, "batch_size": 32, "max_train": 96, "max_test": 64}}


@pytest.mark.parametrize("objective", ["q", "r"])
@pytest.mark.parametrize("mode", ["loop", "vmap"])
def test_mrvae_packs_with_its_own_step_counter_per_run(tmp_path, data_root, monkeypatch, mode, objective,
                                                       trained_alone):
    """mrVAE packs: its Gumbel noise is drawn through the noise source, its annealing counter is a buffer that each
    run of the pack advances for itself (the draws' recording and the packability trial work on copies), and the
    prior's rows are not cut to a run's own sizes under vmap. Objective r relaxes each step's rows up to the largest
    size drawn, read back from the device: alone a run's own largest, vmapped the largest over the pack; no number
    depends on that bound (its draws are all D rows wide, and the rows past a run's sizes carry their straight-through
    gradient exactly: tests/test_mrvae.py). Two runs packed end as they end alone."""
    monkeypatch.setenv("MMBENCH_PACK_MODE", mode)
    method = {**MRVAE["method"], "options": {**MRVAE["method"]["options"], "objective": objective}}
    cfgs = [build_run_config({**MRVAE, "method": method, "seed": s}) for s in range(2)]
    assert unpackable_reason(cfgs[0]) is None
    alone_dir, alone = trained_alone(f"mrvae-{objective}", cfgs)
    runs = [Run(c, tmp_path / "packed") for c in cfgs]
    packed = train_pack(runs, data_root)
    for s, r in enumerate(runs):
        assert packed[r.id]["packed_with"] == 2, r.log_path.read_text()
        ca, cp = last(Run(cfgs[s], alone_dir)), last(r)
        assert int(cp["model"]["step"]) == int(ca["model"]["step"]) == 2 * 3  # 2 epochs of 3 steps, per run
        assert torch.equal(ca["rng"], cp["rng"])
        assert_same_trajectory(cfgs[s], alone[s], ca, packed[r.id], cp, mode, steps=2 * 3)
    assert packed[runs[0].id]["history"][-1]["train_loss"] != packed[runs[1].id]["history"][-1]["train_loss"]


def stacked(method, mods, runs, options=None):
    """A StackedModel of `method` (latent 8, these options) of `runs` runs seeded 0..runs-1 on `mods`, on the CPU."""
    from mmbench.methods.base import MethodConfig
    from mmbench.pack import StackedModel
    from mmbench.registry import METHODS

    cls, mcfg = METHODS.get(method), MethodConfig(method, latent_dim=8, beta=1.0, options=options or {})
    states = []
    for s in range(runs):
        torch.manual_seed(s)
        states.append(cls(mods, mcfg, "polymnist_cnn").state_dict())
    return StackedModel(cls(mods, mcfg, "polymnist_cnn").train(), states, [None] * runs, 1e-3, torch.device("cpu"))


def packable_stacks(mods, runs):
    """(name, StackedModel of `runs` runs seeded 0..runs-1) for every packable method, latent 8, on `mods`."""
    from mmbench.registry import METHODS

    for name in [m for m in METHODS.names() if METHODS.get(m).packable]:
        yield name, stacked(name, mods, runs)


@pytest.mark.parametrize("conv", ["grouped", "bmm"])
def test_packed_losses_use_batching_rules_only(recwarn, monkeypatch, conv):
    """Under vmap an operation without a batching rule falls back to a loop over the runs (a warning, "performance
    drop"): on a GPU R launches where one was meant. Every packable method's vmapped loss and backward use batching
    rules only (mrVAE's permutation positions were once an in-place scatter_, which has none), also with the
    convolutions as batched matmuls (unfold, fold)."""
    import warnings

    from mmbench.data.base import Modality

    monkeypatch.setenv("MMBENCH_PACK_CONV", conv)
    mods = [Modality(f"m{i}", (3, 28, 28)) for i in range(3)]
    for name, sm in packable_stacks(mods, 2):
        sm.vectorised = True
        x = {m.name: torch.rand(2, 4, 3, 28, 28) for m in mods}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            losses, _ = sm.loss(x, [torch.Generator().manual_seed(s) for s in range(2)], 0)
            losses.sum().backward()
        slow = {str(w.message).split(".")[0] for w in caught if "performance drop" in str(w.message)}
        assert not slow, (name, slow)
    with warnings.catch_warnings(record=True) as caught:  # the check can fail: scatter_ has no batching rule
        warnings.simplefilter("always")
        torch.func.vmap(lambda t: torch.empty_like(t).scatter_(0, torch.tensor([2, 0, 1]), t))(torch.ones(2, 3))
    assert any("performance drop" in str(w.message) for w in caught)


def test_packed_runs_write_history_and_tensorboard(tmp_path, data_root, monkeypatch):
    """As the unpacked trainer: each run's history.json (the report's training curves) and, with
    train.tensorboard, its own event log (a stand-in writer here: tensorboard is an optional extra)."""
    import types

    from mmbench.plots import run_history

    calls = []

    class Writer:
        def __init__(self, log_dir):
            self.dir = log_dir

        def add_scalar(self, tag, value, step):
            calls.append((self.dir, tag, step, value))

        def flush(self):
            pass

        def close(self):
            calls.append((self.dir, "close"))

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=Writer))
    runs = [Run(cfg(s, tensorboard=True), tmp_path) for s in range(2)]
    out = train_pack(runs, data_root)
    for r in runs:
        assert out[r.id]["packed_with"] == 2
        hist = out[r.id]["history"]
        assert run_history(r.dir) == hist and json.loads((r.dir / "history.json").read_text()) == hist
        mine = [c for c in calls if c[0] == str(r.dir / "tensorboard")]
        assert mine[-1][1] == "close"
        assert {(t, e, v) for _, t, e, v in mine[:-1] if t == "test_loss"} == {
            ("test_loss", h["epoch"], h["test_loss"]) for h in hist}


def test_an_unreadable_or_misfit_checkpoint_fails_its_run_only(tmp_path, data_root):
    """One run's last.pt overwritten with garbage, another's holding weights of other shapes: each of those runs
    fails with the checkpoint's name and the fix, its file kept as it was; the rest of the pack trains on."""
    runs = [Run(cfg(s), tmp_path) for s in range(4)]
    train_pack(runs, data_root, stop_after_epoch=1)
    garbage = b"not a checkpoint"
    (runs[0].ckpt_dir / "last.pt").write_bytes(garbage)
    ck = last(runs[1])
    key = next(k for k, v in ck["model"].items() if v.dim() == 2)
    ck["model"][key] = torch.zeros(3, 3)
    torch.save(ck, runs[1].ckpt_dir / "last.pt")
    with pytest.raises(Exception, match=r"last.pt cannot be read .*move or delete the folder .*checkpoints"):
        train(runs[0], data_root)  # alone too: one clear line
    out = train_pack(runs, data_root)
    assert "cannot be read" in out[runs[0].id] and (runs[0].ckpt_dir / "last.pt").read_bytes() == garbage
    assert "does not fit this run's model" in out[runs[1].id] and key in out[runs[1].id]
    assert "another layout" in runs[1].log_path.read_text()
    for r in runs[2:]:
        assert out[r.id]["epochs"] == 2 and out[r.id]["packed_with"] == 2


def test_an_unexpected_evaluation_failure_stops_that_run_only(tmp_path, data_root, monkeypatch):
    """Out of memory (or any other exception) while evaluating one run of a pack: that run's result is the error,
    with its traceback in its log; the pack's other runs are still evaluated."""
    import mmbench.evaluate as ev
    from mmbench.pack import execute_pack

    runs = []
    for s in range(2):
        c = cfg(s, epochs=1)
        c.eval.metrics = []
        runs.append(Run(c, tmp_path))
    real = ev.evaluate

    def first_fails(run, *a, **k):
        if run.id == runs[0].id:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(run, *a, **k)

    monkeypatch.setattr(ev, "evaluate", first_fails)
    out = execute_pack(runs, data_root)
    assert out[runs[0].id] == "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"
    assert "Traceback" in runs[0].log_path.read_text() and runs[0].status() == "partial"
    assert out[runs[1].id] is None and runs[1].status() == "done"


def test_runs_that_leave_the_pack_open_one_tensorboard_writer(tmp_path, data_root, monkeypatch):
    """A pack refused by its trial trains its runs alone: each run's event log is opened once, by its own trainer."""
    import types

    opened = []

    class Writer:
        def __init__(self, log_dir):
            opened.append(log_dir)

        def add_scalar(self, *a):
            pass

        def flush(self):
            pass

        def close(self):
            pass

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=Writer))
    monkeypatch.setattr(Gaussian, "rsample", lambda self: self.mu + torch.randn_like(self.mu) * (0.5 * self.logvar).exp())
    runs = [Run(cfg(s, epochs=1, tensorboard=True), tmp_path) for s in range(2)]
    out = train_pack(runs, data_root)
    assert all("packed_with" not in out[r.id] for r in runs)
    assert sorted(opened) == sorted(str(r.dir / "tensorboard") for r in runs)


def test_a_looping_bf16_pack_says_its_step_is_not_captured(tmp_path, data_root, monkeypatch):
    """--compile captures the vmapped fp32 loss only; a bf16 pack (which loops) trains uncaptured and says so; an fp32
    pack says it is captured (traced with aot_eager here)."""
    monkeypatch.setenv("MMBENCH_PACK_MODE", "vmap")
    monkeypatch.setenv("MMBENCH_COMPILE", "1")
    monkeypatch.setenv("MMBENCH_COMPILE_BACKEND", "aot_eager")
    def three(c):  # 3 modalities: the capture's trace of 5 (MoPoE: 31 subsets) took about twice as long
        c.modalities = THREE
        return c

    runs = [Run(three(cfg(s, epochs=1, precision="bf16", max_train=32, max_test=32)), tmp_path) for s in range(2)]
    out = train_pack(runs, data_root)
    for r in runs:
        assert out[r.id]["packed_with"] == 2
        assert "a bf16 pack loops over its runs; its step is not captured" in r.log_path.read_text()
        assert "packed training step captured" not in r.log_path.read_text()
    fp32 = [Run(three(cfg(s, epochs=1, max_train=32, max_test=32)), tmp_path) for s in range(2)]  # captured, says so
    out = train_pack(fp32, data_root)
    for r in fp32:
        assert out[r.id]["packed_with"] == 2
        assert "packed training step captured with torch.compile on cpu" in r.log_path.read_text()


def test_a_resumed_run_projects_only_its_remaining_epochs(tmp_path, data_root):
    """Seed 0 stopped after epoch 1 of 2 trains 3 more steps (floor(100 / 32)), alone (another resume point) at the
    unpacked 10 run-steps/s: 0.3 s, not the 0.6 s of a run from the start."""
    from mmbench.cli import _gpu_projection

    times = tmp_path / "t.md"
    times.write_text(shapes_head() + "\n\n| method | pack | mode | median_s | run_steps_per_s |\n"
                     "|-|-|-|-|-|\n| mopoe | 1 | unpacked | 0.1 | 10 |\n")
    runs_dir = tmp_path / "runs"
    c = cfg(0, max_train=100)
    train(Run(c, runs_dir), data_root, stop_after_epoch=1)
    assert _gpu_projection([c], runs_dir, data_root, times, None)["per_run"] == {Run(c, runs_dir).id: pytest.approx(0.3)}


def test_throughput_is_the_steps_own_rate_after_the_first_epoch(tmp_path, data_root, monkeypatch):
    """Throughput leaves out the first epoch (warm-up) and what happens outside the steps; a pack's counts every run's
    tuples; the --dry-run estimate reads it instead of the run's wall time."""
    import mmbench.train as train_mod
    from mmbench.projection import step_key
    from mmbench.suite import seconds_per_sample

    clock = iter([0.0, 50.0, 100.0, 102.0, 200.0, 204.0])  # epochs of 50, 2 and 4 s (gaps: test losses)
    monkeypatch.setattr(train_mod.time, "perf_counter", lambda: next(clock))
    t = train_mod.Throughput()
    for n in (960, 96, 96):
        t.start()
        t.stop(n)
    assert t.rate() == pytest.approx(192 / 6)
    clock = iter([7.0, 7.5, 9.0, 9.0])  # one epoch of 0.5 s: that one counts; then one the clock cannot resolve
    single = train_mod.Throughput()
    assert single.rate() is None
    single.start()
    single.stop(10)
    assert single.rate() == pytest.approx(20.0)
    instant = train_mod.Throughput()
    instant.start()
    instant.stop(10)
    assert instant.rate() is None  # no division by a zero duration
    monkeypatch.undo()
    # trained for real: each run's provenance carries its rate, unpacked and packed
    runs_dir = tmp_path / "runs"
    s = train(Run(cfg(0, epochs=2, max_train=64), runs_dir), data_root)
    assert s["tuples_per_second"] > 0
    packed = train_pack([Run(cfg(k, epochs=2, max_train=64), runs_dir) for k in (1, 2)], data_root)
    assert {v["tuples_per_second"] for v in packed.values()} == {packed[next(iter(packed))]["tuples_per_second"]}
    # and each epoch's log line the tuples and seconds that rate is made of (docs/gpu-runs/fig3_pace.py reads them
    # where a run stopped before its provenance): the same rate, to the 6 significant digits of the last line's
    import importlib.util

    spec = importlib.util.spec_from_file_location("fig3_pace", Path(__file__).parents[1] / "docs/gpu-runs/fig3_pace.py")
    pace = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pace)
    for r, size in [(Run(cfg(0, epochs=2, max_train=64), runs_dir), 1),
                    *((Run(cfg(k, epochs=2, max_train=64), runs_dir), 2) for k in (1, 2))]:
        rate, logged_size = pace.logged_rate(r.log_path)
        summary = s if size == 1 else packed[r.id]
        assert logged_size == size and rate == pytest.approx(summary["tuples_per_second"], rel=1e-4, abs=0)
    # the estimate: seconds per tuple = 1 / rate, whatever the wall time (fixed costs) was
    fake = [{"config": cfg(0), "provenance": {"train_seconds": 1000.0, "train_tuples_per_second": 50.0}},
            {"config": cfg(1), "provenance": {"train_seconds": 9.0, "train_tuples_per_second": 25.0}},
            {"config": cfg(2), "provenance": {"train_seconds": 9.0, "train_tuples_per_second": 100.0}}]
    monkeypatch.setattr("mmbench.results.load_runs", lambda runs_dir: fake)
    c = fake[0]["config"]
    assert seconds_per_sample(runs_dir, data_root) == {step_key(c): pytest.approx(1 / 50)}


class _ScaledMean(torch.nn.Module):
    """loss = w · (the batch's mean of x) + one standard normal from the noise source: a pack's runs differ in w."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))

    def loss(self, x):
        from mmbench.methods.base import randn_like

        m = x["a"].mean()
        return self.w * m + randn_like(m), {}


@pytest.mark.parametrize("mode", ["loop", "vmap"])
def test_packed_test_loss_weights_each_batch_by_its_rows_and_seeds_each_run(monkeypatch, mode):
    """pack._test_losses as train.test_loss: batches [1, 2], [3, 4], [10] give the tuple mean 20 / 5 = 4 (the mean of
    the batch means would be 5), times each run's w; each run's noise from a generator seeded with its own seed."""
    from mmbench.data.base import DataSplit, Modality
    from mmbench.pack import StackedModel, _test_losses

    monkeypatch.setenv("MMBENCH_PACK_MODE", mode)
    split = DataSplit([Modality("a", (1,), kind="vector")], {"a": torch.tensor([[1.0], [2.0], [3.0], [4.0], [10.0]])},
                      torch.zeros(5, dtype=torch.long))
    states = [{"w": torch.tensor(2.0)}, {"w": torch.tensor(-3.0)}]
    sm = StackedModel(_ScaledMean(), states, [None, None], 1e-3, torch.device("cpu"))
    noise = [[torch.randn((), generator=g).item() for _ in range(3)]
             for g in (torch.Generator().manual_seed(s) for s in (5, 9))]  # one draw per batch, in batch order
    expect = [(w * 20 + 2 * n[0] + 2 * n[1] + n[2]) / 5 for w, n in zip((2.0, -3.0), noise)]
    assert _test_losses(sm, split, 2, [5, 9], "cpu", "fp32") == pytest.approx(expect, abs=1e-6)
    assert _test_losses(sm, split, 5, [5, 9], "cpu", "fp32") == pytest.approx(
        [w * 4 + n[0] for w, n in zip((2.0, -3.0), noise)], abs=1e-6)


def test_pack_key_is_everything_that_shapes_training_but_the_seed_and_beta():
    """Runs pack only when they train on the same rows with the same settings: the seed, β (a pack gives each run
    its own), the tables a run serves and its eval settings may differ; data_seed (which rows max_train keeps), lr,
    epochs, precision or another method setting may not."""
    base = pack_key(cfg(0))
    assert pack_key(cfg(3)) == base
    c = cfg(3)
    c.tables, c.eval.metrics = ["Table 9"], []
    assert pack_key(c) == base
    c.method.beta = 10.0
    assert pack_key(c) == base and c.run_id() != cfg(3).run_id()
    c.method.latent_dim = 16
    assert pack_key(c) != base
    c = cfg(0)
    c.data_seed = 1
    assert pack_key(c) != base
    assert len({base, pack_key(cfg(0, lr=5e-4)), pack_key(cfg(0, epochs=3)), pack_key(cfg(0, precision="bf16"))}) == 4


class _CountingLoss(torch.nn.Module):
    """A loss that counts its calls in Python (what packable = False guards against): its packed forward is not the
    runs' own forwards, so the trial's comparison must refuse it. A buffer with a default exercises the stacking."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.calls = 0

    def loss(self, x):
        self.calls += 1
        return self.w * x["a"].mean() * self.calls, {}


@pytest.mark.parametrize("conv", ["grouped", "bmm"])
def test_a_vmapped_step_gives_each_run_its_own_loss_and_gradient(monkeypatch, conv):
    """One vmapped step of every packable method: each run's loss and gradient are those of the run computed alone
    (its own weights, batch and noise) to float rounding (measured: losses 1e-7, gradients 2.4e-5 relative), with
    vmap's grouped convolutions and with the convolutions as batched matmuls (MMBENCH_PACK_CONV=bmm). The
    tight, step-level half of the packed-equals-alone claim; TRAJECTORY_TOL says why trajectories drift further."""
    from mmbench.data.base import Modality

    monkeypatch.setenv("MMBENCH_PACK_CONV", conv)
    mods = [Modality(f"m{i}", (3, 28, 28)) for i in range(3)]
    g = torch.Generator().manual_seed(0)
    x = {m.name: torch.rand(3, 8, 3, 28, 28, generator=g) for m in mods}  # a different batch per run
    for name, sm in packable_stacks(mods, 3):
        convs = sum(isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)) for m in sm.template.modules())
        nets = 2 if len(sm.template.model.encoders) else 1  # VGON has decoders only (its posterior is a gradient step)
        assert convs >= 3 * nets * len(mods) and sm.matmul_convs == (convs if conv == "bmm" else 0), name  # all swapped
        for r, packed, alone, grads in packed_and_alone_gradients(sm, x):
            assert float(packed) == pytest.approx(float(alone), rel=1e-6), (name, r)
            a = torch.cat([ga.flatten() for _, _, ga in grads])
            p = torch.cat([gp.flatten() for _, gp, _ in grads])
            assert torch.linalg.norm(p - a) <= 2e-4 * torch.linalg.norm(a), (name, r)


def packed_and_alone_gradients(sm, x):
    """One vmapped step of the stacked model `sm` on x (a batch per run) and each run's loss computed alone with the
    same noise: yields (run, packed loss, loss alone, [(parameter, packed gradient, gradient alone)]) over the
    parameters the run's loss alone reaches, after checking that the packed loss reaches each of them."""
    from mmbench.pack import draw

    noise = draw(sm.draws_for(x, 0, True), [torch.Generator().manual_seed(s) for s in range(sm.size)], "cpu")
    names, params = list(sm.params), list(sm.params.values())
    packed, _ = torch.func.vmap(sm.vmapped_fn(), in_dims=(0, 0, 0, 0), randomness="error")(
        sm.params, sm.fresh_buffers(), x, noise)
    g_packed = torch.autograd.grad(packed.sum(), params, allow_unused=True)
    for r in range(sm.size):
        alone = sm.unpacked_loss(r, {k: v[r] for k, v in x.items()}, [n[r] for n in noise], sm.fresh_buffers())
        g_alone = torch.autograd.grad(alone, params, allow_unused=True)
        used = [i for i, t in enumerate(g_alone) if t is not None]
        assert used and all(g_packed[i] is not None for i in used), [names[i] for i in used if g_packed[i] is None]
        yield r, packed[r].detach(), alone.detach(), [(names[i], g_packed[i][r], g_alone[i][r]) for i in used]


@pytest.mark.parametrize("mode", ["loop", "vmap"])
def test_the_trial_refuses_a_pack_whose_loss_differs_from_the_runs_own(monkeypatch, mode):
    from mmbench.pack import StackedModel, trial

    monkeypatch.setenv("MMBENCH_PACK_MODE", mode)
    sm = StackedModel(_CountingLoss(), [{"w": torch.tensor(1.0)}, {"w": torch.tensor(2.0)}], [None, None], 1e-3, "cpu")
    x = {"a": torch.arange(1.0, 9.0).reshape(2, 4, 1)}
    gens = [torch.Generator().manual_seed(s) for s in range(2)]
    assert "the packed loss differs from the runs' own losses" in trial(sm, x, gens)
    sm.template.model.loss = lambda x: (sm.template.model.w * x["a"].mean(), {})  # a plain loss passes
    assert trial(sm, x, gens) is None


def test_a_pack_stacks_each_runs_own_buffers_and_gives_them_back():
    """A resumed run's buffers (mrVAE's step counter) come from its own state, not the template's defaults."""
    from mmbench.pack import StackedModel

    states = [{"w": torch.tensor(1.0), "step": torch.tensor(3)}, {"w": torch.tensor(2.0), "step": torch.tensor(5)}]
    sm = StackedModel(_CountingLoss(), states, [None, None], 1e-3, "cpu")
    assert [int(sm.state(r)[0]["step"]) for r in range(2)] == [3, 5]
    assert [float(sm.state(r)[0]["w"]) for r in range(2)] == [1.0, 2.0]


@pytest.mark.parametrize("layer", [torch.nn.AlphaDropout(0.1), torch.nn.Dropout3d(0.1), torch.nn.InstanceNorm2d(4)])
def test_layers_a_pack_cannot_give_each_run_its_own_of_are_not_packed(monkeypatch, layer):
    """CelebA's networks pack (BatchNorm's statistics are stacked buffers, Dropout and Dropout2d redraw per run:
    tests/test_pack_datasets.py); other dropouts and instance norm are refused, naming the layer."""
    from mmbench.registry import METHODS

    for arch in ("celeba_resnet", "celeba_resnet_lv0", "celeba_mmvm"):
        assert unpackable_reason(build_run_config({"dataset": "celeba", "method": {"name": "mopoe",
                                                                                  "architecture": arch}})) is None

    class WithLayer(MoPoE):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self.extra = layer

    monkeypatch.setitem(METHODS._items, "with_layer", WithLayer)
    c = cfg(0)
    c.method.name = "with_layer"
    assert f"architecture has {type(layer).__name__} layers" in unpackable_reason(c)


def _stack(method, mods, runs):
    """A StackedModel of `method` (latent 8) of `runs` runs seeded 0..runs-1, vmapped, built with the current
    MMBENCH_PACK_CONV."""
    sm = stacked(method, mods, runs)
    sm.vectorised = True
    return sm


def test_a_bmm_packs_every_vmapped_loss_computes_with_the_matmul_convolutions(monkeypatch):
    """MMBENCH_PACK_CONV=bmm: the training loss (a batch per run), the test loss (one batch for all runs) and the
    trial's packed loss all go through the swapped convolutions, and the trial compares them with each run's loss
    alone in PyTorch's: matmul convolutions made 1 % off change both losses and the trial refuses the pack."""
    from mmbench import packconv
    from mmbench.data.base import Modality
    from mmbench.pack import trial

    monkeypatch.setenv("MMBENCH_PACK_CONV", "bmm")
    mods = [Modality(f"m{i}", (3, 28, 28)) for i in range(2)]
    sm = _stack("mopoe", mods, 2)
    assert sm.vtemplate is not sm.template and sm.matmul_convs == 12
    x = {m.name: torch.rand(2, 4, 3, 28, 28, generator=torch.Generator().manual_seed(0)) for m in mods}

    def losses():
        with torch.no_grad():
            return [sm.loss(xs, [torch.Generator().manual_seed(s) for s in range(2)], x_dim)[0]
                    for x_dim, xs in ((0, x), (None, {k: v[0] for k, v in x.items()}))]
    right = losses()
    assert trial(sm, x, [torch.Generator().manual_seed(s) for s in range(2)]) is None
    for cls in (packconv.MatmulConv2d, packconv.MatmulConvTranspose2d):
        monkeypatch.setattr(cls, "forward", lambda self, *a, _f=cls.forward, **k: 1.01 * _f(self, *a, **k))
    for a, b in zip(right, losses()):
        assert not torch.allclose(a, b, rtol=1e-4, atol=0), (a, b)
    assert "the packed loss differs from the runs' own losses" in (
        trial(sm, x, [torch.Generator().manual_seed(s) for s in range(2)]) or "")


def test_a_bmm_packs_test_loss_puts_both_templates_in_eval_mode(monkeypatch):
    """The test loss evaluates with the plain template (it records the draws) and the bmm copy (it computes the
    vmapped loss) both in eval mode, and leaves both training: a copy left training would count mrVAE's test batches
    as training steps (its step buffer, the Gumbel temperature's schedule, moves in place) and skew the runs."""
    from mmbench.data.base import DataSplit, Modality
    from mmbench.pack import _test_losses

    mods = [Modality(f"m{i}", (3, 28, 28)) for i in range(2)]
    g = torch.Generator().manual_seed(0)
    test = DataSplit(mods, {m.name: torch.randint(0, 256, (6, 3, 28, 28), dtype=torch.uint8, generator=g)
                            for m in mods}, torch.zeros(6, dtype=torch.long))
    got = {}
    for conv in ("grouped", "bmm"):
        monkeypatch.setenv("MMBENCH_PACK_CONV", conv)
        sm = _stack("mrvae", mods, 2)
        before = {k: v.clone() for k, v in sm.buffers.items()}
        got[conv] = _test_losses(sm, test, 4, [0, 1], "cpu", "fp32")
        assert all(torch.equal(v, before[k]) for k, v in sm.buffers.items()), (conv, sm.buffers)
        assert all(m.training for t in (sm.template, sm.vtemplate) for m in t.modules())
        sm.set_training(False)
        assert not any(m.training for t in (sm.template, sm.vtemplate) for m in t.modules())
    assert got["bmm"] == pytest.approx(got["grouped"], rel=1e-5)


def test_a_looped_pack_does_not_claim_matmul_convolutions(tmp_path, data_root, monkeypatch):
    """MMBENCH_PACK_CONV=bmm changes only a vmapped pack's loss: a looped pack (a CPU's default) computes PyTorch's
    convolutions, and its runs' logs do not say otherwise."""
    monkeypatch.setenv("MMBENCH_PACK_MODE", "loop")
    monkeypatch.setenv("MMBENCH_PACK_CONV", "bmm")
    runs = [Run(cfg(s, epochs=1, max_train=32, max_test=32), tmp_path) for s in range(2)]
    done = train_pack(runs, data_root)
    for r in runs:
        assert done[r.id]["packed_with"] == 2
        assert "batched matmuls" not in r.log_path.read_text()


# method options whose loss takes other paths than the defaults (the step-level check above covers the defaults)
OPTION_VARIANTS = [("mrvae", {"objective": "r"}), ("mrvae", {"anneal_rate": 0.05}),
                   ("mmvamp", {"alpha": 1.0, "alpha_anneal_steps": 100}),
                   ("smvae", {"schedule": "two_stage", "stage1_steps": 1}), ("smvgon", {"schedule": "two_stage",
                                                                                      "stage1_steps": 1})]


@pytest.mark.parametrize("name,options", OPTION_VARIANTS)
def test_a_vmapped_step_gives_each_run_its_own_gradient_per_parameter_with_other_options(name, options):
    """The step-level check for method options with their own code paths (mrVAE's objective r and annealing, MM-VAMP's
    α annealing, the two-stage schedule in both stages), parameter by parameter: a gradient term lost in a small
    network (mrVAE's size network) is not hidden by the norm of all gradients together."""
    from mmbench.data.base import Modality

    mods = [Modality(f"m{i}", (3, 28, 28)) for i in range(3)]
    g = torch.Generator().manual_seed(0)
    x = {m.name: torch.rand(3, 8, 3, 28, 28, generator=g) for m in mods}  # a different batch per run
    sm = stacked(name, mods, 3, options)
    stages = 1
    if hasattr(sm.template.model, "plan_steps"):
        sm.template.model.plan_steps(10)
        stages = 2
    for stage in range(stages):
        if stage:
            sm.template.model.host_step()  # past stage1_steps: stage 2
        for r, packed, alone, grads in packed_and_alone_gradients(sm, x):
            assert float(packed) == pytest.approx(float(alone), rel=1e-6), (name, stage, r)
            total = torch.linalg.norm(torch.cat([ga.flatten() for _, _, ga in grads]))
            for parameter, p, a in grads:
                bound = 2e-4 * torch.linalg.norm(a) + 1e-7 * total
                assert torch.linalg.norm(p - a) <= bound, (name, stage, r, parameter)


def test_a_looped_pack_step_holds_one_runs_activations_and_gives_the_summed_backwards_bits():
    """A looped pack (a CPU's) takes each run's backward before the next run's loss (StackedModel.loss_backward):
    its losses, logs, gradients and updated buffers are bitwise those of the runs' summed loss and one backward, for
    every packable method, while the activations autograd holds peak at about one run's, not the pack's (summed, a
    pack of 12 of MM-VAMP's translated-PolyMNIST ResNets held 22 GB on a CPU and was killed for memory)."""
    import contextlib
    import weakref

    from mmbench.data.base import Modality
    from mmbench.registry import METHODS

    class Held:  # a saved activation, counted while autograd holds it
        live = peak = 0

        def __init__(self, t):
            self.t, self.n = t, t.numel() * t.element_size()
            Held.live += self.n
            Held.peak = max(Held.peak, Held.live)
            weakref.finalize(self, Held.gone, self.n)

        @staticmethod
        def gone(n):
            Held.live -= n

    def step(sm, how, counted):
        gens = [torch.Generator().manual_seed(s) for s in range(3)]
        x = {m.name: torch.rand(3, 6, 3, 28, 28, generator=torch.Generator().manual_seed(i))
             for i, m in enumerate(mods)}
        Held.live = Held.peak = 0
        with torch.autograd.graph.saved_tensors_hooks(Held, lambda h: h.t) if counted else contextlib.nullcontext():
            if how == "summed":
                losses, logs = sm.loss(x, gens, 0)
                losses.sum().backward()
            else:
                losses, logs = sm.loss_backward(x, gens)
        grads = {k: p.grad for k, p in sm.params.items()}
        return losses.detach(), logs, grads, {k: b.clone() for k, b in sm.buffers.items()}, Held.peak

    mods, checked = [Modality(f"m{i}", (3, 28, 28)) for i in range(3)], []
    for (name, summed_sm), (_, own_sm) in zip(packable_stacks(mods, 3), packable_stacks(mods, 3)):
        summed_sm.vectorised = own_sm.vectorised = False
        # VGON's and SMVGON's inner step (torch.func.grad) refuses saved-tensor hooks: their bits only
        counted = "inner_step" not in METHODS.get(name).option_rules
        *summed, summed_peak = step(summed_sm, "summed", counted)
        *own, own_peak = step(own_sm, "run by run", counted)
        for a, b in zip(summed, own):
            assert a.keys() == b.keys() if isinstance(a, dict) else True, name
            for k in (a if isinstance(a, dict) else [None]):
                u, v = (a[k], b[k]) if k is not None else (a, b)
                assert (u is None and v is None) or torch.equal(u, v), (name, k)
        checked.append(name)
        assert not counted or own_peak < 0.5 * summed_peak, (name, own_peak, summed_peak)  # 3 runs: about a third
    assert "mmvamp" in checked and "mopoe" in checked
