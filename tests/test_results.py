"""The results store under damage: a run whose record files cannot be read is left out of the report (and said),
re-evaluated by `mmbench run` with the damaged file kept aside, and a re-scoring that fails changes nothing."""
import json

import pytest
import yaml
from typer.testing import CliRunner

from mmbench.cli import app
from mmbench.config import build_run_config
from mmbench.errors import MMBenchError
from mmbench.evaluate import execute
from mmbench.report import build_report
from mmbench.results import Run
from mmbench.suite import load_suite


def fake_run(runs_dir, seed, value=0.3, **cfg_extra):
    cfg = build_run_config({"dataset": "polydigits", "method": {"name": "mopoe"}, "seed": seed, "tables": ["T1"],
                            **cfg_extra})
    run = Run(cfg, runs_dir)
    run.init()
    run.write_metrics({"coherence/joint": value}, eval_precision=cfg.eval.precision)
    return run


DAMAGED_METRICS = {
    "truncated": lambda text: text[:len(text) // 2],
    "empty": lambda text: "",
    "a list": lambda text: "[1, 2]",
    "a metric that is no number": lambda text: text.replace("0.5", '"high"'),
}


@pytest.mark.parametrize("damage", list(DAMAGED_METRICS))
def test_report_leaves_out_and_lists_a_run_whose_metrics_cannot_be_read(tmp_path, damage):
    runs = tmp_path / "runs"
    good = fake_run(runs, 0)
    bad = fake_run(runs, 1, value=0.5)
    bad.metrics_path.write_text(DAMAGED_METRICS[damage](bad.metrics_path.read_text()))
    rep = build_report(runs, None)
    assert set(rep.frame["run"]) == {good.id}
    why = dict(rep.skipped)[bad.id]
    assert why.startswith("metrics.json unreadable (") and "re-evaluate it with `mmbench run`" in why
    assert bad.status() == "rescore"  # evaluated before: evaluated again, never retrained over
    res = CliRunner().invoke(app, ["report", "--runs-dir", str(runs), "--format", "md"])
    assert res.exit_code == 0, res.output
    assert f"{bad.id}: metrics.json unreadable" in " ".join(res.output.split())


def test_a_record_file_the_file_system_refuses_is_that_runs_problem_not_the_reports(tmp_path, monkeypatch):
    """metrics.json a directory, provenance.json unreadable (no permission; as root a chmod would not stop the
    read, so the refusal is simulated): each run is left out with the reason, and the report goes on."""
    from pathlib import Path

    runs = tmp_path / "runs"
    good, folder, denied = fake_run(runs, 0), fake_run(runs, 1), fake_run(runs, 2)
    folder.metrics_path.unlink()
    folder.metrics_path.mkdir()
    (denied.dir / "provenance.json").write_text("{}")
    real = Path.read_bytes

    def read_bytes(self):
        if self == denied.dir / "provenance.json":
            raise PermissionError(13, "Permission denied")
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    rep = build_report(runs, None)
    assert set(rep.frame["run"]) == {good.id}
    why = dict(rep.skipped)
    assert why[folder.id].startswith("metrics.json unreadable (not a file): re-evaluate it")
    assert why[denied.id].startswith("provenance.json unreadable (Permission denied): put a good copy back")


def test_report_leaves_out_and_lists_a_run_whose_provenance_cannot_be_read(tmp_path):
    runs = tmp_path / "runs"
    good = fake_run(runs, 0)
    bad = fake_run(runs, 1)
    (bad.dir / "provenance.json").write_text('{"git_commit": "abc", "pack')
    rep = build_report(runs, None)
    assert set(rep.frame["run"]) == {good.id}
    assert dict(rep.skipped)[bad.id].startswith("provenance.json unreadable (not valid JSON")


def test_dry_run_of_a_suite_with_a_damaged_run_lists_it_for_re_evaluation(tmp_path):
    suite = tmp_path / "s.yaml"
    suite.write_text(yaml.safe_dump({"name": "s", "experiments": [
        {"name": "e", "dataset": "polydigits", "methods": ["mopoe"], "seeds": [0, 1]}]}))
    runs = tmp_path / "runs"
    made = [Run(c, runs) for c in load_suite(suite).runs("full")]
    for run in made:
        run.init()
        run.write_metrics({"coherence/joint": 0.3})
    made[1].metrics_path.write_text("")
    res = CliRunner().invoke(app, ["run", str(suite), "--dry-run", "--runs-dir", str(runs), "--data-root",
                                   str(tmp_path / "data")])
    assert res.exit_code == 0, res.output
    assert "1 done, 1 rescore" in " ".join(res.output.split())


def test_re_evaluation_keeps_an_unreadable_metrics_json_and_puts_it_back_if_it_fails(tmp_path):
    run = fake_run(tmp_path / "runs", 0)  # no checkpoints: its evaluation fails
    run.metrics_path.write_text("[]")
    with pytest.raises(MMBenchError, match="has results but no checkpoint to evaluate again"):
        execute(run)
    assert run.metrics_path.read_text() == "[]"  # as it was: never deleted, never overwritten
    assert not list(run.dir.glob("metrics.json.unreadable-*"))


def test_re_evaluation_of_an_unreadable_metrics_json_keeps_it_aside(tmp_path, data_root):
    base = {"dataset": "polydigits", "method": {"name": "mopoe", "latent_dim": 8},
            "train": {"epochs": 1, "batch_size": 64, "max_train": 128},
            "eval": {"metrics": ["loglik"], "test_samples": 32, "ll_samples": 2}}
    run = Run(build_run_config(base), tmp_path / "runs")
    first = execute(run, data_root)
    damaged = run.metrics_path.read_text()[:40]
    run.metrics_path.write_text(damaged)
    ckpt = (run.ckpt_dir / "last.pt").stat().st_mtime_ns
    again = execute(run, data_root)
    assert (run.ckpt_dir / "last.pt").stat().st_mtime_ns == ckpt  # evaluated again, not retrained
    assert again["metrics"].keys() == first["metrics"].keys() and run.status() == "done"
    (kept,) = run.dir.glob("metrics.json.unreadable-*")
    assert kept.read_text() == damaged
    assert "metrics.json cannot be read" in run.log_path.read_text()


def test_a_failed_re_scoring_leaves_config_yaml_as_it_was(tmp_path):
    """`mmbench run --set eval.precision=bf16` writes config.yaml before its worker re-scores the run; when that
    evaluation fails, the run must be as it was (its fp32 metrics current, config.yaml asking for fp32), not left
    out of the report as waiting for a bf16 re-scoring."""
    runs = tmp_path / "runs"
    fp32 = fake_run(runs, 0)
    before = {p.name: p.read_bytes() for p in fp32.dir.iterdir() if p.is_file() and p.name != "run.lock"}
    bf16 = Run(build_run_config({"dataset": "polydigits", "method": {"name": "mopoe"}, "seed": 0, "tables": ["T1"],
                                 "eval": {"precision": "bf16"}}), runs)
    assert bf16.id == fp32.id and bf16.status() == "rescore"
    bf16.init()  # as runner.run_all does before starting the worker
    with pytest.raises(MMBenchError, match="has results but no checkpoint to evaluate again"):  # no checkpoints: the evaluation fails
        execute(bf16)
    after = {p.name: p.read_bytes() for p in fp32.dir.iterdir() if p.is_file() and p.name not in ("run.lock", "log.txt")}
    before.pop("log.txt", None)
    assert after == before
    assert fp32.status() == "done" and set(build_report(runs, None).frame["run"]) == {fp32.id}
    assert yaml.safe_load((fp32.dir / "config.yaml").read_text())["eval"]["precision"] == "fp32"
    assert json.loads(fp32.metrics_path.read_text())["eval_precision"] == "fp32"


def test_an_unreadable_evaluation_set_aside_is_neither_read_as_the_scoring_nor_brought_back(tmp_path):
    """A metrics.<scoring>.json kept aside by a re-scoring, then damaged: the run's status and wanted scoring are
    still computed (before: a JSON traceback), and it is not brought back over metrics.json as if it were good."""
    runs = tmp_path / "runs"
    run = fake_run(runs, 0)
    for name in ("metrics", "provenance"):  # as a re-scoring stopped after setting them aside leaves the run
        if (run.dir / f"{name}.json").exists():
            (run.dir / f"{name}.json").replace(run.dir / f"{name}.fp32.json")
    kept = run.dir / "metrics.fp32.json"
    kept.write_text(kept.read_text()[:20])
    assert run.status() == "rescore" and run.scoring_wanted() == "mmbench-off"
    assert run.bring_back("fp32") is False
    assert kept.exists() and not run.metrics_path.exists()
    assert "metrics.fp32.json cannot be read" in run.log_path.read_text()


# ----- behaviours a mutation pass found unguarded -----
def test_atomic_write_keeps_the_old_content_when_fsync_fails(tmp_path, monkeypatch):
    """By default every write is synced (the suite runs with MMBENCH_FSYNC=0, tests/conftest.py); a failed sync
    keeps the old file. MMBENCH_FSYNC=0 skips the sync; any other value is refused by name."""
    import os
    from mmbench import results
    from mmbench.errors import MMBenchError
    monkeypatch.delenv("MMBENCH_FSYNC")
    p = tmp_path / "metrics.json"
    results.atomic_write(p, "old")
    def boom(fd):
        raise OSError("disk full")
    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError):
        results.atomic_write(p, "new")
    assert p.read_text() == "old" and [x.name for x in tmp_path.iterdir()] == ["metrics.json"]
    monkeypatch.setenv("MMBENCH_FSYNC", "0")
    results.atomic_write(p, "new")  # not synced: the failing fsync is not called
    assert p.read_text() == "new"
    monkeypatch.setenv("MMBENCH_FSYNC", "no")
    with pytest.raises(MMBenchError, match=r"MMBENCH_FSYNC='no': use 1 \(sync every write, the default\) or 0"):
        results.atomic_write(p, "newer")
    assert p.read_text() == "new"
    monkeypatch.setenv("MMBENCH_FSYNC", "")  # an unset shell variable: not "do not sync"
    with pytest.raises(MMBenchError, match=r"MMBENCH_FSYNC='': use 1"):
        results.atomic_write(p, "newer")


