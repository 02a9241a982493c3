"""`mmbench run --executor slurm` on a real Slurm (started by .ci/slurm-up.sh; skipped where there is none).

Two tiny polydigits runs (experiments `a` = mopoe and `b` = mvae, 2 epochs of 25 steps). Every Slurm
result is compared with the local executor's result of the same run ids (`local_ref`).
"""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mmbench.slurm import SlurmOptions, available, parse_sbatch, resolve_options

REPO = Path(__file__).resolve().parents[1]
REASON = available()
needs_slurm = pytest.mark.skipif(REASON is not None, reason=f"no Slurm here ({REASON}); start one with "
                                                            f".ci/slurm-up.sh (root) to run these tests")

SUITE = """name: slurm-test
defaults:
  method: {{latent_dim: 8, beta: 1.0, image_likelihood: gaussian}}
  train: {{epochs: 2, batch_size: 32, lr: 2.0e-3, max_train: 800, max_test: 64}}
  eval: {{metrics: [latent_classification], test_samples: 64, lr_train_samples: 64}}
slurm: {{mem: 4G, time: 10, signal_delay_s: 30}}
experiments:
  - {{name: a, dataset: polydigits, variant: vanilla, methods: [mopoe]}}
  - {{name: b, dataset: polydigits, variant: vanilla, methods: [mvae]{b_slurm}}}
"""


def write_suite(tmp: Path, b_slurm: str = "") -> Path:
    p = tmp / "suite.yaml"
    p.write_text(SUITE.format(b_slurm=f", slurm: {{{b_slurm}}}" if b_slurm else ""))
    return p


def dry_run(cli_here, suite, runs_dir) -> str:
    """`mmbench run SUITE --dry-run` in this process, its output (wide enough for untruncated ids and log paths)."""
    r = cli_here("run", suite, "--dry-run", "--runs-dir", runs_dir, width=400)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def mmbench(*args, data_root, runs_dir, background=False, timeout=240):
    cmd = [sys.executable, "-m", "mmbench", "run", *map(str, args), "--runs-dir", str(runs_dir),
           "--data-root", str(data_root)]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", COLUMNS="200")
    if background:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def run_dirs(runs_dir: Path):
    return {p.name.split("-")[2]: p for p in runs_dir.iterdir() if p.is_dir() and not p.name.startswith(".")}


def metrics(run_dir: Path):
    return json.loads((run_dir / "metrics.json").read_text())["metrics"]


def epoch_lines(run_dir: Path) -> int:
    return len(re.findall(r" epoch epoch=", (run_dir / "log.txt").read_text()))


def wait_training(run_dir: Path, min_done: int, timeout: float = 180) -> dict:
    """Until the run's job is past `min_done` training steps (and not past the first epoch's end)."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        try:
            p = json.loads((run_dir / "progress.json").read_text())
            if p["phase"].startswith("train") and p["done"] >= min_done:
                return json.loads((run_dir / "slurm.json").read_text())
        except (OSError, ValueError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"{run_dir.name} did not reach training step {min_done} in {timeout} s")


def release_when_requeued(job_id: str, timeout: float = 180) -> None:
    """Slurm holds a requeued job ~2 minutes (BeginTime); let it start now so the test stays short."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T %r"], capture_output=True, text=True).stdout
        if out.startswith("PENDING"):
            subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], capture_output=True)
            return
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} was not requeued")


@pytest.fixture(scope="module")
def local_ref(tmp_path_factory, data_root):
    """The suite through the local executor: the results every Slurm path must reproduce exactly."""
    tmp = tmp_path_factory.mktemp("local")
    out = mmbench(write_suite(tmp), "-j", "2", data_root=data_root, runs_dir=tmp / "runs")
    assert out.returncode == 0, out.stdout + out.stderr
    return {m: metrics(d) for m, d in run_dirs(tmp / "runs").items()}


def test_options_merge_and_validate(tmp_path, monkeypatch):
    o = resolve_options([({"mem": "4G", "sbatch": {"account": "lab"}}, "site"), ({"time": 30}, "suite"),
                         ({"sbatch": {"qos": "high"}, "mem": "8G"}, "cli")])
    assert (o.mem, o.time, o.sbatch) == ("8G", 30, {"account": "lab", "qos": "high"})
    assert parse_sbatch(["account=lab", "--exclusive"]) == {"account": "lab", "exclusive": True}
    with pytest.raises(Exception, match="suite.memory: unknown field"):
        resolve_options([({"memory": "4G"}, "suite")])
    with pytest.raises(Exception, match="cli.time: must be > 0"):
        resolve_options([({"time": 0}, "cli")])
    site = tmp_path / "slurm.yaml"
    site.write_text("slurm: {partition: gpu, gpus_per_job: 2}\n")
    monkeypatch.setenv("MMBENCH_SLURM_CONFIG", str(site))
    from mmbench.slurm import site_options

    assert site_options() == {"partition": "gpu", "gpus_per_job": 2}
    assert SlurmOptions().partition is None
    monkeypatch.setenv("MMBENCH_SLURM_CONFIG", str(tmp_path / "slrum.yaml"))  # named, but a typo: refused, not ignored
    with pytest.raises(Exception, match=r"MMBENCH_SLURM_CONFIG=.*slrum.yaml: no such file"):
        site_options()
    monkeypatch.delenv("MMBENCH_SLURM_CONFIG")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # the default place, absent: no site options
    assert site_options() == {}


