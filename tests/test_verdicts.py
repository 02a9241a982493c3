"""Statistical verdicts (Welch + Holm) and the tidy csv/json export of the report."""
import io
import json
import math

import pandas as pd
import pytest
import yaml
from scipy import stats
from typer.testing import CliRunner

from mmbench.cli import app
from mmbench.config import build_run_config
from mmbench.errors import ConfigError
from mmbench.render import render_markdown
from mmbench.references import Cell
from mmbench.report import build_report
from mmbench.results import Run
from mmbench.verdicts import TIDY_COLUMNS, apply, holm, one_run_p, tidy_rows, welch_p


def test_welch_p_matches_the_textbook_formula():
    m1, s1, n1, m2, s2, n2 = 0.71, 0.03, 4, 0.80, 0.02, 5
    v1, v2 = s1 ** 2 / n1, s2 ** 2 / n2
    t = (m1 - m2) / math.sqrt(v1 + v2)
    df = (v1 + v2) ** 2 / (v1 ** 2 / (n1 - 1) + v2 ** 2 / (n2 - 1))  # Welch-Satterthwaite
    assert welch_p(m1, s1, n1, m2, s2, n2) == pytest.approx(2 * stats.t.sf(abs(t), df), rel=1e-9)
    assert welch_p(0.5, None, 1, 0.5, 0.1, 5) is None  # one produced run: no std
    assert welch_p(0.5, 0.0, 3, 0.6, 0.0, 5) is None  # both stds zero: undefined


def test_one_run_p_is_the_prediction_interval_test():
    # x = 0.62 against 0.80 ± 0.05 from n = 5: t = -0.18 / (0.05 * sqrt(1.2)) = -3.286 on 4 df
    t = (0.62 - 0.80) / (0.05 * math.sqrt(1 + 1 / 5))
    assert t == pytest.approx(-3.2863, abs=1e-4)
    assert one_run_p(0.62, 0.80, 0.05, 5) == pytest.approx(2 * stats.t.sf(3.2863, 4), rel=1e-3)
    assert one_run_p(0.62, 0.80, 0.05, 5) == pytest.approx(0.0303, abs=5e-4)
    # the 95% prediction interval's edge gives p = 0.05 exactly
    edge = 0.80 + stats.t.ppf(0.975, 4) * 0.05 * math.sqrt(1.2)
    assert one_run_p(edge, 0.80, 0.05, 5) == pytest.approx(0.05, rel=1e-9)
    assert one_run_p(0.5, 0.5, 0.0, 5) is None and one_run_p(0.5, 0.5, 0.1, 1) is None


def test_holm_known_answer():
    # sorted 0.005, 0.01, 0.03, 0.04 -> 4*0.005, 3*0.01, 2*0.03, max(0.06, 1*0.04): in input order
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def fake_run(runs_dir, method, seed, metrics, tables=("T1",)):
    cfg = build_run_config({"dataset": "polydigits", "method": {"name": method}, "seed": seed, "tables": list(tables)})
    run = Run(cfg, runs_dir)
    run.init()
    run.write_metrics(metrics)
    return run.id


def _setup(tmp_path):
    runs = tmp_path / "runs"
    near = [0.50, 0.52, 0.48, 0.51, 0.49]  # mean 0.50, sample std 0.0158
    far = [0.70, 0.71, 0.69, 0.72, 0.68]  # mean 0.70
    ids = []
    for seed, (a, b) in enumerate(zip(near, far)):
        ids.append(fake_run(runs, "mopoe", seed, {"coherence/joint": a, "latent_acc_by_n/1": b}))
    fake_run(runs, "mvae", 0, {"coherence/joint": 0.3})
    refs = tmp_path / "refs"
    refs.mkdir()
    base = {"paper": "P", "table": "T1", "row": "MoPoE"}
    (refs / "p.yaml").write_text(yaml.safe_dump({"runs": 5, "cells": [
        {**base, "column": "joint", "method": "mopoe", "metric": "coherence/joint", "value": 0.51, "std": 0.02,
         "tolerance": 0.04},
        {**base, "column": "acc", "method": "mopoe", "metric": "latent_acc_by_n/1", "value": 0.60, "std": 0.02,
         "tolerance": 0.2},
        {**base, "row": "MVAE", "column": "joint", "method": "mvae", "metric": "coherence/joint", "value": 0.3,
         "std": 0.01, "tolerance": 0.02},
        {**base, "row": "MVAE", "column": "none", "method": "mvae", "metric": "coherence/joint", "value": 0.3,
         "tolerance": 0.02, "runs": 3}]}))
    return runs, refs, ids