def test_init_merges_tables_across_invocations(tmp_path):
    Run(build_run_config({"dataset": "polydigits", "tables": ["A"]}), tmp_path).init()
    r = Run(build_run_config({"dataset": "polydigits", "tables": ["B"]}), tmp_path)
    r.init()
    assert yaml.safe_load((r.dir / "config.yaml").read_text())["tables"] == ["A", "B"]


def test_a_bool_metric_is_refused():
    from mmbench.results import RecordError, parse_metrics
    with pytest.raises(RecordError, match="metric 'x' is True, not a number"):
        parse_metrics(json.dumps({"schema_version": 1, "metrics": {"x": True}}), "m.json")


def test_execute_never_retrains_a_finished_run(tmp_path, monkeypatch):
    from mmbench import evaluate
    run = fake_run(tmp_path, 0, 0.3)
    def no(*a, **k):
        raise AssertionError("a finished run was trained again")
    monkeypatch.setattr(evaluate, "train", no)
    monkeypatch.setattr(evaluate, "evaluate", no)
    assert evaluate.execute(run)["metrics"] == {"coherence/joint": 0.3}


def test_no_checkpoint_messages_say_why_and_what_to_do(tmp_path):
    """A run with results but no checkpoint (imported from a bundle without --checkpoints) is not told to train
    first; a run whose eval settings changed names the trained run they left behind."""
    from mmbench.train import load_trained

    runs = tmp_path / "runs"
    imported = fake_run(runs, 0)
    with pytest.raises(MMBenchError, match=r"has results but no checkpoint to evaluate again .*--checkpoints"):
        load_trained(imported)
    trained = fake_run(runs, 1)
    trained.metrics_path.unlink()
    trained.ckpt_dir.mkdir(parents=True)
    (trained.ckpt_dir / "last.pt").write_bytes(b"x")
    other_eval = Run(build_run_config({"dataset": "polydigits", "method": {"name": "mopoe"}, "seed": 1,
                                       "eval": {"ll_samples": 3}}), runs)
    assert other_eval.id != trained.id and other_eval.trained_twin() == trained.dir
    with pytest.raises(MMBenchError, match=rf"run {trained.id} is trained with the same settings but other eval"):
        load_trained(other_eval)
    other_seed = Run(build_run_config({"dataset": "polydigits", "method": {"name": "mopoe"}, "seed": 2}), runs)
    assert other_seed.trained_twin() is None
    with pytest.raises(MMBenchError, match="train the run first"):
        load_trained(other_seed)
    (trained.ckpt_dir / "last.pt").unlink()  # a twin with no checkpoint has no trained model to offer
    assert other_eval.trained_twin() is None