@pytest.mark.parametrize("text, error", [
    (b"- gpu\n", r"slurm.yaml: expected a mapping of Slurm options"),
    (b"hello\n", r"slurm.yaml: expected a mapping of Slurm options"),
    (b"partition: g\xffpu\n", r"slurm.yaml: not valid YAML at line 1"),
    (b"slurm: {time: 30}\ntime: 5\n", r"slurm.yaml: time: beside a `slurm:` block"),
    (b"sbatch: {account: null}\n", r"slurm.yaml.sbatch.account: must be a string or number"),
    (b"partition: ''\n", r"slurm.yaml.partition: must name a partition or be null"),
    (b"mem: ' '\n", r"slurm.yaml.mem: must name a size, e.g. 4G or be null"),
    (b"sbatch: {time: 5}\n", r"slurm.yaml.sbatch.time: clashes with the `time` option; set time: instead"),
    (b"sbatch: {cpus-per-task: 4}\n", r"slurm.yaml.sbatch.cpus-per-task: clashes with the `cpus_per_job` option"),
    (b"sbatch: {job_name: x}\n", r"slurm.yaml.sbatch.job_name: mmbench sets --job_name itself"),
])
def test_a_damaged_site_config_is_a_one_line_error_naming_it(tmp_path, monkeypatch, text, error):
    """A list or a string at the top and a byte that is not UTF-8 raised AttributeError / UnicodeDecodeError (a
    traceback); options beside a `slurm:` block were ignored without a word; `account: null` became --account=None;
    an empty partition or mem was left out of the job without a word; an sbatch entry for an option submit() writes
    itself (time, cpus-per-task, job_name) gave the job two such lines."""
    from mmbench.errors import ConfigError
    from mmbench.slurm import site_options

    site = tmp_path / "slurm.yaml"
    site.write_bytes(text)
    monkeypatch.setenv("MMBENCH_SLURM_CONFIG", str(site))
    with pytest.raises(ConfigError, match=error):
        site_options()
    site.write_text("slurm: null\n")  # an empty block: no site options
    assert site_options() == {}


def test_slurm_options_need_slurm_executor(tmp_path):
    from typer.testing import CliRunner

    from mmbench.cli import app
    from mmbench.errors import MMBenchError

    for extra, said in ((["--slurm-mem", "4G"], "add --executor slurm"),
                        (["--executor", "pbs"], "choose local or slurm")):
        r = CliRunner().invoke(app, ["run", str(write_suite(tmp_path)), "--runs-dir", str(tmp_path / "r"), *extra])
        assert isinstance(r.exception, MMBenchError) and said in str(r.exception), r.exception


def test_unreachable_slurm_is_refused_before_any_local_work(tmp_path, monkeypatch):
    """`run --executor slurm` where Slurm cannot be used says so before preparing data or training classifiers."""
    from typer.testing import CliRunner

    import mmbench.cli as cli
    import mmbench.slurm as slurm
    from mmbench.errors import MMBenchError

    monkeypatch.setattr(slurm, "available", lambda: "sinfo lists no partition")
    monkeypatch.setattr(cli, "_prepare_for", lambda *a, **k: pytest.fail("prepared data before checking Slurm"))
    r = CliRunner().invoke(cli.app, ["run", str(write_suite(tmp_path)), "--runs-dir", str(tmp_path / "r"),
                                     "--executor", "slurm"])
    assert isinstance(r.exception, MMBenchError) and "Slurm cannot be used here: sinfo lists no partition" in str(r.exception)