def test_verdicts_per_cell_and_paper_line(tmp_path):
    runs, refs, ids = _setup(tmp_path)
    rep = build_report(runs, refs)
    cells = {(c.row, c.column): c for c in rep.cells}
    joint, acc = cells[("MoPoE", "joint")], cells[("MoPoE", "acc")]
    assert joint.paper_runs == 5 and cells[("MVAE", "none")].paper_runs == 3
    p_joint = welch_p(0.50, pd.Series([0.50, 0.52, 0.48, 0.51, 0.49]).std(), 5, 0.51, 0.02, 5)
    p_acc = welch_p(0.70, pd.Series([0.70, 0.71, 0.69, 0.72, 0.68]).std(), 5, 0.60, 0.02, 5)
    assert joint.p_value == pytest.approx(p_joint) and acc.p_value == pytest.approx(p_acc)
    one = cells[("MVAE", "joint")]  # one produced run, 0.3 against 0.3 ± 0.01: tested, p = 1
    assert one.p_value == pytest.approx(1.0)
    assert [joint.p_holm, acc.p_holm, one.p_holm] == pytest.approx(holm([p_joint, p_acc, 1.0]))
    assert (joint.verdict, acc.verdict) == ("consistent", "differs")
    assert acc.status == "pass"  # inside the wide fixed tolerance, yet the test says it differs
    assert one.verdict == "underpowered"  # one run's agreement is no evidence
    assert cells[("MVAE", "none")].verdict == "underpowered"  # no printed std
    line = rep.paper_lines[0]
    assert line.endswith("Welch vs printed (Holm, α=0.05): 1 consistent, 1 differ, 2 underpowered")
    md = render_markdown(rep.summaries, rep.refs)
    assert f"| differs (p_Holm {acc.p_holm:.2g})" in md and "| underpowered" in md
    assert acc.runs == sorted(ids)


def test_bad_paper_runs_is_named(tmp_path):
    (tmp_path / "p.yaml").write_text(yaml.safe_dump({"runs": "five", "cells": [
        {"paper": "P", "table": "T", "row": "r", "column": "c", "method": "mopoe", "metric": "coherence/joint", "value": 1,
         "tolerance": 0.1}]}))
    with pytest.raises(ConfigError, match=r"p.yaml: runs.*positive integer"):
        build_report(tmp_path / "runs", tmp_path)


def test_tidy_csv_and_json(tmp_path):
    runs, refs, ids = _setup(tmp_path)
    res = CliRunner().invoke(app, ["report", "--runs-dir", str(runs), "--compare", str(refs),
                                                   "--format", "csv", "--allow-missing"])
    assert res.exit_code == 0, res.output
    df = pd.read_csv(io.StringIO(res.stdout))
    assert list(df.columns) == TIDY_COLUMNS and len(df) == 4
    acc = df[(df["row"] == "MoPoE") & (df["column"] == "acc")].iloc[0]
    assert acc["produced_mean"] == pytest.approx(0.70) and acc["n_runs"] == 5 and acc["paper_runs"] == 5
    assert acc["difference"] == pytest.approx(0.10) and acc["tolerance_verdict"] == "pass"
    assert acc["welch_verdict"] == "differs" and acc["run_ids"].split(";") == sorted(ids)
    assert "reference cells within tolerance" in res.stderr  # the summary stays off the data stream
    out = tmp_path / "cells.json"
    res = CliRunner().invoke(app, ["report", "--runs-dir", str(runs), "--compare", str(refs), "--format", "json",
                                   "--out", str(out)])
    rows = json.loads(out.read_text())
    assert pd.DataFrame(rows).shape == (4, len(TIDY_COLUMNS))
    assert {r["welch_verdict"] for r in rows} == {"consistent", "differs", "underpowered"}
    # Without references: one row per (runs group, metric) of the produced aggregates.
    res = CliRunner().invoke(app, ["report", "--runs-dir", str(runs), "--format", "csv"])
    df = pd.read_csv(io.StringIO(res.stdout))
    assert len(df) == 3 and set(df["n_runs"]) == {5, 1}


def test_one_run_far_outside_the_printed_spread_differs(tmp_path):
    """One produced run has no std, but it can still fall far outside what the paper's runs scatter over: 0.70
    against 0.80 ± 0.01 from 5 runs is 9 printed stds off (p ~ 1e-3 on 4 df): differs. 0.795 is not (underpowered)."""
    runs, refs = tmp_path / "runs", tmp_path / "refs"
    refs.mkdir()
    (refs / "p.yaml").write_text(yaml.safe_dump({"runs": 5, "cells": [
        {"paper": "P", "table": "T1", "row": "r", "column": "c", "method": "mopoe", "metric": "coherence/joint",
         "value": 0.80, "std": 0.01, "tolerance": 0.02}]}))
    fake_run(runs, "mopoe", 0, {"coherence/joint": 0.70})
    (cell,) = build_report(runs, refs).cells
    assert cell.n_runs == 1 and cell.p_value == pytest.approx(one_run_p(0.70, 0.80, 0.01, 5))
    assert cell.p_holm < 0.01 and cell.verdict == "differs"
    runs2 = tmp_path / "runs2"
    fake_run(runs2, "mopoe", 0, {"coherence/joint": 0.795})
    (cell,) = build_report(runs2, refs).cells
    assert cell.p_holm > 0.05 and cell.verdict == "underpowered"