def test_a_failed_re_evaluation_puts_an_unreadable_metrics_json_back_and_says_so(tmp_path):
    run = fake_run(tmp_path / "runs", 0)
    run.metrics_path.write_text("{")
    with pytest.raises(RuntimeError):
        with run.scoring_aside():
            raise RuntimeError("evaluation failed")
    assert run.metrics_path.read_text() == "{" and not list(run.dir.glob("metrics.json.unreadable-*"))
    log = run.log_path.read_text()
    assert "kept as metrics.json.unreadable-" in log and "put back as metrics.json" in log


def test_report_names_a_runs_dir_that_is_a_file(tmp_path):
    f = tmp_path / "runs"
    f.write_text("")
    with pytest.raises(MMBenchError, match="is a file, not a directory"):
        build_report(f, None)


def test_temp_beside_is_in_the_targets_folder_with_the_usual_mode(tmp_path):
    """The temporary file sits beside its target (so os.replace is atomic) with 0666 less the umask, not 0600."""
    import os

    from mmbench.files import temp_beside, usual_mode

    mask = os.umask(0o022)
    os.umask(mask)
    fd, tmp = temp_beside(tmp_path / "metrics.json")
    os.close(fd)
    assert os.path.dirname(tmp) == str(tmp_path) and os.path.basename(tmp).startswith(".metrics.json.")
    assert os.stat(tmp).st_mode & 0o777 == usual_mode() == 0o666 & ~mask