@needs_slurm
def test_two_concurrent_submissions_train_each_run_once_and_match_local(tmp_path, data_root, local_ref, mmbench_here):
    suite, runs = write_suite(tmp_path), tmp_path / "runs"
    procs = [mmbench(suite, "--executor", "slurm", data_root=data_root, runs_dir=runs, background=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=240)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert sum("submitted 2 run(s)" in o for o in outs) == 1, outs  # the second saw the first one's jobs
    assert sum("already queued" in o or "already running" in o for o in outs) >= 1, outs
    dirs = run_dirs(runs)
    for m, d in dirs.items():
        assert epoch_lines(d) == 2, f"{m} trained more than once: {d / 'log.txt'}"
        assert metrics(d) == local_ref[m]
        assert Path(os.readlink(d / "slurm.err")).exists()
    rep = dry_run(mmbench_here, suite, runs)
    assert rep.count(" done ") >= 2 and "Slurm job" in rep, rep


@needs_slurm
def test_requeue_and_pre_timeout_signal_resume_to_identical_metrics(tmp_path, data_root, local_ref):
    """Run a (mopoe) is requeued with `scontrol requeue`, run b (mvae) gets the pre-timeout signal USR2
    mid-epoch; both save a checkpoint after their current step, restart, resume and end identical."""
    suite, runs = write_suite(tmp_path), tmp_path / "runs"
    proc = mmbench(suite, "--executor", "slurm", data_root=data_root, runs_dir=runs, background=True)
    t0 = time.time()
    while len(run_dirs(runs) if runs.exists() else {}) < 2 and time.time() - t0 < 180:
        time.sleep(0.2)
    dirs = run_dirs(runs)
    job_a = wait_training(dirs["mopoe"], 3)["job_id"]  # at least 47 of 50 steps to go
    subprocess.run(["scontrol", "requeue", job_a], check=True)
    job_b = wait_training(dirs["mvae"], 3)["job_id"]
    # scancel keeps retrying ("Job can not be altered now") for ~90 s once the job has requeued itself:
    # do not wait for it.
    sig = subprocess.Popen(["scancel", "--signal=USR2", job_b], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    release_when_requeued(job_a)
    release_when_requeued(job_b)
    out = proc.communicate(timeout=240)[0]
    sig.kill()
    sig.wait()
    assert proc.returncode == 0, out
    for m, signame in (("mopoe", "SIGTERM"), ("mvae", "SIGUSR2")):
        log = (dirs[m] / "log.txt").read_text()
        assert re.search(rf"stopped \(Slurm sent {signame}\) (at|after) epoch \d", log), log
        assert re.search(r"resumed from .* at epoch \d", log), log
        assert "(restart 1)" in log, log
        assert epoch_lines(dirs[m]) == 2, log
        assert metrics(dirs[m]) == local_ref[m]
    assert "requeueing (submitit)" in (dirs["mvae"] / "log.txt").read_text()


@needs_slurm
def test_scancel_then_same_command_resumes_without_recomputing(tmp_path, data_root, local_ref, mmbench_here):
    suite, runs = write_suite(tmp_path), tmp_path / "runs"
    proc = mmbench(suite, "--executor", "slurm", data_root=data_root, runs_dir=runs, background=True)
    t0 = time.time()  # both run folders: they are made one after the other, so seeing mopoe's is not seeing mvae's
    while not {"mopoe", "mvae"} <= set(run_dirs(runs) if runs.exists() else {}) and time.time() - t0 < 180:
        time.sleep(0.2)
    dirs = run_dirs(runs)
    job_a = wait_training(dirs["mopoe"], 3)["job_id"]
    subprocess.run(["scancel", job_a], check=True)
    out = proc.communicate(timeout=240)[0]
    assert proc.returncode == 1, out
    flat = " ".join(out.split())
    assert f"FAILED {dirs['mopoe'].name}" in flat and "CANCELLED" in flat and f"{job_a}_0_log.err" in flat, flat
    assert (dirs["mvae"] / "metrics.json").exists()  # the other job went on
    rep = dry_run(mmbench_here, suite, runs)
    assert "failed (CANCELLED" in rep and f"{job_a}_0_log.err" in rep, rep
    again = mmbench(suite, "--executor", "slurm", data_root=data_root, runs_dir=runs)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "submitted 1 run(s)" in " ".join(again.stderr.split())  # the finished run is not resubmitted
    log = (dirs["mopoe"] / "log.txt").read_text()
    assert re.search(r"stopped \(Slurm sent SIGTERM\)", log) and re.search(r"resumed from .* at epoch \d", log), log
    assert epoch_lines(dirs["mopoe"]) == 2 and epoch_lines(dirs["mvae"]) == 2
    assert (dirs["mvae"] / "log.txt").read_text().count("slurm job") == 1
    assert {m: metrics(d) for m, d in dirs.items()} == local_ref


@needs_slurm
def test_job_over_its_memory_limit_is_reported_with_its_log_and_others_finish(tmp_path, data_root, local_ref):
    suite, runs = write_suite(tmp_path, b_slurm="mem: 150M"), tmp_path / "runs"
    out = mmbench(suite, "--executor", "slurm", data_root=data_root, runs_dir=runs)
    assert out.returncode == 1, out.stdout + out.stderr
    dirs = run_dirs(runs)
    err = " ".join(out.stderr.split())
    job_b = json.loads((dirs["mvae"] / "slurm.json").read_text())["job_id"]
    assert f"FAILED {dirs['mvae'].name}" in err and f"{job_b}_0_log.err" in err, err
    assert "memory" in err.lower(), err
    assert metrics(dirs["mopoe"]) == local_ref["mopoe"]
    assert not (dirs["mvae"] / "metrics.json").exists()


def test_run_lock_holds_across_processes_and_a_second_executor_waits(tmp_path):
    """The fcntl run lock of one process stops another process (RunLockedError); execute_when_free
    (local workers and Slurm jobs) waits for it and then finds the run done instead of training it."""
    import threading

    from mmbench.config import build_run_config
    from mmbench.evaluate import execute_when_free
    from mmbench.results import Run, RunLockedError

    run = Run(build_run_config({"dataset": "polydigits", "train": {"epochs": 1}}), tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from mmbench.config import build_run_config; from mmbench.results import Run\n"
        f"r = Run(build_run_config({{'dataset': 'polydigits', 'train': {{'epochs': 1}}}}), {str(tmp_path)!r})\n"
        "with r.lock():\n    print('locked', flush=True); sys.stdin.readline()\n"
        "    r.write_metrics({'x': 1.0})\n")], env=dict(os.environ, PYTHONPATH=str(REPO)),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    assert not run.held_here()  # progress of a pack's waiting run is not written over the holder's
    with pytest.raises(RunLockedError):
        with run.lock():
            pass
    got = {}
    waiter = threading.Thread(target=lambda: got.update(m=execute_when_free(run, tmp_path / "no-data")))
    waiter.start()
    time.sleep(1.0)
    assert waiter.is_alive() and "locked by another process; waiting" in run.log_path.read_text()
    holder.stdin.write("go\n")
    holder.stdin.flush()
    waiter.join(30)
    assert holder.wait(30) == 0 and not waiter.is_alive()
    holder.stdin.close()
    holder.stdout.close()
    assert got["m"]["metrics"] == {"x": 1.0}  # found done: nothing trained (no data was even needed)
    assert run.held_here()  # the waiter took the lock last


PACKED_SUITE = """name: slurm-pack-test
defaults:
  method: {latent_dim: 8, beta: 1.0, image_likelihood: gaussian}
  train: {epochs: 2, batch_size: 32, lr: 2.0e-3, max_train: 800, max_test: 64}
  eval: {metrics: [latent_classification], test_samples: 64, lr_train_samples: 64}
slurm: {mem: 4G, time: 10, signal_delay_s: 30}
experiments:
  - {name: a, dataset: polydigits, variant: vanilla, methods: [mopoe], seeds: [0, 1, 2]}
"""


@needs_slurm
def test_packed_array_task_requeued_mid_epoch_matches_local_pack(tmp_path, data_root):
    """`--pack 3`: the three seeds are one array task training one stacked model (mmbench/pack.py).
    `scontrol requeue` mid-epoch: the pack checkpoints every run after its current step, the requeued task
    resumes them together, and each run's metrics equal the local executor's pack of the same runs (run
    alongside, on the other core)."""
    suite = tmp_path / "suite.yaml"
    suite.write_text(PACKED_SUITE)
    local = mmbench(suite, "--pack", "3", data_root=data_root, runs_dir=tmp_path / "local", background=True)
    runs = tmp_path / "runs"
    proc = mmbench(suite, "--executor", "slurm", "--pack", "3", data_root=data_root, runs_dir=runs, background=True)
    t0 = time.time()
    while len([d for d in runs.iterdir() if (d / "slurm.json").exists()] if runs.exists() else []) < 3:
        assert time.time() - t0 < 180, "the pack was not submitted in 180 s"
        time.sleep(0.2)
    dirs = sorted(d for d in runs.iterdir() if d.is_dir() and not d.name.startswith("."))
    jobs = {json.loads((d / "slurm.json").read_text())["job_id"] for d in dirs}
    assert len(jobs) == 1, jobs  # one array task for the three runs
    job = wait_training(dirs[0], 3)["job_id"]
    subprocess.run(["scontrol", "requeue", job], check=True)
    release_when_requeued(job)
    out = proc.communicate(timeout=240)[0]
    assert proc.returncode == 0, out
    assert local.communicate(timeout=240)[0] is not None and local.returncode == 0
    ref = {d.name: metrics(d) for d in (tmp_path / "local").iterdir() if d.is_dir() and not d.name.startswith(".")}
    assert "submitted 3 run(s) in 1 array task(s) (packs of up to 3)" in " ".join(out.split()), out
    for d in dirs:
        log = (d / "log.txt").read_text()
        assert "packed with 2 other run(s)" in log, log
        assert re.search(r"stopped \(Slurm sent SIGTERM\) (at epoch \d, step \d+ of \d+|after epoch \d) \(packed\)",
                         log), log
        assert "resumed from" in log and "(restart 1)" in log, log
        assert epoch_lines(d) == 2, log
        assert metrics(d) == ref[d.name], d.name


def test_lock_warning_names_mounts_whose_flock_stays_on_one_node(tmp_path):
    """The run lock must hold across nodes: mounts known to keep flock node-local (or not to be shared) are
    named at submission, with the fix; shared filesystems that honour flock pass."""
    from mmbench.slurm import lock_warning

    mounts = "\n".join([
        "/dev/vda / ext4 rw,relatime 0 0",
        "srv:/home /home nfs4 rw,vers=4.2,local_lock=none 0 0",
        "srv:/old /old nfs rw,vers=3,nolock 0 0",
        "srv:/ll /ll nfs rw,vers=3,local_lock=flock 0 0",
        "mds@tcp:/fs /lustre lustre rw,flock 0 0",
        "mds@tcp:/fs2 /lustre2 lustre rw,localflock 0 0",
        "u@h:/x /mnt/ss\\040h fuse.sshfs rw 0 0",
        "auto.scratch /scratch2 autofs rw 0 0",
        "srv:/s2 /scratch2 nfs4 rw,local_lock=all 0 0",  # mounted over the autofs trigger: this one is seen
        "mgmt /beegfs beegfs rw 0 0",
    ])
    assert lock_warning(Path("/home/me/runs"), 8, mounts) is None
    assert lock_warning(Path("/lustre/me/runs"), 8, mounts) is None
    assert "nolock" in lock_warning(Path("/old/runs"), 8, mounts)
    assert "local_lock=flock" in lock_warning(Path("/ll/runs"), 8, mounts)
    assert "mount with -o flock" in lock_warning(Path("/lustre2/runs"), 8, mounts)
    assert "FUSE" in lock_warning(Path("/mnt/ss h/runs"), 2, mounts)
    assert "node-local" in lock_warning(Path("/scratch/runs"), 4, mounts)
    assert lock_warning(Path("/scratch/runs"), 1, mounts) is None  # one node: a local disk is shared enough
    assert "local_lock=all" in lock_warning(Path("/scratch2/runs"), 8, mounts)
    assert "tuneUseGlobalFileLocks" in lock_warning(Path("/beegfs/runs"), 8, mounts)


def test_stop_requested_in_the_last_epoch_takes_effect_before_evaluation(tmp_path, data_root, monkeypatch):
    """A pre-timeout signal during the last epoch: training finishes and saves that epoch (nothing to stop
    there), then the task stops before evaluating (TrainingInterrupted, which requeues it) instead of running
    into the time limit; the next attempt evaluates. In-process, without Slurm."""
    import signal

    import mmbench.train as train_mod
    from mmbench.config import build_run_config
    from mmbench.results import Run
    from mmbench.slurm import SlurmRun

    monkeypatch.setenv("MMBENCH_DATA", str(data_root))
    cfg = build_run_config({"dataset": "polydigits", "method": {"name": "mopoe", "latent_dim": 8},
                            "train": {"epochs": 1, "batch_size": 32, "max_train": 32, "max_test": 32},
                            "eval": {"metrics": ["latent_classification"], "test_samples": 32,
                                     "lr_train_samples": 32}})
    run = Run(cfg, tmp_path)
    run.init()
    saved = {s: signal.getsignal(s) for s in (signal.SIGUSR2, signal.SIGTERM)}
    try:
        def stop_in_last_epoch(*a, **k):  # the signal arrives in the last step of the last (only) epoch
            train_mod.request_stop("Slurm sent SIGUSR2")
            return original(*a, **k)

        original = train_mod.train
        monkeypatch.setattr("mmbench.evaluate.train", stop_in_last_epoch)
        with pytest.raises(train_mod.TrainingInterrupted, match="after training"):
            SlurmRun([str(run.dir)], str(data_root))()
        assert train_mod.stop_requested() is None and not (run.dir / "metrics.json").exists()
        assert "stopped (Slurm sent SIGUSR2) after training; evaluation runs on resume" in run.log_path.read_text()
        monkeypatch.setattr("mmbench.evaluate.train", original)
        SlurmRun([str(run.dir)], str(data_root))()  # the requeued attempt: training is done, it evaluates
        assert run.status() == "done" and run.log_path.read_text().count(" epoch epoch=") == 1
    finally:
        train_mod.clear_stop()
        for s, h in saved.items():
            signal.signal(s, h)


def submitted_packs(monkeypatch) -> list:
    """Slurm replaced at its edges (no controller, no queue, submission recorded): the packs run_slurm submits, as
    lists of runs, appended to the list returned."""
    import mmbench.slurm as slurm

    packs_seen: list = []

    def fake_submit(groups, runs_dir, data_root):
        packs_seen.extend(p for _, packs in groups for p in packs)
        return {r.id: "42_0" for _, packs in groups for p in packs for r in p}

    monkeypatch.setattr(slurm, "available", lambda: None)
    monkeypatch.setattr(slurm, "_job_states", lambda: {})
    monkeypatch.setattr(slurm, "_partition_nodes", lambda part: 1)  # sinfo waits ~9 s for a controller that is down
    monkeypatch.setattr(slurm, "submit", fake_submit)
    return packs_seen


def test_a_run_listed_by_two_experiments_is_submitted_once(tmp_path, monkeypatch):
    """SMVAE Figs. 2 and 3 share their PolyMNIST runs: one array task per run, its config serving both tables
    (run_slurm once submitted it twice, two tasks training one run). Slurm itself is replaced at its edges."""
    import mmbench.slurm as slurm
    from mmbench.config import build_run_config

    a = build_run_config({"dataset": "polydigits", "method": {"name": "mopoe"}, "tables": ["Fig. 2"]})
    b = build_run_config({"dataset": "polydigits", "method": {"name": "mopoe"}, "tables": ["Fig. 3"]})
    packs = submitted_packs(monkeypatch)
    opts = SlurmOptions()
    out = slurm.run_slurm([a, b], tmp_path / "runs", None, [(a, opts), (b, opts)], _Quiet(), wait=False)
    assert [r.id for p in packs for r in p] == [a.run_id()] and len(out) == 1
    import yaml

    tables = yaml.safe_load((tmp_path / "runs" / a.run_id() / "config.yaml").read_text())["tables"]
    assert tables == ["Fig. 2", "Fig. 3"]


def test_measured_pack_caps_reach_the_array_tasks(tmp_path, monkeypatch):
    """`mmbench run --executor slurm --step-times FILE`: a method measured slower packed trains one run per array
    task, and each run's log says why (runner.make_packs). Slurm itself is replaced at its edges."""
    import mmbench.slurm as slurm
    from mmbench.config import build_run_config

    cfgs = [build_run_config({"dataset": "polydigits", "seed": s, "method": {"name": "mopoe"}}) for s in range(3)]
    packs = submitted_packs(monkeypatch)
    opts = [(c, SlurmOptions(pack=3)) for c in cfgs]
    slurm.run_slurm(cfgs, tmp_path / "a", None, opts, _Quiet(), wait=False)
    assert [len(p) for p in packs] == [3]
    packs.clear()
    slurm.run_slurm(cfgs, tmp_path / "b", None, opts, _Quiet(), wait=False, caps={"mopoe": 1})
    assert [len(p) for p in packs] == [1, 1, 1]
    assert all("packs of mopoe capped at 1" in (tmp_path / "b" / c.run_id() / "log.txt").read_text() for c in cfgs)


def test_a_task_that_asked_for_gpus_and_sees_none_fails_instead_of_training_on_the_cpu(tmp_path):
    import signal

    from mmbench.config import build_run_config
    from mmbench.errors import MMBenchError
    from mmbench.results import Run
    from mmbench.slurm import SlurmRun

    run = Run(build_run_config({"dataset": "polydigits", "method": {"name": "mopoe"}}), tmp_path)
    run.init()
    saved = {s: signal.getsignal(s) for s in (signal.SIGUSR2, signal.SIGTERM)}
    try:
        with pytest.raises(MMBenchError, match=r"asked for 1 GPU\(s\) but torch sees none"):
            SlurmRun([str(run.dir)], None, gpus=1)()  # (the tests hide every GPU)
    finally:
        for s, h in saved.items():
            signal.signal(s, h)
    assert "but torch sees none" in run.log_path.read_text() and not (run.dir / "checkpoints").exists()


def test_sbatch_options_merge_later_wins_and_bad_counts_are_refused():
    """A later layer's sbatch key wins; `--slurm-opt mail-type=END` is sbatch's mail_type; negative counts and pack 0 are refused."""
    o = resolve_options([({"sbatch": {"qos": "low"}}, "site"), ({"sbatch": {"qos": "high"}}, "cli")])
    assert o.sbatch == {"qos": "high"}
    assert parse_sbatch(["mail-type=END"]) == {"mail_type": "END"}
    for bad, msg in (({"max_requeues": -1}, "cli.max_requeues: must be >= 0"), ({"gpus_per_job": -1}, "must be >= 0"),
                     ({"pack": 0}, "cli.pack: must be >= 1")):
        with pytest.raises(Exception, match=msg):
            resolve_options([(bad, "cli")])


class _Quiet:
    def print(self, *a, **k):
        pass


def _signalled_run(tmp_path, monkeypatch, body, usr2=signal.SIG_DFL):
    """SlurmRun of one run whose execution is `body(progress)`; returns (run, what the call raised or returned).
    Signal handlers are restored afterwards; `usr2`: the handler submitit would have installed."""
    import mmbench.evaluate as evaluate
    import mmbench.train as train_mod
    from mmbench.config import build_run_config
    from mmbench.results import Run
    from mmbench.slurm import SlurmRun

    run = Run(build_run_config({"dataset": "polydigits", "method": {"name": "mopoe"}}), tmp_path)
    run.init()
    monkeypatch.setattr(evaluate, "execute_when_free", lambda r, d, progress, who: body(progress))
    saved = {s: signal.getsignal(s) for s in (signal.SIGUSR2, signal.SIGTERM)}
    signal.signal(signal.SIGUSR2, usr2)
    signal.signal(signal.SIGTERM, lambda s, f: None)  # a SlurmRun that did not take SIGTERM over must not end pytest
    try:
        return run, SlurmRun([str(run.dir)], None)()
    except Exception as e:  # noqa: BLE001 - the caller checks it
        return run, e
    finally:
        train_mod.clear_stop()
        for s, h in saved.items():
            signal.signal(s, h)


def test_sigterm_during_training_requests_a_checkpoint_stop_and_the_log_names_the_task(tmp_path, monkeypatch):
    """SIGTERM (scancel, requeue) while training asks training to stop after its step; the log names the array task and restart."""
    import mmbench.train as train_mod

    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "77")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    seen = []

    def body(progress):
        progress("train epoch 1/2", 1, 10)
        os.kill(os.getpid(), signal.SIGTERM)
        seen.append(train_mod.stop_requested())
        return {}

    run, _ = _signalled_run(tmp_path, monkeypatch, body)
    assert seen == ["Slurm sent SIGTERM"]
    assert "slurm job 77_3 on " in run.log_path.read_text() and "(restart 2)" in run.log_path.read_text()


