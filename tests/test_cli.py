"""The command line end to end on a tiny suite: run, skip, fail one run, report and compare."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import seed_runs

ROOT = Path(__file__).resolve().parents[1]

TINY_SUITE = """
name: tiny
description: A seconds-long suite for the tests.
defaults:
  method: {latent_dim: 8}
  train: {epochs: 1, batch_size: 32, max_train: 64, max_test: 64}  # test loss on 64 tuples: what is tested is the CLI
  eval: {test_samples: 64, lr_train_samples: 64, joint_samples: 32, classifier_epochs: 1,
         classifier_min_accuracy: 0.0}
experiments:
  - name: tiny
    reproduces: ["Tiny Table"]
    dataset: polydigits
    methods: [mopoe, mmvae]
    seeds: [0]
  - name: refuses
    reproduces: ["Refusal"]
    dataset: polydigits
    methods: [mvae]
    overrides: {eval: {classifier_min_accuracy: 1.0}}
"""


def mmbench(*args, env=None, cwd=None):
    return subprocess.run([sys.executable, "-m", "mmbench", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "200", **(env or {})}, cwd=cwd, timeout=600)


@pytest.fixture()
def workspace(tmp_path, data_root):
    (tmp_path / "suite.yaml").write_text(TINY_SUITE)
    refs = tmp_path / "refs"
    refs.mkdir()
    return tmp_path, {"MMBENCH_DATA": str(data_root), "MMBENCH_RUNS": str(tmp_path / "runs")}


def reference(path, cells):
    path.write_text(yaml.safe_dump({"paper": "Tiny paper", "cells": cells}))


def cell(**kw):
    base = {"paper": "Tiny", "table": "Tiny Table", "row": "MoPoE", "column": "joint", "method": "mopoe",
            "metric": "coherence/joint", "value": 0.5, "tolerance": 1.0}
    return {**base, **kw}


def test_suite_end_to_end(workspace, mmbench_here):
    ws, env = workspace
    r = mmbench_here("run", ws / "suite.yaml", "--dry-run", env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("pending") == 3 + 1 and "3 pending; no timing yet" in r.stdout  # 3 rows + the summary

    r = mmbench("run", ws / "suite.yaml", "--jobs", "2", env=env)  # two CPU workers
    assert r.returncode == 1  # the refusing run fails ...
    assert "FAILED" in r.stderr and "classifier_min_accuracy" in r.stderr and "log.txt" in r.stderr
    assert "2 of 3 runs finished" in r.stdout  # ... and does not stop the others
    runs = sorted(p.name for p in (ws / "runs").iterdir())
    assert len(runs) == 3
    done = [ws / "runs" / n for n in runs if (ws / "runs" / n / "metrics.json").exists()]
    assert len(done) == 2
    for d in done:
        m = yaml.safe_load((d / "metrics.json").read_text())
        assert m["schema_version"] == 1
        assert 0 <= m["metrics"]["coherence/joint"] <= 1 and "latent_acc/m0" in m["metrics"]
        assert "coherence/m0+m1->m2" in m["metrics"] and set(m["classifier_accuracy"]) == {f"m{i}" for i in range(5)}
        prov = yaml.safe_load((d / "provenance.json").read_text())
        assert {"mmbench_version", "git_commit", "torch_version", "device", "dataset_digest", "wall_seconds",
                "peak_rss_mb"} <= set(prov) and prov["peak_rss_mb"] > 100  # a torch process
        assert [c["from_epoch"] for c in prov["trained_with"]] == [0] and prov["trained_with"][0]["mmbench_version"]
        assert prov["cuda_visible_devices"] == ""  # a CPU worker sees no GPU (GPU workers: test_worker_env_*)
        assert (d / "checkpoints" / "last.pt").exists() and (d / "config.yaml").exists() and (d / "log.txt").exists()

    mtimes = {d: (d / "metrics.json").stat().st_mtime_ns for d in done}
    (refused,) = [ws / "runs" / n for n in runs if ws / "runs" / n not in done]
    trained = (refused / "checkpoints" / "last.pt").read_bytes()
    r = mmbench_here("run", ws / "suite.yaml", "--dry-run", env=env)
    assert r.stdout.count("done") == 2 + 1 and "2 done, 1 partial" in r.stdout
    # Again: finished runs are skipped, the trained-but-refused run is evaluated again (not retrained) and
    # refused again.
    r = mmbench("run", ws / "suite.yaml", env=env)
    assert r.returncode == 1 and "2 of 3 runs finished" in r.stdout and "runs (2 already done)" in r.stderr
    assert r.stderr.count("FAILED") == 1 and refused.name in r.stderr and "classifier_min_accuracy" in r.stderr
    assert (refused / "checkpoints" / "last.pt").read_bytes() == trained
    assert "resumed from" in (refused / "log.txt").read_text()
    r = mmbench("run", ws / "suite.yaml", "--set", "eval.classifier_min_accuracy=0.0", env=env)
    assert r.returncode == 0, r.stderr
    assert "3 of 3 runs finished" in r.stdout and "FAILED" not in r.stderr and "runs (2 already done)" in r.stderr
    assert all((d / "metrics.json").stat().st_mtime_ns == t for d, t in mtimes.items())  # finished runs skipped
    new = [p for p in (ws / "runs").iterdir() if p.name not in runs]  # the threshold is part of the run id
    assert len(new) == 1 and (new[0] / "metrics.json").exists() and "-mvae-" in new[0].name

    r = mmbench_here("report", "--plots", ws / "plots", env=env)
    assert r.returncode == 0 and "polydigits (vanilla)" in r.stdout and "mopoe" in r.stdout
    plots = sorted(p.name for p in (ws / "plots").iterdir())
    assert plots == sorted(f"polydigits-vanilla-{t}-{kind}.{ext}" for t in ("Refusal", "Tiny_Table")
                           for kind in ("by-inputs", "training") for ext in ("png", "svg"))  # training: history.json

    reference(ws / "refs" / "tiny.yaml", [cell(), cell(row="MVAE", method="mvae", table="Tiny Table")])
    r = mmbench_here("report", "--compare", ws / "refs", env=env)
    assert r.returncode == 1 and "1 of 2 reference cells within tolerance, 0 of 0 claims hold; 0 failing, 1 missing" in r.stdout
    assert "missing" in r.stdout
    r = mmbench_here("report", "--compare", ws / "refs", "--allow-missing", "--format", "md", "--out", ws / "r.md", env=env)
    assert r.returncode == 0, r.stdout
    md = (ws / "r.md").read_text()
    assert "### Tiny — Tiny Table" in md and "missing" in md and "✓" in md

    reference(ws / "refs" / "tiny.yaml", [cell(value=-1.0, tolerance=0.0)])
    r = mmbench_here("report", "--compare", ws / "refs", "--allow-missing", env=env)
    assert r.returncode == 1 and "1 failing" in r.stdout

    # Claims through the CLI: everything passing exits 0 without --allow-missing; one failing claim exits 1.
    side = {"method": "mopoe", "metric": "coherence/joint"}
    claim = {"id": "c", "paper": "Tiny", "figure": "Tiny Table", "quote": "q", "source": "p. 1",
             "holds": [{"left": side, "op": ">=", "right": 0.0}, {"left": side, "op": "<=", "right": 1.0}]}
    (ws / "refs" / "tiny.yaml").write_text(yaml.safe_dump({"paper": "Tiny", "cells": [cell()], "claims": [claim]}))
    r = mmbench_here("report", "--compare", ws / "refs", env=env)
    assert r.returncode == 0, r.stdout
    assert "1 of 1 reference cells within tolerance, 1 of 1 claims hold; 0 failing, 0 missing" in r.stdout
    claim["holds"].append({"left": side, "op": "<", "right": 0.0})
    (ws / "refs" / "tiny.yaml").write_text(yaml.safe_dump({"paper": "Tiny", "cells": [cell()], "claims": [claim]}))
    r = mmbench_here("report", "--compare", ws / "refs", env=env)
    assert r.returncode == 1 and "0 of 1 claims hold; 1 failing, 0 missing" in r.stdout


def test_dry_run_keeps_run_ids_whole_where_the_table_fits_and_folds_them_where_not(workspace, mmbench_here):
    """A run id is what a user copies to find its folder: on one line where the table then fits the terminal (the other
    columns wrap first: at 105 columns here, where rich alone folded the ids); in a terminal too narrow for that it
    folds, rather than pushing the columns at the right past the edge, where the console cuts them off."""
    import re

    ws, env = workspace
    whole = mmbench_here("run", ws / "suite.yaml", "--dry-run", env=env, width=105).stdout
    ids = [line.split("│")[1].strip() for line in whole.splitlines() if line.startswith("│ polydigits-")]
    assert len(ids) == 3 and all(re.fullmatch(r"polydigits-vanilla-m\w+-s0-[0-9a-f]{10}", i) for i in ids), whole
    narrow = mmbench_here("run", ws / "suite.yaml", "--dry-run", env=env, width=90).stdout
    assert narrow.count("pending │") == 3 and "status  ┃" in narrow, narrow  # the last column whole
    cells = "".join(line.split("│")[1].strip() for line in narrow.splitlines() if line.startswith("│"))
    assert all(i in cells for i in ids) and not any(i in narrow for i in ids), narrow  # folded, each still all there


@pytest.mark.parametrize("args, message", [
    (["train", "polydigits", "nope"], "error: method.name: unknown method 'nope'; choose one of: "),
    (["prepare", "nodata"], "error: unknown dataset 'nodata'; choose one of:"),
    (["prepare", "polydigits", "--variant", "big"], "has no variant 'big'; choose one of: vanilla, extended, translated"),
    (["train", "polydigits", "mopoe", "--set", "train.epochs=0"], "error: train.epochs: must be > 0, got 0"),
    (["run", "missing.yaml"], "error: suite file missing.yaml does not exist"),
    (["list", "things"], "error: cannot list 'things'"),
    (["run", str(ROOT / "suites" / "quickstart.yaml"), "--set", "eval.metrics=[fid]", "--set",
      "eval.fid_weights=/nope/inception.pth"], "error: FID Inception weights not found at /nope/inception.pth"),
    (["report", "--compare", "nowhere"], "error: reference directory nowhere does not exist"),
    (["report", "--runs-dir", "nowhere"], "error: runs directory nowhere does not exist; point --runs-dir"),
    (["report", "--format", "md", "--out", "."], "error: --out . is a directory; name the file to write"),
    (["report", "--plots", str(ROOT / "README.md")], "README.md is a file; name a folder for the figures"),
    (["report", "--compare", str(ROOT / "reference_results" / "mopoe_iclr21.yaml")],
     "is a file; --compare takes the directory holding the reference files, e.g. reference_results/"),
    (["evaluate", "polydigits", "mopoe"], "train the run first (`mmbench train` or `mmbench run`)"),
    (["train", "polydigits", "mopoe"], "error: dataset polydigits (vanilla) is not prepared under"),
    (["classifiers", "train", "polydigits", "--modalities", "m0,m9"],
     "error: --modalities 'm0,m9': choose among m0, m1, m2, m3, m4"),
    (["train", "polydigits", "mopoe", "--set", "eval.classifiers=paper"],
     "error: eval.classifiers: 'paper' is not allowed; choose one of: mmbench, authors"),
    (["classifiers", "import", "rats", "--from", "."], "error: no authors' classifiers are known for dataset rats"),
    (["bench", "steps", "--device", "tpu"], "error: --device 'tpu' is not allowed; choose cpu or cuda"),
    (["bench", "steps", "--device", "cuda"], "error: --device cuda: no GPU is visible to torch; use --device cpu"),
    (["bench", "steps", "--methods", "mopoe", "--scaling", "nope"], "error: unknown method 'nope'"),
    # GPUs this machine cannot give are refused, not replaced by the CPU; conflicting options are refused
    (["run", str(ROOT / "suites" / "quickstart.yaml"), "--gpus", "0"], "error: --gpus 0: torch sees no GPU here"),
    (["run", str(ROOT / "suites" / "quickstart.yaml"), "--gpus", "a,b"], "'a' is not a GPU id"),
    (["run", str(ROOT / "suites" / "quickstart.yaml"), "--gpus", "0,"], "list GPU ids separated by commas"),
    (["run", str(ROOT / "suites" / "quickstart.yaml"), "--gpus", "0", "--jobs", "2"], "--jobs sets CPU workers"),
    (["run", str(ROOT / "suites" / "quickstart.yaml"), "--jobs", "0"], "error: --jobs 0: must be >= 1"),
    (["run", str(ROOT / "suites" / "quickstart.yaml"), "--only", "", "--dry-run"],
     "--only: no experiment ''; the suite has: "),  # not the whole suite
    (["report", "--compare", str(ROOT / "suites")], "unknown key of a reference file"),
    (["run", str(ROOT / "suites" / "quickstart.yaml"), "--set", "train.epochs=ten", "--dry-run"],
     "error: --set train.epochs: expected an integer, got 'ten'"),  # the command line's value, not the suite's
    (["run", str(ROOT / "suites" / "quickstart.yaml"), "--step-times", "t.md"], "--step-times t.md: no such file"),
    (["train", "polydigits", "mopoe", "--set", "method.name=mvae"], "the method is the METHOD argument"),
    (["evaluate", "polydigits", "mopoe", "--variant", "vanilla", "--set", "variant=extended"],
     "the variant is set by --variant"),
    (["train", "polydigits", "mopoe", "--set", "seed=3"], "the seed is set by --seed"),
    (["report", "--allow-missing"], "--allow-missing applies to a comparison; add --compare"),
    (["report", "--refuse-mixed"], "--refuse-mixed applies to a comparison; add --compare"),
    (["export", "b.tar.gz", "--tier", "smoke"], "--tier smoke selects a suite's runs; add --suite"),
    (["classifiers", "train", "polydigits", "--epochs", "0"], "--epochs 0: must be >= 1"),
    (["import", "."], "bundle . is a directory; give the .tar.gz file"),
    (["prepare", "polydigits", "-o", "junk"], "error: -o junk: expected KEY=VALUE"),
    (["prepare", "polydigits", "--source", "nowhere"], "--source nowhere does not exist; give the folder holding the raw"),
    (["prepare", "polydigits", "--backgrounds", "afile"], "--backgrounds afile is a file; give the folder holding the"),
    (["classifiers", "import", "polymnist", "--from", "nowhere"], "--from nowhere does not exist; give the folder"),
    (["train", "polydigits", "mopoe", "--runs-dir", "afile"], "--runs-dir afile is a file; give the folder run"),
    (["run", str(ROOT / "suites" / "quickstart.yaml"), "--runs-dir", "afile"], "--runs-dir afile is a file"),
    (["prepare", "polydigits", "--preview", "grid.txt"], "--preview grid.txt: the preview grid is a PNG image"),
    (["prepare", "polydigits", "--preview", "grid"], "--preview grid: the preview grid is a PNG image"),
    (["prepare", "polydigits", "--preview", "."], "--preview . is a directory; name the file to write"),
    (["prepare", "rats", "--simulate", "--variant", "deposit"], "--simulate builds the 'simulated' variant; drop --variant"),
    (["train", "polydigits", "mopoe", "--set", "method.foo:smile:=1"], "method.foo:smile:: unknown field"),  # as typed
])
def test_bad_input_gives_one_line(tmp_path, args, message, monkeypatch, capsys):
    # In process, through the same entry point as the `mmbench` script (cli.main: exit 2, one line on stderr);
    # a subprocess per case cost ~5 s of interpreter and torch start-up each.
    from mmbench import cli

    monkeypatch.setenv("MMBENCH_DATA", str(tmp_path / "d"))
    monkeypatch.setenv("MMBENCH_RUNS", str(tmp_path / "r"))
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("x")
    monkeypatch.setattr(sys, "argv", ["mmbench", *map(str, args)])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert message in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not list((tmp_path / "r").glob("*/config.yaml"))  # no run directory left behind


@pytest.mark.parametrize("cmd", ["prepare", "train", "evaluate", "run", "report", "list", "classifiers train", "classifiers import",
                                 "bench load", "bench steps", "run suites/quickstart.yaml", "classifiers train polymnist",
                                 "bench steps --methods"])
def test_help_has_example(cmd, mmbench_here):
    """Every subcommand's --help, and the groups' (`mmbench`, `mmbench classifiers`, `mmbench bench`: their examples
    are the last three cases), shows an example. In this process (fast; the subprocess start-up is timed elsewhere); the
    installed entry point is run by test_suite_end_to_end and test_the_entry_point_prints_help."""
    group = {"run suites/quickstart.yaml": [], "classifiers train polymnist": ["classifiers"],
             "bench steps --methods": ["bench"]}.get(cmd)
    r = mmbench_here(*(cmd.split() if group is None else group), "--help", env={"COLUMNS": "200"})
    assert r.returncode == 0 and "Example: mmbench " + cmd in " ".join(r.stdout.replace("│", " ").split())


def test_the_entry_point_prints_help():
    """`python -m mmbench --help` in a new interpreter: the entry point and every command module import cleanly."""
    r = mmbench("--help")
    assert r.returncode == 0 and r.stderr == "" and "Example: mmbench run suites/quickstart.yaml" in r.stdout


def test_help_and_a_refused_command_answer_without_loading_torch():
    """`mmbench --help`, a command's --help and a command refused by Typer answer in a fraction of a second: the entry
    point loads torch (~3 s on a 2-core machine) only when a command needs it (it once did for every call, through
    the host allocator's settings in train.py)."""
    code = ("import sys\nfrom mmbench.cli import main\nsys.argv = ['mmbench'] + sys.argv[1:]\ntry:\n    main()\n"
            "except SystemExit:\n    pass\nprint('torch loaded' if 'torch' in sys.modules else 'torch not loaded')")
    for args in (["--help"], ["report", "--help"], ["run", "--help"], ["run", "--jobs", "two", "x.yaml"]):
        r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT)
        assert r.stdout.strip().endswith("torch not loaded"), (args, r.stdout[-300:], r.stderr[-300:])