def _held(path) -> bool:
    """Whether a process holds an flock on `path` (another open file cannot take one)."""
    import fcntl
    import os

    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def test_every_temporary_file_is_held_by_its_writer_until_it_is_in_place(tmp_path, monkeypatch):
    # files.temp_beside holds every temporary file (an flock) while its writer has it open, and atomic_write renames it
    # into place before letting go: a clean-up of killed writes (files.remove_abandoned_temps) tells a live write from
    # a dead one. atomic_write closed the file first, so a write whose sync took more than 2 s could be removed
    # between its close and its rename
    import os

    from mmbench import results
    from mmbench.files import temp_beside

    fd, tmp = temp_beside(tmp_path / "a.npz")
    assert _held(tmp)
    os.close(fd)
    assert not _held(tmp)
    seen, real_replace = [], os.replace

    def replace(src, dst):
        seen.append((os.path.basename(src), _held(src)))
        return real_replace(src, dst)

    monkeypatch.setattr(results.os, "replace", replace)
    fds = len(os.listdir("/proc/self/fd"))
    results.atomic_write(tmp_path / "metrics.json", "{}")
    assert len(seen) == 1 and seen[0][0].startswith(".metrics.json.") and seen[0][1]
    assert len(os.listdir("/proc/self/fd")) == fds  # the hold let go with the file in place
    assert (tmp_path / "metrics.json").read_text() == "{}"


def test_the_clean_up_of_killed_writes_removes_only_unheld_old_temporary_files(tmp_path):
    # files.remove_abandoned_temps: a temporary file's name (.<name>.<8 of [a-z0-9_]>), a plain file, no writer holding
    # it, not written to for min_age_s; `target` limits it to one file's temporary files (a user's folder)
    import os
    import time

    from mmbench.files import remove_abandoned_temps, temp_beside

    names = [".last.pt.k1ll3d_x", ".metrics.json.abcd1234", ".notes", ".last.pt.short", ".last.pt.UPPERCAS",
             "last.pt.k1ll3d_z", ".young.pt.n0w_0000"]
    now = time.time()
    for n in names:
        (tmp_path / n).write_bytes(b"x")
        age = 10 if n == ".young.pt.n0w_0000" else 3600
        os.utime(tmp_path / n, (now - age, now - age))
    (tmp_path / ".dir.pt.k1ll3d_y").mkdir()
    os.symlink(tmp_path / "last.pt.k1ll3d_z", tmp_path / ".link.pt.k1ll3d_w")
    os.utime(tmp_path / ".link.pt.k1ll3d_w", (now - 3600, now - 3600), follow_symlinks=False)
    fd, held = temp_beside(tmp_path / "best.pt")
    os.utime(held, (now - 3600, now - 3600))
    try:
        assert remove_abandoned_temps(tmp_path, "last.pt", min_age_s=60) == [".last.pt.k1ll3d_x"]
        assert remove_abandoned_temps(tmp_path, min_age_s=60) == [".metrics.json.abcd1234"]
        assert remove_abandoned_temps(tmp_path, min_age_s=0) == [".young.pt.n0w_0000"]
    finally:
        os.close(fd)
    assert remove_abandoned_temps(tmp_path) == [os.path.basename(held)]  # its writer gone
    assert sorted(p.name for p in tmp_path.iterdir()) == [".dir.pt.k1ll3d_y", ".last.pt.UPPERCAS", ".last.pt.short",
                                                           ".link.pt.k1ll3d_w", ".notes", "last.pt.k1ll3d_z"]
    assert remove_abandoned_temps(tmp_path / "absent") == []


