import types

import pytest
from conftest import fake_popen, seed_runs

from mmbench.errors import MMBenchError
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


def _save_last(run, epoch, step):
    """A last.pt holding what resume_point reads (a training state at epoch, step)."""
    import torch

    run.ckpt_dir.mkdir(parents=True, exist_ok=True)
    torch.save({"model": {}, "optimizer": {}, "rng": torch.get_rng_state(),
                "state": {"epoch": epoch, "step": step, "history": [], "best_test_loss": 0.0}}, run.ckpt_dir / "last.pt")


def test_resume_point_reads_a_checkpoint_once_per_version(tmp_path, monkeypatch):
    """`--dry-run` asks each run's resume point several times: last.pt is read once, and again once rewritten."""
    from mmbench import train
    from mmbench.runner import resume_point

    run = seed_runs(tmp_path, 1)[0]
    assert resume_point(run) == (0, 0)  # no checkpoint: from the start
    reads = []
    real = train.read_checkpoint
    monkeypatch.setattr(train, "read_checkpoint", lambda *a, **k: reads.append(a[0]) or real(*a, **k))
    _save_last(run, 3, 0)
    assert [resume_point(run) for _ in range(3)] == [(3, 0)] * 3 and len(reads) == 1
    _save_last(run, 4, 17)  # training went on: a new version of the file
    assert resume_point(run) == (4, 17) and len(reads) == 2


def test_packs_split_evenly_cap_and_only_join_runs_at_the_same_step(tmp_path):
    """pack=None splits a group evenly over the workers, pack=N caps it, pack=0 is refused, and runs resuming at
    different steps of one epoch never share a pack."""
    from mmbench.errors import MMBenchError
    from mmbench.runner import make_packs

    runs = seed_runs(tmp_path, 4)
    assert [len(p) for p in make_packs(runs, None, 2)] == [2, 2]
    assert [len(p) for p in make_packs(runs, 3, 1)] == [3, 1]
    with pytest.raises(MMBenchError, match="--pack 0: must be >= 1"):
        make_packs(runs, 0)
    for r, step in zip(runs, (5, 5, 9, 9)):
        _save_last(r, 1, step)
    assert [[r.id for r in p] for p in make_packs(runs, None, 1)] == [[runs[0].id, runs[1].id], [runs[2].id, runs[3].id]]


def test_pack_one_keeps_the_runs_in_the_order_given(tmp_path):
    """--pack 1: every run alone, dispatched in the suite's order, not regrouped by method."""
    from mmbench.runner import make_packs

    a, b = seed_runs(tmp_path, 2), seed_runs(tmp_path, 1, method="mvae")
    runs = [a[0], b[0], a[1]]
    assert [[r.id for r in p] for p in make_packs(runs, 1)] == [[r.id] for r in runs]


def test_run_all_gives_each_worker_its_gpu_and_reports_each_run_of_a_pack(tmp_path, monkeypatch):
    """Workers (here faked) get their --gpus device; a failed single run and the unfinished run of a pack are failures."""
    import io
    import subprocess

    import torch
    from rich.console import Console

    import mmbench.runner as runner

    single, pack = seed_runs(tmp_path, 1, "mvae"), seed_runs(tmp_path, 2)
    seen = []

    def fake_worker(cmd, env, stdout, stderr):  # the pack's first run finishes, its second and the single run fail
        seen.append(env["CUDA_VISIBLE_DEVICES"])
        if len(cmd) > 4:
            pack[0].write_metrics({"x": 1.0})
        stdout.write("error: boom\n")
        return subprocess.CompletedProcess(cmd, 1)

    monkeypatch.setattr(runner.subprocess, "Popen", fake_popen(fake_worker))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    out = runner.run_all([r.cfg for r in single + pack], tmp_path, None, gpus="1", console=Console(file=io.StringIO()),
                         pack=None)
    assert seen == ["1", "1"]
    assert {o.run.id: o.ok for o in out} == {single[0].id: False, pack[0].id: True, pack[1].id: False}
    assert [o.message for o in out if o.run.id == single[0].id] == ["error: boom"]  # the last line of its log