def test_list(tmp_path, mmbench_here):
    r = mmbench_here("list", "methods")
    assert r.returncode == 0 and "mopoe" in r.stdout and "MoPoE-VAE" in r.stdout
    from mmbench.registry import ARCHITECTURES, describe

    # a description is the docstring's whole first paragraph, not its first line cut mid-sentence
    assert describe(ARCHITECTURES.get("celeba_resnet_lv0")).endswith("otherwise identical.")
    r = mmbench_here("list", "suites")
    assert r.returncode == 0 and "quickstart.yaml" in r.stdout


def test_list_methods_names_each_method_s_options_with_defaults_and_what_is_allowed(mmbench_here):
    """`mmbench list methods` shows every option of every method, its default as a suite writes it and the values
    its option_rules allow (the same rules config.validate checks), so a user can write method.options."""
    from mmbench.registry import METHODS

    assert METHODS.get("mrvae").options_summary().startswith("objective=q (q|r), size_prior=mean (mean|product), "
                                                              "tau_n=1.0 (> 0)")
    assert "stage1_fraction=0.6667 (> 0, < 1), stage1_steps=null (>= 1), detach_surrogate=false" in \
        METHODS.get("smvae").options_summary()
    assert "style_betas={img: 1.0, text: 5.0} (>= 0)" in METHODS.get("mopoe_style").options_summary()
    assert METHODS.get("mopoe").options_summary() == ""
    out = mmbench_here("list", "methods", width=400).stdout
    for name, cls in METHODS.items():
        for option in cls.options:
            assert f"{option}=" in out, (name, option)
    assert "alpha=0.0 (>= 0, <= 1)" in out and "unimodal_weights=one (one|rec_weights)" in out


