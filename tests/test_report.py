"""The reporter: aggregation over seeds, reference matching, verdicts, and the shipped reference files."""
import hashlib
import statistics
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from mmbench.cli import app
from mmbench.config import build_run_config
from mmbench.errors import ConfigError
from mmbench.render import render_markdown
from mmbench.references import load_references
from mmbench.report import build_report, matches
from mmbench.results import Run
from mmbench.verdicts import welch_p

ROOT = Path(__file__).resolve().parents[1]


def fake_run(runs_dir, method, seed, metrics, tables=("T1",), dataset="polydigits", **cfg_extra):
    cfg = build_run_config({"dataset": dataset, "method": {"name": method}, "seed": seed, "tables": list(tables),
                            **cfg_extra})
    run = Run(cfg, runs_dir)
    run.init()
    run.write_metrics(metrics, eval_precision=cfg.eval.precision)  # scored as its config asks (not pending re-scoring)
    return run


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
    # sample standard deviation over seeds (ddof=1), computed here independently: 0.0707
    std = statistics.stdev([0.30, 0.40])
    assert cells["MoPoE"].produced == pytest.approx(0.35) and cells["MoPoE"].produced_std == pytest.approx(std)
    assert cells["MoPoE"].n_runs == 2
    assert [cells[r].status for r in ("MoPoE", "MoPoE-tight", "MVAE")] == ["pass", "fail", "missing"]
    title, grid, summary = rep["refs"][0]
    assert summary == "1 of 3 cells within tolerance, 1 failing, 1 missing"
    # the paper's line counts the same: a missing cell is not within tolerance
    assert rep["paper_lines"][0].startswith("P: 1 of 3 cells within tolerance, 0 of 0 claims hold, 1 missing")
    assert list(grid["model"]) == ["MoPoE", "MoPoE-tight", "MVAE"]  # rows kept in the paper's order, none dropped
    md = render_markdown(rep["summaries"], rep["refs"])
    assert f"0.350 ± {std:.3f} \\| 0.330 ± 0.030 \\| Δ +0.020 ✓" in md  # the reference cell (its `|` escaped) ...
    assert "missing \\| 0.120" in md
    summaries = dict(rep["summaries"])
    t1 = summaries["polydigits (vanilla) — T1"]
    assert list(t1.columns) == ["metric", "mopoe (2 seeds)"]
    assert list(t1["metric"]) == ["latent accuracy, 1 input", "joint coherence (prior samples)"]
    assert list(t1["mopoe (2 seeds)"]) == [f"0.850 ± {statistics.stdev([0.8, 0.9]):.3f}", f"0.350 ± {std:.3f}"]  # ... and
    # the summary table print the same std for the same runs


def test_reference_cells_are_validated(tmp_path):
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"cells": [{"paper": "P", "table": "T", "row": "r"}]}))
    with pytest.raises(ConfigError, match=r"bad.yaml: cells\[0\]: missing field\(s\) column, method, metric, value"):
        load_references(tmp_path)


def test_a_directory_of_other_yaml_files_is_not_taken_for_references(tmp_path):
    """--compare suites/ (the wrong directory) or a reference file with nothing in it compared 0 of 0 cells and
    looked like a pass."""
    with pytest.raises(ConfigError, match=r"suites/\w+.yaml: \w+: unknown key of a reference file \(allowed: "
                                          r"paper, runs, cells, claims, budgets\); --compare takes the reference "
                                          r"directory"):
        load_references(ROOT / "suites")
    (tmp_path / "empty.yaml").write_text("paper: P\ncells: []\n")
    with pytest.raises(ConfigError, match=r"empty.yaml: holds no `cells` or `claims`"):
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
        assert c.tolerance > 0
        if c.metric.split("/")[0] in FRACTION_FAMILIES:
            assert 0 <= c.value <= 1, f"{c.table} {c.row} {c.column}: fractions are stored as 0..1"
        # the README's rule: max(2 × printed std, 0.02) for fractions, max(2 × std, 10 % of the value) for FID,
        # max(2 × std, 2 % of |value|) for log-likelihoods
        family = c.metric.split("/")[0]
        floor = {"fid": 0.10 * abs(c.value), "fid_by_n": 0.10 * abs(c.value), "loglik": 0.02 * abs(c.value),
                 "loglik_by_n": 0.02 * abs(c.value), "loglik_mod": 0.02 * abs(c.value)}.get(family)
        if floor is None:
            assert family in FRACTION_FAMILIES, f"{c.table} {c.row}: no tolerance rule for {c.metric}"
            floor = 0.02
        rule = max(2 * (c.std or 0.0), floor)
        assert c.tolerance == pytest.approx(rule, rel=1e-9, abs=1e-12), \
            f"{c.table} / {c.row} / {c.column}: tolerance {c.tolerance}, the rule gives {rule}"


FRACTION_FAMILIES = {"latent_acc", "latent_acc_by_n", "coherence", "coherence_by_n", "coherence_all_by_n", "latent_ap", "coherence_ap",
                     "latent_ap_batchmean", "coherence_ap_batchmean"}
METRIC_OF_KEY = {"latent_acc": "latent_classification", "latent_acc_by_n": "latent_classification",
                 "coherence": "coherence", "coherence_by_n": "coherence", "coherence_all_by_n": "coherence",
                 "fid": "fid", "fid_by_n": "fid",
                 "loglik": "loglik", "loglik_by_n": "loglik", "loglik_mod": "loglik", "recon": "reconstruction",
                 "latent_ap": "latent_ap", "latent_ap_by_n": "latent_ap", "coherence_ap": "coherence_ap",
                 "coherence_ap_by_n": "coherence_ap", "latent_ap_batchmean": "latent_ap",
                 "coherence_ap_batchmean": "coherence_ap"}


def _producers(runs, table, method, metric, *wheres):
    """Suite runs (full tier) that serve `table` with `method`, compute `metric` and satisfy the filters."""
    from mmbench.registry import DATASETS
    from mmbench.report import flatten, matches

    family, _, rest = metric.partition("/")
    out = []
    for r in runs:
        if table not in r.tables or r.method.name != method or METRIC_OF_KEY[family] not in r.eval.metrics:
            continue
        flat = flatten(r.to_dict())
        if not all(matches(flat, w) for w in wheres if w):
            continue
        names = {m.name for m in DATASETS.get(r.dataset)().modalities(r.variant)}
        subset = rest.split("/")[0]  # latent_ap/img/<attribute> or latent_ap/img/* (a claim's quantifier): img
        used = set(subset.replace("->", "+").split("+")) - {"joint", "self", "prior", "pooled"}
        if family.endswith("_by_n") or used <= names:
            out.append(r)
    return out


def test_every_reference_cell_and_claim_is_reachable_from_a_suite():
    """Each cell's table, method, filters and metric key are produced by some run of some suite (full
    tier); so is each side of each claim."""
    from mmbench.references import load_reference_files
    from mmbench.suite import load_suite

    runs = [r for p in sorted((ROOT / "suites").glob("*.yaml")) for r in load_suite(p).runs("full")]
    cells, claims = load_reference_files(ROOT / "reference_results")
    for c in cells:
        assert _producers(runs, c.table, c.method, c.metric, c.where), \
            f"no suite run produces {c.table} / {c.row} / {c.column} ({c.method}, {c.metric}, where {c.where})"
    for k in claims:
        for h in k.holds:
            for side in (h["left"], h["right"]):
                if isinstance(side, dict):
                    assert _producers(runs, k.figure, side["method"], side["metric"], k.where, side.get("where")), \
                        f"claim {k.id}: no suite run produces {side} for {k.figure}"


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
    assert sorted(table.columns[1:]) == ["mopoe β=1 (1 seed)", "mopoe β=5 (1 seed)"]


def test_summary_tables_follow_the_papers_figures(tmp_path):
    # A run serving two figures appears in both figures' tables; figures served by the same runs share one.
    runs = tmp_path / "runs"
    fake_run(runs, "mvae", 0, {"latent_acc_by_n/1": 0.1}, tables=("Fig. 2",))
    for beta in (1.0, 2.0):
        cfg = build_run_config({"dataset": "polydigits", "method": {"name": "mopoe", "beta": beta},
                                "tables": ["Fig. 2", "Fig. 3"]})
        run = Run(cfg, runs)
        run.init()
        run.write_metrics({"latent_acc_by_n/1": beta / 4})
    fake_run(runs, "mmvae", 0, {"latent_acc_by_n/1": 0.7}, tables=("Table 2", "Table 3"))
    summaries = dict(build_report(runs, None)["summaries"])
    assert set(summaries) == {"polydigits (vanilla) — Fig. 2", "polydigits (vanilla) — Fig. 3",
                              "polydigits (vanilla) — Table 2, Table 3"}
    assert sorted(summaries["polydigits (vanilla) — Fig. 2"].columns[1:]) == [
        "mopoe β=1 (1 seed)", "mopoe β=2 (1 seed)", "mvae (1 seed)"]
    assert sorted(summaries["polydigits (vanilla) — Fig. 3"].columns[1:]) == ["mopoe β=1 (1 seed)", "mopoe β=2 (1 seed)"]