def test_usr2_during_training_checkpoints_then_hands_over_to_submitit_requeue(tmp_path, monkeypatch):
    """The pre-timeout USR2 while training: training stops, then submitit's own USR2 handler (checkpoint + requeue) runs."""
    import mmbench.train as train_mod

    requeued = []

    def body(progress):
        progress("train epoch 1/2", 1, 10)
        os.kill(os.getpid(), signal.SIGUSR2)
        raise train_mod.TrainingInterrupted(train_mod.stop_requested())

    run, raised = _signalled_run(tmp_path, monkeypatch, body, usr2=lambda s, f: requeued.append(s))
    assert isinstance(raised, train_mod.TrainingInterrupted) and requeued == [signal.SIGUSR2]
    assert "checkpointed; requeueing (submitit)" in run.log_path.read_text()


def test_a_pack_with_a_failed_run_fails_its_array_task(tmp_path, monkeypatch):
    """A pack whose runs did not all finish fails the task (so Slurm and the wait loop report it), naming the run."""
    import mmbench.pack as pack
    from mmbench.config import build_run_config
    from mmbench.errors import MMBenchError
    from mmbench.results import Run
    from mmbench.slurm import SlurmRun

    runs = [Run(build_run_config({"dataset": "polydigits", "method": {"name": "mopoe"}, "seed": s}), tmp_path)
            for s in (0, 1)]
    for r in runs:
        r.init()
    monkeypatch.setattr(pack, "execute_pack", lambda rs, d, p, who: {rs[0].id: None, rs[1].id: "diverged"})
    saved = {s: signal.getsignal(s) for s in (signal.SIGUSR2, signal.SIGTERM)}
    try:
        with pytest.raises(MMBenchError, match=rf"1 of 2 runs of the pack failed: {runs[1].id}: diverged"):
            SlurmRun([str(r.dir) for r in runs], None)()
    finally:
        for s, h in saved.items():
            signal.signal(s, h)


