"""`mmbench run` after interruptions (the README's resume promise), through the real command line:
Ctrl-C exits 130 without a traceback, a SIGKILL mid-epoch leaves a `partial` run that the next
`mmbench run` finishes with the same weights and metrics as an uninterrupted run, and a trained but
unevaluated run is evaluated without retraining.

One test, ~15-25 s on 2 cores: four processes (each pays the import of torch: the Ctrl-C'd `mmbench run` and its
worker, the killed worker, the last run's worker; that last `mmbench run` itself runs in this process) on a
2-epoch, 20-step-per-epoch polydigits run; the steps must be slow enough to be interrupted mid-epoch (an epoch takes
~3.5 s on one thread; the SIGKILL follows the first progress report of epoch 2, which the worker writes at most
half a second late, within a 20 ms poll). Two epochs are all it needs: the Ctrl-C leaves a mid-epoch checkpoint
of epoch 1, the killed worker resumes it and is killed in epoch 2, and the last `mmbench run` resumes from the end
of epoch 1 and trains epoch 2 to the reference's weights.
"""
import json
import os
import re
import signal
import subprocess
import sys
import time

import torch

from mmbench.suite import load_suite
from mmbench.results import Run
from mmbench.train import train
from mmbench.cli import INTERRUPTED
from mmbench.evaluate import execute

SUITE = """
name: resume
description: A tiny run to interrupt.
experiments:
  - name: r
    reproduces: ["R"]
    dataset: polydigits
    methods: [mopoe]
    seeds: [0]
defaults:
  method: {latent_dim: 8}
  train: {epochs: 2, batch_size: 32, max_train: 640, max_test: 64}
  eval: {metrics: [latent_classification], test_samples: 64, lr_train_samples: 64}
"""


def start(args, env):
    return subprocess.Popen([sys.executable, "-m", "mmbench", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "200", **env},
                            start_new_session=True,  # its own process group, as a terminal's foreground job
                            # and Ctrl-C's default action, as a terminal gives it: a shell that starts the tests in
                            # the background (`make test &`) hands its children SIGINT ignored
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def dry_run(suite, runs, data_root):
    """`mmbench run --dry-run` in this process (it runs nothing; a subprocess would only add an import of torch)."""
    from typer.testing import CliRunner

    from mmbench.cli import app

    r = CliRunner().invoke(app, ["run", str(suite), "--dry-run", "--runs-dir", str(runs), "--data-root", str(data_root)],
                           env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    return r.output


def wait_for_training(run, proc, epoch=1, timeout=180):
    """Until the process reports a training step of `epoch` or later (progress.json is written inside the
    epoch loop, phase "train epoch e/E")."""
    t0 = time.time()
    while True:
        try:
            phase = json.loads((run.dir / "progress.json").read_text())["phase"]
            if phase.startswith("train epoch") and int(phase.split()[2].split("/")[0]) >= epoch:
                return
        except (OSError, ValueError, KeyError):
            pass
        assert proc.poll() is None, f"the process ended before training: {proc.communicate()}"
        assert time.time() - t0 < timeout, "no training step reported"
        time.sleep(0.02)


def ckpt(run):
    return torch.load(run.ckpt_dir / "last.pt", weights_only=False)


def test_interrupted_runs_resume_to_the_uninterrupted_result(tmp_path, data_root, mmbench_here):
    suite = tmp_path / "suite.yaml"
    suite.write_text(SUITE)
    (cfg,) = load_suite(suite).runs("full")

    # Reference: trained uninterrupted, not evaluated yet -> `partial`; then evaluated by the worker's
    # entry point (what `mmbench run` executes) without being retrained.
    ref = Run(cfg, tmp_path / "ref")
    ref.init()
    train(ref, data_root)
    trained = (ref.ckpt_dir / "last.pt").read_bytes()
    stamp = (ref.ckpt_dir / "last.pt").stat().st_mtime_ns
    out = dry_run(suite, tmp_path / "ref", data_root)
    assert "partial" in out and "1 partial" in out
    execute(ref, data_root)
    # evaluated, not retrained: training is deterministic, so equal bytes alone would not tell; the file is untouched
    assert (ref.ckpt_dir / "last.pt").read_bytes() == trained
    assert (ref.ckpt_dir / "last.pt").stat().st_mtime_ns == stamp
    assert ref.metrics_path.exists() and "1 done" in dry_run(suite, tmp_path / "ref", data_root)

    env = {"MMBENCH_DATA": str(data_root), "MMBENCH_RUNS": str(tmp_path / "runs")}
    run = Run(cfg, tmp_path / "runs")
    # Ctrl-C (SIGINT to the foreground process group) while training: exit 130, no traceback.
    p = start(["run", suite], env)
    wait_for_training(run, p)
    os.killpg(p.pid, signal.SIGINT)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130, (out, err)
    assert "Traceback" not in err and "Traceback" not in out
    assert " ".join(err.split()).endswith(" ".join(INTERRUPTED.split()))  # the last words said (rich may wrap them)
    assert not run.metrics_path.exists()

    # SIGKILL of the process training the run, inside an epoch.
    (run.dir / "progress.json").unlink()
    p = subprocess.Popen([sys.executable, "-m", "mmbench.worker", str(run.dir)], env={**os.environ, **env},
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_training(run, p, epoch=2)
    t0 = time.time()  # epoch 1's last.pt is written off the training path (train.CHECKPOINTS): wait till it is there
    while not (run.ckpt_dir / "last.pt").exists():  # (atomic_write: whole once it exists)
        assert p.poll() is None and time.time() - t0 < 120, "epoch 1's checkpoint was not written"
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    p.wait(60)
    assert not run.metrics_path.exists()
    assert ckpt(run)["state"]["epoch"] < 2, "the run finished before it was killed; make its epochs longer"
    assert "1 partial" in dry_run(suite, tmp_path / "runs", data_root)

    # the next `mmbench run` in this process (its worker is still a process of its own): an interpreter less
    r = mmbench_here("run", suite, env=env)
    assert r.returncode == 0, r.stderr
    assert "1 of 1 runs finished" in r.stdout
    assert re.search(r"resumed from \S+ at epoch 1", run.log_path.read_text())  # resumed, not restarted
    a, b = ckpt(ref), ckpt(run)
    assert a["state"]["history"] == b["state"]["history"]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert json.loads(ref.metrics_path.read_text())["metrics"] == json.loads(run.metrics_path.read_text())["metrics"]