def test_where_filters_and_claims(tmp_path):
    runs = tmp_path / "runs"
    for method, beta, seed, acc in (("mopoe", 1.0, 0, 0.9), ("mopoe", 1.0, 1, 0.8), ("mopoe", 4.0, 0, 0.6),
                                    ("mmvae", 1.0, 0, 0.7), ("mmvae", 4.0, 0, 0.7)):
        cfg = build_run_config({"dataset": "polydigits", "method": {"name": method, "beta": beta}, "seed": seed,
                                "tables": ["Fig X"]})
        run = Run(cfg, runs)
        run.init()
        run.write_metrics({"latent_acc_by_n/2": acc})
    refs = tmp_path / "refs"
    refs.mkdir()
    side = {"method": "mopoe", "metric": "latent_acc_by_n/2"}
    other = {"method": "mmvae", "metric": "latent_acc_by_n/2"}
    (refs / "p.yaml").write_text(yaml.safe_dump({
        "cells": [{"paper": "P", "table": "Fig X", "row": "MoPoE", "column": "b1", "method": "mopoe",
                   "metric": "latent_acc_by_n/2", "value": 0.85, "tolerance": 0.01, "where": {"method.beta": 1}}],
        "claims": [
            {"id": "always-better", "paper": "P", "figure": "Fig X", "quote": "q", "source": "p. 1",
             "for_each": "method.beta", "holds": [{"left": side, "op": ">=", "right": other}]},
            {"id": "better-at-1", "paper": "P", "figure": "Fig X", "quote": "q", "source": "p. 1",
             "where": {"method.beta": 1.0}, "holds": [{"left": side, "op": ">", "right": other},
                                                       {"left": side, "op": ">", "right": 0.5}]},
            {"id": "no-runs", "paper": "P", "figure": "Fig Y", "quote": "q", "source": "p. 2",
             "holds": [{"left": side, "op": ">", "right": 0.5}]},
        ]}))
    rep = build_report(runs, refs)
    (cell,) = rep.cells
    assert cell.produced == pytest.approx(0.85) and cell.n_runs == 2 and cell.status == "pass"  # β=4 run excluded
    verdicts = {c.id: c.status for c in rep.claims}
    assert verdicts == {"always-better": "fails", "better-at-1": "holds", "no-runs": "missing"}
    fails = next(c for c in rep.claims if c.id == "always-better")
    assert any("method.beta=4.0: NO" in d for d in fails.details)
    assert rep.paper_lines == ["P: 1 of 1 cells within tolerance, 1 of 3 claims hold, 1 missing; Welch vs printed "
                               "(Holm, α=0.05): 0 consistent, 0 differ, 1 underpowered"]
    assert rep.failures == 1 and rep.missing == 1

    from mmbench.render import render_html, render_latex
    args = (rep.summaries, rep.refs, rep.claims, rep.paper_lines)
    tex = render_latex(*args)
    assert r"\begin{tabular}" in tex and r"$\pm$" in tex and "always-better" in tex and "±" not in tex
    png = tmp_path / "fig.png"
    png.write_bytes(b"\x89PNG fake")
    page = render_html(*args, images=[png])
    assert page.startswith("<!doctype html>") and "data:image/png;base64," in page and "better-at-1" in page


def test_claim_operators_margin_strict_less_and_for_each(tmp_path):
    """The operators the shipped claims use: `margin` on >= and <=, strict `<`, and `for_each` over a sweep."""
    runs = tmp_path / "runs"
    for method, beta, acc in (("mopoe", 1.0, 0.80), ("mopoe", 4.0, 0.60), ("mmvae", 1.0, 0.84), ("mmvae", 4.0, 0.70)):
        cfg = build_run_config({"dataset": "polydigits", "method": {"name": method, "beta": beta}, "tables": ["F"]})
        run = Run(cfg, runs)
        run.init()
        run.write_metrics({"latent_acc_by_n/1": acc})
    mopoe = {"method": "mopoe", "metric": "latent_acc_by_n/1"}
    mmvae = {"method": "mmvae", "metric": "latent_acc_by_n/1"}
    at4 = {"method.beta": 4.0}

    def claim(cid, *holds, **kw):
        return {"id": cid, "paper": "P", "figure": "F", "quote": "q", "source": "p. 1", "holds": list(holds), **kw}

    refs = tmp_path / "refs"
    refs.mkdir()
    (refs / "p.yaml").write_text(yaml.safe_dump({"claims": [
        # left + margin >= right: 0.85 >= 0.84 at β=1, 0.65 >= 0.70 fails at β=4
        claim("ge-margin-5", {"left": mopoe, "op": ">=", "right": mmvae, "margin": 0.05}, for_each="method.beta"),
        claim("ge-margin-11", {"left": mopoe, "op": ">=", "right": mmvae, "margin": 0.11}, for_each="method.beta"),
        claim("ge-no-margin", {"left": mopoe, "op": ">=", "right": mmvae}, for_each="method.beta"),
        # left - margin <= right: 0.84 - 0.05 <= 0.80 holds, 0.84 - 0.03 <= 0.80 does not
        claim("le-margin-5", {"left": mmvae, "op": "<=", "right": mopoe, "margin": 0.05}, where={"method.beta": 1.0}),
        claim("le-margin-3", {"left": mmvae, "op": "<=", "right": mopoe, "margin": 0.03}, where={"method.beta": 1.0}),
        claim("lt", {"left": mopoe, "op": "<", "right": mmvae}, for_each="method.beta"),
        claim("lt-strict", {"left": mopoe, "op": "<", "right": 0.6}, where=at4),  # 0.6 < 0.6 is false
        claim("le-equal", {"left": mopoe, "op": "<=", "right": 0.6}, where=at4),
        claim("ge-equal", {"left": mopoe, "op": ">=", "right": 0.6}, where=at4),  # 0.6 >= 0.6 holds
        claim("gt-strict", {"left": mopoe, "op": ">", "right": 0.6}, where=at4),
    ]}))
    rep = build_report(runs, refs)
    verdicts = {c.id: c.status for c in rep.claims}
    assert verdicts == {"ge-margin-5": "fails", "ge-margin-11": "holds", "ge-no-margin": "fails",
                        "le-margin-5": "holds", "le-margin-3": "fails", "lt": "holds", "lt-strict": "fails",
                        "le-equal": "holds", "ge-equal": "holds", "gt-strict": "fails"}
    details = {c.id: c.details for c in rep.claims}
    assert len(details["ge-margin-5"]) == 2  # one comparison per β value
    assert details["ge-margin-5"][0].endswith("at method.beta=1.0: yes")
    assert details["ge-margin-5"][1].endswith("at method.beta=4.0: NO")
    assert [d.endswith("yes") for d in details["lt"]] == [True, True]