def test_a_requeued_task_keeps_its_data_root_and_gpus(tmp_path):
    """checkpoint() (pre-timeout requeue) resubmits the same task: its runs, data root and GPU count."""
    from mmbench.slurm import SlurmRun

    again = SlurmRun(["/runs/a", "/runs/b"], "/data", gpus=2).checkpoint().function
    assert (again.run_dirs, again.data_root, again.gpus) == (["/runs/a", "/runs/b"], "/data", 2)


def test_available_says_why_sinfo_cannot_be_used(tmp_path, monkeypatch):
    """A failing sinfo, or one listing no partition, makes Slurm unavailable with its reason."""
    from mmbench.slurm import available

    (tmp_path / "sinfo").write_text("#!/bin/sh\necho 'slurm_load_partitions: Unable to contact' >&2\nexit 1\n")
    (tmp_path / "sinfo").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    assert available() == "sinfo failed: slurm_load_partitions: Unable to contact"
    (tmp_path / "sinfo").write_text("#!/bin/sh\nexit 0\n")
    assert available() == "sinfo lists no partition"


def test_run_states_of_a_done_run_or_without_squeue(tmp_path, monkeypatch):
    """A done run is done whatever its job's state; without squeue a run keeps its own state (not failed)."""
    import mmbench.slurm as slurm
    from mmbench.config import build_run_config
    from mmbench.results import Run, atomic_json

    done, partial = (Run(build_run_config({"dataset": "polydigits", "method": {"name": m}}), tmp_path)
                     for m in ("mopoe", "mvae"))
    for r, job in ((done, "5_0"), (partial, "5_1")):
        r.init()
        atomic_json(r.dir / "slurm.json", {"job_id": job, "stderr": "e"})
    done.write_metrics({"x": 1.0})
    assert slurm.run_states([done], {"5_0": "COMPLETING"})[done.id]["state"] == "done"
    monkeypatch.setattr(slurm, "available", lambda: "no Slurm")
    assert slurm.run_states([partial])[partial.id]["state"] == partial.status() != "failed"