def test_two_runs_far_off_are_underpowered_not_consistent(tmp_path):
    """Welch with two produced runs has about one degree of freedom: 0.30 and 0.70 against a printed 0.80 ± 0.01 is
    not significant, which is no evidence of agreement; with a third run it is tested as usual."""
    runs, refs = tmp_path / "runs", tmp_path / "refs"
    refs.mkdir()
    (refs / "p.yaml").write_text(yaml.safe_dump({"runs": 5, "cells": [
        {"paper": "P", "table": "T1", "row": "r", "column": "c", "method": "mopoe", "metric": "coherence/joint",
         "value": 0.80, "std": 0.01, "tolerance": 0.02}]}))
    for seed, v in ((0, 0.30), (1, 0.70)):
        fake_run(runs, "mopoe", seed, {"coherence/joint": v})
    (cell,) = build_report(runs, refs).cells
    assert cell.status == "fail" and cell.p_holm > 0.05 and cell.verdict == "underpowered"
    fake_run(runs, "mopoe", 2, {"coherence/joint": 0.79})
    (cell,) = build_report(runs, refs).cells
    assert cell.n_runs == 3 and cell.verdict in ("consistent", "differs")


def test_holm_family_is_one_paper():
    """Two papers' cells are two families: each one-cell family keeps its unadjusted p."""
    cells = [Cell(paper=p, table="T", row="r", column="c", method="mopoe", metric="coherence/joint", value=0.80,
                  tolerance=0.02, std=0.05, produced=0.62, n_runs=1, paper_runs=5) for p in ("A", "B")]
    apply(cells)
    p = one_run_p(0.62, 0.80, 0.05, 5)  # ≈ 0.030; pooled into one family Holm would double it
    assert [c.p_holm for c in cells] == pytest.approx([p, p])
    assert [c.verdict for c in cells] == ["differs", "differs"]


def test_tidy_rows_without_references_give_the_sample_std():
    vals = [0.70, 0.71, 0.69, 0.72, 0.68]
    frame = pd.DataFrame({"tables": [("T",)] * 5, "method": "mopoe", "group": "g", "metric": "m", "value": vals,
                          "run": [f"r{i}" for i in range(5)]})
    (row,) = tidy_rows([], frame)
    assert row["produced_std"] == pytest.approx(math.sqrt(0.001 / 4))  # Σ(x − 0.70)² = 0.001, ddof = 1
    assert row["produced_mean"] == pytest.approx(0.70)


def test_an_untested_cell_still_says_underpowered_in_its_grid(tmp_path):
    """A cell without a printed std gets no p-value, yet its grid entry says it is underpowered."""
    runs, refs, _ = _setup(tmp_path)
    rep = build_report(runs, refs)
    (grid,) = [g for _, g, _ in rep.refs]
    none = grid.set_index("model").loc["MVAE", "none"]
    assert none.endswith("✓ | underpowered | 1 of 3 runs") and "p_Holm" not in none  # 1 run of the paper's 3


def test_a_printed_std_of_zero_is_still_tested():
    """A printed std of 0 (all the paper's runs equal) leaves Welch defined when the produced runs spread; only a
    missing std makes a cell untestable (before: `not std` skipped both)."""
    zero = Cell(paper="P", table="T", row="r", column="c", method="mopoe", metric="m", value=0.5, tolerance=0.1,
                std=0.0, produced=0.9, produced_std=0.01, n_runs=5, paper_runs=5)
    unknown = Cell(paper="P", table="T", row="r", column="d", method="mopoe", metric="m", value=0.5, tolerance=0.1,
                   std=None, produced=0.9, produced_std=0.01, n_runs=5, paper_runs=5)
    apply([zero, unknown])
    assert zero.p_value == pytest.approx(welch_p(0.9, 0.01, 5, 0.5, 0.0, 5)) and zero.verdict == "differs"
    assert unknown.p_value is None and unknown.verdict == "underpowered"


def test_tidy_row_of_a_one_run_cell_has_no_std_and_a_signed_difference():
    """One produced run has no sample std: the tidy export leaves it empty (a 0.0 would read as no spread over
    seeds); the difference is produced − printed, negative when the reproduction is below the paper."""
    cell = Cell(paper="P", table="T", row="r", column="c", method="mopoe", metric="coherence/joint", value=0.80,
                tolerance=0.02, std=0.05, produced=0.62, produced_std=0.0, n_runs=1, paper_runs=5, runs=["a"])
    apply([cell])
    (row,) = tidy_rows([cell], None)
    assert row["produced_std"] is None and row["n_runs"] == 1 and row["produced_mean"] == pytest.approx(0.62)
    assert row["difference"] == pytest.approx(-0.18) and row["tolerance_verdict"] == "fail"
    assert row["welch_p"] == pytest.approx(one_run_p(0.62, 0.80, 0.05, 5)) and row["welch_verdict"] == "differs"