def test_a_finished_run_whose_config_cannot_be_read_is_not_done(tmp_path):
    """`mmbench run` took a run with metrics.json for done even when its config.yaml was damaged (the report then
    leaves it out): now that run fails with the record and the fix, and nothing of it is touched."""
    from mmbench.config import build_run_config
    from mmbench.results import Run
    from mmbench.runner import run_all

    cfg = build_run_config({"dataset": "polydigits", "method": {"name": "mopoe"}})
    run = Run(cfg, tmp_path / "runs")
    run.init()
    run.write_metrics({"coherence/joint": 0.3})
    (run.dir / "config.yaml").write_text(": : :")
    metrics = (run.dir / "metrics.json").read_bytes()
    import io

    from rich.console import Console
    out = io.StringIO()
    (outcome,) = run_all([cfg], tmp_path / "runs", None, console=Console(file=out, width=60))
    assert not outcome.ok and outcome.message.startswith("finished, but config.yaml unreadable (")
    header, line = [ln for ln in out.getvalue().splitlines() if ln.strip()]  # FAILED: one line, not wrapped at 60
    assert header.startswith("runs (0 already done, 1 with unreadable records)")
    assert line.startswith(f"FAILED {run.id}: finished, but config.yaml unreadable") and line.endswith("log.txt)")
    assert outcome.message.endswith("put a good copy back, or delete the run directory")
    assert (run.dir / "config.yaml").read_text() == ": : :" and (run.dir / "metrics.json").read_bytes() == metrics


def test_a_failure_message_with_brackets_is_printed_as_it_is(tmp_path, monkeypatch):
    """The FAILED line prints the message verbatim: brackets in it (a path, an errno) are not read as rich markup
    (dropped, or a MarkupError after every run has finished)."""
    import io

    from rich.console import Console

    import mmbench.runner as runner
    from mmbench.config import build_run_config
    from mmbench.results import Run

    cfg = build_run_config({"dataset": "polydigits", "method": {"name": "mopoe"}})
    run = Run(cfg, tmp_path / "runs")
    run.init()
    run.write_metrics({"coherence/joint": 0.3})
    monkeypatch.setattr(runner, "read_run", lambda d: (_ for _ in ()).throw(MMBenchError("x")))
    monkeypatch.setattr(runner, "left_out_because", lambda e: "metrics.json unreadable ([Errno 13] [bold] [/odd])")
    out = io.StringIO()
    (outcome,) = runner.run_all([cfg], tmp_path / "runs", None, console=Console(file=out, width=60))
    assert not outcome.ok
    assert "finished, but metrics.json unreadable ([Errno 13] [bold] [/odd])" in out.getvalue()


def test_a_damaged_progress_json_leaves_the_bar_waiting_not_the_scheduler_dead(tmp_path, monkeypatch):
    """A progress.json that parses but is not {phase, done, total} (a stale or hand-edited file: a list, a string,
    null counts) stopped `mmbench run` with a TypeError traceback while its worker trained on; now the bar waits for
    the worker's next write and the run finishes."""
    import io
    import subprocess
    import time

    from rich.console import Console

    import mmbench.runner as runner

    (run,) = seed_runs(tmp_path, 1)
    for bad in ('[1, 2]', '"hello"', '{"phase": 3, "done": "x", "total": null}', '{"phase": "a", "done": true, '
                '"total": 1}', '{"phase": 3, "done": 1, "total": 2}'):
        (run.dir).mkdir(parents=True, exist_ok=True)
        (run.dir / "progress.json").write_text(bad)
        assert runner._read_progress(run) is None, bad

    def fake_worker(cmd, env, stdout, stderr):
        (run.dir / "progress.json").write_text('{"phase": 3, "done": "x", "total": null}')
        time.sleep(1.2)  # the scheduler reads progress.json twice a second
        run.write_metrics({"x": 1.0})
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(runner.subprocess, "Popen", fake_popen(fake_worker))
    (outcome,) = runner.run_all([run.cfg], tmp_path, None, console=Console(file=io.StringIO()))
    assert outcome.ok