def test_a_writer_waits_for_a_clean_up_looking_at_its_new_file_and_then_holds_it(tmp_path):
    # files.hold_temp: a clean-up that had the brand-new file locked for the instant it looked made the writer's
    # non-blocking flock fail, silently: the write went on unheld, and a later clean-up could remove it mid-write
    import fcntl
    import os
    import threading
    import time

    from mmbench.files import hold_temp

    path = tmp_path / ".a.pt.n3w_0000"
    path.write_bytes(b"")
    sweeper = os.open(path, os.O_RDWR)
    fcntl.flock(sweeper, fcntl.LOCK_EX)
    threading.Timer(0.3, os.close, (sweeper,)).start()  # the clean-up lets go
    writer = os.open(path, os.O_RDWR)
    t0 = time.monotonic()
    hold_temp(writer)
    try:
        assert time.monotonic() - t0 >= 0.25 and _held(path)
    finally:
        os.close(writer)


def test_a_write_whose_close_fails_keeps_the_old_file(tmp_path, monkeypatch):
    # results.atomic_write: closing a file can fail (NFS writes back unsynced data at its close: a quota, a full
    # disk); the rename comes after the close, so the old file stays whole and no temporary file is left
    import errno
    import io
    import os

    from mmbench import results

    monkeypatch.setenv("MMBENCH_FSYNC", "0")
    target = tmp_path / "last.pt"
    results.atomic_write(target, b"old")
    real_fdopen = os.fdopen

    class Failing(io.FileIO):
        def close(self):
            super().close()
            raise OSError(errno.EDQUOT, "Disk quota exceeded")

    monkeypatch.setattr(results.os, "fdopen", lambda fd, mode: Failing(fd, "wb") if mode == "wb" else real_fdopen(fd, mode))
    with pytest.raises(OSError, match="quota"):
        results.atomic_write(target, b"new")
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


# ----- behaviours a mutation pass of evaluation found unguarded -----
def test_trained_provenance_keeps_the_trainers_summary_and_its_pack():
    """trained_provenance: seconds (rounded), epochs, throughput, code, start time, and a pack's members."""
    from mmbench.evaluate import trained_provenance

    s = {"train_seconds": 1.234, "epochs": 3, "tuples_per_second": 9.5, "trained_with": [{"git_commit": "a"}]}
    assert trained_provenance(s, 5.0) == {"train_seconds": 1.23, "epochs": 3, "started": 5.0,
                                          "train_tuples_per_second": 9.5, "trained_with": [{"git_commit": "a"}]}
    assert trained_provenance({**s, "packed_with": ["r1"]}, 5.0)["packed_with"] == ["r1"]


def test_a_re_evaluation_takes_the_training_from_the_newest_provenance(tmp_path):
    """training_provenance: provenance.json, else the newest provenance.<scoring>.json; only the training's keys."""
    import os

    from mmbench.evaluate import training_provenance

    run = fake_run(tmp_path, 0)
    assert training_provenance(run) == {}
    train = {"train_seconds": 2.0, "train_tuples_per_second": 8.0, "epochs": 1, "trained_with": [{"git_commit": "a"}]}
    for i, name in enumerate(("provenance.old.json", "provenance.new.json")):
        (run.dir / name).write_text(json.dumps({**train, "epochs": i + 1, "eval_precision": "fp32"}))
        os.utime(run.dir / name, (1000 + i, 1000 + i))
    assert training_provenance(run) == {**train, "epochs": 2}
    (run.dir / "provenance.json").write_text(json.dumps({**train, "epochs": 7}))
    assert training_provenance(run) == {**train, "epochs": 7}


# ----- behaviours a second mutation pass (config, suites, results, bundles) found unguarded -----
def test_metrics_of_another_schema_version_are_refused():
    from mmbench.results import RecordError, parse_metrics
    with pytest.raises(RecordError, match="m.json: schema version 2, this mmbench reads 1"):
        parse_metrics(json.dumps({"schema_version": 2, "metrics": {"x": 0.5}}), "m.json")


def test_metrics_scored_before_classifier_dropout_existed_count_as_dropout_off(tmp_path):
    run = fake_run(tmp_path, 0)
    run.write_metrics({"coherence/joint": 0.3}, classifier_set="mmbench")  # no classifier_dropout key
    assert run.scored_with() == "mmbench-off" and run.status() == "done"