def test_malformed_claims_are_named(tmp_path):
    from mmbench.references import load_reference_files
    bad = {"id": "c", "paper": "P", "figure": "F", "quote": "q", "source": "s",
           "holds": [{"left": {"method": "m", "metric": "k"}, "op": "=>", "right": 1}]}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump({"claims": [bad]}))
    with pytest.raises(ConfigError, match=r"r.yaml: claims\[0\].holds\[0\].op: must be one of"):
        load_reference_files(tmp_path)
    (tmp_path / "r.yaml").write_text("cells: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_reference_files(tmp_path)
    (tmp_path / "r.yaml").write_text("cells:\n  - {paper: P, value: 1.0, value: 2.0}\n")
    with pytest.raises(ConfigError, match=r"r.yaml: not valid YAML at line 2.*'value' is given twice"):
        load_reference_files(tmp_path)


def test_latent_scatter_artifact_becomes_a_figure(tmp_path, data_root):
    """MM-VAMP Figs. 6/13: a run's unimodal latents are stored by the metric and drawn by the report."""
    import numpy as np

    from mmbench.evaluate import execute
    from mmbench.plots import all_figures

    cfg = build_run_config({"dataset": "polydigits", "modalities": ["m0", "m1"],
                            "method": {"name": "mmvae", "latent_dim": 2},
                            "train": {"epochs": 1, "max_train": 64, "batch_size": 32},
                            "eval": {"metrics": ["latent_scatter"], "test_samples": 50}, "tables": ["Fig S"]})
    run = Run(cfg, tmp_path / "runs")
    execute(run, data_root)
    saved = np.load(run.dir / "artifacts" / "latents.npz")
    assert saved["z_m0"].shape == (50, 2) and list(saved["names"]) == ["m0", "m1"] and len(saved["labels"]) == 50
    figs = all_figures(build_report(tmp_path / "runs", None), tmp_path / "figs")
    assert sorted(p.name for p in figs if "latents" in p.name) == [f"{run.id}-latents.png", f"{run.id}-latents.svg"]
    assert sorted(p.name for p in figs if "latents" not in p.name) == [
        "polydigits-vanilla-Fig_S-training.png", "polydigits-vanilla-Fig_S-training.svg"]  # the run's loss curves


def test_latent_scatter_projects_a_larger_latent_on_its_first_two_principal_components(tmp_path, monkeypatch):
    """latent_scatter docstring: a latent of more than 2 dimensions is projected on the first two principal
    components of all modalities' points together; here, in a rotated and shifted 3-d space, the points' spread is
    ±3/±1 along one axis, ±0.5 along another and nil along the third, so the projection is known up to sign."""
    import numpy as np
    import torch
    from types import SimpleNamespace

    import mmbench.metrics.latent_scatter as ls
    from mmbench.data.base import DataSplit, Modality

    t, s = np.array([-3.0, -1.0, 1.0, 3.0]), np.array([0.5, -0.5, -0.5, 0.5])
    plane = {"a": np.stack([t, s], 1), "b": np.stack([t, -s], 1)}  # centred, uncorrelated: PC1 = t's, PC2 = s's axis
    rotation, _ = np.linalg.qr(np.array([[2.0, 1.0, 0.5], [-1.0, 3.0, 1.0], [0.5, -2.0, 4.0]]))
    centre = np.array([5.0, -2.0, 7.0])
    means = [np.pad(plane[m], ((0, 0), (0, 1))) @ rotation.T + centre for m in "ab"]
    monkeypatch.setattr(ls, "encode_means", lambda ctx, split, subsets: means)
    test = DataSplit([Modality(m, (3,), "vector") for m in "ab"], {m: torch.zeros(4, 3) for m in "ab"}, torch.arange(4))
    ls.latent_scatter(SimpleNamespace(out_dir=tmp_path, model=SimpleNamespace(names=["a", "b"]), test=test))
    saved = np.load(tmp_path / "latents.npz")
    assert str(saved["projection"]) == "pca"
    got = np.concatenate([saved["z_a"], saved["z_b"]])
    want = np.concatenate([plane["a"], plane["b"]])
    for k in range(2):
        assert np.allclose(got[:, k] * np.sign(got[0, k] * want[0, k]), want[:, k], atol=1e-5)


def test_latent_scatter_keeps_a_2d_latent_as_is_and_needs_a_run_directory(tmp_path, monkeypatch):
    """latent_scatter docstring: a 2-d latent space is plotted as is (only a larger one is projected); the test
    split's labels go with the points; the metric counts every modality's points; without a run directory it refuses."""
    import numpy as np
    import torch
    from types import SimpleNamespace

    import mmbench.metrics.latent_scatter as ls
    from mmbench.data.base import DataSplit, Modality
    from mmbench.errors import MMBenchError

    means = [np.array([[1.0, 2.0], [3.0, -4.0], [0.5, 0.0]]), np.array([[9.0, 1.0], [-2.0, 7.0], [4.0, 4.0]])]
    seen = []
    monkeypatch.setattr(ls, "encode_means", lambda ctx, split, subsets: seen.append((split, subsets)) or means)
    test = DataSplit([Modality(m, (2,), "vector") for m in "ab"], {m: torch.zeros(3, 2) for m in "ab"},
                     torch.tensor([2, 0, 1]))
    ctx = SimpleNamespace(out_dir=tmp_path / "artifacts", model=SimpleNamespace(names=["a", "b"]), test=test)
    assert ls.latent_scatter(ctx) == {"latent_scatter/points": 6.0}  # 3 test tuples × 2 modalities
    assert seen == [(test, [("a",), ("b",)])]  # the unimodal posteriors q(z | x_m) of the test split
    saved = np.load(tmp_path / "artifacts" / "latents.npz")
    assert str(saved["projection"]) == "identity" and list(saved["names"]) == ["a", "b"]
    assert np.array_equal(saved["z_a"], means[0]) and np.array_equal(saved["z_b"], means[1])
    assert list(saved["labels"]) == [2, 0, 1]
    with pytest.raises(MMBenchError, match="needs a run directory"):
        ls.latent_scatter(SimpleNamespace(out_dir=None, model=ctx.model, test=test))


def test_figures_of_sweeps_and_attributes(tmp_path):
    """β-sweep and per-attribute figures come out of the report for the runs that support them."""
    from mmbench.plots import all_figures

    runs = tmp_path / "runs"
    for method in ("mopoe", "mmvae"):
        for beta in (0.5, 2.0):
            cfg = build_run_config({"dataset": "polydigits", "method": {"name": method, "beta": beta}, "tables": ["F"]})
            run = Run(cfg, runs)
            run.init()
            run.write_metrics({"recon/joint": 100 / beta, "latent_acc_by_n/1": 0.5 + beta / 10,
                               "latent_ap/m0/smiling": 0.7, "latent_ap/m0/bald": 0.2, "coherence_ap/m0->m1/bald": 0.3})
    names = sorted(p.name for p in all_figures(build_report(runs, None), tmp_path / "figs") if p.suffix == ".png")
    assert any(n.endswith("beta-sweep.png") for n in names)
    assert any("latent_ap-beta" in n and n.endswith("per-attribute.png") for n in names)
    assert any("coherence_ap-beta" in n for n in names)


def test_claims_and_filters_with_no_matching_runs(tmp_path):
    """A where-filter or claim side that matches nothing is missing, not an error (shipped references)."""
    fake_run(tmp_path / "runs", "mopoe", 0, {"latent_acc/m0": 0.5}, tables=("MoPoE Table 2",))
    rep = build_report(tmp_path / "runs", ROOT / "reference_results")
    assert rep.cells and all(c.status == "missing" for c in rep.cells)
    assert all(c.status == "missing" for c in rep.claims)


def _sweep_run(runs, method, beta, seed, metrics, tables=("Fig. 3",), **method_extra):
    cfg = build_run_config({"dataset": "polydigits", "method": {"name": method, "beta": beta, **method_extra},
                            "seed": seed, "tables": list(tables)})
    run = Run(cfg, runs)
    run.init()
    run.write_metrics(metrics)


def test_a_beta_sweep_renders_long_in_every_format(tmp_path):
    """β as rows, methods as columns, one table per metric; seeds averaged per (method, β) only."""
    from rich.console import Console

    from mmbench.render import render_html, render_latex, render_terminal

    runs = tmp_path / "runs"
    for beta in (0.5, 1.0, 2.0):
        for seed in (0, 1):
            _sweep_run(runs, "mopoe", beta, seed, {"latent_acc_by_n/1": beta / 4 + seed / 10, "recon/joint": 10 * beta})
        _sweep_run(runs, "mvae", beta, 0, {"latent_acc_by_n/1": beta / 8, "recon/joint": 20 * beta})
    summaries = build_report(runs, None)["summaries"]
    titles = [t for t, _ in summaries]
    assert titles == ["polydigits (vanilla) — Fig. 3 — latent accuracy, 1 input, by β",
                      "polydigits (vanilla) — Fig. 3 — reconstruction error (all inputs), by β"]
    acc = summaries[0][1]
    assert list(acc.columns) == ["β", "mopoe (2 seeds)", "mvae (1 seed)"]
    assert list(acc["β"]) == ["0.5", "1", "2"]
    assert list(acc["mopoe (2 seeds)"]) == ["0.175 ± 0.071", "0.300 ± 0.071", "0.550 ± 0.071"]
    assert list(acc["mvae (1 seed)"]) == ["0.062", "0.125", "0.250"]
    assert list(summaries[1][1]["mvae (1 seed)"]) == ["10.000", "20.000", "40.000"]
    md = render_markdown(summaries, [])
    assert "## polydigits (vanilla) — Fig. 3 — latent accuracy, 1 input, by β" in md
    row = next(line for line in md.splitlines() if "0.175 ± 0.071" in line)
    assert [c.strip() for c in row.strip("|").split("|")] == ["0.5", "0.175 ± 0.071", "0.062"]
    assert "mopoe β=" not in md  # no column per (method, β) any more
    tex = render_latex(summaries, [])
    assert tex.count(r"\begin{tabular}{lll}") == 2 and r"0.175 $\pm$ 0.071" in tex
    page = render_html(summaries, [])
    assert page.count("<table") == 2 and "<th>β</th>" in page
    console = Console(record=True, width=200)
    render_terminal(console, summaries, [])
    text = console.export_text()
    assert "by β" in text and "0.550 ± 0.071" in text


def test_a_sweep_column_says_the_range_of_seeds_behind_its_rows(tmp_path):
    """Two seeds at β 0.5 and 1, one at β 2: the column says 1-2 seeds, not 2 (the β = 2 row is one run, no std)."""
    runs = tmp_path / "runs"
    for beta, seeds in ((0.5, (0, 1)), (1.0, (0, 1)), (2.0, (0,))):
        for seed in seeds:
            _sweep_run(runs, "mopoe", beta, seed, {"latent_acc_by_n/1": beta / 4 + seed / 10})
    (_, acc), = build_report(runs, None)["summaries"]
    assert list(acc.columns) == ["β", "mopoe (1-2 seeds)"]
    assert list(acc["mopoe (1-2 seeds)"]) == ["0.175 ± 0.071", "0.300 ± 0.071", "0.500"]


def test_a_group_varying_in_two_settings_or_few_values_stays_wide(tmp_path):
    runs = tmp_path / "runs"
    for beta in (0.5, 1.0, 2.0):
        _sweep_run(runs, "mopoe", beta, 0, {"latent_acc_by_n/1": beta / 4}, latent_dim=8 if beta < 2 else 16)
    (title, table), = build_report(runs, None)["summaries"]
    assert title == "polydigits (vanilla) — Fig. 3" and len(table.columns) == 4  # metric + 3 configurations


def test_summary_columns_say_when_the_decoders_were_evaluated_in_bf16(tmp_path):
    runs = tmp_path / "runs"
    for seed in (0, 1):
        fake_run(runs, "mopoe", seed, {"coherence/joint": 0.3 + seed / 10}, eval={"precision": "bf16"})
    fake_run(runs, "mvae", 0, {"coherence/joint": 0.1})
    t1 = dict(build_report(runs, None)["summaries"])["polydigits (vanilla) — T1"]
    assert list(t1.columns) == ["metric", "mopoe [eval=bf16] (2 seeds)", "mvae (1 seed)"]
    fake_run(runs, "mopoe", 2, {"coherence/joint": 0.5})  # the same method evaluated in fp32: never pooled with bf16
    t1 = dict(build_report(runs, None)["summaries"])["polydigits (vanilla) — T1"]
    assert list(t1.columns) == ["metric", "mopoe eval=bf16 (2 seeds)", "mopoe eval=fp32 (1 seed)", "mvae (1 seed)"]


# ----- what a cell or claim may average ---------------------------------------------------------------------
REF_CELL = {"paper": "P", "table": "T1", "row": "MoPoE", "column": "J", "method": "mopoe", "metric": "coherence/joint",
            "value": 0.50, "std": 0.02, "tolerance": 0.04}


def _refs(tmp_path, data):
    d = tmp_path / "refs"
    d.mkdir(exist_ok=True)
    (d / "p.yaml").write_text(yaml.safe_dump(data))
    return d


def test_a_cell_over_fewer_runs_than_the_papers_says_so(tmp_path):
    """3 of the paper's 5 runs finished: the cell is scored, and says over how many runs, as its table's summary does
    (only the csv/json export carried n before)."""
    runs = tmp_path / "runs"
    for s in range(3):
        fake_run(runs, "mopoe", s, {"coherence/joint": 0.30 + s / 100})
    cell = {"paper": "P", "table": "T1", "row": "MoPoE", "column": "Joint", "method": "mopoe",
            "metric": "coherence/joint", "value": 0.31, "std": 0.01, "tolerance": 0.02}
    rep = build_report(runs, _refs(tmp_path, {"runs": 5, "cells": [cell]}))
    (_, table, summary), = rep.refs
    assert table.iloc[0]["Joint"].endswith("| 3 of 5 runs") and "1 over fewer runs than the paper's" in summary
    fake_run(runs, "mopoe", 3, {"coherence/joint": 0.3})
    fake_run(runs, "mopoe", 4, {"coherence/joint": 0.3})
    (_, table, summary), = build_report(runs, _refs(tmp_path, {"runs": 5, "cells": [cell]})).refs
    assert "runs" not in table.iloc[0]["Joint"] and "fewer" not in summary


def test_a_cell_never_averages_runs_of_two_configurations(tmp_path):
    """Five full-tier seeds and a quick-tier run (other epochs) serve the same table: the cell is not scored, names
    the differing setting, and --compare fails saying how to separate them; the summary keeps them apart."""
    runs = tmp_path / "runs"
    for s, v in enumerate([0.50, 0.52, 0.48, 0.51, 0.49]):
        fake_run(runs, "mopoe", s, {"coherence/joint": v})
    fake_run(runs, "mopoe", 0, {"coherence/joint": 0.10}, train={"epochs": 1})
    refs = _refs(tmp_path, {"runs": 5, "cells": [REF_CELL]})
    rep = build_report(runs, refs)
    (cell,) = rep.cells
    assert cell.status == "ambiguous" and cell.produced is None and "train.epochs" in cell.ambiguous
    assert cell.verdict is None and rep.ambiguous == [cell] and len(rep.summaries[0][1].columns) == 3
    assert "ambiguous: runs of several configurations (train.epochs" in rep.refs[0][1].iloc[0, 1]
    res = CliRunner().invoke(app, ["report", "--runs-dir", str(runs), "--compare", str(refs), "--allow-missing"])
    assert res.exit_code == 1 and "runs of several configurations" in res.output
    narrowed = {**REF_CELL, "where": {"train.epochs": 1}}  # a where that picks one configuration scores it
    (cell,) = build_report(runs, _refs(tmp_path, {"runs": 5, "cells": [narrowed]})).cells
    assert cell.n_runs == 1 and cell.produced == pytest.approx(0.10)


def test_a_claim_side_never_averages_runs_of_two_configurations(tmp_path):
    runs = tmp_path / "runs"
    fake_run(runs, "mopoe", 0, {"latent_acc_by_n/1": 0.9}, tables=("F",))
    fake_run(runs, "mopoe", 0, {"latent_acc_by_n/1": 0.1}, tables=("F",), train={"lr": 5e-4})
    fake_run(runs, "mvae", 0, {"latent_acc_by_n/1": 0.6}, tables=("F",))
    side = {"method": "mopoe", "metric": "latent_acc_by_n/1"}
    claim = {"id": "k", "paper": "P", "figure": "F", "quote": "q", "source": "s",
             "holds": [{"left": side, "op": ">", "right": {"method": "mvae", "metric": "latent_acc_by_n/1"}}]}
    (k,) = build_report(runs, _refs(tmp_path, {"claims": [claim]})).claims
    assert k.status == "missing" and "several configurations" in k.details[0] and "train.lr" in k.details[0]


def test_for_each_needs_every_value_on_both_sides(tmp_path):
    """'MM-VAMP above MoPoE at every β' with MoPoE run at β = 1 only is not shown to hold (it was: one comparison)."""
    runs = tmp_path / "runs"
    for method, beta, acc in (("mmvamp", 1.0, 0.8), ("mmvamp", 4.0, 0.3), ("mmvamp", 8.0, 0.3), ("mopoe", 1.0, 0.5)):
        run = Run(build_run_config({"dataset": "polydigits", "method": {"name": method, "beta": beta}, "tables": ["F"]}),
                  runs)
        run.init()
        run.write_metrics({"latent_acc_by_n/1": acc})
    claim = {"id": "k", "paper": "P", "figure": "F", "quote": "q", "source": "s", "for_each": "method.beta",
             "holds": [{"left": {"method": "mmvamp", "metric": "latent_acc_by_n/1"}, "op": ">",
                        "right": {"method": "mopoe", "metric": "latent_acc_by_n/1"}}]}
    (k,) = build_report(runs, _refs(tmp_path, {"claims": [claim]})).claims
    assert k.status == "missing", k.details
    assert any("method.beta=4.0: no runs of mopoe" in d for d in k.details)
    assert any("method.beta=1.0: yes" in d for d in k.details)


def test_non_finite_values_are_left_out_of_mean_and_n(tmp_path):
    runs = tmp_path / "runs"
    for s, v in enumerate([0.50, 0.52, 0.48, float("nan"), float("inf")]):
        fake_run(runs, "mopoe", s, {"coherence/joint": v})
    rep = build_report(runs, _refs(tmp_path, {"runs": 5, "cells": [{**REF_CELL, "value": 0.55, "std": 0.01,
                                                                     "tolerance": 0.06}]}))
    (cell,) = rep.cells
    assert cell.n_runs == 3 and cell.nonfinite == 2 and cell.produced == pytest.approx(0.50)
    assert cell.p_value == pytest.approx(welch_p(0.50, 0.02, 3, 0.55, 0.01, 5))
    assert "2 run(s) with a non-finite value left out" in rep.refs[0][1].iloc[0, 1]


def test_stale_and_rescore_pending_run_directories_are_left_out(tmp_path):
    """A directory whose config hashes to another id (made before an id version change) and a run whose metrics were
    scored otherwise than its config now asks (waiting for `mmbench run` to re-score) are not reported; the report
    says how many and why."""
    runs = tmp_path / "runs"
    old = fake_run(runs, "mrvae", 0, {"coherence/joint": 0.10})
    old.dir.rename(runs / "polydigits-vanilla-mrvae-s0-0123456789")
    fake_run(runs, "mrvae", 0, {"coherence/joint": 0.50})
    done = fake_run(runs, "mopoe", 0, {"coherence/joint": 0.40})  # scored in fp32
    pending = Run(build_run_config({"dataset": "polydigits", "method": {"name": "mopoe"}, "seed": 0, "tables": ["T1"],
                                    "eval": {"precision": "bf16"}}), runs)
    assert pending.id == done.id  # eval.precision is outside the run id: the same run, now asked in bf16
    pending.init()  # as `mmbench run --set eval.precision=bf16` does before it re-scores
    assert pending.status() == "rescore"
    refs = _refs(tmp_path, {"cells": [{**REF_CELL, "method": "mrvae"}, {**REF_CELL, "row": "b"}]})
    rep = build_report(runs, refs)
    mrvae, mopoe = rep.cells
    assert mrvae.n_runs == 1 and mrvae.produced == pytest.approx(0.50)
    assert mopoe.status == "missing"  # its fp32 numbers are not reported as bf16 ones
    reasons = dict(rep.skipped)
    assert set(reasons) == {"polydigits-vanilla-mrvae-s0-0123456789", pending.id}
    assert "hashes to" in reasons["polydigits-vanilla-mrvae-s0-0123456789"] and "re-scores" in reasons[pending.id]
    res = CliRunner().invoke(app, ["report", "--runs-dir", str(runs)])
    assert res.exit_code == 0 and "2 run directories left out of the report" in res.output


def test_settings_that_do_not_change_numbers_do_not_split_a_configuration(tmp_path):
    """A seed evaluated with --fid-weights PATH, or trained with mid-epoch checkpoints, is the same experiment as the
    others: the cell averages them (they once made it 'ambiguous')."""
    runs = tmp_path / "runs"
    fake_run(runs, "mopoe", 0, {"coherence/joint": 0.50})
    fake_run(runs, "mopoe", 1, {"coherence/joint": 0.52}, eval={"fid_weights": "/abs/pt_inception.pth"})
    fake_run(runs, "mopoe", 2, {"coherence/joint": 0.48}, train={"checkpoint_minutes": 5.0, "tensorboard": True})
    (cell,) = build_report(runs, _refs(tmp_path, {"cells": [REF_CELL]})).cells
    assert cell.status == "pass" and cell.n_runs == 3 and cell.produced == pytest.approx(0.50)


def test_a_run_whose_config_no_longer_validates_is_left_out_not_fatal(tmp_path):
    """A run made by a version that allowed what this one refuses (loglik on the rats' unnormalised likelihood) does
    not stop the report of the others."""
    import yaml as _yaml

    runs = tmp_path / "runs"
    good = fake_run(runs, "mopoe", 0, {"coherence/joint": 0.50})
    old = fake_run(runs, "mopoe", 1, {"coherence/joint": 0.40})
    raw = _yaml.safe_load((old.dir / "config.yaml").read_text())
    raw.update(dataset="rats", variant="simulated")
    raw["method"]["name"] = "aggregated"
    raw["eval"]["metrics"] = ["loglik"]
    (old.dir / "config.yaml").write_text(_yaml.safe_dump(raw))
    rep = build_report(runs, None)
    assert set(rep.frame["run"]) == {good.id}
    assert dict(rep.skipped)[old.id].startswith("its config no longer validates (eval.metrics[0]: loglik needs normalised")


def test_for_each_over_a_list_valued_setting(tmp_path):
    """`for_each: modalities` (a list per run): one comparison per modality set, and `lowest_at` names one by its
    list (before: an unhashable-list TypeError)."""
    runs = tmp_path / "runs"
    for mods, value in ((["m0", "m1"], 0.4), (["m0", "m1", "m2"], 0.6)):
        for method, v in (("mopoe", value), ("mmvae", value - 0.1)):
            run = Run(build_run_config({"dataset": "polydigits", "modalities": mods, "method": {"name": method},
                                        "tables": ["F"]}), runs)
            run.init()
            run.write_metrics({"coherence/joint": v})
    mopoe = {"method": "mopoe", "metric": "coherence/joint"}
    mmvae = {"method": "mmvae", "metric": "coherence/joint"}
    base = {"paper": "P", "figure": "F", "quote": "q", "source": "p. 1", "for_each": "modalities"}
    refs = tmp_path / "refs"
    refs.mkdir()
    (refs / "p.yaml").write_text(yaml.safe_dump({"claims": [
        {**base, "id": "better", "holds": [{"left": mopoe, "op": ">", "right": mmvae}]},
        {**base, "id": "lowest", "holds": [{"left": mopoe, "op": "lowest_at", "right": [["m0", "m1"]]}]}]}))
    rep = build_report(runs, refs)
    assert {c.id: c.status for c in rep.claims} == {"better": "holds", "lowest": "holds"}
    better = next(c for c in rep.claims if c.id == "better")
    assert sorted(d.split(" at ")[1] for d in better.details) == ["modalities=('m0', 'm1'): yes",
                                                                 "modalities=('m0', 'm1', 'm2'): yes"]


def test_a_where_with_two_settings_needs_both():
    """The shipped references' `where` pairs variant with train.select: an extended cell is never scored from vanilla runs."""
    cfg = {"variant": "vanilla", "train.select": "best_test_loss"}
    assert matches(cfg, {"variant": "vanilla", "train.select": "best_test_loss"})
    assert not matches(cfg, {"variant": "extended", "train.select": "best_test_loss"})
    assert not matches(cfg, {"variant": "vanilla", "train.select": "last"})


def test_a_mean_exactly_at_the_tolerance_edge_passes(tmp_path):
    """|produced - value| <= tolerance: a mean on the edge (0.54 against 0.50 ± 0.04, 4e-2 + float error) passes."""
    fake_run(tmp_path / "runs", "mopoe", 0, {"coherence/joint": 0.54})
    (cell,) = build_report(tmp_path / "runs", _refs(tmp_path, {"cells": [REF_CELL]})).cells
    assert cell.produced - cell.value > cell.tolerance and cell.status == "pass"


def test_seeds_tagged_with_other_tables_are_one_configuration_averaged_by_the_mean(tmp_path):
    """A seed that also serves another table (its `tables` merged by a second suite) is the same experiment as the
    other seeds: the cell averages all three (mean, not median: 0.30, 0.40, 0.80 give 0.50), not 'ambiguous'."""
    runs = tmp_path / "runs"
    fake_run(runs, "mopoe", 0, {"coherence/joint": 0.30}, tables=("T1", "T2"))
    fake_run(runs, "mopoe", 1, {"coherence/joint": 0.40})
    fake_run(runs, "mopoe", 2, {"coherence/joint": 0.80})
    (cell,) = build_report(runs, _refs(tmp_path, {"cells": [dict(REF_CELL, tolerance=0.01)]})).cells
    assert cell.ambiguous is None and cell.n_runs == 3 and cell.status == "pass"
    assert cell.produced == pytest.approx(0.50) and cell.produced_std == pytest.approx(statistics.stdev([0.3, 0.4, 0.8]))


def test_a_claim_side_is_the_mean_over_its_seeds(tmp_path):
    """A side of a comparison is the mean over the seeds of its configuration (0.9 and 0.1: 0.5), not one run's."""
    runs = tmp_path / "runs"
    for seed, v in enumerate((0.9, 0.1)):
        fake_run(runs, "mopoe", seed, {"latent_acc_by_n/1": v}, tables=("F",))
    side = {"method": "mopoe", "metric": "latent_acc_by_n/1"}
    claim = {"paper": "P", "figure": "F", "quote": "q", "source": "p. 1"}
    (above, below) = build_report(runs, _refs(tmp_path, {"claims": [
        {**claim, "id": "above", "holds": [{"left": side, "op": ">", "right": 0.6}]},
        {**claim, "id": "below", "holds": [{"left": side, "op": "<", "right": 0.6}]}]})).claims
    assert (above.status, below.status) == ("fails", "holds")
    assert above.details == ["mopoe latent_acc_by_n/1 = 0.500 > 0.600: NO"]


def test_a_claim_side_leaves_non_finite_runs_out(tmp_path):
    """An infinite seed is left out of a claim side's mean (as of a cell's), not turned into a failing comparison."""
    for seed, v in enumerate([0.8, float("inf")]):
        fake_run(tmp_path / "runs", "mopoe", seed, {"latent_acc_by_n/1": v}, tables=("F",))
    claim = {"id": "k", "paper": "P", "figure": "F", "quote": "q", "source": "s",
             "holds": [{"left": {"method": "mopoe", "metric": "latent_acc_by_n/1"}, "op": "<", "right": 0.9}]}
    (k,) = build_report(tmp_path / "runs", _refs(tmp_path, {"claims": [claim]})).claims
    assert k.status == "holds" and k.details == ["mopoe latent_acc_by_n/1 = 0.800 < 0.900: yes"]


def test_a_group_sweeping_two_settings_stays_wide(tmp_path):
    """Two settings at three values each (β and latent size) are no one-setting sweep: one wide table, no 'by β'."""
    runs = tmp_path / "runs"
    for beta, dim in ((0.5, 8), (1.0, 16), (2.0, 32)):
        _sweep_run(runs, "mopoe", beta, 0, {"latent_acc_by_n/1": beta / 4}, latent_dim=dim)
    (title, table), = build_report(runs, None)["summaries"]
    assert title == "polydigits (vanilla) — Fig. 3" and len(table.columns) == 4


def test_markdown_carries_paper_lines_table_summaries_claim_quotes_and_figures(tmp_path):
    """The Markdown report lists the paper lines, each reference table's summary, the claims' quotes and the figures."""
    import pandas as pd

    from mmbench.references import Claim

    claim = Claim(id="c", paper="P", figure="F", quote="said so", source="p. 3", holds=[], status="holds")
    md = render_markdown([("S", pd.DataFrame({"metric": ["m"]}))], [("P — T", pd.DataFrame({"model": ["x"]}), "1 of 1")],
                         [claim], ["P: 1 of 1 cells"], [tmp_path / "fig-a.png"])
    lines = md.splitlines()
    assert "- P: 1 of 1 cells" in lines and "*1 of 1*" in lines and "![fig-a](fig-a.png)" in lines
    assert "paper says" in md and "“said so” (p. 3)" in md



def test_markdown_prints_every_table_as_written_under_its_headings():
    """render_markdown: the title given, then each summary (##), the comparison heading with the cell key (only when
    there are reference tables), each reference table (###) and the claims, each a GitHub table (a |---| rule under
    its header) whose number-like cells stay as written ("0.800", "1.0", "3.10"), every column kept, a blank line
    around each heading and table."""
    import re

    import pandas as pd

    from mmbench.references import Claim
    from mmbench.render import CELL_KEY

    claim = Claim(id="c1", paper="P", figure="3.10", quote="q", source="s", holds=[], status="holds")
    summaries = [("S", pd.DataFrame({"metric": ["m"], "value": ["0.800"]}))]
    refs = [("P — T", pd.DataFrame({"row": ["1.0"], "Joint": ["0.350"]}), "1 of 1")]
    lines = render_markdown(summaries, refs, [claim], title="R").splitlines()
    heads = ["# R", "## S", "## Comparison with the papers", CELL_KEY, "### P — T", "*1 of 1*",
             "## Claims about the papers' figures"]
    at = [lines.index(h) for h in heads]
    assert at == sorted(at) and all(lines[i + 1] == "" for i in at) and all(lines[i - 1] == "" for i in at[1:])
    tables = [[line for line in lines[i + 2:] if line.startswith("|")][:3] for i in (at[1], at[4], at[6])]
    cells = [[[c.strip() for c in row.strip("|").split("|")] for row in t] for t in tables]
    assert [c[0] for c in cells] == [["metric", "value"], ["row", "Joint"],
                                     ["claim", "figure", "verdict", "evidence", "paper says"]]
    assert all(re.fullmatch(r"\|(-+\|)+", t[1]) for t in tables), tables
    assert cells[0][2] == ["m", "0.800"] and cells[1][2] == ["1.0", "0.350"] and cells[2][2][:3] == [
        "c1", "3.10", "✓ holds"]
    assert "## Comparison with the papers" in render_markdown([], refs)
    assert "## Comparison with the papers" not in render_markdown(summaries, [], [claim])

def test_html_escapes_the_text_in_its_tables():
    """Text from a reference file (a quote with '<' in it) is escaped in the HTML tables, not read as markup."""
    from mmbench.render import render_html
    from mmbench.references import Claim

    claim = Claim(id="c", paper="P", figure="F", quote="<b>x</b> < y", source="s", holds=[], status="holds")
    page = render_html([], [], [claim])
    assert "&lt;b&gt;x&lt;/b&gt; &lt; y" in page and "<b>x</b>" not in page


def test_latex_and_terminal_carry_the_paper_lines_and_escape_ampersands():
    """LaTeX escapes '&' in titles and cells; LaTeX and terminal layouts show the paper lines and the claims."""
    import pandas as pd
    from rich.console import Console

    from mmbench.render import render_latex, render_terminal
    from mmbench.references import Claim

    summaries = [("MoPoE & MMVAE", pd.DataFrame({"metric": ["a & b"]}))]
    claim = Claim(id="claim-c", paper="P", figure="F", quote="q", source="s", holds=[], status="fails")
    tex = render_latex(summaries, [], [claim], ["P: 1 of 2 cells"])
    assert r"MoPoE \& MMVAE" in tex and r"a \& b \\" in tex and r"P: 1 of 2 cells\\" in tex and "claim-c" in tex
    console = Console(record=True, width=200)
    render_terminal(console, summaries, [], [claim], ["P: 1 of 2 cells"])
    text = console.export_text()
    assert "P: 1 of 2 cells" in text and "claim-c" in text and "✗ fails" in text


def test_latex_escapes_a_reference_cells_bars_and_backslashes_once():
    """A reference cell 'produced | paper | Δ' keeps its separators in LaTeX (each | once \\textbar{}, a backslash once
    \\textbackslash{}): escaping the backslash after the bar would garble every cell into \\textbackslash{}textbar{}."""
    import pandas as pd

    from mmbench.render import render_latex

    grid = pd.DataFrame({"model": ["MoPoE"], "Joint": ["0.350 ± 0.071 | 0.330 | Δ +0.020 ✓"]})
    tex = render_latex([], [("P — T1", grid, r"1 of 1 cells within tolerance, a\b")])
    assert r"MoPoE & 0.350 $\pm$ 0.071 \textbar{} 0.330 \textbar{} $\Delta$ +0.020 \checkmark \\" in tex
    assert r"a\textbackslash{}b" in tex and r"\textbackslash{}textbar" not in tex


def test_a_seed_run_twice_with_other_checkpointing_counts_once(tmp_path):
    """Checkpointing is part of the run id but changes no number: two directories of one configuration and seed are
    one experiment. Counting both would shrink the std and turn 'underpowered' into 'differs'."""
    runs = tmp_path / "runs"
    a = fake_run(runs, "mopoe", 0, {"coherence/joint": 0.50})
    b = fake_run(runs, "mopoe", 0, {"coherence/joint": 0.50}, train={"checkpoint_minutes": 5.0})
    fake_run(runs, "mopoe", 1, {"coherence/joint": 0.52})
    assert a.id != b.id
    cell = dict(REF_CELL, value=0.55, std=0.02, tolerance=0.1, runs=5)
    rep = build_report(runs, _refs(tmp_path, {"cells": [cell]}))
    (c,) = rep.cells
    assert c.n_runs == 2 and c.produced == pytest.approx(0.51) and c.verdict == "underpowered"
    kept, repeated = sorted([a.id, b.id])
    assert c.runs == sorted([kept, next(r for r in c.runs if r != kept)]) and repeated not in c.runs
    assert dict(rep.skipped)[repeated].startswith(f"the same configuration and seed as run {kept}")
    assert any("(2 seeds)" in col for _, t in rep.summaries for col in t.columns)


def test_a_repeat_left_out_lends_its_tables_to_the_run_kept(tmp_path):
    """The same configuration and seed made for two tables (the repeat with other checkpointing): the run kept serves
    both; table T2's cell, served only by the repeat, was missing with no reason on the cell."""
    runs = tmp_path / "runs"
    a = fake_run(runs, "mopoe", 0, {"coherence/joint": 0.50}, tables=("T1",))
    b = fake_run(runs, "mopoe", 0, {"coherence/joint": 0.50}, tables=("T2",), train={"checkpoint_minutes": 5.0})
    cells = [dict(REF_CELL, table=t, value=0.5, tolerance=0.1) for t in ("T1", "T2")]
    rep = build_report(runs, _refs(tmp_path, {"cells": cells}))
    kept = min(a.id, b.id)
    assert [(c.status, c.runs) for c in rep.cells] == [("pass", [kept]), ("pass", [kept])]
    assert len(rep.skipped) == 1


def test_a_diverged_run_is_left_out_of_the_summary_mean_and_said(tmp_path):
    runs = tmp_path / "runs"
    for seed, v in enumerate((0.50, 0.52, float("inf"))):
        fake_run(runs, "mopoe", seed, {"coherence/joint": v})
    (_, table), = build_report(runs, None).summaries
    assert list(table.iloc[:, 1]) == ["0.510 ± 0.014 (1 non-finite left out)"]
    from mmbench.verdicts import tidy_rows

    (row,) = tidy_rows([], build_report(runs, None).frame)
    assert (row["n_runs"], row["produced_mean"]) == (2, pytest.approx(0.51))


def test_a_tie_at_the_extreme_does_not_depend_on_run_order(tmp_path):
    """lowest_at with two β tied at the lowest mean: holds when both are listed, undecided when only one is
    (before: whichever the run directories listed first decided it)."""
    runs = tmp_path / "runs"
    for beta, v in ((1.0, 5.0), (2.0, 6.0), (3.0, 5.0)):
        _beta_run(runs, beta, v)
    side = {"method": "mopoe", "metric": "recon/joint"}
    base = {"paper": "P", "figure": "F", "quote": "q", "source": "p. 1", "for_each": "method.beta"}
    refs = _refs(tmp_path, {"claims": [
        {**base, "id": "both", "holds": [{"left": side, "op": "lowest_at", "right": [1.0, 3.0]}]},
        {**base, "id": "one", "holds": [{"left": side, "op": "lowest_at", "right": [1.0]}]},
        {**base, "id": "none", "holds": [{"left": side, "op": "lowest_at", "right": [2.0]}]}]})
    status = {c.id: c.status for c in build_report(runs, refs).claims}
    assert status == {"both": "holds", "one": "missing", "none": "fails"}


def _beta_run(runs, beta, value, epochs=None):
    train = {"epochs": epochs} if epochs else {}
    run = Run(build_run_config({"dataset": "polydigits", "method": {"name": "mopoe", "beta": beta}, "tables": ["F"],
                                "train": train}), runs)
    run.init()
    run.write_metrics({"recon/joint": value})


def test_the_extreme_along_a_sweep_is_not_read_across_budgets(tmp_path):
    """β = 1 trained 10 epochs among β trained 300: its higher reconstruction error says nothing about β. The claim
    was decided ('fails'); it is undecided and names the setting, and fails --compare as other budgets do."""
    runs = tmp_path / "runs"
    for beta, v, epochs in ((1.0, 9.0, 10), (2.0, 6.0, 300), (3.0, 5.0, 300)):
        _beta_run(runs, beta, v, epochs)
    base = {"paper": "P", "figure": "F", "quote": "q", "source": "p. 1", "for_each": "method.beta"}
    refs = _refs(tmp_path, {"claims": [{**base, "id": "low", "holds": [
        {"left": {"method": "mopoe", "metric": "recon/joint"}, "op": "lowest_at", "right": [1.0]}]}]})
    (c,) = build_report(runs, refs).claims
    assert c.status == "missing" and "other budgets or scoring settings (train.epochs (10, 300))" in c.details[0]
    assert c.ambiguous == c.details[0]


def test_a_claim_does_not_compare_runs_of_other_budgets(tmp_path):
    """MoPoE trained 300 epochs against MVAE trained 15 (a full-tier run against a quick-tier one) says nothing about
    the methods: the comparison is undecided and says which settings differ; at one budget it is decided."""
    runs = tmp_path / "runs"
    fake_run(runs, "mopoe", 0, {"coherence/joint": 0.6}, tables=("F",), train={"epochs": 300})
    fake_run(runs, "mvae", 0, {"coherence/joint": 0.4}, tables=("F",), train={"epochs": 15})
    claim = {"id": "c", "paper": "P", "figure": "F", "quote": "q", "source": "p. 1",
             "holds": [{"left": {"method": "mopoe", "metric": "coherence/joint"}, "op": ">",
                        "right": {"method": "mvae", "metric": "coherence/joint"}}]}
    (c,) = build_report(runs, _refs(tmp_path, {"claims": [claim]})).claims
    assert c.status == "missing", c.details
    assert "other budgets or scoring settings (train.epochs (15, 300))" in c.details[0], c.details
    assert c.ambiguous == c.details[0]  # like an ambiguous cell, it fails --compare even with --allow-missing
    from typer.testing import CliRunner

    from mmbench.cli import app
    out = CliRunner().invoke(app, ["report", "--runs-dir", str(runs), "--compare", str(tmp_path / "refs"),
                                   "--allow-missing"], env={"COLUMNS": "300"})
    assert out.exit_code == 1 and "1 claims cannot compare their runs as they are, e.g. claim c (F)" in \
        " ".join(out.output.split()), out.output
    fake_run(runs, "mvae", 1, {"coherence/joint": 0.4}, tables=("G",), train={"epochs": 300})
    (c,) = build_report(runs, _refs(tmp_path, {"claims": [dict(claim, figure="G")]})).claims
    assert c.status == "missing"  # no MoPoE run serves G
    fake_run(runs, "mopoe", 1, {"coherence/joint": 0.6}, tables=("G",), train={"epochs": 300})
    (c,) = build_report(runs, _refs(tmp_path, {"claims": [dict(claim, figure="G")]})).claims
    assert c.status == "holds", c.details


def test_a_quantified_claim_does_not_compare_runs_of_other_budgets(tmp_path):
    runs = tmp_path / "runs"
    keys = {"latent_ap/img/a": 0.6, "latent_ap/img/b": 0.7}
    fake_run(runs, "mopoe", 0, keys, tables=("F",), train={"epochs": 300})
    fake_run(runs, "mvae", 0, {k: v - 0.2 for k, v in keys.items()}, tables=("F",), train={"epochs": 15})
    claim = {"id": "c", "paper": "P", "figure": "F", "quote": "q", "source": "p. 1",
             "holds": [{"left": {"method": "mopoe", "metric": "latent_ap/img/*"}, "op": ">", "quantifier": "all",
                        "right": {"method": "mvae", "metric": "latent_ap/img/*"}}]}
    (c,) = build_report(runs, _refs(tmp_path, {"claims": [claim]})).claims
    assert c.status == "missing", c.details
    assert "other budgets or scoring settings (train.epochs (15, 300))" in c.details[0], c.details


@pytest.mark.parametrize("left, right", [({"a": 0.6, "b": 0.7}, {"a": 0.4}), ({"a": 0.6}, {"a": 0.4, "b": 0.9})],
                         ids=["left-only key", "right-only key"])
def test_a_quantified_claim_needs_the_same_keys_on_both_sides(tmp_path, left, right):
    """'all attributes' over the one attribute both sides report would count a part as the whole: undecided, whichever
    side reports the other key (counted over a alone, the claim would hold)."""
    runs = tmp_path / "runs"
    fake_run(runs, "mopoe", 0, {f"latent_ap/img/{k}": v for k, v in left.items()}, tables=("F",))
    fake_run(runs, "mvae", 0, {f"latent_ap/img/{k}": v for k, v in right.items()}, tables=("F",))
    claim = {"id": "c", "paper": "P", "figure": "F", "quote": "q", "source": "p. 1",
             "holds": [{"left": {"method": "mopoe", "metric": "latent_ap/img/*"}, "op": ">", "quantifier": "all",
                        "right": {"method": "mvae", "metric": "latent_ap/img/*"}}]}
    (c,) = build_report(runs, _refs(tmp_path, {"claims": [claim]})).claims
    assert c.status == "missing" and "1 key(s) under latent_ap/img/* reported by one side only" in c.details[0]


def test_a_where_number_does_not_match_a_flag(tmp_path):
    assert not matches({"x": True}, {"x": 1}) and matches({"x": 1}, {"x": 1.0}) and matches({"x": True}, {"x": True})


def test_a_negative_margin_demands_a_gap():
    from mmbench.report import _holds

    assert _holds({"op": ">", "margin": -0.1}, 0.75, 0.6) and not _holds({"op": ">", "margin": -0.1}, 0.65, 0.6)
    assert _holds({"op": "<", "margin": -0.1}, 0.45, 0.6) and not _holds({"op": "<", "margin": -0.1}, 0.55, 0.6)


def test_a_where_number_matches_only_its_value_up_to_float_error():
    """`where: {method.beta: 1.0}` matches β = 1.0 (and its float noise), never a nearby β such as 1.005."""
    assert matches({"method.beta": 1.0 + 1e-12}, {"method.beta": 1.0})
    assert not matches({"method.beta": 1.005}, {"method.beta": 1.0})
    assert not matches({"method.beta": 2.49}, {"method.beta": 2.5})


@pytest.mark.parametrize("section, key, other", [
    ("train", "max_train", 100), ("train", "max_test", 100), ("eval", "test_samples", 64),
    ("eval", "lr_train_samples", 128), ("eval", "joint_samples", 32), ("eval", "ll_samples", 2),
    ("eval", "fid_samples", 500), ("eval", "classifier_epochs", 1),
    # scored otherwise (the authors' classifiers, their dropout, bf16 decoders): these were compared silently
    ("eval", "classifiers", "authors"), ("eval", "classifier_dropout", "as_authors"), ("eval", "precision", "bf16")])
def test_every_budget_setting_keeps_two_sides_apart(tmp_path, section, key, other):
    """Sides differing only in one budget setting of a quick tier (test subset, samples, classifier epochs) are not
    compared where the compared key reads it: the comparison is undecided and names that setting. A key that does not
    read it (budgets.reads) is compared."""
    from mmbench.budgets import reads

    reader = {"lr_train_samples": "latent_acc/m0", "ll_samples": "loglik/joint", "fid_samples": "fid/prior->m0"}
    keys = [reader.get(key, "coherence/joint"), "recon/joint"]
    select = {"train": {"select": "best_test_loss"}} if key == "max_test" else {}  # it reads max_test only then
    runs = tmp_path / "runs"
    fake_run(runs, "mopoe", 0, dict.fromkeys(keys, 0.6), tables=("F",), **select)
    fake_run(runs, "mvae", 0, dict.fromkeys(keys, 0.4), tables=("F",),
             **{section: {key: other, **select.get(section, {})}}, **{k: v for k, v in select.items() if k != section})
    for metric in keys:
        claim = {"id": "c", "paper": "P", "figure": "F", "quote": "q", "source": "p. 1",
                 "holds": [{"left": {"method": "mopoe", "metric": metric}, "op": ">",
                            "right": {"method": "mvae", "metric": metric}}]}
        (c,) = build_report(runs, _refs(tmp_path, {"claims": [claim]})).claims
        if reads(f"{section}.{key}", metric, {"train.select": "best_test_loss"}):
            assert c.status == "missing" and f"other budgets or scoring settings ({section}.{key} (" in c.details[0], \
                c.details
        else:
            assert c.status == "holds", (metric, c.details)


def test_a_claim_over_several_configurations_fails_compare_even_with_allow_missing(tmp_path):
    """A right side matched by runs of two configurations leaves the claim undecided and marked ambiguous: --compare
    fails even with --allow-missing, as for other budgets."""
    runs = tmp_path / "runs"
    fake_run(runs, "mopoe", 0, {"coherence/joint": 0.6}, tables=("F",))
    fake_run(runs, "mvae", 0, {"coherence/joint": 0.4}, tables=("F",))
    fake_run(runs, "mvae", 0, {"coherence/joint": 0.1}, tables=("F",), train={"lr": 5e-4})
    claim = {"id": "c", "paper": "P", "figure": "F", "quote": "q", "source": "p. 1",
             "holds": [{"left": {"method": "mopoe", "metric": "coherence/joint"}, "op": ">",
                        "right": {"method": "mvae", "metric": "coherence/joint"}}]}
    refs = _refs(tmp_path, {"claims": [claim]})
    rep = build_report(runs, refs)
    assert rep.claims[0].ambiguous == rep.claims[0].details[0] and rep.ambiguous_claims == rep.claims
    res = CliRunner().invoke(app, ["report", "--runs-dir", str(runs), "--compare", str(refs), "--allow-missing"])
    assert res.exit_code == 1, res.output


def test_an_uncomparable_hedged_claim_or_a_failing_one_is_not_counted_as_ambiguous(tmp_path):
    """Ambiguity decides --compare only for a strict claim left undecided: a hedged one is evidence only, and a claim
    that fails elsewhere is a failure, not an ambiguity."""
    runs = tmp_path / "runs"
    fake_run(runs, "mopoe", 0, {"coherence/joint": 0.6}, tables=("F",), train={"epochs": 300})
    fake_run(runs, "mvae", 0, {"coherence/joint": 0.4}, tables=("F",), train={"epochs": 15})
    gap = {"left": {"method": "mopoe", "metric": "coherence/joint"}, "op": ">",
           "right": {"method": "mvae", "metric": "coherence/joint"}}
    base = {"paper": "P", "figure": "F", "quote": "q", "source": "p. 1"}
    refs = _refs(tmp_path, {"claims": [
        {**base, "id": "hedged", "strength": "hedged", "holds": [gap]},
        {**base, "id": "fails", "holds": [gap, {"left": {"method": "mopoe", "metric": "coherence/joint"}, "op": ">",
                                                "right": 0.9}]}]})
    rep = build_report(runs, refs)
    hedged, fails = rep.claims
    assert hedged.status == "missing" and hedged.ambiguous and rep.ambiguous_claims == []
    assert fails.status == "fails" and fails.ambiguous is None
    res = CliRunner().invoke(app, ["report", "--runs-dir", str(runs), "--compare", str(refs), "--allow-missing"])
    assert res.exit_code == 1 and "cannot compare their runs" not in res.output, res.output  # 1: the failing claim


def test_a_claims_own_filter_is_named_when_it_leaves_a_sides_runs_out(tmp_path):
    """The claim's `where` (not only a side's) is named when it keeps every run of a side out."""
    runs = tmp_path / "runs"
    for method in ("mopoe", "mvae"):
        _sweep_run(runs, method, 1.0, 0, {"coherence/joint": 0.5}, tables=("F",))
    claim = {"id": "c", "paper": "P", "figure": "F", "quote": "q", "source": "p. 1", "where": {"method.beta": 2.0},
             "holds": [{"left": {"method": "mopoe", "metric": "coherence/joint"}, "op": ">", "right": 0.1}]}
    (c,) = build_report(runs, _refs(tmp_path, {"claims": [claim]})).claims
    assert c.status == "missing" and c.excluded == "mopoe coherence/joint: method.beta is 1.0, the paper's is 2.0 (1 run)"


def test_a_table_pooling_a_default_and_another_data_build_names_both(tmp_path):
    """Seeds on the default data and on a rebuilt one in one table: the title names both builds, the default one as
    such (not an empty name)."""
    import json

    runs = tmp_path / "runs"
    fake_run(runs, "mopoe", 0, {"coherence/joint": 0.5})
    r = fake_run(runs, "mopoe", 1, {"coherence/joint": 0.5})
    prov = {**r.provenance(), "dataset_build": {"seed": 0, "options": {"multiplicity": 12}}}
    (r.dir / "provenance.json").write_text(json.dumps(prov))
    (title, _), = build_report(runs, None).summaries
    assert title.endswith("[data built with the defaults | multiplicity=12]"), title


def test_a_sweep_table_says_a_diverged_run_was_left_out(tmp_path):
    """In the long form of a β sweep too, a NaN/inf seed is left out of the mean and said in its cell."""
    runs = tmp_path / "runs"
    for beta in (0.5, 1.0, 2.0):
        _sweep_run(runs, "mopoe", beta, 0, {"latent_acc_by_n/1": 0.5})
    _sweep_run(runs, "mopoe", 1.0, 1, {"latent_acc_by_n/1": float("nan")})
    cells = [c for _, t in build_report(runs, None).summaries for c in t.iloc[:, 1]]
    assert "0.500 (1 non-finite left out)" in cells, cells


def test_a_cell_whose_only_runs_diverged_or_are_filtered_out_says_why_it_is_missing(tmp_path):
    """A missing cell says its runs were all non-finite, or which filter setting kept them out (grid and tidy rows)."""
    from mmbench.verdicts import tidy_rows

    runs = tmp_path / "runs"
    fake_run(runs, "mopoe", 0, {"coherence/joint": float("nan")})
    fake_run(runs, "mvae", 0, {"coherence/joint": 0.5})
    rep = build_report(runs, _refs(tmp_path, {"cells": [REF_CELL, {**REF_CELL, "row": "MVAE", "method": "mvae",
                                                                   "where": {"train.epochs": 1}}]}))
    grid = rep.refs[0][1]
    assert grid.iloc[0, 1].startswith("missing (1 run(s) with a non-finite value) | ")
    assert "runs left out by the cell's filter: train.epochs is" in grid.iloc[1, 1]
    rows = tidy_rows(rep.cells, None)
    assert rows[0]["excluded_by_filter"] is None and rows[1]["excluded_by_filter"] == rep.cells[1].excluded is not None


def test_a_cell_whose_runs_write_no_such_key_says_so(tmp_path):
    """Runs of the cell's table and method that pass its filter but lack its key (CelebA's batch-mean APs below 256
    test tuples) leave the cell missing with that reason, in the grid and the tidy rows; a run of another table or
    one the filter keeps out is not counted."""
    from mmbench.verdicts import tidy_rows

    runs = tmp_path / "runs"
    fake_run(runs, "mopoe", 0, {"coherence/joint": 0.5, "latent_ap/img": 0.3}, train={"epochs": 1})
    fake_run(runs, "mopoe", 1, {"coherence/joint": 0.5, "latent_ap/img": 0.3}, train={"epochs": 1})
    fake_run(runs, "mopoe", 2, {"latent_ap_batchmean/img": 0.3}, tables=("T2",), train={"epochs": 1})
    fake_run(runs, "mopoe", 3, {"coherence/joint": 0.5, "latent_ap_batchmean/img": 0.3}, train={"epochs": 2})
    cell = {**REF_CELL, "column": "AP", "metric": "latent_ap_batchmean/img", "where": {"train.epochs": 1}}
    rep = build_report(runs, _refs(tmp_path, {"cells": [cell, REF_CELL]}))
    grid = rep.refs[0][1]
    # both reasons: a run with the key at other settings, and runs at the cell's settings without it
    assert "(runs left out by the cell's filter: train.epochs is 2, the paper's is 1 (1 run))" in grid.iloc[0, 1]
    assert ("(2 runs of T1 with mopoe write no latent_ap_batchmean/img (docs/metrics.md says when a key is written; "
            "a run scored before the key existed gets it from `mmbench evaluate` with the run's settings)) | ") in grid.iloc[0, 1]
    assert rep.cells[1].absent is None and rep.cells[1].produced is None  # 2 configurations (epochs): ambiguous
    rows = tidy_rows(rep.cells, None)
    assert rows[0]["absent_from_runs"] == rep.cells[0].absent and rows[1]["absent_from_runs"] is None


def _one_cell(**change):
    cell = {"paper": "P", "table": "T1", "row": "r", "column": "c", "method": "mopoe", "metric": "coherence/joint",
            "value": 0.5, "tolerance": 0.02, "source": "P, Table 1"}
    return {**cell, **change}


def test_a_damaged_reference_file_is_a_one_line_error_naming_it(tmp_path):
    """A byte that is not UTF-8, an integer too large for a float and an op that is a mapping raised a
    UnicodeDecodeError, an OverflowError and a TypeError (a traceback) instead of naming the file and entry."""
    path = tmp_path / "p.yaml"
    text = yaml.safe_dump({"cells": [_one_cell()]})
    path.write_bytes(text.encode().replace(b"P, Table 1", b"P, Table \xff1"))
    with pytest.raises(ConfigError, match=r"p.yaml: not valid YAML at line \d+: .*remove it"):
        load_references(tmp_path)
    path.write_text(text.replace("tolerance: 0.02", "tolerance: 1" + "0" * 400))
    with pytest.raises(ConfigError, match=r"p.yaml: cells\[0\].tolerance: must be a number >= 0, got 1000"):
        load_references(tmp_path)
    side = {"method": "mopoe", "metric": "coherence/joint"}
    path.write_text(yaml.safe_dump({"claims": [{"id": "a", "paper": "P", "figure": "F", "quote": "q", "source": "s",
                                                "holds": [{"left": side, "op": {"a": 1}, "right": 0.5}]}]}))
    with pytest.raises(ConfigError, match=r"p.yaml: claims\[0\].holds\[0\].op: must be one of"):
        load_references(tmp_path)


def test_reference_labels_are_strings_and_a_cell_or_claim_id_is_given_once(tmp_path):
    """A row that is a mapping crashed the report's table (unhashable); a cell given twice at one row and column was
    counted twice and shown once; a claim id given twice made two claims of one name."""
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"cells": [_one_cell(row={"a": 1})]}))
    with pytest.raises(ConfigError, match=r"p.yaml: cells\[0\].row: must be a non-empty string"):
        load_references(tmp_path)
    for field, value in (("row", "  "), ("source", 3)):  # blank: a row of no name; source: printed as a label
        path.write_text(yaml.safe_dump({"cells": [_one_cell(**{field: value})]}))
        with pytest.raises(ConfigError, match=rf"p.yaml: cells\[0\].{field}: must be a non-empty string"):
            load_references(tmp_path)
    path.write_text(yaml.safe_dump({"cells": [_one_cell(), _one_cell(value=0.7)]}))
    with pytest.raises(ConfigError, match=r"p.yaml: cells\[1\]: the same paper, table, row and column as .*cells\[0\]"):
        load_references(tmp_path)
    side = {"method": "mopoe", "metric": "coherence/joint"}
    claim = {"id": "a", "paper": "P", "figure": "F", "quote": "q", "source": "s",
             "holds": [{"left": side, "op": ">", "right": 0.5}]}
    path.write_text(yaml.safe_dump({"claims": [claim, claim]}))
    with pytest.raises(ConfigError, match=r"p.yaml: claims\[1\].id: 'a' is also the id of .*claims\[0\]"):
        load_references(tmp_path)


