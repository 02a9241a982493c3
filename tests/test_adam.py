"""MMBENCH_ADAM=fused: the trainers' Adam in PyTorch's fused implementation (one kernel for all parameters) for a GPU
to measure against the default (docs/gpu-runs/kernel_choices.py). The same experiment: same run id, the default's
update to float rounding, named in the run's log; a resume continues in the implementation its process chose,
whichever wrote the checkpoint; packed runs use it too."""
import pytest
import torch

from mmbench.devices import device_of
from mmbench.errors import MMBenchError
from mmbench.pack import train_pack
from mmbench.results import Run
from mmbench.train import adam_options, load_adam_state, new_adam, train
from conftest import on_gpu_if_asked
from test_train import cfg, moved_and_apart, trained_with_and_without, weights

NOTE = "Adam fused (MMBENCH_ADAM=fused)"


def _saved_impl(run):
    group = torch.load(run.ckpt_dir / "last.pt", weights_only=False)["optimizer"]["param_groups"][0]
    return group["fused"], group["foreach"]


def _close(run_cfg, a, b):
    """Weights a and b apart by a small fraction of what training moved them (float rounding, not another update)."""
    moved, apart = (v.norm() for v in moved_and_apart(run_cfg, a, b))
    assert float(moved) > 0 and float(apart) <= 1e-3 * float(moved), (float(apart), float(moved))


def test_an_unknown_implementation_is_refused(monkeypatch):
    monkeypatch.setenv("MMBENCH_ADAM", "apex")
    with pytest.raises(MMBenchError, match=r"MMBENCH_ADAM='apex': use default or fused"):
        adam_options()
    monkeypatch.setenv("MMBENCH_ADAM", "")
    assert adam_options() == {"foreach": None, "fused": None}


def test_a_fused_run_is_the_default_run_to_float_rounding_and_says_so(tmp_path, data_root, monkeypatch):
    c = cfg(train={"max_test": 64})
    default, fused = trained_with_and_without(c, tmp_path, data_root, monkeypatch, "MMBENCH_ADAM", "fused")
    assert fused.id == default.id
    assert NOTE in fused.log_path.read_text() and NOTE not in default.log_path.read_text()
    assert _saved_impl(fused) == (True, None) and _saved_impl(default) == (None, None)
    _close(c, weights(default), weights(fused))


@pytest.mark.parametrize("first,then", [("fused", "default"), ("default", "fused")])
def test_a_resume_continues_in_its_processs_implementation(tmp_path, data_root, monkeypatch, first, then):
    """On a GPU (docs/gpu-runs/device-check.sh) this also moves Adam's step counters between the device (fused) and
    the host (foreach)."""
    on_gpu_if_asked()
    c = cfg(train={"epochs": 3, "max_test": 64})
    whole = Run(c, tmp_path / "whole")
    train(whole, data_root)
    monkeypatch.setenv("MMBENCH_ADAM", first)
    part = Run(c, tmp_path / "part")
    train(part, data_root, stop_after_epoch=1)
    assert _saved_impl(part)[0] == (True if first == "fused" else None)
    monkeypatch.setenv("MMBENCH_ADAM", then)
    train(part, data_root)
    assert "resumed from" in part.log_path.read_text()  # the state first's implementation wrote, loaded by then's
    assert _saved_impl(part)[0] == (True if then == "fused" else None)  # not the implementation that wrote last.pt
    _close(c, weights(whole), weights(part))


def test_loading_a_state_sets_the_processs_implementation_and_leaves_the_state(monkeypatch):
    """On a GPU (device-check.sh) the fused state's step counter, on the GPU, comes back to the host."""
    on_gpu_if_asked()
    dev = device_of()
    p = [torch.nn.Parameter(torch.randn(4, device=dev))]
    monkeypatch.setenv("MMBENCH_ADAM", "fused")
    opt = new_adam(p, 0.25)
    p[0].grad = torch.randn(4, device=dev)
    opt.step()
    saved = opt.state_dict()
    monkeypatch.setenv("MMBENCH_ADAM", "default")
    other = new_adam(p, 0.25)
    load_adam_state(other, saved)
    assert other.param_groups[0]["fused"] is None and saved["param_groups"][0]["fused"] is True
    assert other.param_groups[0]["lr"] == saved["param_groups"][0]["lr"] == 0.25  # the run's, not Adam's default
    assert torch.equal(other.state[p[0]]["exp_avg"], opt.state[p[0]]["exp_avg"])
    assert other.state[p[0]]["step"].device.type == "cpu"  # not read back from the GPU at every step
    other.step()  # steps in the default implementation from the fused one's moments


def test_packed_runs_use_it_too(tmp_path, data_root, monkeypatch):
    monkeypatch.setenv("MMBENCH_ADAM", "fused")
    runs = [Run(cfg(seed=s, train={"epochs": 1, "max_test": 32}), tmp_path) for s in range(2)]
    done = train_pack(runs, data_root)
    for r in runs:
        assert done[r.id]["packed_with"] == 2
        assert NOTE in r.log_path.read_text() and _saved_impl(r) == (True, None)


def test_a_resumed_pack_continues_in_its_processs_implementation(monkeypatch):
    """A pack's Adam is loaded from its runs' saved states (stacked) as a single run's is: in the resuming process's
    implementation, whichever wrote the checkpoints, with the runs' moments."""
    from mmbench.pack import StackedModel

    monkeypatch.setenv("MMBENCH_ADAM", "fused")
    states, opt_states = [], []
    for s in range(2):
        torch.manual_seed(s)
        net = torch.nn.Linear(2, 1)
        opt = new_adam(net.parameters(), 1e-3)
        net(torch.randn(3, 2)).sum().backward()
        opt.step()
        states.append(net.state_dict())
        opt_states.append(opt.state_dict())
    assert opt_states[0]["param_groups"][0]["fused"] is True
    monkeypatch.setenv("MMBENCH_ADAM", "default")
    sm = StackedModel(torch.nn.Linear(2, 1), states, opt_states, 1e-3, "cpu")
    assert sm.opt.param_groups[0]["fused"] is None and sm.opt.param_groups[0]["foreach"] is None
    first = sm.opt.state[sm.params["model.weight"]]["exp_avg"]
    assert torch.equal(first, torch.stack([o["state"][0]["exp_avg"] for o in opt_states]))