def test_run_states_of_a_damaged_job_record(tmp_path):
    """A slurm.json that parses but is not the mapping submit writes (a list, no job_id) stopped the dry run with a
    TypeError / KeyError traceback; now the run is shown by its own status, as a truncated record already was."""
    import mmbench.slurm as slurm
    from mmbench.config import build_run_config
    from mmbench.results import Run

    run = Run(build_run_config({"dataset": "polydigits", "method": {"name": "mopoe"}}), tmp_path)
    run.init()
    for bad in ("[1]", '{"a": 1}', '{"job_id": null}', '"5_0"', '{"job_id": true}'):
        (run.dir / "slurm.json").write_text(bad)
        assert slurm.read_job(run) is None, bad
        assert slurm.run_states([run], {})[run.id] == {"state": "pending", "job": None, "log": None, "detail": ""}
    (run.dir / "slurm.json").write_text('{"job_id": 5, "stderr": 7}')  # a number where a string was written
    assert slurm.run_states([run], {"5": "RUNNING"})[run.id]["state"] == "running"


class _FakeExecutor:
    """submitit.SlurmExecutor without sbatch: records what `submit` asks of it."""
    made = []

    def __init__(self, folder, max_num_timeout=3):
        self.folder, self.max_num_timeout, self.params, self.tasks = Path(str(folder)), max_num_timeout, {}, []
        _FakeExecutor.made.append(self)

    def update_parameters(self, **params):
        self.params.update(params)

    def batch(self):
        import contextlib

        return contextlib.nullcontext()

    def submit(self, fn):
        from types import SimpleNamespace

        self.tasks.append(fn)
        jid, out = f"9_{len(self.tasks) - 1}", self.folder.parent / "9"
        return SimpleNamespace(job_id=jid, paths=SimpleNamespace(stdout=out / f"{jid}.out", stderr=out / f"{jid}.err",
                                                                 folder=out))