def _md_columns(md):
    """The column count of every Markdown table row (a `|` escaped as `\\|` is inside a cell)."""
    import re

    return [len(re.split(r"(?<!\\)\|", line.strip()[1:-1])) for line in md.splitlines() if line.startswith("|")]


def test_markdown_cells_with_a_pipe_stay_in_their_column(tmp_path):
    """The reference cells read 'produced | paper | Δ': unescaped, GitHub splits the cell and drops the columns past
    the header's (the paper value and the verdict), and a table named 'p|q' shifts every cell of its row."""
    runs = tmp_path / "runs"
    fake_run(runs, "mopoe", 0, {"coherence/joint": 0.50}, tables=("T1", "p|q"))
    rep = build_report(runs, _refs(tmp_path, {"cells": [REF_CELL, {**REF_CELL, "row": "a|b", "method": "mvae"}]}))
    md = render_markdown(rep.summaries, rep.refs, title="x")
    assert len(set(_md_columns(md))) == 1, md
    assert "0.500 \\| 0.500 ± 0.020 \\| Δ +0.000 ✓" in md and "| a\\|b " in md


def test_latex_escapes_every_special_character(tmp_path):
    """A table named with TeX's specials must come out as text: balanced braces, one `&` per column break."""
    from mmbench.render import render_latex

    runs = tmp_path / "runs"
    name = "50% & #1 $x$ {a} a~b^c\\d_e"
    fake_run(runs, "mopoe", 0, {"coherence/joint": 0.50}, tables=(name,))
    fake_run(runs, "mvae", 0, {"coherence/joint": 0.70}, tables=(name,))
    tex = render_latex(build_report(runs, None).summaries, [])
    escaped = r"50\% \& \#1 \$x\$ \{a\} a\textasciitilde{}b\textasciicircum{}c\textbackslash{}d\_e"
    assert escaped in tex, tex
    row = next(line for line in tex.splitlines() if "0.500" in line)
    assert row.count("&") == 2