def test_a_run_whose_log_is_a_folder_fails_with_a_line_and_is_counted(tmp_path, monkeypatch):
    """log.txt a folder: the worker thread died with an IsADirectoryError traceback, the run vanished from the
    outcomes and `mmbench run` said "0 of 0 runs finished" with exit code 0; now the run fails with one line."""
    import io
    import subprocess

    from rich.console import Console

    import mmbench.runner as runner

    (run,) = seed_runs(tmp_path, 1)
    run.dir.mkdir(parents=True)
    run.log_path.mkdir()
    monkeypatch.setattr(runner.subprocess, "Popen", fake_popen(lambda cmd, **kw: subprocess.CompletedProcess(cmd, 0)))
    out = io.StringIO()
    (outcome,) = runner.run_all([run.cfg], tmp_path, None, console=Console(file=out, width=300))
    assert not outcome.ok and outcome.message.startswith(f"cannot write its log {run.log_path} (Is a directory)")
    assert "Traceback" not in out.getvalue() and f"FAILED {run.id}: cannot write its log" in out.getvalue()
    assert run.log_path.is_dir()  # left as it is


def test_a_failed_run_whose_log_holds_bytes_that_are_not_utf8_fails_with_its_last_line(tmp_path, monkeypatch):
    """A worker's log with a byte that is not UTF-8 (a library's output, a binary dump): the failed run's line is the
    log's last (undecodable bytes replaced), not a UnicodeDecodeError that kills the worker thread and loses the run."""
    import io
    import subprocess

    from rich.console import Console

    import mmbench.runner as runner

    (run,) = seed_runs(tmp_path, 1)

    def failing_worker(cmd, env, stdout, stderr):
        stdout.write("error: an earlier line\n")
        stdout.flush()
        with open(run.log_path, "ab") as log:
            log.write(b"noise \xff\xfe\nerror: boom\n")
        return subprocess.CompletedProcess(cmd, 1)

    monkeypatch.setattr(runner.subprocess, "Popen", fake_popen(failing_worker))
    (outcome,) = runner.run_all([run.cfg], tmp_path, None, console=Console(file=io.StringIO(), width=300))
    assert not outcome.ok and outcome.message == "error: boom"


def test_gpu_ids_are_whole_indices_or_uuids():
    """gpu_slots: an id is a whole index (any number of digits) or a GPU-/MIG- UUID, nothing appended."""
    from mmbench.runner import gpu_slots

    assert gpu_slots("10,11") == ["10", "11"]
    for bad in ("0x", "1a", "GPU-", "0 1"):
        with pytest.raises(MMBenchError, match=f"{bad!r} is not a GPU id"):
            gpu_slots(f"0,{bad}")


def test_a_gpu_run_saves_its_gpus_random_stream_and_picks_cuda_when_torch_sees_one(monkeypatch):
    """devices.py: fork_rng must save the GPU stream of a run on cuda (any index), none on the CPU; device_of
    computes on cuda whenever torch sees a GPU."""
    import torch

    from mmbench.devices import device_of, devices_of_rng

    assert devices_of_rng("cuda:1") == [torch.device("cuda:1")] and devices_of_rng(torch.device("cuda")) == [
        torch.device("cuda")]
    assert devices_of_rng("cpu") == [] and devices_of_rng("meta") == []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert device_of() == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert device_of() == torch.device("cpu")


@pytest.mark.parametrize("pack", [False, True])
def test_a_worker_says_a_full_disk_in_one_line_with_its_fix(tmp_path, monkeypatch, capsys, pack):
    # worker.main: an OSError about a path (a full disk while writing a run's files) was a traceback in log.txt,
    # whose last line the runner shows; now the line cli.main would print, and exit status 1
    import mmbench.pack
    import mmbench.worker as worker

    def full(*a, **k):
        raise OSError(28, "No space left on device", str(tmp_path / "r" / "history.json"))

    monkeypatch.setattr(worker, "load_run", lambda d: types.SimpleNamespace(held_here=lambda: False))
    monkeypatch.setattr(worker, "execute_when_free", full)
    monkeypatch.setattr(mmbench.pack, "execute_pack", full)
    assert worker.main(*(["a", "b"] if pack else ["a"])) == 1
    out = capsys.readouterr().out
    assert out == (f"error: {tmp_path / 'r' / 'history.json'}: No space left on device (a full disk or a quota: free "
                   f"space and run the command again; files already written are kept, and unfinished runs resume from "
                   f"their last checkpoint)\n")


