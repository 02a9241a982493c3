"""docs/gpu-runs/fig3_pace.py: the fp32 packs' recorded rates summed into Fig. 3's pace and its GPU-hours."""
import importlib.util
import json
import runpy
import sys
from pathlib import Path

import pytest
import yaml

SCRIPT = Path(__file__).resolve().parents[1] / "docs" / "gpu-runs" / "fig3_pace.py"


def _script():
    spec = importlib.util.spec_from_file_location("fig3_pace", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(root: Path, name: str, method: str, precision: str, rate, packed_with=5, batch=256):
    """A run directory as fig3_pace reads it; precision None: a config without train.precision, packed_with None: a
    provenance without packed_with (an unpacked run's)."""
    d = root / name
    d.mkdir(parents=True)
    train = {"batch_size": batch, **({"precision": precision} if precision is not None else {})}
    (d / "config.yaml").write_text(yaml.safe_dump({"method": {"name": method}, "train": train}))
    prov = {} if rate is None else {"train_tuples_per_second": rate,
                                    **({"packed_with": packed_with} if packed_with is not None else {})}
    (d / "provenance.json").write_text(json.dumps(prov))


def test_the_fp32_packs_rates_sum_into_the_figures_pace(tmp_path):
    for s in range(5):
        _run(tmp_path, f"mopoe-{s}", "mopoe", "fp32", 25_600.0)  # 100 run-steps/s at batch 256
        _run(tmp_path, f"mvae-{s}", "mvae", "fp32", 12_800.0 if s else 11_000.0)  # a stopped run's lower rate
        _run(tmp_path, f"bf16-{s}", "mopoe", "bf16", 51_200.0)  # shares the GPU, not part of the figure
        _run(tmp_path, f"mmvae-{s}", "mmvae", "fp32", 12_800.0)
    _run(tmp_path, "untrained", "jmvae", "fp32", None)
    (tmp_path / "not-a-run").mkdir()
    out = _script().report(tmp_path)
    assert "| mopoe | fp32 | 5 | 5 | 25,600 | 100.0 |" in out and "| mvae | fp32 | 5 | 5 | 12,800 | 50.0 |" in out
    assert "| mopoe | bf16 | 5 | 5 | 51,200 | 200.0 |" in out and "jmvae" not in out
    # 15 × 300 × 234 = 1,053,000 run-steps at 100 + 50 + 50 = 200 run-steps/s: 5,265 s
    assert "The fp32 packs together: 200.0 run-steps/s" in out and "1,053,000 run-steps" in out
    assert "takes 1.46 GPU-hours" in out and "(4 rows above, bf16 included" in out


def test_a_method_without_a_rate_stops_the_projection(tmp_path):
    for s in range(5):
        _run(tmp_path, f"mopoe-{s}", "mopoe", "fp32", 25_600.0)
        _run(tmp_path, f"mvae-{s}", "mvae", "fp32", 25_600.0)
        _run(tmp_path, f"mmvae-{s}", "mmvae", "bf16", 25_600.0)  # only in bf16: the figure's mmvae is fp32
    out = _script().report(tmp_path)
    assert "No recorded fp32 rate for mmvae: no pace of the whole figure" in out and "GPU-hours" not in out


def test_no_trained_run_is_an_error_naming_the_folder(tmp_path):
    with pytest.raises(SystemExit, match="no trained run with a recorded training rate under"):
        _script().report(tmp_path)


def test_rows_count_runs_apart_from_pack_size_and_come_in_order(tmp_path):
    """The rows are sorted by method, precision, batch and pack size (not by the folders' names); "runs per pack" is
    the recorded packed_with (1 where the provenance has none: an unpacked run), "runs" how many runs recorded a
    rate, the rate their largest; a config without train.precision is fp32; a run still training (a config, no
    provenance yet) is left out."""
    for s in range(3):
        _run(tmp_path, f"1-mvae-{s}", "mvae", "fp32", 12_800.0, packed_with=None)  # unpacked
        _run(tmp_path, f"2-mopoe-{s}", "mopoe", None, 25_600.0, packed_with=4)  # one run of the pack of 4 unfinished
        _run(tmp_path, f"3-mmvae-{s}", "mmvae", "fp32", 11_000.0 if s == 2 else 12_800.0)  # the last one stopped
    (tmp_path / "2-mopoe-3").mkdir()
    (tmp_path / "2-mopoe-3" / "config.yaml").write_text(yaml.safe_dump({"method": {"name": "mopoe"},
                                                                         "train": {"batch_size": 256}}))
    out = _script().report(tmp_path)
    rows = [line for line in out.splitlines() if line.startswith("| m")][1:]
    assert rows == ["| mmvae | fp32 | 5 | 3 | 12,800 | 50.0 |", "| mopoe | fp32 | 4 | 3 | 25,600 | 100.0 |",
                    "| mvae | fp32 | 1 | 3 | 12,800 | 50.0 |"]
    assert "The fp32 packs together: 200.0 run-steps/s" in out


def test_the_projection_counts_the_steps_of_the_runs_batch_size(tmp_path):
    """At batch 128 an epoch is 60,000 // 128 = 468 steps: 15 × 300 × 468 = 2,106,000 run-steps."""
    for m in ("mvae", "mmvae", "mopoe"):
        _run(tmp_path, m, m, "fp32", 12_800.0, batch=128)  # 100 run-steps/s each
    out = _script().report(tmp_path)
    assert "× 468 steps = 2,106,000 run-steps" in out and "takes 1.95 GPU-hours" in out


def test_packs_that_recorded_no_progress_give_no_projection(tmp_path):
    for m in ("mvae", "mmvae", "mopoe"):
        _run(tmp_path, m, m, "fp32", 0.0)
    out = _script().report(tmp_path)
    assert "| mopoe | fp32 | 5 | 1 | 0 | 0.0 |" in out and "GPU-hours" not in out


@pytest.mark.parametrize("how", ["argument", "MMBENCH_RUNS"])
def test_the_script_reads_the_folder_given_or_mmbench_runs(tmp_path, monkeypatch, capsys, how):
    for m in ("mvae", "mmvae", "mopoe"):
        _run(tmp_path / "elsewhere", m, m, "fp32", 25_600.0)
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")  # no ./runs to fall back on
    if how == "argument":
        monkeypatch.setattr(sys, "argv", [str(SCRIPT), str(tmp_path / "elsewhere")])
    else:
        monkeypatch.setattr(sys, "argv", [str(SCRIPT)])
        monkeypatch.setenv("MMBENCH_RUNS", str(tmp_path / "elsewhere"))
    runpy.run_path(str(SCRIPT), run_name="__main__")
    assert "The fp32 packs together: 300.0 run-steps/s" in capsys.readouterr().out


def test_only_fig3s_methods_at_one_batch_size_make_its_pace(tmp_path):
    """A method not in Fig. 3 is shown but left out of the sum (and said so); packs at two batch sizes give no pace
    (steps per epoch depend on the batch); more runs of one kind than its pack holds is said (one row: the fastest)."""
    for s in range(5):
        for m in ("mopoe", "mvae", "mmvae"):
            _run(tmp_path, f"{m}-{s}", m, "fp32", 25_600.0)  # 100 run-steps/s each
        _run(tmp_path, f"jmvae-{s}", "jmvae", "fp32", 25_600.0)
    out = _script().report(tmp_path)
    assert "The fp32 packs together: 300.0 run-steps/s" in out and "| jmvae | fp32 | 5 | 5 | 25,600 | 100.0 |" in out
    assert "Not Fig. 3's methods, left out of its pace: jmvae." in out and "More runs than" not in out
    for s in range(5, 10):
        _run(tmp_path, f"mopoe-{s}", "mopoe", "fp32", 25_600.0)  # a second pack of 5
    assert "More runs than one pack holds for mopoe" in _script().report(tmp_path)
    for s in range(5):
        _run(tmp_path, f"mmvae-b128-{s}", "mmvae", "fp32", 12_800.0, batch=128)
    out = _script().report(tmp_path)
    assert "different batch sizes (128, 256): no pace of the whole figure" in out and "GPU-hours" not in out


def test_a_run_stopped_before_its_provenance_gives_the_rate_of_its_logged_epochs(tmp_path):
    """A pack stopped by the time limit after some epochs wrote no provenance: its runs' last epoch line (the
    trainers' epoch_line) gives its process's steady rate, over the epochs after the first, as provenance would;
    a log without a finished epoch gives none."""
    from mmbench.train import Throughput, epoch_line

    for m in ("mvae", "mmvae"):
        _run(tmp_path, m, m, "fp32", 25_600.0)  # 100 run-steps/s each
    speed, lines = Throughput(), []
    # the first epoch (compilation and warm-up), then 25,600 tuples/s over the next two: 25,600 in 1 s
    for epoch, seconds in enumerate((10.0, 0.25, 0.75), 1):
        speed.epochs.append((5 * 2560, seconds))
        lines.append(epoch_line({"epoch": epoch, "test_loss": 1.0}, speed, runs=5))
    assert lines[1].endswith("test_loss=1.0000; trained 12800 tuples in 0.25 s; steady 51200 tuples/s (a pack of 5)")
    # a log of two processes (resumed, or split for device memory): the last line's is the last process's rate
    lines = [lines[0].replace("steady 1280 ", "steady 999 ").replace("pack of 5", "pack of 7"), *lines]
    for s in range(5):
        d = tmp_path / f"mopoe-{s}"
        d.mkdir()
        (d / "config.yaml").write_text(yaml.safe_dump({"method": {"name": "mopoe"}, "train": {"batch_size": 256}}))
        (d / "log.txt").write_text("".join(f"2026-12-07 10:00:0{i} {line}\n" for i, line in enumerate(lines)) +
                                   "2026-12-07 10:00:09 stopped (SIGTERM) at epoch 4, step 3 of 10\n")
    (tmp_path / "mopoe-9").mkdir()  # stopped in its first epoch: no rate
    (tmp_path / "mopoe-9" / "config.yaml").write_text((tmp_path / "mopoe-0" / "config.yaml").read_text())
    (tmp_path / "mopoe-9" / "log.txt").write_text("2026-12-07 10:00:00 packed with 4 other run(s) on cuda:0\n")
    out = _script().report(tmp_path)
    assert "| mopoe | fp32 | 5 | 5 | 25,600 | 100.0 |" in out, out
    assert ("Read from the last epoch line of run logs (runs stopped or failed before their evaluation wrote "
            "provenance): mopoe." in out)
    assert "The fp32 packs together: 300.0 run-steps/s" in out
    assert _script().logged_rate(tmp_path / "mopoe-9" / "log.txt") is None


def test_a_methods_packs_of_several_sizes_count_at_the_slowest(tmp_path):
    """The halves of a pack split for device memory (3 then 2 runs, one after the other in one worker): the method's
    pace lies between their rates, so the slower one counts, and the report says so."""
    for s in range(3):
        _run(tmp_path, f"mopoe-a{s}", "mopoe", "fp32", 25_600.0, packed_with=3)  # 100 run-steps/s
    for s in range(2):
        _run(tmp_path, f"mopoe-b{s}", "mopoe", "fp32", 12_800.0, packed_with=2)  # 50
    for m in ("mvae", "mmvae"):
        _run(tmp_path, m, m, "fp32", 25_600.0)
    out = _script().report(tmp_path)
    assert "| mopoe | fp32 | 2 | 2 | 12,800 | 50.0 |" in out and "| mopoe | fp32 | 3 | 3 | 25,600 | 100.0 |" in out
    assert "The fp32 packs together: 250.0 run-steps/s" in out
    assert "Packs of several sizes for mopoe (trained one after another" in out