def test_terminal_tables_print_brackets_as_text(tmp_path):
    """rich reads `[...]` as markup: a table named '[bold]T[/bold]' lost its brackets (and '[/b]' alone raises)."""
    from rich.console import Console

    from mmbench.render import render_terminal

    runs = tmp_path / "runs"
    fake_run(runs, "mopoe", 0, {"coherence/joint": 0.50}, tables=("[bold]T[/bold] [/b]",))
    console = Console(record=True, width=200)
    render_terminal(console, build_report(runs, None).summaries, [])
    assert "[bold]T[/bold] [/b]" in console.export_text()


def test_terminal_captions_and_paper_lines_print_brackets_as_text():
    """A reference table's summary (its caption) and the paper lines carry names from the reference files, as a
    paper '[Sutter 2021]': printed as text, not read as markup ('[/b]' alone raised)."""
    import pandas as pd
    from rich.console import Console

    from mmbench.render import render_terminal

    console = Console(record=True, width=200)
    render_terminal(console, [], [("T", pd.DataFrame({"a": ["x"]}), "[Sutter 2021] 1 of 1 [/b]")], None,
                    ["[bold]P[/bold]: 1 of 2 cells [/b]"])
    text = "".join(console.export_text().split())  # the caption is wrapped to the table's width
    assert "[Sutter2021]1of1[/b]" in text and "[bold]P[/bold]:1of2cells[/b]" in text


