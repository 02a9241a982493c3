import pytest

from mmbench.runner import worker_slots


def test_worker_slots(monkeypatch):
    import torch

    from mmbench.errors import MMBenchError
    from mmbench.runner import gpu_slots

    assert gpu_slots("0,1") == ["0", "1"] and gpu_slots(" 3 ") == ["3"] and gpu_slots("0,0") == ["0", "0"]
    assert gpu_slots("GPU-8f2e1c3a-55aa-4b1e-9c3d-0123456789ab,MIG-1/2/0")[1] == "MIG-1/2/0"
    assert worker_slots(None, 2) == ["", ""]  # CPU workers see no device
    assert worker_slots(None, 0) == [""]
    with pytest.raises(MMBenchError, match="torch sees no GPU here"):  # (the tests hide every GPU)
        worker_slots("0,1", 4)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)  # a 2-GPU machine
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert worker_slots("0,1", 4) == ["0", "1"]  # one worker per listed GPU
    with pytest.raises(MMBenchError, match="GPU 2 does not exist; this machine has 2 \\(0-1\\)"):
        worker_slots("1,2", 1)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")  # indices beyond what this process sees cannot be judged
    assert worker_slots("4", 1) == ["4"]


def test_a_run_listed_by_two_experiments_is_scheduled_once_with_both_tables(tmp_path):
    from mmbench.config import build_run_config
    from mmbench.results import Run
    from mmbench.runner import make_packs, unique_runs

    base = {"dataset": "polydigits", "method": {"name": "smvae"}}
    a = Run(build_run_config({**base, "tables": ["SMVAE Fig. 2"]}), tmp_path)
    b = Run(build_run_config({**base, "tables": ["SMVAE Fig. 3"]}), tmp_path)
    other = Run(build_run_config({**base, "seed": 1, "tables": ["SMVAE Fig. 2"]}), tmp_path)
    runs = unique_runs([a, b, other])
    assert [r.id for r in runs] == [a.id, other.id]
    assert runs[0].cfg.tables == ["SMVAE Fig. 2", "SMVAE Fig. 3"]
    # never the same run twice in one pack or in two packs (its lock would refuse the second)
    ids = [r.id for p in make_packs(runs, None, 2) for r in p]
    assert sorted(ids) == sorted({a.id, other.id})


def test_resume_point_reads_a_checkpoint_once_per_version(tmp_path, monkeypatch):
    """`--dry-run` asks each run's resume point several times: last.pt is read once, and again once rewritten."""
    import torch

    from mmbench import train
    from mmbench.config import build_run_config
    from mmbench.results import Run
    from mmbench.runner import resume_point

    run = Run(build_run_config({"dataset": "polydigits", "method": {"name": "mopoe"}}), tmp_path)
    assert resume_point(run) == (0, 0)  # no checkpoint: from the start
    run.ckpt_dir.mkdir(parents=True)

    def save(epoch, step):
        torch.save({"model": {}, "optimizer": {}, "rng": torch.get_rng_state(),
                    "state": {"epoch": epoch, "step": step, "history": [], "best_test_loss": 1.0}},
                   run.ckpt_dir / "last.pt")

    reads = []
    real = train.read_checkpoint
    monkeypatch.setattr(train, "read_checkpoint", lambda *a, **k: reads.append(a[0]) or real(*a, **k))
    save(3, 0)
    assert [resume_point(run) for _ in range(3)] == [(3, 0)] * 3 and len(reads) == 1
    save(4, 17)  # training went on: a new version of the file
    assert resume_point(run) == (4, 17) and len(reads) == 2