def test_status_goes_pending_partial_done(tmp_path):
    run = Run(build_run_config({"dataset": "polydigits", "seed": 3}), tmp_path)
    run.init()
    assert run.status() == "pending"
    run.ckpt_dir.mkdir()
    (run.ckpt_dir / "best.pt").write_bytes(b"x")  # a best model alone is no resume point
    assert run.status() == "pending"
    (run.ckpt_dir / "last.pt").write_bytes(b"x")
    assert run.status() == "partial"
    run.write_metrics({"coherence/joint": 0.3})
    assert run.status() == "done"


def test_load_runs_passes_over_unfinished_runs_without_listing_them(tmp_path):
    """A run still training (config.yaml, no metrics.json) is neither reported nor said to be unreadable."""
    from mmbench.results import load_runs

    done = fake_run(tmp_path, 0)
    Run(build_run_config({"dataset": "polydigits", "seed": 1}), tmp_path).init()
    skipped = []
    assert [r["id"] for r in load_runs(tmp_path, skipped)] == [done.id] and skipped == []


def test_a_failed_re_scoring_puts_the_provenance_back_with_the_metrics(tmp_path):
    run = fake_run(tmp_path, 0)
    (run.dir / "provenance.json").write_text('{"git_commit": "abc"}')
    before = {n: (run.dir / n).read_bytes() for n in ("metrics.json", "provenance.json")}
    with pytest.raises(RuntimeError):
        with run.scoring_aside() as old:
            assert old == "fp32" and not run.metrics_path.exists() and not (run.dir / "provenance.json").exists()
            raise RuntimeError("evaluation failed")
    assert {n: (run.dir / n).read_bytes() for n in before} == before
    assert not list(run.dir.glob("*.fp32.json"))


def test_runs_live_under_mmbench_runs_when_no_directory_is_given(tmp_path, monkeypatch):
    monkeypatch.setenv("MMBENCH_RUNS", str(tmp_path / "elsewhere"))
    run = Run(build_run_config({"dataset": "polydigits"}))
    assert run.dir == tmp_path / "elsewhere" / run.id


def test_a_change_of_coherence_classifiers_alone_asks_for_a_re_scoring(tmp_path):
    run = fake_run(tmp_path, 0)
    run.write_metrics({"coherence/joint": 0.3}, classifier_set="mmbench", classifier_dropout="off")
    assert run.status() == "done"
    other = Run(build_run_config({"dataset": "polydigits", "method": {"name": "mopoe"}, "seed": 0,
                                  "eval": {"classifier_dropout": "as_authors"}}), tmp_path)
    assert other.id == run.id and other.status() == "rescore" and other.scoring_wanted() == "mmbench-as_authors"


def test_a_second_re_scoring_request_keeps_the_config_the_metrics_were_made_with(tmp_path):
    """init keeps config.yaml aside once: a later request (before the re-scoring ran) does not replace it."""
    run = fake_run(tmp_path, 0)
    made_with = (run.dir / "config.yaml").read_text()
    for ev in ({"precision": "bf16"}, {"precision": "bf16", "classifier_dropout": "as_authors"}):
        Run(build_run_config({"dataset": "polydigits", "method": {"name": "mopoe"}, "seed": 0, "tables": ["T1"],
                              "eval": ev}), tmp_path).init()
    assert run.config_before_rescore.read_text() == made_with


def test_a_lock_file_without_a_pid_yet_counts_as_held_here(tmp_path):
    run = fake_run(tmp_path, 0)
    assert run.held_here()  # no lock file
    (run.dir / "run.lock").write_text("")
    assert run.held_here()
    (run.dir / "run.lock").write_text("999999999")
    assert not run.held_here()


def test_metrics_scored_before_eval_classifiers_existed_count_as_mmbench_off(tmp_path):
    """A metrics.json with classifier_ap (multi-label coherence) but no classifier_set was scored by mmbench's."""
    run = fake_run(tmp_path, 0)
    run.write_metrics({"coherence_ap/joint": 0.3}, classifier_ap={"m0": 0.9})
    assert run.scored_with() == "mmbench-off" and run.status() == "done"


def test_the_scoring_wanted_of_a_run_set_aside_reads_the_evaluation_kept(tmp_path):
    """An evaluation without coherence, set aside: its config wants it back as "fp32" (no classifiers), not
    "mmbench-off", so bring_back finds it."""
    run = fake_run(tmp_path, 0)  # scored without classifiers
    run.metrics_path.replace(run.dir / "metrics.fp32.json")
    assert run.scoring_wanted() == "fp32" and run.status() == "rescore"
    assert run.bring_back(run.scoring_wanted()) and run.status() == "done"