def _workers_of(runs_dir) -> list:
    """The pids of live `mmbench.worker` processes working in `runs_dir`."""
    import os

    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().split(b"\0")
        except OSError:
            continue
        if b"mmbench.worker" in cmd and any(str(runs_dir).encode() in c for c in cmd):
            pids.append(int(pid))
    return pids


def test_a_worker_interrupted_while_its_interpreter_starts_says_so_in_its_log(tmp_path):
    # runner.spawn_worker: a SIGINT (Ctrl-C, or stop_workers after a SIGTERM) that reached a worker before
    # mmbench.worker had set its handler, while Python itself started, ended it with a KeyboardInterrupt traceback
    # in the run's log, or silently; the worker now starts with SIGINT blocked, pending until its handler is set.
    # The signal goes at once, before the child can have run anything
    import signal
    import subprocess
    import sys

    import mmbench.runner as runner

    (run,) = seed_runs(tmp_path, 1)
    run.init()
    for _ in range(3):
        with open(tmp_path / "log.txt", "w") as log:
            proc = runner.spawn_worker([sys.executable, "-m", "mmbench.worker", str(run.dir)], stdout=log,
                                       stderr=subprocess.STDOUT)
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=60) == 130
        text = (tmp_path / "log.txt").read_text()
        assert text == "interrupted before the run started; it resumes from its last checkpoint\n", text
    assert signal.pthread_sigmask(signal.SIG_BLOCK, set()) == set()  # this thread's mask is as it was


def test_sigterm_to_mmbench_run_interrupts_its_workers_and_starts_no_more(tmp_path, data_root):
    # cli._terminated and runner.stop_workers: `kill PID` (or a batch system's SIGTERM) killed the parent alone, and
    # its worker went on training, orphaned; the threads would also have started the next runs' workers
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    runs = tmp_path / "runs"
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, "-m", "mmbench.cli", "run", str(root / "suites" / "quickstart.yaml"),
                             "--tier", "smoke", "--runs-dir", str(runs), "--data-root", str(data_root)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**__import__("os").environ,
                                                                                 "COLUMNS": "200"})
    try:
        deadline = time.time() + 120
        while not _workers_of(runs) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert _workers_of(runs), proc.communicate()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err.decode()
    assert "interrupted; finished work is kept" in err.decode()
    time.sleep(1.0)
    assert _workers_of(runs) == []  # interrupted, and no other started after it
    logs = [p.read_text() for p in runs.glob("*/log.txt")]
    # interrupted while it loaded torch, or once it ran: a line in its log either way, never a traceback
    assert sum(("interrupted; the run resumes from its last checkpoint" in t or
                "interrupted before the run started; it resumes from its last checkpoint" in t) for t in logs) == 1
    assert not any("Traceback" in t for t in logs)
    assert len(list(runs.glob("*/metrics.json"))) < 3


