"""The reporter: aggregation over seeds, reference matching, verdicts, and the shipped reference files."""
import hashlib
from pathlib import Path

import pytest
import yaml

from mmbench.config import build_run_config
from mmbench.errors import ConfigError
from mmbench.report import build_report, load_references, render_markdown
from mmbench.results import Run

ROOT = Path(__file__).resolve().parents[1]


def fake_run(runs_dir, method, seed, metrics, tables=("T1",)):
    cfg = build_run_config({"dataset": "polydigits", "method": {"name": method}, "seed": seed, "tables": list(tables)})
    run = Run(cfg, runs_dir)
    run.init()
    run.write_metrics(metrics)


def test_mean_std_over_seeds_and_verdicts(tmp_path):
    runs = tmp_path / "runs"
    fake_run(runs, "mopoe", 0, {"coherence/joint": 0.30, "latent_acc_by_n/1": 0.8})
    fake_run(runs, "mopoe", 1, {"coherence/joint": 0.40, "latent_acc_by_n/1": 0.9})
    fake_run(runs, "mvae", 0, {"coherence/joint": 0.10}, tables=("Other",))
    refs = tmp_path / "refs"
    refs.mkdir()
    base = {"paper": "P", "table": "T1", "column": "Joint", "metric": "coherence/joint"}
    (refs / "p.yaml").write_text(yaml.safe_dump({"cells": [
        {**base, "row": "MoPoE", "method": "mopoe", "value": 0.33, "std": 0.03, "tolerance": 0.06},
        {**base, "row": "MoPoE-tight", "method": "mopoe", "value": 0.30, "tolerance": 0.01},
        {**base, "row": "MVAE", "method": "mvae", "value": 0.12, "tolerance": 0.04},  # its run serves another table
    ]}))
    rep = build_report(runs, refs)
    cells = {c.row: c for c in rep["cells"]}
    assert cells["MoPoE"].produced == pytest.approx(0.35) and cells["MoPoE"].produced_std == pytest.approx(0.05)
    assert cells["MoPoE"].n_runs == 2
    assert [cells[r].status for r in ("MoPoE", "MoPoE-tight", "MVAE")] == ["pass", "fail", "missing"]
    title, grid, summary = rep["refs"][0]
    assert summary == "1 of 3 cells within tolerance, 1 failing, 1 missing"
    assert list(grid["model"]) == ["MoPoE", "MoPoE-tight", "MVAE"]  # rows kept in the paper's order, none dropped
    md = render_markdown(rep["summaries"], rep["refs"])
    assert "0.350 ± 0.050 | 0.330 ± 0.030 | Δ +0.020 ✓" in md
    assert "missing | 0.120" in md
    summaries = dict(rep["summaries"])
    t1 = summaries["polydigits (vanilla) — T1"]
    assert list(t1.columns) == ["metric", "mopoe (2 seeds)"]
    assert list(t1["metric"]) == ["latent accuracy, 1 input", "joint coherence (prior samples)"]
    assert list(t1["mopoe (2 seeds)"]) == ["0.850 ± 0.071", "0.350 ± 0.071"]


def test_reference_cells_are_validated(tmp_path):
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"cells": [{"paper": "P", "table": "T", "row": "r"}]}))
    with pytest.raises(ConfigError, match=r"bad.yaml: cells\[0\]: missing field\(s\) column, method, metric, value"):
        load_references(tmp_path)


def test_shipped_references_are_complete_and_unchanged():
    """Every shipped cell carries its provenance, and the files match the checksum list."""
    refs = ROOT / "reference_results"
    sums = {}
    for line in (refs / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split()
        sums[name] = digest
    files = sorted(p.name for p in refs.glob("*.yaml"))
    assert files and sorted(sums) == files
    for name in files:
        assert hashlib.sha256((refs / name).read_bytes()).hexdigest() == sums[name], f"{name} changed; update SHA256SUMS deliberately"
    cells = load_references(refs)
    assert cells
    for c in cells:
        assert c.paper and c.table and c.row and c.column and c.source
        assert c.tolerance > 0 and 0 <= c.value <= 1
        if c.std is not None:
            assert c.tolerance >= c.std


METRIC_OF_KEY = {"latent_acc": "latent_classification", "coherence": "coherence"}


def test_every_reference_cell_is_reachable_from_a_suite():
    """Each cell's table, method and metric key is produced by some run of some suite (full tier)."""
    from mmbench.registry import DATASETS
    from mmbench.suite import load_suite

    runs = [r for p in sorted((ROOT / "suites").glob("*.yaml")) for r in load_suite(p).runs("full")]
    for c in load_references(ROOT / "reference_results"):
        family, _, rest = c.metric.partition("/")
        ok = False
        for r in runs:
            if c.table not in r.tables or r.method.name != c.method or METRIC_OF_KEY[family] not in r.eval.metrics:
                continue
            names = {m.name for m in DATASETS.get(r.dataset)().modalities(r.variant)}
            used = set(rest.replace("->", "+").split("+")) - {"joint"}
            ok = ok or used <= names
        assert ok, f"no suite run produces {c.table} / {c.row} / {c.column} ({c.method}, {c.metric})"


def test_two_configurations_of_one_method_are_not_averaged(tmp_path):
    runs = tmp_path / "runs"
    for beta, acc in ((1.0, 0.2), (5.0, 0.8)):
        cfg = build_run_config({"dataset": "polydigits", "method": {"name": "mopoe", "beta": beta}, "tables": ["T"]})
        run = Run(cfg, runs)
        run.init()
        run.write_metrics({"latent_acc_by_n/1": acc})
    (title, table), = build_report(runs, None)["summaries"]
    assert len(table.columns) == 3  # metric + one column per configuration
    assert sorted(table.iloc[0, 1:]) == ["0.200", "0.800"]
    assert all(c.startswith("mopoe [") and c.endswith("(1 seed)") for c in table.columns[1:])
