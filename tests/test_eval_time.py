"""docs/eval_time.py (the full-budget evaluation time of docs/metrics.md and device-check.sh's `evaltime` part): it
times a trained run's model under MoPoE Fig. 3's evaluation settings, read from the suite, and leaves the source
run as it was."""
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from mmbench.config import build_run_config
from mmbench.results import Run
from mmbench.train import train

SCRIPT = Path(__file__).resolve().parents[1] / "docs" / "eval_time.py"
TINY = {"dataset": "polydigits", "method": {"name": "mopoe", "latent_dim": 8},
        "train": {"epochs": 1, "batch_size": 32, "max_train": 64, "max_test": 32},
        "eval": {"metrics": ["latent_classification"], "test_samples": 40}}


def test_eval_time_times_a_trained_run_under_fig3s_evaluation_settings(tmp_path, data_root):
    source = Run(build_run_config(TINY), tmp_path / "runs")
    source.init()  # its config.yaml, as `mmbench train` writes it
    train(source, data_root)
    def files():  # every path, and each file's bytes and mtime: a rewrite or an append shows, not only a new name
        return {str(p.relative_to(source.dir)): (p.read_bytes(), p.stat().st_mtime_ns) if p.is_file() else None
                for p in source.dir.rglob("*")}

    before = files()
    env = dict(os.environ, EVALTIME_SRC=str(source.dir), MMBENCH_DATA=str(data_root),
               EVALTIME_RUNS=str(tmp_path / "timed"), OMP_NUM_THREADS="1")
    # 12 test tuples; the suite's 500 regression rows capped to polydigits' size by the overrides; classifiers for 1
    # epoch (their floor off: a timing, not a result)
    r = subprocess.run([sys.executable, str(SCRIPT), "full", "12", "lr_train_samples=64", "ll_samples=2",
                        "joint_samples=16", "classifier_epochs=1", "classifier_min_accuracy=0.0"],
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    line = r.stdout.strip().splitlines()[-1]
    assert line.startswith("full ") and " s wall, " in line and "per metric (s):" in line, line
    # the source run is untouched: nothing written into it, its checkpoints read where they are
    assert files() == before
    timed, = [p for p in (tmp_path / "timed").iterdir() if (p / "metrics.json").exists()]
    cfg = yaml.safe_load((timed / "config.yaml").read_text())["eval"]
    # Fig. 3's MoPoE evaluation (suites/mopoe_iclr21.yaml) wherever the arguments do not set a field: its metrics and
    # proposals, not the source run's
    assert cfg["metrics"] == ["latent_classification", "coherence", "loglik"]
    assert (cfg["mixture_representation"], cfg["ll_proposal"], cfg["lr_protocol"]) == ("component", "component",
                                                                                       "mopoe")
    assert (cfg["test_samples"], cfg["ll_samples"], cfg["lr_train_samples"]) == (12, 2, 64)
    metrics = json.loads((timed / "metrics.json").read_text())
    assert metrics["test_tuples"] == 12
    assert set(metrics["metric_seconds"]) == {"latent_classification", "coherence", "loglik"}
    values = metrics["metrics"]
    assert "loglik/joint" in values and "coherence_by_n/1" in values and "latent_acc_by_n/1" in values