def test_report_says_why_a_config_that_no_longer_validates_is_left_out(tmp_path):
    from mmbench.results import load_runs

    good, old = fake_run(tmp_path, 0), fake_run(tmp_path, 1)
    cfg = old.dir / "config.yaml"
    cfg.write_text(cfg.read_text().replace("select: last", "select: newest"))
    skipped = []
    assert [r["id"] for r in load_runs(tmp_path, skipped)] == [good.id]
    assert skipped == [(old.id, "its config no longer validates (train.select: 'newest' is not allowed; choose one of: "
                                "last, best_test_loss)")]


def test_report_lists_a_finished_run_whose_config_yaml_is_lost(tmp_path):
    """Before: passed over in silence (the report neither showed it nor said why), while export listed it."""
    from mmbench.results import load_runs

    good, lost = fake_run(tmp_path, 0), fake_run(tmp_path, 1)
    (lost.dir / "config.yaml").unlink()
    skipped = []
    assert [r["id"] for r in load_runs(tmp_path, skipped)] == [good.id]
    assert skipped == [(lost.id, "config.yaml unreadable (missing): put a good copy back, or delete the run directory")]


def test_the_lock_file_holds_only_its_holders_pid(tmp_path):
    import os

    run = fake_run(tmp_path, 0)
    (run.dir / "run.lock").write_text("999999999")  # left by an earlier holder
    with run.lock():
        assert (run.dir / "run.lock").read_text() == str(os.getpid()) and run.held_here()


def test_report_lists_a_run_whose_config_yaml_is_no_mapping(tmp_path):
    from mmbench.results import load_runs

    run = fake_run(tmp_path, 0)
    (run.dir / "config.yaml").write_text("- dataset: polydigits\n")
    skipped = []
    assert load_runs(tmp_path, skipped) == []
    assert skipped == [(run.id, "config.yaml unreadable (not a mapping of run settings): put a good copy back, or "
                                "delete the run directory")]


def test_a_failure_after_the_new_metrics_are_written_keeps_them(tmp_path):
    """Once the re-evaluation's metrics.json is written, a later failure does not bring the old one back over it."""
    run = fake_run(tmp_path, 0)
    with pytest.raises(RuntimeError):
        with run.scoring_aside():
            run.write_metrics({"coherence/joint": 0.9}, eval_precision="fp32")
            raise RuntimeError("failed after the metrics were written")
    assert json.loads(run.metrics_path.read_text())["metrics"] == {"coherence/joint": 0.9}
    assert json.loads((run.dir / "metrics.fp32.json").read_text())["metrics"] == {"coherence/joint": 0.3}


# ----- behaviours a mutation pass of training and evaluation found unguarded -----
def test_executing_a_done_run_again_neither_trains_nor_evaluates_nor_rewrites_its_metrics(tmp_path, monkeypatch):
    import mmbench.evaluate as evaluate_mod

    run = fake_run(tmp_path, 0)
    assert run.status() == "done"
    before = run.metrics_path.read_bytes()

    def refuse(*a, **k):
        raise AssertionError("a done run was trained or evaluated again")

    monkeypatch.setattr(evaluate_mod, "train", refuse)
    monkeypatch.setattr(evaluate_mod, "evaluate", refuse)
    assert execute(run) == run.read_metrics()
    assert run.metrics_path.read_bytes() == before


@pytest.mark.parametrize("damage", [
    lambda d: (d / "provenance.json").write_text(json.dumps({"trained_with": [{"git_commit": "a", "kernels": [1]}]})),
    lambda d: (d / "provenance.json").write_text(json.dumps({"classifiers": "mmbench"})),
    lambda d: (d / "provenance.json").write_text(json.dumps({"dataset_build": {"options": [1]}})),
    lambda d: (d / "metrics.json").write_text((d / "metrics.json").read_text().replace("0.5", "1" + "0" * 400)),
    lambda d: (d / "metrics.json").write_text((d / "metrics.json").read_text().replace('"fp32"', "5")),
    lambda d: (d / "config.yaml").write_bytes((d / "config.yaml").read_bytes().replace(b"tables", b"t\xffables")),
    lambda d: (d / "metrics.json").write_text((d / "metrics.json").read_text().replace(d.name, d.name[:-1] + "x")),
    lambda d: (d / "provenance.json").symlink_to(d / "gone" / "provenance.json"),
    lambda d: (d / "metrics.json").write_text((d / "metrics.json").read_text().replace('"schema_version": 1', '"schema_version": true')),
    lambda d: (d / "metrics.json").write_text((d / "metrics.json").read_text().replace('"schema_version": 1', '"schema_version": 1.0')),
    lambda d: ((d / "metrics.json").unlink(), (d / "metrics.json").mkdir()),
    lambda d: ((d / "metrics.json").unlink(), (d / "metrics.json").symlink_to(d / "gone.json")),
    lambda d: (d / "provenance.json").write_text(json.dumps({"train_seconds": True})),
], ids=["kernels a list", "classifiers a string", "build options a list", "a metric too large for a float",
        "eval_precision a number", "config.yaml not UTF-8", "metrics.json of another run", "provenance.json a link to nowhere",
        "schema_version true", "schema_version 1.0", "metrics.json a directory", "metrics.json a link to nowhere",
        "train_seconds true"])