def test_stop_workers_interrupts_then_kills_what_is_left_and_a_later_run_all_starts_workers(tmp_path, monkeypatch):
    """runner.stop_workers: SIGINT to each live worker, a grace period, then kill for one still running; a worker
    already finished is left alone. A later run_all in the same process (the tests, a library caller) starts its
    workers again."""
    import io
    import signal
    import subprocess

    from rich.console import Console

    import mmbench.runner as runner

    class Proc:
        def __init__(self, stops, done=False):
            self.stops, self.done, self.calls = stops, done, []

        def poll(self):
            return 0 if self.done else None

        def send_signal(self, sig):
            self.calls.append(sig)

        def wait(self, timeout=None):
            self.calls.append("wait")
            assert timeout is not None and timeout <= 0.1  # the grace left (at least 0.1 s), not hours
            if not self.stops:
                raise subprocess.TimeoutExpired("worker", timeout)

        def kill(self):
            self.calls.append("kill")

    obeys, deaf, finished = Proc(True), Proc(False), Proc(True, done=True)
    monkeypatch.setattr(runner, "_WORKERS", {obeys, deaf, finished})
    runner.stop_workers(grace_s=0.01)
    assert obeys.calls == [signal.SIGINT, "wait"] and deaf.calls == [signal.SIGINT, "wait", "kill"]
    assert finished.calls == [] and runner._STOPPING.is_set()
    (run,) = seed_runs(tmp_path, 1)

    def worker(cmd, env, stdout, stderr):
        run.write_metrics({"x": 1.0})
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(runner.subprocess, "Popen", fake_popen(worker))
    (outcome,) = runner.run_all([run.cfg], tmp_path, None, console=Console(file=io.StringIO()))
    assert outcome.ok and not runner._STOPPING.is_set()


@pytest.mark.parametrize("when", ["loading", "single", "pack"])
def test_an_interrupted_worker_writes_a_line_and_exits_130(monkeypatch, capsys, when):
    """worker.main: a Ctrl-C (or runner.stop_workers' SIGINT) while the worker loads torch, runs one run or a pack:
    one line in the run's log and status 130, not a traceback."""
    import mmbench.pack
    import mmbench.worker as worker

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(worker, "load_run", lambda d: types.SimpleNamespace(held_here=lambda: False))
    monkeypatch.setattr(worker, "execute_when_free", interrupted)
    monkeypatch.setattr(mmbench.pack, "execute_pack", interrupted)
    monkeypatch.setattr(worker, "_EARLY_INTERRUPT", [2] if when == "loading" else [])
    try:
        status = worker.main(*(["a", "b"] if when == "pack" else ["a"]))
    except KeyboardInterrupt:  # (pytest would stop the whole session)
        pytest.fail("the interrupt escaped worker.main: a traceback in the run's log")
    assert status == 130
    assert capsys.readouterr().out == {
        "loading": "interrupted before the run started; it resumes from its last checkpoint\n",
        "single": "interrupted; the run resumes from its last checkpoint\n",
        "pack": "interrupted; the runs of this pack resume from their last checkpoints\n"}[when]


def test_a_worker_killed_by_a_signal_is_said_as_such_not_by_its_logs_last_line(tmp_path, monkeypatch):
    """A pack's worker killed by the out-of-memory killer (SIGKILL) left each run's log ending at "packed with ...", and
    `mmbench run` reported that line as the failure; now each run fails, in the summary and its log, naming the signal
    and the way out."""
    import io
    import subprocess

    from rich.console import Console

    import mmbench.runner as runner

    runs = seed_runs(tmp_path, 2)

    def killed_worker(cmd, env, stdout, stderr):
        stdout.write("packed with 1 other run(s) on cpu\n")
        stdout.flush()
        return subprocess.CompletedProcess(cmd, -9)

    monkeypatch.setattr(runner.subprocess, "Popen", fake_popen(killed_worker))
    monkeypatch.setattr(runner, "make_packs", lambda rs, *a, **k: [list(rs)])
    out = io.StringIO()
    outcomes = runner.run_all([r.cfg for r in runs], tmp_path, None, console=Console(file=out, width=300))
    assert len(outcomes) == 2 and not any(o.ok for o in outcomes)
    for o in outcomes:
        assert o.message.startswith("its worker process was killed by SIGKILL, most often the out-of-memory killer"), o
        assert "--pack N below its 2 runs" in o.message
        assert o.run.log_path.read_text().rstrip().endswith(o.message)
    assert runner.killed_by(-15, 1).startswith("its worker process was killed by SIGTERM; re-run")
    assert runner.killed_by(0, 3) is None and runner.killed_by(1, 3) is None
