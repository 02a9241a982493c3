"""Training determinism, checkpoints, resume and model selection; the results store."""
import json
import multiprocessing as mp

import pytest
import torch

from mmbench.config import build_run_config
from mmbench.errors import MMBenchError
from mmbench.results import Run, atomic_json
from mmbench.train import load_trained, train

TINY = {"dataset": "polydigits", "method": {"name": "mopoe", "latent_dim": 8},
        "train": {"epochs": 2, "batch_size": 32, "max_train": 96}}


def cfg(**over):
    d = json.loads(json.dumps(TINY))
    for k, v in over.items():
        d.setdefault(k, {}).update(v) if isinstance(v, dict) else d.__setitem__(k, v)
    return build_run_config(d)


def weights(run):
    return torch.load(run.ckpt_dir / "last.pt", weights_only=False)["model"]


def test_same_seed_same_losses(tmp_path, data_root):
    a = train(Run(cfg(), tmp_path / "a"), data_root)
    b = train(Run(cfg(), tmp_path / "b"), data_root)
    c = train(Run(cfg(seed=1), tmp_path / "c"), data_root)
    assert a["history"] == [{k: v for k, v in h.items()} for h in b["history"]]
    assert a["history"][-1]["train_loss"] != c["history"][-1]["train_loss"]


def test_interrupted_and_resumed_equals_uninterrupted(tmp_path, data_root):
    full = Run(cfg(train={"epochs": 3}), tmp_path / "full")
    train(full, data_root)
    part = Run(cfg(train={"epochs": 3}), tmp_path / "part")
    s1 = train(part, data_root, stop_after_epoch=1)
    assert s1["epochs"] == 1 and part.status() == "partial"
    with pytest.raises(MMBenchError, match="stopped at epoch 1 of 3"):
        load_trained(part)
    s2 = train(part, data_root)
    assert s2["epochs"] == 3
    wa, wb = weights(full), weights(part)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert "resumed from" in part.log_path.read_text()


def test_model_selection_best_test_loss(tmp_path, data_root):
    run = Run(cfg(train={"epochs": 3, "select": "best_test_loss"}), tmp_path)
    summary = train(run, data_root)
    best = min(summary["history"], key=lambda h: h["test_loss"])
    ck = torch.load(run.ckpt_dir / "best.pt", weights_only=False)
    assert ck["epoch"] == best["epoch"]
    model = load_trained(run)
    assert all(torch.equal(model.state_dict()[k], ck["model"][k]) for k in ck["model"])
    assert not model.training


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


def test_atomic_json_leaves_old_file_on_failure(tmp_path):
    path = tmp_path / "m.json"
    atomic_json(path, {"a": 1})

    class Bad:
        def __str__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        atomic_json(path, {"a": Bad()})
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


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
    assert a["history"] == b["history"]
    wa, wb = weights(full), weights(part)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_checkpoint_minutes_at_default_keeps_run_ids():
    base = cfg()
    # the id of the default polydigits config before checkpoint_minutes existed (tests/test_config.py)
    assert build_run_config({"dataset": "polydigits"}).run_id() == "polydigits-vanilla-mopoe-s0-a78aea8e21"
    assert cfg(train={"checkpoint_minutes": None}).run_id() == base.run_id()
    assert cfg(train={"checkpoint_minutes": 5}).run_id() != base.run_id()
    with pytest.raises(MMBenchError, match="train.checkpoint_minutes"):
        cfg(train={"checkpoint_minutes": 0})