def test_submit_passes_every_option_to_the_job_array(tmp_path, monkeypatch):
    """Each SlurmOptions field reaches sbatch (via submitit); each run records its task, its pack and its log links."""
    import submitit

    import mmbench.slurm as slurm
    from mmbench.config import build_run_config
    from mmbench.results import Run

    monkeypatch.setattr(submitit, "SlurmExecutor", _FakeExecutor)
    monkeypatch.setenv("MMBENCH_PACK_CONV", "bmm")  # a kernel choice reaches the tasks even where sbatch exports none
    monkeypatch.setenv("MMBENCH_PACK_MODE", "loop")  # each choice made is exported, in kernels.CHOICES's order
    monkeypatch.setenv("MMBENCH_ADAM", "default")  # the default: nothing to pass
    monkeypatch.setenv("MMBENCH_CACHE", "rel cache")  # the caches' folder too, made absolute (a job starts elsewhere)
    monkeypatch.chdir(tmp_path)
    _FakeExecutor.made.clear()
    runs = [Run(build_run_config({"dataset": "polydigits", "method": {"name": "mopoe"}, "seed": s}), tmp_path)
            for s in (0, 1, 2)]
    for r in runs:
        r.init()
    opts = SlurmOptions(partition="gpu", gpus_per_job=2, cpus_per_job=3, mem="4G", time=30, array_parallelism=5,
                        signal_delay_s=45, max_requeues=7, sbatch={"account": "lab"})
    assert slurm.submit([(opts, [runs[:2], runs[2:]])], tmp_path, tmp_path / "data") == {
        runs[0].id: "9_0", runs[1].id: "9_0", runs[2].id: "9_1"}
    (ex,) = _FakeExecutor.made
    assert ex.max_num_timeout == 7
    assert {k: ex.params[k] for k in ("partition", "gpus_per_node", "cpus_per_task", "mem", "time", "array_parallelism",
                                      "signal_delay_s", "setup", "additional_parameters")} == dict(
        partition="gpu", gpus_per_node=2, cpus_per_task=3, mem="4G", time=30, array_parallelism=5, signal_delay_s=45,
        setup=["export OMP_NUM_THREADS=3", "export PYTHONIOENCODING=utf-8", "export MMBENCH_PACK_CONV=bmm",
               "export MMBENCH_PACK_MODE=loop",
               f"export MMBENCH_CACHE='{tmp_path.resolve() / 'rel cache'}'"],
        additional_parameters={"account": "lab"})
    assert [(t.run_dirs, t.data_root, t.gpus) for t in ex.tasks] == [
        ([str(runs[0].dir.resolve()), str(runs[1].dir.resolve())], str((tmp_path / "data").resolve()), 2),
        ([str(runs[2].dir.resolve())], str((tmp_path / "data").resolve()), 2)]
    rec = json.loads((runs[1].dir / "slurm.json").read_text())
    assert (rec["job_id"], rec["pack"], rec["options"]["max_requeues"]) == ("9_0", [runs[0].id, runs[1].id], 7)
    assert os.readlink(runs[1].dir / "slurm.err").endswith("9_0.err")
    assert os.readlink(runs[1].dir / "slurm.out").endswith("9_0.out")


def _run_slurm_offline(monkeypatch, submitted, ended="CANCELLED"):
    """run_slurm with Slurm replaced at its edges: submit records (options, run ids) in `submitted` and writes
    slurm.json; the queue is empty and a job that left it ended in state `ended`."""
    import mmbench.slurm as slurm
    from mmbench.results import atomic_json

    def fake_submit(groups, runs_dir, data_root):
        out = {}
        for o, packs in groups:
            for r in (r for p in packs for r in p):
                submitted.append((o, r.id))
                atomic_json(r.dir / "slurm.json", {"job_id": "8_0", "stderr": str(r.dir / "nowhere")})
                out[r.id] = "8_0"
        return out

    monkeypatch.setattr(slurm, "available", lambda: None)
    monkeypatch.setattr(slurm, "_partition_nodes", lambda part: 1)  # no sinfo (slow, it would time the lock's wait)
    monkeypatch.setattr(slurm, "_job_states", lambda: {})
    monkeypatch.setattr(slurm, "_ended_state", lambda job: ended)
    monkeypatch.setattr(slurm, "submit", fake_submit)
    return slurm.run_slurm