def test_a_table_wider_than_the_terminal_is_printed_in_parts_of_whole_cells():
    """A reference table of 10 columns in a narrow terminal: consecutive tables of the columns that fit, each with
    the row labels, every cell on one line (rich folded each over five lines); the summary under the last part only.
    One table, as before, where it fits."""
    import pandas as pd
    from rich.console import Console

    from mmbench.render import render_terminal

    cols = {f"col {i}": [f"missing | 0.{i}00 ± 0.010", f"0.{i}11 | 0.{i}00 ± 0.010 ✓"] for i in range(10)}
    df = pd.DataFrame({"model": ["MVAE", "MoPoE"], **cols})
    for width, parts in ((86, 5), (87, 4), (400, 1)):  # 87 = 1 + (5 + 3) + 3 × (23 + 3): three value columns
        console = Console(record=True, width=width)
        render_terminal(console, [], [("Table 3", df, "0 of 20 cells within tolerance")])
        text = console.export_text()
        assert max(len(line) for line in text.splitlines()) <= width
        for header, values in cols.items():
            line = next(line for line in text.splitlines() if values[1] in line)
            assert "MoPoE" in line and values[0] in text and header in text, text
        assert text.count("MVAE") == parts and text.count("0 of 20 cells") == 1, text
        assert (f"(part {parts} of {parts})" in text) == (parts > 1) and f"(part {parts + 1}" not in text, text
        assert text.rindex("0 of 20 cells") > text.rindex("MoPoE"), text
    # the claims' prose wraps in one table: its evidence stays beside its verdict
    from mmbench.references import Claim

    claim = Claim(id="claim-c", paper="P", figure="Fig. 3", quote="q", source="s", holds=[], status="fails",
                  details=["mopoe coherence/joint 0.31 over 5 seeds is not above mmvae's 0.40 over 5 seeds " * 2])
    console = Console(record=True, width=80)
    render_terminal(console, [], [], [claim])
    text = console.export_text()
    assert "(part" not in text and "claim-c" in text and "✗ fails" in text, text


