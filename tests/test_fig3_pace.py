"""docs/gpu-runs/fig3_pace.py: the fp32 packs' recorded rates summed into Fig. 3's pace and its GPU-hours."""
import importlib.util
import json
from pathlib import Path

import pytest
import yaml

SCRIPT = Path(__file__).resolve().parents[1] / "docs" / "gpu-runs" / "fig3_pace.py"


def _script():
    spec = importlib.util.spec_from_file_location("fig3_pace", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(root: Path, name: str, method: str, precision: str, rate, packed_with=5):
    d = root / name
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(yaml.safe_dump({"method": {"name": method},
                                                   "train": {"precision": precision, "batch_size": 256}}))
    prov = {"train_tuples_per_second": rate, "packed_with": packed_with} if rate is not None else {}
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
