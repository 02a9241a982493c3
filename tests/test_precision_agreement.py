"""docs/gpu-runs/precision_agreement.py: bf16 against fp32 MoPoE PolyMNIST runs agree on a metric when
|difference of means| <= 2 x the larger seed-to-seed standard deviation (sample sd, n - 1)."""
import runpy
import sys
from pathlib import Path

import pytest

from mmbench.config import build_run_config
from mmbench.results import Run

SCRIPT = Path(__file__).resolve().parents[1] / "docs" / "gpu-runs" / "precision_agreement.py"


def fake_runs(runs_dir, precision, values, **method):
    """One finished run per seed, metric name -> its value in each run."""
    for seed in range(len(next(iter(values.values())))):
        cfg = build_run_config({"dataset": "polymnist", "seed": seed, "method": {"name": "mopoe", **method},
                                "train": {"precision": precision}})
        run = Run(cfg, runs_dir)
        run.init()
        run.write_metrics({k: v[seed] for k, v in values.items()}, eval_precision=cfg.eval.precision)


def agreement(runs_dir, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), str(runs_dir)])
    runpy.run_path(str(SCRIPT), run_name="__main__")
    return capsys.readouterr().out


def rows(out):
    return {c[0]: c[1:] for c in ([x.strip() for x in line.strip("|").split("|")] for line in out.splitlines()
                                  if line.startswith("| m/"))}


def test_verdict_per_metric(tmp_path, monkeypatch, capsys):
    """fp32 runs 0, 1, 2 (mean 1, sd 1) against bf16 runs with known means and sds, by hand:
    edge: 3 ± 1, |2| / 1 = 2.00, agrees (at the bound; the population sd would give 2.45);
    larger: 4 ± 2, 3 / 2 = 1.50, agrees (over the smaller sd it would be 3);
    below: 11 ± 1, the fp32 mean below the bf16's by 10: 10.00, disagrees;
    flat_*: no spread in either (sd 0): equal means agree (0.00), different means do not (inf)."""
    fp = {"m/edge": [0, 1, 2], "m/larger": [0, 1, 2], "m/below": [0, 1, 2], "m/flat_same": [5, 5, 5],
          "m/flat_diff": [5, 5, 5]}
    bf = {"m/edge": [2, 3, 4], "m/larger": [2, 4, 6], "m/below": [10, 11, 12], "m/flat_same": [5, 5, 5],
          "m/flat_diff": [6, 6, 6]}
    fake_runs(tmp_path, "fp32", fp)
    fake_runs(tmp_path, "bf16", bf)
    out = agreement(tmp_path, monkeypatch, capsys)
    assert "3 fp32 runs, 3 bf16 runs" in out
    assert rows(out) == {
        "m/below": ["1.0000 ± 1.0000", "11.0000 ± 1.0000", "10.00", "**no**"],
        "m/edge": ["1.0000 ± 1.0000", "3.0000 ± 1.0000", "2.00", "yes"],
        "m/flat_diff": ["5.0000 ± 0.0000", "6.0000 ± 0.0000", "inf", "**no**"],
        "m/flat_same": ["5.0000 ± 0.0000", "5.0000 ± 0.0000", "0.00", "yes"],
        "m/larger": ["1.0000 ± 1.0000", "4.0000 ± 2.0000", "1.50", "yes"],
    }
    assert "3 of 5 metrics agree." in out


def test_refuses_too_few_runs_or_runs_of_different_settings(tmp_path, monkeypatch, capsys):
    fake_runs(tmp_path / "a", "fp32", {"m/x": [0, 1, 2]})
    fake_runs(tmp_path / "a", "bf16", {"m/x": [0]})
    with pytest.raises(SystemExit, match="3 fp32 and 1 bf16 finished MoPoE PolyMNIST runs; at least 2 of each"):
        agreement(tmp_path / "a", monkeypatch, capsys)
    fake_runs(tmp_path / "b", "fp32", {"m/x": [0, 1]})
    fake_runs(tmp_path / "b", "bf16", {"m/x": [0, 1]}, latent_dim=64)
    with pytest.raises(SystemExit, match="the runs differ in method.latent_dim besides seed and precision"):
        agreement(tmp_path / "b", monkeypatch, capsys)


@pytest.mark.parametrize("tier", ["full", "quick", "smoke"])
def test_the_bf16_suite_is_fig_3s_mopoe_runs_in_bf16(tmp_path, tier):
    """device-check.sh's bf16 runs (docs/gpu-runs/bf16_suite.py) have every setting of MoPoE Fig. 3's MoPoE runs in
    suites/mopoe_iclr21.yaml but the precision (and the tables they are listed under), in every tier: else
    precision_agreement.py refuses to compare them (a copy typed into the script once lacked eval.joint_samples)."""
    import yaml

    from mmbench.suite import load_suite

    made = runpy.run_path(str(SCRIPT.parent / "bf16_suite.py"))["bf16_suite"]()
    (tmp_path / "bf16.yaml").write_text(yaml.safe_dump(made))

    def settings(cfg):
        d = cfg.to_dict()
        d["train"].pop("precision")
        d.pop("tables")
        return d

    fp32 = [c for c in load_suite(SCRIPT.parents[2] / "suites" / "mopoe_iclr21.yaml").runs(tier)
            if c.method.name == "mopoe" and "MoPoE Fig. 3" in c.tables]
    bf16 = load_suite(tmp_path / "bf16.yaml").runs(tier)
    assert {c.train.precision for c in fp32} == {"fp32"} and {c.train.precision for c in bf16} == {"bf16"}
    assert sorted(map(settings, bf16), key=lambda d: d["seed"]) == sorted(map(settings, fp32), key=lambda d: d["seed"])
    assert len(bf16) == (5 if tier == "full" else 1)