def test_markdown_headers_with_a_pipe_stay_in_their_column():
    """A column header with a `|` (a method label, a sweep setting's value) splits the header row like a cell."""
    import pandas as pd

    from mmbench.render import md_table

    md = md_table(pd.DataFrame({"a|b": ["x"], "c": ["y"]}))
    assert len(set(_md_columns(md))) == 1 and "a\\|b" in md, md


def test_sweep_values_that_print_alike_are_told_apart(tmp_path):
    """β = 0.1 + 0.2 and β = 0.3 are two configurations: `:g` printed both rows (or columns) as 0.3."""
    runs = tmp_path / "runs"
    for beta, v in ((0.1 + 0.2, 0.1), (0.3, 0.9), (1.0, 0.5)):
        _sweep_run(runs, "mopoe", beta, 0, {"latent_acc_by_n/1": v})
    (_, acc), = build_report(runs, None).summaries
    assert list(acc["β"]) == ["0.3", "0.30000000000000004", "1"]
    assert list(acc["mopoe (1 seed)"]) == ["0.900", "0.100", "0.500"]
    # the wide table's column labels (tables.series_names; fewer than SWEEP_MIN values)
    runs2 = tmp_path / "runs2"
    for beta in (0.1 + 0.2, 0.3):
        _sweep_run(runs2, "mopoe", beta, 0, {"latent_acc_by_n/1": beta})
    (_, wide), = build_report(runs2, None).summaries
    assert list(wide.columns) == ["metric", "mopoe β=0.3 (1 seed)", "mopoe β=0.30000000000000004 (1 seed)"]
    # one value shared by two configurations (told apart by another setting) prints as `:g` does, not in full
    runs3 = tmp_path / "runs3"
    for beta, latent in ((1.0, 8), (1.0, 16), (0.5, 8)):
        _sweep_run(runs3, "mopoe", beta, 0, {"latent_acc_by_n/1": beta}, latent_dim=latent)
    (_, wide), = build_report(runs3, None).summaries
    assert list(wide.columns) == ["metric", "mopoe β=0.5, latent=8 (1 seed)", "mopoe β=1, latent=16 (1 seed)",
                                  "mopoe β=1, latent=8 (1 seed)"]