def test_report_and_export_leave_out_a_run_whose_records_hold_the_wrong_types(tmp_path, damage):
    """Each of these raised a traceback (AttributeError, OverflowError, TypeError) out of `mmbench report` and
    `mmbench export` instead of leaving the run out and naming it; another run's metrics.json (its run_id), a
    provenance.json link to nowhere and a schema_version of true or 1.0 were reported as this run's; a metrics.json
    that is a directory (or a link to nowhere) was passed over by export without being listed."""
    runs = tmp_path / "runs"
    good = fake_run(runs, 0)
    bad = fake_run(runs, 1, value=0.5)
    damage(bad.dir)
    files = {p: p.read_bytes() if p.is_file() else None for p in bad.dir.iterdir()}
    rep = build_report(runs, None)
    assert set(rep.frame["run"]) == {good.id}
    assert "unreadable" in dict(rep.skipped)[bad.id]
    res = CliRunner().invoke(app, ["export", str(tmp_path / "b.tar.gz"), "--runs-dir", str(runs)])
    assert res.exit_code == 0, res.output
    assert f"left out {bad.id}" in " ".join(res.output.split())
    assert {p: p.read_bytes() if p.is_file() else None for p in bad.dir.iterdir()} == files  # nothing rewritten


def test_a_run_lock_that_is_a_folder_is_refused_in_one_line(tmp_path):
    """run.lock a folder (or a link to one, or to nowhere): Run.lock raised IsADirectoryError, which a worker wrote
    to log.txt as a traceback; now an MMBenchError names the file and the fix, and nothing of the run is touched."""
    from mmbench.config import build_run_config
    from mmbench.errors import MMBenchError
    from mmbench.results import Run

    run = Run(build_run_config({"dataset": "polydigits", "method": {"name": "mopoe"}}), tmp_path)
    (run.dir / "run.lock").mkdir(parents=True)
    with pytest.raises(MMBenchError, match=r"its lock .*run\.lock cannot be opened \(Is a directory\); move it away"):
        with run.lock():
            pass
    assert (run.dir / "run.lock").is_dir()


def test_init_leaves_an_identical_config_unwritten(tmp_path):
    # results.Run.init rewrote config.yaml on every start, so a finished run could not even be re-scored on a full
    # disk; the same text is not written again, a changed one is (its tables merged)
    from conftest import file_size_limit

    cfg = build_run_config({"dataset": "polydigits", "method": {"name": "mopoe"}, "seed": 0, "tables": ["T1"]})
    run = Run(cfg, tmp_path)
    run.init()
    before = (run.dir / "config.yaml").stat()
    with file_size_limit(1):  # any write of config.yaml would fail
        Run(cfg, tmp_path).init()
    after = (run.dir / "config.yaml").stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    again = build_run_config({"dataset": "polydigits", "method": {"name": "mopoe"}, "seed": 0, "tables": ["T2"]})
    Run(again, tmp_path).init()
    assert "- T1\n- T2\n" in (run.dir / "config.yaml").read_text()


def test_a_log_line_that_cannot_be_written_names_the_log(tmp_path):
    # results.Run.log: a full disk's failed append named no file (a traceback in the worker, whose last line the
    # runner shows); it now names log.txt, which cli.main and the workers print with the fix
    from conftest import file_size_limit

    run = Run(build_run_config({"dataset": "polydigits", "method": {"name": "mopoe"}, "seed": 0}), tmp_path)
    run.log("first")
    with file_size_limit(run.log_path.stat().st_size), pytest.raises(OSError) as e:
        run.log("second")
    assert (e.value.errno, e.value.filename) == (27, str(run.log_path))