def test_worker_env_shows_each_worker_its_own_gpu_only(tmp_path):
    from mmbench.runner import worker_env, worker_slots

    assert worker_slots(None, 3) == ["", "", ""]
    gpu, cpu = worker_env("5", tmp_path), worker_env("", None)
    assert (gpu["CUDA_VISIBLE_DEVICES"], gpu["MMBENCH_WORKER_GPU"], gpu["MMBENCH_DATA"]) == ("5", "5", str(tmp_path))
    assert (cpu["CUDA_VISIBLE_DEVICES"], cpu["MMBENCH_WORKER_GPU"]) == ("", "")
    assert gpu["PYTHONIOENCODING"] == cpu["PYTHONIOENCODING"] == "utf-8"  # their output: log.txt, UTF-8 in any locale


def test_a_worker_given_a_gpu_it_cannot_see_refuses_to_train_on_the_cpu(tmp_path):
    """The runner checks --gpus before it starts; a worker checks again (a GPU can be gone, or the id can name a
    device that CUDA_VISIBLE_DEVICES hides) rather than training on the CPU."""
    r = subprocess.run([sys.executable, "-m", "mmbench.worker", str(tmp_path / "never-read")], capture_output=True,
                       text=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": "5", "MMBENCH_WORKER_GPU": "5"}, timeout=300)
    assert r.returncode == 1 and "was given GPU 5 (--gpus) but torch sees no GPU" in r.stdout, r.stdout + r.stderr


def test_an_output_path_under_a_file_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    from mmbench import cli

    (tmp_path / "afile").write_text("x")
    monkeypatch.setenv("MMBENCH_RUNS", str(tmp_path / "runs"))
    (tmp_path / "runs").mkdir()
    for args in (["export", "afile/x.tar.gz"], ["report", "--format", "md", "--out", "afile/r.md"],
                 ["report", "--plots", "afile/plots"], ["bench", "steps", "--methods", "mopoe", "--out", "afile/t.md"]):
        monkeypatch.chdir(tmp_path)
        monkeypatch.setattr(sys, "argv", ["mmbench", *args])
        with pytest.raises(SystemExit) as exit_:
            cli.main()
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and "afile is a file, so no folder can be made there" in err, (args, err)
    # an OSError about a path the user gave (here --runs-dir under a file) is one line too
    monkeypatch.setattr(sys, "argv", ["mmbench", "train", "polydigits", "mopoe", "--runs-dir", "afile/runs"])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Not a directory (check the path" in err and "Traceback" not in err


def test_worker_exit_codes_for_a_cpu_worker_a_failed_pack_run_and_ctrl_c(tmp_path, monkeypatch, capsys):
    """A CPU worker (MMBENCH_WORKER_GPU="") runs; a pack with a failed run exits 1 naming it; Ctrl-C exits 130."""
    import mmbench.pack as pack
    from mmbench import worker

    runs = {str(r.dir): r for r in seed_runs(tmp_path, 2)}
    monkeypatch.setattr(worker, "load_run", runs.__getitem__)
    monkeypatch.setenv("MMBENCH_WORKER_GPU", "")
    monkeypatch.setattr(pack, "execute_pack", lambda rs, d, p: {rs[0].id: None, rs[1].id: "diverged"})
    a, b = runs
    assert worker.main(a, b) == 1 and f"error: {runs[b].id}: diverged" in capsys.readouterr().out
    monkeypatch.setattr(pack, "execute_pack", lambda rs, d, p: {r.id: None for r in rs})
    assert worker.main(a, b) == 0

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(worker, "execute_when_free", interrupted)
    assert worker.main(a) == 130 and "the run resumes from its last checkpoint" in capsys.readouterr().out


def test_worker_tunes_the_allocator_and_exits_1_on_an_error_of_its_run_or_pack(tmp_path, monkeypatch, capsys):
    """The worker entry point applies the host allocator's settings before any run; an MMBenchError of its run (or
    of its pack as a whole) is one `error:` line in the log and exit code 1, so the scheduler reports it failed."""
    import mmbench.pack as pack
    from mmbench import worker
    from mmbench.errors import MMBenchError

    runs = {str(r.dir): r for r in seed_runs(tmp_path, 2)}
    a, b = runs
    tuned = []
    monkeypatch.setattr(worker, "load_run", runs.__getitem__)
    monkeypatch.setattr(worker, "tune_host_allocator", lambda: tuned.append(True))
    monkeypatch.setenv("MMBENCH_WORKER_GPU", "")

    def fails(*args, **kw):
        raise MMBenchError("the data are gone")

    monkeypatch.setattr(worker, "execute_when_free", fails)
    assert worker.main(a) == 1 and "error: the data are gone" in capsys.readouterr().out and tuned == [True]
    monkeypatch.setattr(pack, "execute_pack", fails)
    assert worker.main(a, b) == 1 and "error: the data are gone" in capsys.readouterr().out


def test_load_run_reads_the_run_of_its_directory(tmp_path):
    from mmbench.worker import load_run

    run = seed_runs(tmp_path / "runs", 1)[0]
    run.init()
    loaded = load_run(str(run.dir))
    assert (loaded.id, loaded.dir) == (run.id, run.dir)


def test_progress_is_written_at_each_phase_end_and_only_for_runs_held_here(tmp_path, monkeypatch):
    """progress.json: throttled within a phase but always written at its end; never for a run another process holds."""
    import json

    from types import SimpleNamespace

    from mmbench import worker
    from mmbench.worker import progress_writer

    clock = [1000.0]
    monkeypatch.setattr(worker, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    mine, theirs = seed_runs(tmp_path, 2)
    mine.init()
    theirs.init()
    (theirs.dir / "run.lock").write_text("999999999")  # another process's pid
    write = progress_writer([mine, theirs])
    write("train epoch 1/1", 1, 10)  # the first call of a phase is written (nothing was for half a second)
    assert json.loads((mine.dir / "progress.json").read_text())["done"] == 1
    clock[0] += 0.4
    write("train epoch 1/1", 2, 10)  # within half a second of it: throttled
    assert json.loads((mine.dir / "progress.json").read_text())["done"] == 1
    clock[0] += 0.2
    write("train epoch 1/1", 3, 10)  # more than half a second after the last write
    assert json.loads((mine.dir / "progress.json").read_text())["done"] == 3
    write("train epoch 1/1", 10, 10)  # the phase's end: at once
    assert json.loads((mine.dir / "progress.json").read_text())["done"] == 10
    assert not (theirs.dir / "progress.json").exists()


def test_prepare_records_an_absolute_source_and_previews_the_test_split(tmp_path, monkeypatch, mmbench_here):
    """`mmbench prepare --source DIR` passes DIR as an absolute path; --preview draws the test split."""
    from mmbench.data import base

    seen = {}
    monkeypatch.setattr(base, "prepare", lambda spec, variant, **kw: seen.update(kw["options"]) or tmp_path)
    monkeypatch.setattr(base, "load_split", lambda spec, variant, split, root: seen.update(split=split))
    monkeypatch.setattr(base, "save_preview", lambda split, path: None)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "raw").mkdir()
    r = mmbench_here("prepare", "polymnist", "--source", "raw", "--preview", "p.png")
    assert r.returncode == 0, r.stderr
    assert seen["source"] == str(tmp_path.resolve() / "raw") and seen["split"] == "test"


def test_prepare_simulate_accepts_the_simulated_variant_named(tmp_path, monkeypatch, mmbench_here):
    """`--simulate` builds the 'simulated' variant: with or without `--variant simulated` (only another is refused)."""
    from mmbench.data import base

    seen = []
    monkeypatch.setattr(base, "prepare", lambda spec, variant, **kw: seen.append(variant) or tmp_path)
    for extra in ([], ["--variant", "simulated"]):
        r = mmbench_here("prepare", "rats", "--simulate", *extra)
        assert r.returncode == 0, (extra, r.stderr)
    assert seen == ["simulated", "simulated"]


def test_tables_brief_names_each_paper_once():
    """The dry run's "reproduces": a paper's later tables without its name; a bare name is kept whole."""
    from mmbench.cli import _tables_brief

    assert _tables_brief(["MoPoE Table 5", "MoPoE Fig. 12", "MVAE Table 2"]) == "MoPoE Table 5, Fig. 12, MVAE Table 2"
    assert _tables_brief(["MoPoE Table 5", "MoPoE", "T"]) == "MoPoE Table 5, MoPoE, T"


def test_evaluate_takes_fid_weights_as_an_absolute_path(tmp_path, monkeypatch, mmbench_here):
    """`mmbench evaluate --fid-weights FILE` evaluates with eval.fid_weights set to FILE's absolute path."""
    import mmbench.evaluate as evaluate_module

    seen = {}
    monkeypatch.setattr(evaluate_module, "evaluate", lambda run, *a, **kw: seen.update(fid=run.cfg.eval.fid_weights) or {})
    monkeypatch.chdir(tmp_path)
    r = mmbench_here("evaluate", "polydigits", "mopoe", "--runs-dir", "runs", "--fid-weights", "w.pth")
    assert r.returncode == 0, r.stderr
    assert seen["fid"] == str(tmp_path.resolve() / "w.pth")


def test_a_failed_command_removes_the_run_directory_it_made_holding_only_its_lock(tmp_path):
    """_no_stub_left: a run directory the failed command made, holding no more than its lock, is removed."""
    from types import SimpleNamespace

    from mmbench.cli import _no_stub_left

    run = SimpleNamespace(dir=tmp_path / "run")
    with pytest.raises(RuntimeError), _no_stub_left(run):
        run.dir.mkdir()
        (run.dir / "run.lock").touch()
        raise RuntimeError("failed before config.yaml was written")
    assert not run.dir.exists()


def test_a_dry_run_checks_the_flags_a_run_checks_and_says_a_tier_is_missing(tmp_path):
    """--dry-run refuses what the run would refuse (--executor, --slurm-* / --detach without slurm), and a tier the
    suite does not define is said: its runs are the suite's full settings under that name."""
    from typer.testing import CliRunner

    from mmbench.cli import app
    from mmbench.errors import MMBenchError
    suite = tmp_path / "tiny.yaml"
    suite.write_text(TINY_SUITE)
    base = ["run", str(suite), "--dry-run", "--runs-dir", str(tmp_path / "runs")]
    for extra, says in ((["--executor", "k8s"], "--executor 'k8s': choose local or slurm"),
                        (["--slurm-partition", "gpu"], "--slurm-* options and --detach apply to --executor slurm"),
                        (["--detach"], "--slurm-* options and --detach apply to --executor slurm")):
        out = CliRunner().invoke(app, base + extra, env={"COLUMNS": "300"})
        assert isinstance(out.exception, MMBenchError) and says in str(out.exception), (extra, out.output)
    out = CliRunner().invoke(app, base + ["--tier", "smoke"], env={"COLUMNS": "300"})
    assert out.exit_code == 0 and "defines no 'smoke' tier, so its runs use the suite's full settings" in \
        " ".join(out.output.split()), out.output
    out = CliRunner().invoke(app, base, env={"COLUMNS": "300"})  # the full tier is the suite's settings: nothing to say
    assert out.exit_code == 0 and "defines no" not in out.output, out.output


def test_a_classifier_is_not_a_vae_architecture():
    from mmbench.config import build_run_config
    from mmbench.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^method\.architecture: 'polymnist_clf' has no VAE encoder and decoder"):
        build_run_config({"dataset": "polydigits", "method": {"name": "mopoe", "architecture": "polymnist_clf"}})


@pytest.mark.parametrize("args, message", [
    # a --step-times that is no text file: a directory, or binary (a traceback: UnicodeDecodeError)
    (["run", "QUICK", "--step-times", ".", "--dry-run"], "--step-times . is a directory; give the Markdown file"),
    (["run", "QUICK", "--step-times", "binary.md", "--dry-run"], "--step-times binary.md is not UTF-8 text (byte 0); give "
     "the Markdown file of step times (write one with `mmbench bench steps --pack 1,5,15 --device cuda --out FILE`)"),
    # the dry run of a Slurm submission checks the --slurm-* values the submission checks (it listed the runs)
    (["run", "QUICK", "--executor", "slurm", "--slurm-time", "-5", "--dry-run"], "--slurm-*.time: must be > 0"),
    (["run", "QUICK", "--executor", "slurm", "--slurm-array-parallelism", "0", "--dry-run"], "must be > 0, got 0"),
    (["run", "QUICK", "--executor", "slurm", "--slurm-opt", "=x", "--dry-run"], "--slurm-opt =x: expected an sbatch"),
    # an empty path (an unset shell variable) was the current folder: runs, data or figures written there
    (["train", "polydigits", "mopoe", "--runs-dir", ""], "--runs-dir '': an empty path would mean the current folder"),
    (["prepare", "polydigits", "--data-root", " "], "--data-root ' ': an empty path would mean the current folder"),
    (["report", "--plots", ""], "--plots '': an empty path"),
    (["report", "--compare", ""], "--compare '': an empty path"),
    (["run", "", "--dry-run"], "SUITE '': an empty path"),
    (["export", ""], "OUT '': an empty path"),
])
def test_a_path_option_s_bad_value_is_one_line_before_any_work(tmp_path, args, message, monkeypatch, capsys):
    from mmbench import cli

    monkeypatch.setenv("MMBENCH_DATA", str(tmp_path / "d"))
    monkeypatch.setenv("MMBENCH_RUNS", str(tmp_path / "r"))
    monkeypatch.delenv("MMBENCH_SLURM_CONFIG", raising=False)  # a site file named elsewhere is not read
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "binary.md").write_bytes(bytes([0xbb, 0xff, 0x00, 0x81]) * 50)
    argv = [str(ROOT / "suites" / "quickstart.yaml") if a == "QUICK" else a for a in args]
    monkeypatch.setattr(sys, "argv", ["mmbench", *argv])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and message in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["binary.md"]  # nothing made: no runs, data or figures


@pytest.mark.parametrize("var, value, args, message", [
    ("MMBENCH_RUNS", "", ["run", "suites/quickstart.yaml", "--tier", "smoke", "--dry-run"],
     "MMBENCH_RUNS='': an empty path would mean the current folder"),
    ("MMBENCH_RUNS", " ", ["report"], "MMBENCH_RUNS=' ': an empty path would mean the current folder"),
    ("MMBENCH_DATA", "", ["prepare", "polydigits"], "MMBENCH_DATA='': an empty path would mean the current folder"),
    ("MMBENCH_DATA", " ", ["prepare", "polydigits"], "MMBENCH_DATA=' ': an empty path would mean the current folder"),
    # checked by the entry point, also for a command that never reads the folder
    ("MMBENCH_RUNS", "", ["list", "methods"], "MMBENCH_RUNS='': an empty path would mean the current folder"),
    ("MMBENCH_DATA", " ", ["list", "methods"], "MMBENCH_DATA=' ': an empty path would mean the current folder"),
    ("MMBENCH_CACHE", "", ["prepare", "polydigits"], "MMBENCH_CACHE='': an empty path would mean the current folder; "
                                                     "give the path, or unset it to keep the caches in the data root"),
    ("MMBENCH_CACHE", " ", ["list", "methods"], "MMBENCH_CACHE=' ': an empty path would mean the current folder"),
    ("MMBENCH_FSYNC", "yes", ["bench", "steps", "--steps", "1", "--batch-size", "4", "--latent-dim", "4", "--methods",
                              "mopoe", "--out", "t.md"], "MMBENCH_FSYNC='yes': use 1"),
])
def test_bad_environment_folder_or_fsync_is_one_line_before_any_work(tmp_path, var, value, args, message, monkeypatch,
                                                                      capsys):
    """An empty MMBENCH_RUNS / MMBENCH_DATA is refused (Path("") would silently be the current folder, Path(" ") a
    folder named by a space), and a misspelt MMBENCH_FSYNC before the work, not at its first write after it."""
    from mmbench import cli

    for name, folder in (("MMBENCH_RUNS", "r"), ("MMBENCH_DATA", "d")):
        monkeypatch.setenv(name, str(tmp_path / folder))
    monkeypatch.setenv(var, value)
    monkeypatch.setenv("COLUMNS", "200")
    (tmp_path / "suites").mkdir()
    (tmp_path / "suites" / "quickstart.yaml").write_text((ROOT / "suites" / "quickstart.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["mmbench", *args])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    out, err = capsys.readouterr()
    assert exit_.value.code == 2 and message in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1 and not out.strip(), (out, err)  # refused before measuring anything
    assert sorted(p.name for p in tmp_path.iterdir()) == ["suites"]  # nothing written here, nor a folder " "


def test_a_full_disk_is_one_line_naming_the_file_and_saying_to_free_space(tmp_path, monkeypatch, capsys):
    # results.atomic_write: a short write's OSError names no file, so cli.main showed a full disk as a traceback (a
    # bug); now the file, and the fix (free space) rather than "check the path and its permissions"
    from conftest import file_size_limit

    from mmbench import cli

    runs = tmp_path / "runs"
    runs.mkdir()
    out = tmp_path / "report.md"
    out.write_text("the report before")
    monkeypatch.setenv("COLUMNS", "400")
    monkeypatch.setattr(sys, "argv", ["mmbench", "report", "--runs-dir", str(runs), "--out", str(out)])
    with file_size_limit(5), pytest.raises(SystemExit) as exit_:  # an empty report is ~20 bytes
        cli.main()
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert f"error: {out}: File too large (a full disk or a quota: free space and run the command again; files " \
           f"already written are kept" in err
    assert out.read_text() == "the report before" and sorted(p.name for p in tmp_path.iterdir()) == ["report.md", "runs"]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full (a full disk's device) here")
def test_output_redirected_to_a_full_disk_is_one_line(tmp_path, monkeypatch, capsys):
    # cli._Output: `mmbench report > report.txt` on a full disk failed in rich's write to standard output with an
    # OSError naming no file, shown as a traceback (a bug); /dev/full fails every write the same way, and a quota
    # (EDQUOT) is said the same
    import errno
    import io

    from mmbench import cli

    runs = tmp_path / "runs"
    runs.mkdir()

    class OverQuota(io.StringIO):
        def write(self, text):
            raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))

    for argv in (["list", "methods"], ["report", "--runs-dir", str(runs)],
                 ["report", "--runs-dir", str(runs), "--format", "csv"]):  # the tidy rows, written whole
        for out, reason in ((open("/dev/full", "w"), "No space left on device"),
                            (OverQuota(), os.strerror(errno.EDQUOT))):
            monkeypatch.setattr(sys, "stdout", out)
            monkeypatch.setattr(sys, "argv", ["mmbench", *argv])
            with pytest.raises(SystemExit) as exit_:
                cli.main()
            try:
                out.close()  # what is left in its buffer fails again, as at the interpreter's exit (said nothing)
            except OSError:
                pass
            err = capsys.readouterr().err
            assert exit_.value.code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
            assert err.startswith(f"error: standard output: {reason} (a full disk or a quota: free space"), err
    import mmbench.report

    def unnamed(*a, **k):
        raise OSError(28, os.strerror(28))

    monkeypatch.setattr(mmbench.report, "build_report", unnamed)
    with open("/dev/full", "w") as full:  # a full disk's error naming no file, not the output's: a bug, in full
        monkeypatch.setattr(sys, "stdout", full)
        with pytest.raises(OSError):
            cli.main()


def test_folders_named_like_rich_markup_are_printed_as_named(tmp_path, mmbench_here):
    # the CLI's lines went through rich's markup: a runs folder named "runs [old]" was printed "runs " (the tag
    # swallowed), and one holding "[/x]" stopped the command with a MarkupError traceback after its work was done
    import json

    from mmbench.results import Run

    from conftest import seed_runs

    runs = tmp_path / "runs [old] [/x]"
    (run,) = seed_runs(runs, 1)
    run.init()
    (run.dir / "provenance.json").write_text(json.dumps(run.provenance()))
    run.write_metrics({"coherence/joint": 0.5})
    out = tmp_path / "rep [b] [/b].md"
    r = mmbench_here("report", "--runs-dir", runs, "--out", out, width=400)
    assert r.returncode == 0 and f"wrote {out}" in r.stdout, r.stdout + r.stderr
    bundle = tmp_path / "B [/x].tar.gz"
    r = mmbench_here("export", bundle, "--runs-dir", runs, width=400)
    assert r.returncode == 0 and f"wrote {bundle}: 1 finished runs" in r.stdout, r.stdout + r.stderr
    other = tmp_path / "imported [red]"
    r = mmbench_here("import", bundle, "--runs-dir", other, width=400)
    assert r.returncode == 0 and f"runs in {other}" in r.stdout and Run(run.cfg, other).metrics_path.exists()
    suite = tmp_path / "s [b].yaml"
    suite.write_text("name: s\ndescription: d\nexperiments:\n  - name: e\n    reproduces: [T]\n"
                     "    dataset: polydigits\n    methods: [mopoe]\n")
    r = mmbench_here("run", suite, "--tier", "quick", "--dry-run", "--runs-dir", runs, width=400)
    assert r.returncode == 0 and f"note: {suite} defines no 'quick' tier" in r.stderr, r.stderr


@pytest.mark.parametrize("code,fix", [(28, "a full disk or a quota"), (122, "a full disk or a quota"),
                                      (27, "a full disk or a quota"), (13, "check the path and its permissions")])
def test_os_error_line_says_the_fix_of_each_error(code, fix):
    from mmbench.errors import os_error_line

    assert os_error_line(OSError(code, os.strerror(code), "/x/y")).startswith(f"/x/y: {os.strerror(code)} ({fix}")
    assert os_error_line(OSError(code, os.strerror(code))) is None  # no path: a bug, shown in full
    renamed = OSError(code, os.strerror(code), "/x/y", None, "/x/z")  # a rename or a link: both paths
    assert os_error_line(renamed).startswith(f"/x/y -> /x/z: {os.strerror(code)} ({fix}")


def test_naming_names_the_file_only_where_the_error_names_none():
    # errors.naming: a short write's OSError gets the file being written; one that names its own file keeps it
    from mmbench.errors import naming

    short = naming(OSError(28, os.strerror(28)), "/x/written")
    assert (short.errno, short.strerror, short.filename) == (28, os.strerror(28), "/x/written")
    own = OSError(13, os.strerror(13), "/x/other")
    assert naming(own, "/x/written") is own
    other = ValueError("not an OSError")
    assert naming(other, "/x/written") is other


def test_a_terminal_that_is_not_utf8_gets_question_marks_not_a_traceback(monkeypatch):
    # cli.tolerant_output: under a Latin-1 or ASCII locale (or PYTHONIOENCODING=ascii) the first β or — printed
    # stopped the command with a UnicodeEncodeError
    import io

    from mmbench import cli

    out, err = (io.TextIOWrapper(io.BytesIO(), encoding=enc) for enc in ("ascii", "latin-1"))
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    monkeypatch.setenv("COLUMNS", "300")
    monkeypatch.setattr(sys, "argv", ["mmbench", "list", "methods"])
    import signal

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    assert exit_.value.code in (0, None)
    assert signal.getsignal(signal.SIGTERM) is before  # cli._terminated is main's alone: a caller's handler is back
    out.flush()
    text = out.buffer.getvalue().decode("ascii")
    assert "JMVAE: ELBO of a joint encoder q(z | X) minus ? ?_m KL" in text  # α Σ_m
    assert (out.errors, err.errors) == ("replace", "replace")
    utf8 = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    monkeypatch.setattr(sys, "stdout", utf8)
    cli.tolerant_output()
    assert utf8.errors == "strict"  # a UTF-8 stream is left as it is


def test_files_are_utf8_whatever_the_locale(tmp_path):
    # results.Run.log, data/base's manifest and the runs' records: open() took the locale's encoding, so under an
    # ASCII locale a log line with a β was a UnicodeEncodeError, and under Latin-1 the files were not UTF-8
    code = ("import sys; from pathlib import Path; from mmbench.config import build_run_config; "
            "from mmbench.results import Run; "
            "run = Run(build_run_config({'dataset': 'polydigits', 'method': {'name': 'mopoe'}, 'seed': 0}), Path(sys.argv[1])); "
            "run.log('\\u03b2 \\u2014 \\u2713'); print(run.log_path)")  # escaped: the command line is ASCII too
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONUTF8", "PYTHONIOENCODING")}
    env.update(PYTHONCOERCECLOCALE="0", PYTHONUTF8="0", LC_ALL="C", PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, env=env)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    assert Path(r.stdout.decode().strip()).read_bytes().decode("utf-8").endswith(" β — ✓\n")


def test_list_datasets_names_each_datasets_variants_and_prepare_options(mmbench_here):
    """`mmbench list datasets` is where a user finds `-o text_order=...` and the other prepare options (`prepare
    --help` names only the generic flags)."""
    from mmbench.registry import DATASETS

    out = mmbench_here("list", "datasets", width=1200).stdout
    for name, cls in DATASETS.items():
        assert f"variants: {', '.join(cls.variants)}" in out, name
        assert set(cls.option_defaults) <= set(cls.option_names) - set(cls.location_options), name
        for option, help_text in cls.option_names.items():
            assert help_text in out, (name, option)
    assert "-o text_order=...: attribute names in the text" in out and "--source DIR: directory with" in out
    assert "--rebuild: regenerate vanilla from MNIST" in out


def test_an_embedded_dataset_is_built_with_the_default_seed_whatever_the_runs_data_seed(tmp_path):
    """`data_seed` draws a run's subsets; the copy `mmbench run` builds of an embedded dataset is `mmbench prepare`'s
    (seed 0) whichever run comes first, so runs of other data_seeds do not find a copy built by a neighbour's seed."""
    from mmbench.cli import _prepare_for
    from mmbench.config import build_run_config
    from mmbench.data.base import dataset_dir, read_manifest

    _prepare_for([build_run_config({"dataset": "polydigits", "data_seed": 3, "eval": {"metrics": ["reconstruction"]}})],
                 tmp_path)
    assert read_manifest(dataset_dir("polydigits", "vanilla", tmp_path))["seed"] == 0