def test_a_quantified_claim_checks_the_budget_of_every_key_under_its_prefix(tmp_path):
    """`coherence/*` over the rats: only coherence/joint reads eval.joint_samples, and the gap of the first key in
    sorted order (barat->buchanan, which does not read it) was taken for every key, so joint coherences made from 1000
    and 32 prior samples were compared and the claim held."""
    runs = tmp_path / "runs"
    rats = {"dataset": "rats", "variant": "deposit", "tables": ("F",)}
    fake_run(runs, "mmvamp", 0, {"coherence/barat->buchanan": 0.6, "coherence/joint": 0.9}, **rats)
    fake_run(runs, "independent", 0, {"coherence/barat->buchanan": 0.4, "coherence/joint": 0.5}, **rats,
             eval={"joint_samples": 32})
    claim = {"id": "c", "paper": "P", "figure": "F", "quote": "q", "source": "p. 1",
             "holds": [{"left": {"method": "mmvamp", "metric": "coherence/*"}, "op": ">", "quantifier": "all",
                        "right": {"method": "independent", "metric": "coherence/*"}}]}
    (c,) = build_report(runs, _refs(tmp_path, {"claims": [claim]})).claims
    assert c.status == "missing" and "scoring settings (eval.joint_samples (1000, 32))" in c.details[0], c.details


def test_a_copy_built_before_defaults_left_the_identity_counts_as_the_default_build(tmp_path):
    """A dataset copy built before `mmbench prepare` left options at their default out of a build's identity names them
    in its manifest (`multiplicity=1`): its runs' data are the default build, not a second one beside it."""
    import json

    from mmbench.results import data_build

    from mmbench.registry import DATASETS

    poly, rats = DATASETS.get("polymnist"), DATASETS.get("rats")
    assert data_build({"dataset_build": {"options": {"multiplicity": 1, "mnist_source": "train-test"}}}, poly) == ""
    assert data_build({"dataset_build": {"options": {"multiplicity": 12}}}, poly) == "multiplicity=12"
    # a simulated rat copy built when the trial tables' folder was a build option: where files were is no build
    assert data_build({"dataset_build": {"options": {"trial_info": "/home/me/tables", "trials": "all"}}}, rats) == ""
    runs = tmp_path / "runs"
    fake_run(runs, "mopoe", 0, {"coherence/joint": 0.5}, dataset="polymnist")
    r = fake_run(runs, "mopoe", 1, {"coherence/joint": 0.5}, dataset="polymnist")
    old = {"multiplicity": 1, "mnist_source": "train-test"}  # both at their default
    prov = {**r.provenance(), "dataset_build": {"seed": 0, "options": old}}
    (r.dir / "provenance.json").write_text(json.dumps(prov))
    (title, _), = build_report(runs, None).summaries
    assert "data built with" not in title, title