def test_a_job_that_ended_without_its_run_is_reported_failed(tmp_path, monkeypatch):
    """The wait loop reports a run whose job left the queue unfinished as failed, with the job's end state."""
    from mmbench.config import build_run_config

    a = build_run_config({"dataset": "polydigits", "method": {"name": "mopoe"}})
    run_slurm = _run_slurm_offline(monkeypatch, [])
    ((run, ok, msg),) = run_slurm([a], tmp_path / "runs", None, [(a, SlurmOptions())], _Quiet(), poll_s=0)
    assert not ok and msg.startswith("Slurm job 8_0 CANCELLED"), msg


def test_a_shared_run_takes_its_first_experiments_options_and_submission_waits_for_the_submit_lock(tmp_path, monkeypatch):
    """One submitter at a time per runs directory (submit.lock); a run two experiments list gets the first one's options."""
    import fcntl
    import threading

    from mmbench.config import build_run_config

    a = build_run_config({"dataset": "polydigits", "method": {"name": "mopoe"}, "tables": ["A"]})
    b = build_run_config({"dataset": "polydigits", "method": {"name": "mopoe"}, "tables": ["B"]})
    submitted = []
    run_slurm = _run_slurm_offline(monkeypatch, submitted)
    (tmp_path / "runs" / ".slurm").mkdir(parents=True)
    with open(tmp_path / "runs" / ".slurm" / "submit.lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        t = threading.Thread(target=run_slurm, args=([a, b], tmp_path / "runs", None,
                                                     [(a, SlurmOptions(time=5)), (b, SlurmOptions(time=9))], _Quiet()),
                             kwargs={"wait": False})
        t.start()
        time.sleep(0.5)
        assert submitted == []  # waiting for the other submitter
    t.join(10)
    assert [(o.time, rid) for o, rid in submitted] == [(5, a.run_id())]


@needs_slurm
def test_job_states_lists_each_pending_array_task(tmp_path):
    """squeue is read task by task (-r): a pending array's tasks each appear, as run_states looks them up."""
    from mmbench.slurm import _job_states, _partition_nodes

    out = subprocess.run(["sbatch", "--hold", "--array=0-1", "-o", str(tmp_path / "%A_%a.out"), "--wrap", "true"],
                         capture_output=True, text=True, check=True).stdout
    job = out.split()[-1]
    try:
        states = _job_states()
        assert states.get(f"{job}_0") == "PENDING" and states.get(f"{job}_1") == "PENDING", states
    finally:
        subprocess.run(["scancel", job])
    assert _partition_nodes(None) >= 1 and _partition_nodes("no-such-partition") == 0


def test_the_follow_up_of_a_detached_submission_lists_the_runs_it_submitted(tmp_path, data_root, monkeypatch,
                                                                            mmbench_here):
    """`mmbench run --executor slurm --detach` names the dry run that follows its jobs: with the submission's --only,
    --set (other settings, other run ids) and --runs-dir; without them that dry run listed other runs, in ./runs.
    Run as given, it lists exactly the runs submitted. Slurm itself is replaced at its edges."""
    import shlex

    suite, runs = write_suite(tmp_path), tmp_path / "my runs"
    packs = submitted_packs(monkeypatch)
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    r = mmbench_here("run", suite, "--executor", "slurm", "--detach", "--only", "a", "--set", "train.epochs=1",
                     "--runs-dir", runs, "--data-root", data_root, width=400)
    assert r.returncode == 0, r.stdout + r.stderr
    follow = re.search(r"follow with `([^`]+)`", r.stdout).group(1)
    assert f"--runs-dir {shlex.quote(str(runs))}" in follow and follow.endswith(" --dry-run")
    assert f"--data-root {shlex.quote(str(data_root.resolve()))}" in follow  # its tuples counted from that data
    listed = mmbench_here(*shlex.split(follow)[1:], width=400)
    assert listed.returncode == 0, listed.stdout + listed.stderr
    submitted = [run.id for p in packs for run in p]
    assert len(submitted) == 1 and submitted[0] in listed.stdout and "1 runs" in listed.stdout


def test_the_wait_polls_soon_then_every_poll_s_for_as_long_as_a_job_runs(tmp_path, monkeypatch):
    """The wait loop polls after 0.5 s, 1.5x longer each time, then every poll_s for as long as the job runs: a
    job in the queue for 3,000 polls (2.5 h at 3 s) is followed to its end (an unbounded 1.5 ** polls overflowed a
    float after ~1,750 polls, hours into a real run)."""
    import mmbench.slurm as slurm
    from mmbench.config import build_run_config

    a = build_run_config({"dataset": "polydigits", "method": {"name": "mopoe"}})
    run_slurm = _run_slurm_offline(monkeypatch, [])
    waits = []
    monkeypatch.setattr(slurm.time, "sleep", waits.append)
    monkeypatch.setattr(slurm, "_job_states", lambda: {"8_0": "RUNNING"} if len(waits) < 3000 else {})
    ((run, ok, msg),) = run_slurm([a], tmp_path / "runs", None, [(a, SlurmOptions())], _Quiet(), poll_s=3.0)
    assert not ok and msg.startswith("Slurm job 8_0 CANCELLED"), msg  # followed until it left the queue
    assert len(waits) == 3000 and waits[:4] == [0.5, 0.75, 1.125, 1.6875] and set(waits[5:]) == {3.0}
