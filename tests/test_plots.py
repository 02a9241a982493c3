"""The reviewer's figures: produced vs printed per paper, and training curves from the runs' histories."""
import json
import os
import math
import statistics
from pathlib import Path

import pytest
import yaml

from mmbench.config import build_run_config
from mmbench.errors import MMBenchError
from mmbench import plots
from mmbench.plots import epoch_axis, reproduction, reproduction_points, run_history, training_curves
from mmbench.report import build_report
from mmbench.results import Run


def _run(runs, method, seed, metrics, history=None, beta=None):
    m = {"name": method, **({"beta": beta} if beta is not None else {})}
    cfg = build_run_config({"dataset": "polydigits", "method": m, "seed": seed, "tables": ["T1"]})
    run = Run(cfg, runs)
    run.init()
    run.write_metrics(metrics)
    if history is not None:
        (run.dir / "history.json").write_text(json.dumps(history))
    return run


def _refs(tmp_path):
    refs = tmp_path / "refs"
    refs.mkdir()
    base = {"paper": "P, 2021", "table": "T1", "column": "c"}
    (refs / "p.yaml").write_text(yaml.safe_dump({"cells": [
        {**base, "row": "ok", "method": "mopoe", "metric": "coherence/joint", "value": 0.33, "tolerance": 0.05},
        {**base, "row": "far", "method": "mopoe", "metric": "latent_acc_by_n/1", "value": 0.5, "tolerance": 0.1},
        {**base, "row": "fid", "method": "mopoe", "metric": "fid/m0", "value": 90.0, "tolerance": 20.0},
        {**base, "row": "none", "method": "mvae", "metric": "coherence/joint", "value": 0.2, "tolerance": 0.05},
        {**base, "paper": "Q", "row": "q", "method": "mopoe", "metric": "coherence/joint", "value": 0.1,
         "tolerance": 0.01},
    ]}))
    return refs


def test_reproduction_points_come_from_the_cells(tmp_path):
    runs = tmp_path / "runs"
    _run(runs, "mopoe", 0, {"coherence/joint": 0.30, "latent_acc_by_n/1": 0.9, "fid/m0": 100.0})
    rep = build_report(runs, _refs(tmp_path))
    pts = reproduction_points(rep.cells)
    assert list(pts) == ["P, 2021", "Q"]  # one figure per paper
    p = pts["P, 2021"].set_index("row")
    assert list(p.index) == ["ok", "far", "fid"]  # the missing cell has no point
    assert list(p["printed"]) == [0.33, 0.5, 90.0] and list(p["produced"]) == [0.30, 0.9, 100.0]
    assert list(p["passed"]) == [True, False, True]
    assert list(p["tolerance"]) == [0.05, 0.1, 20.0]
    assert p.loc["ok", "panel"] == p.loc["far", "panel"] != p.loc["fid", "panel"]  # FID on its own scale
    assert list(pts["Q"]["passed"]) == [False]
    names = sorted(f.name for f in reproduction(rep.cells, tmp_path / "figs"))  # all_figures: test_html_browser.py
    # named by the paper's opening characters, not its first author alone ("P, 2021" and "P, 2022" would collide)
    assert names == ["P_2021-reproduction.png", "P_2021-reproduction.svg", "Q-reproduction.png", "Q-reproduction.svg"]
    assert (tmp_path / "figs" / "P_2021-reproduction.png").stat().st_size > 1000


def test_training_curves_read_each_runs_history(tmp_path):
    runs = tmp_path / "runs"
    a = _run(runs, "mopoe", 0, {"coherence/joint": 0.3},
             [{"epoch": 1, "train_loss": 5.0, "test_loss": 5.5}, {"epoch": 2, "train_loss": 4.0, "test_loss": 4.8}])
    b = _run(runs, "mopoe", 1, {"coherence/joint": 0.3})  # no history: no curve, no error
    assert run_history(a.dir)[1]["test_loss"] == 4.8 and run_history(b.dir) is None
    rep = build_report(runs, None)
    written = training_curves(rep.frame, runs, tmp_path / "figs")
    assert sorted(p.name for p in written) == ["polydigits-vanilla-T1-training.png", "polydigits-vanilla-T1-training.svg"]
    (tmp_path / "none").mkdir()  # no runs: no figure
    assert training_curves(build_report(tmp_path / "none", None).frame, tmp_path / "none", tmp_path / "f2") == []


def test_a_run_whose_history_cannot_be_read_leaves_its_curve_out_with_a_note(tmp_path):
    from typer.testing import CliRunner

    from mmbench.cli import app

    runs = tmp_path / "runs"
    good = _run(runs, "mopoe", 0, {"coherence/joint": 0.3}, [{"epoch": 1, "train_loss": 5.0, "test_loss": 5.5}])
    bad = _run(runs, "mopoe", 1, {"coherence/joint": 0.3})
    (bad.dir / "history.json").write_text('[{"epoch": 1, "train_lo')
    with pytest.raises(MMBenchError, match="history.json is not valid JSON"):
        run_history(bad.dir)
    notes = []
    written = training_curves(build_report(runs, None).frame, runs, tmp_path / "figs", notes)
    assert [p.suffix for p in written] == [".png", ".svg"]  # the other run's curve is drawn
    assert len(notes) == 1 and notes[0].startswith(f"training curve of {bad.id} left out: ")
    (bad.dir / "history.json").unlink()
    (bad.dir / "history.json").mkdir()  # a folder: left out with its note too, not a stop of the whole report
    with pytest.raises(MMBenchError, match="history.json cannot be read"):
        run_history(bad.dir)
    notes = []
    assert training_curves(build_report(runs, None).frame, runs, tmp_path / "figs", notes)
    assert len(notes) == 1 and "cannot be read" in notes[0]
    (bad.dir / "history.json").rmdir()
    (bad.dir / "history.json").write_text('{"epoch": 1}')  # valid JSON, but no list of epochs
    res = CliRunner().invoke(app, ["report", "--runs-dir", str(runs), "--plots", str(tmp_path / "p2")])
    assert res.exit_code == 0, res.output
    said = " ".join(res.output.split())
    assert f"training curve of {bad.id} left out:" in said and "holds no list of per-epoch records" in said
    assert good.id not in said
    for damaged in ('[{"epoch": 1, "train_loss": "5.0", "test_loss": 5.5}]', '[{"epoch": 1, "test_loss": null}]'):
        (bad.dir / "history.json").write_text(damaged)  # a number as text, a null: not drawn as anything
        with pytest.raises(MMBenchError, match="epoch record 1 has (train_loss = '5.0'|test_loss = None), not a number"):
            run_history(bad.dir)


@pytest.mark.parametrize("methods,seeds", [(3, 5), (12, 2), (2, 8)])
def test_training_curves_draw_every_run_as_its_own_line(methods, seeds):
    keys = [(f"method{m}", s) for m in range(methods) for s in range(seeds)]
    styles = plots.curve_styles(keys)
    looks = [(tuple(st["color"]), str(st["linestyle"]), st["marker"]) for st in styles]
    assert len(set(looks)) == len(keys)  # Fig. 3's 15 runs: a single 10-colour cycle drew 5 pairs alike
    for m in range(methods):  # one colour per method
        assert len({looks[i][0] for i, (k, _) in enumerate(keys) if k == f"method{m}"}) == 1
    assert len({look[0] for look in looks}) == methods


@pytest.mark.parametrize("epochs", [[1], [1, 2], list(range(1, 301))])
def test_training_curves_tick_whole_epochs(epochs):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot(epochs, [1.0] * len(epochs), marker="o")
    epoch_axis(ax)
    fig.canvas.draw()
    lo, hi = ax.get_xlim()
    ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
    plt.close(fig)
    assert ticks and all(float(t).is_integer() for t in ticks)  # a 1-epoch run was ticked 0.945 ... 1.050
    assert 1 <= len(ticks) <= 11


def test_training_writes_history_json_and_tensorboard_is_optional(tmp_path, data_root, monkeypatch):
    import builtins

    from mmbench.train import train

    d = {"dataset": "polydigits", "method": {"name": "mopoe", "latent_dim": 4},
         "train": {"epochs": 2, "batch_size": 32, "max_train": 64, "max_test": 64}}
    cfg = build_run_config(d)
    assert cfg.run_id() == build_run_config({**d, "train": {**d["train"], "tensorboard": False}}).run_id()
    run = Run(cfg, tmp_path / "runs")
    summary = train(run, data_root)
    assert run_history(run.dir) == summary["history"] and [h["epoch"] for h in summary["history"]] == [1, 2]

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard") or name == "tensorboard":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    tb = Run(build_run_config({**d, "train": {**d["train"], "tensorboard": True}}), tmp_path / "runs")
    assert tb.id != run.id
    with pytest.raises(MMBenchError, match=r"train.tensorboard: true needs the tensorboard package"):
        train(tb, data_root)


def test_tensorboard_events_get_every_epochs_losses(tmp_path, data_root, monkeypatch):
    """train.tensorboard: true hands each epoch's record to a SummaryWriter in <run>/tensorboard (a stand-in
    module here, since the tensorboard package is an optional extra)."""
    import sys
    import types

    from mmbench.train import train

    calls = []

    class Writer:
        def __init__(self, log_dir):
            calls.append(("dir", log_dir))

        def add_scalar(self, tag, value, step):
            calls.append((tag, step))

        def flush(self):
            pass

        def close(self):
            calls.append(("close",))

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=Writer))
    run = Run(build_run_config({"dataset": "polydigits", "method": {"name": "mopoe", "latent_dim": 4},
                                "train": {"epochs": 2, "batch_size": 32, "max_train": 64, "max_test": 64,
                                          "tensorboard": True}}), tmp_path / "runs")
    train(run, data_root)
    assert calls[0] == ("dir", str(run.dir / "tensorboard")) and calls[-1] == ("close",)
    assert {c for c in calls if c[0] in ("train_loss", "test_loss")} == {
        ("train_loss", 1), ("train_loss", 2), ("test_loss", 1), ("test_loss", 2)}


@pytest.mark.parametrize("figure", ["beta_sweep", "by_inputs"])
def test_lines_that_coincide_stay_visible(tmp_path, monkeypatch, figure):
    """Two methods with the same numbers (MM-VAMP at α = 1 is the independent VAEs): each line keeps its own
    marker shape, the one drawn first the larger, so neither hides the other."""
    runs = tmp_path / "runs"
    for method in ("mopoe", "mvae"):
        for beta in ((0.5, 2.0) if figure == "beta_sweep" else (1.0,)):
            _run(runs, method, 0, {"recon/joint": 10 * beta, "coherence_by_n/1": 0.5, "latent_acc_by_n/1": 0.6,
                                   "latent_acc_by_n/2": 0.7, "coherence_by_n/2": 0.4}, beta=beta)
    drawn = []
    monkeypatch.setattr(plots, "_finish_group", lambda fig, axes, *a, **k: drawn.append(axes[0][0]) or [])
    getattr(plots, figure)(build_report(runs, None).frame, tmp_path / "figs")
    (ax,) = drawn
    style = {c.get_label(): (c.lines[0].get_marker(), c.lines[0].get_markersize()) for c in ax.containers}
    assert set(style) == {"mopoe", "mvae"}
    shapes, sizes = zip(*(style[k] for k in sorted(style)))
    assert len(set(shapes)) == len(shapes) and list(sizes) == sorted(sizes, reverse=True) and len(set(sizes)) == len(sizes)


def test_a_beta_sweep_is_drawn_as_a_sweep_not_one_line_per_beta_over_inputs(tmp_path):
    """The papers draw their β sweeps (MoPoE Figs. 1, 5-6; MM-VAMP Figs. 3-5) against a trade-off measure; the
    by-inputs figure (MoPoE Fig. 3) is for one β per method, so a swept group gets the sweep figure only."""
    runs = tmp_path / "runs"
    for beta in (0.5, 2.0):
        _run(runs, "mopoe", 0, {"recon/joint": 10 * beta, "coherence_by_n/1": 0.5, "latent_acc_by_n/1": 0.6}, beta=beta)
    frame = build_report(runs, None).frame
    assert plots.by_inputs(frame, tmp_path / "figs") == []
    assert [p.suffix for p in plots.beta_sweep(frame, tmp_path / "figs")] == [".png", ".svg"]


def test_a_beta_sweep_without_a_trade_off_metric_is_drawn_over_inputs_one_line_per_beta(tmp_path, monkeypatch):
    """Where a swept group has no x metric for the sweep figure (no recon/loglik key), the by-inputs figure draws
    it, one labelled line per β (never averaged across β as if they were seeds), so the group is not left out."""
    runs = tmp_path / "runs"
    for beta in (0.5, 2.0):
        _run(runs, "mopoe", 0, {"coherence_by_n/1": 0.2 * beta, "latent_acc_by_n/1": 0.6}, beta=beta)
    frame = build_report(runs, None).frame
    assert plots.beta_sweep(frame, tmp_path / "figs") == []
    drawn = []
    monkeypatch.setattr(plots, "_finish_group", lambda fig, axes, *a, **k: drawn.append(axes[0]) or [])
    plots.by_inputs(frame, tmp_path / "figs")
    (panels,) = drawn
    coherence = {c.get_label(): list(c.lines[0].get_ydata()) for c in panels[1].containers}
    assert coherence == {"mopoe β=0.5": [0.1], "mopoe β=2": [0.4]}


def _bars(container):
    """An errorbar's (x, y) bar half-lengths per point, None for an axis without bars."""
    cols, out = list(container.lines[2]), []
    for has, axis in ((container.has_xerr, 0), (container.has_yerr, 1)):
        out.append([abs(s[1][axis] - s[0][axis]) / 2 for s in cols.pop(0).get_segments()] if has else None)
    return out


def _drawn(monkeypatch):
    """The axes each figure function hands to _finish_group, instead of saving the figure."""
    drawn = []
    monkeypatch.setattr(plots, "_finish_group", lambda fig, axes, *a, **k: drawn.append(axes[0]) or [])
    return drawn


def test_by_inputs_bars_are_the_sample_std_and_a_series_keeps_its_marker_in_both_panels(tmp_path, monkeypatch):
    """Bars over seeds are the sample std, not the standard error; a series absent from a panel keeps others' markers."""
    runs = tmp_path / "runs"
    for seed, acc in enumerate([0.5, 0.7]):
        _run(runs, "mopoe", seed, {"latent_acc_by_n/1": acc, "coherence_by_n/1": 0.4})
    _run(runs, "mmvae", 0, {"coherence_by_n/1": 0.3})  # sorts first; no latent accuracy
    drawn = _drawn(monkeypatch)
    plots.by_inputs(build_report(runs, None).frame, tmp_path / "figs")
    (panels,) = drawn
    acc, coh = ({c.get_label(): c for c in ax.containers} for ax in panels)
    assert list(acc) == ["mopoe"] and _bars(acc["mopoe"])[1] == pytest.approx([statistics.stdev([0.5, 0.7])])
    assert acc["mopoe"].lines[0].get_marker() == coh["mopoe"].lines[0].get_marker() != coh["mmvae"].lines[0].get_marker()


def test_beta_sweep_draws_quality_against_trade_off_with_sample_std_bars(tmp_path, monkeypatch):
    """x: reconstruction error, y: the quality metric, one point per β (mean over seeds), bars each axis's sample std."""
    runs = tmp_path / "runs"
    for beta in (0.5, 2.0):
        for seed in (0, 1):
            _run(runs, "mopoe", seed, {"recon/joint": 10 * beta + 2 * seed, "loglik/joint": -beta,
                                       "latent_acc_by_n/1": 0.5 + seed / 10}, beta=beta)
    drawn = _drawn(monkeypatch)
    plots.beta_sweep(build_report(runs, None).frame, tmp_path / "figs")
    (panels,) = drawn
    ax = panels[0]
    (line,) = ax.containers
    assert ax.get_xlabel() == "reconstruction error (all inputs)" and ax.get_ylabel() == "latent accuracy, 1 input"
    assert list(line.lines[0].get_xdata()) == [6.0, 21.0]
    assert list(line.lines[0].get_ydata()) == pytest.approx([0.55, 0.55])
    xerr, yerr = _bars(line)
    assert xerr == pytest.approx([statistics.stdev([0, 2])] * 2) and yerr == pytest.approx([statistics.stdev([0.5, 0.6])] * 2)


def test_per_attribute_figures_are_one_file_per_beta_with_mean_bars(tmp_path, monkeypatch):
    """One figure per β, each its own file; a bar is the mean over seeds, an attribute a series lacks is no bar."""
    runs = tmp_path / "runs"
    for seed, ap in enumerate([0.6, 0.8]):
        _run(runs, "mopoe", seed, {"latent_ap/m0/smiling": ap, "latent_ap/m0/bald": 0.2}, beta=0.5)
    _run(runs, "mopoe", 0, {"latent_ap/m0/smiling": 0.5, "latent_ap/m0/bald": 0.1}, beta=2.0)
    _run(runs, "mvae", 0, {"latent_ap/m0/smiling": 0.3}, beta=0.5)
    saved = []
    monkeypatch.setattr(plots, "_save", lambda fig, out_dir, stem: saved.append((stem, fig)) or [])
    plots.per_attribute(build_report(runs, None).frame, tmp_path / "figs")
    assert [s for s, _ in saved] == ["polydigits-vanilla-T1-latent_ap-beta0.5-per-attribute",
                                     "polydigits-vanilla-T1-latent_ap-beta2-per-attribute"]
    ax = saved[0][1].axes[0]
    attrs = [t.get_text() for t in ax.get_yticklabels()]
    bars = {c.get_label(): dict(zip(attrs, (p.get_width() for p in c.patches))) for c in ax.containers}
    assert bars["mopoe"] == pytest.approx({"smiling": 0.7, "bald": 0.2})
    assert bars["mvae"]["smiling"] == 0.3 and math.isnan(bars["mvae"]["bald"])


def test_reproduction_bars_are_the_tolerance(tmp_path, monkeypatch):
    """The bar around a produced value is the cell's tolerance (crossing the identity line iff it passes), not its std."""
    runs = tmp_path / "runs"
    for seed, v in enumerate([0.28, 0.32]):
        _run(runs, "mopoe", seed, {"coherence/joint": v, "latent_acc_by_n/1": 0.9, "fid/m0": 100.0})
    saved = []
    monkeypatch.setattr(plots, "_save", lambda fig, out_dir, stem: saved.append(fig) or [])
    reproduction(build_report(runs, _refs(tmp_path)).cells, tmp_path / "figs")
    fractions = {c.get_label(): _bars(c)[1] for c in saved[0].axes[0].containers}
    assert fractions == {"within tolerance": pytest.approx([0.05]), "outside tolerance": pytest.approx([0.1])}


def test_reproduction_draws_printed_across_produced_up_and_counts_the_missing_cells(tmp_path, monkeypatch):
    """x: the paper's printed value, y: the produced mean (the bars, the tolerance, are vertical); the title counts
    the cells within tolerance among those drawn and the cells left out for want of a produced value."""
    runs = tmp_path / "runs"
    _run(runs, "mopoe", 0, {"coherence/joint": 0.30, "latent_acc_by_n/1": 0.9, "fid/m0": 100.0})
    saved = []
    monkeypatch.setattr(plots, "_save", lambda fig, out_dir, stem: saved.append(fig) or [])
    reproduction(build_report(runs, _refs(tmp_path)).cells, tmp_path / "figs")
    fig = saved[0]  # paper "P, 2021": ok (pass), far (fail), fid (pass), none (missing)
    points = {c.get_label(): (list(c.lines[0].get_xdata()), list(c.lines[0].get_ydata())) for c in fig.axes[0].containers}
    assert points == {"within tolerance": ([0.33], [0.30]), "outside tolerance": ([0.5], [0.9])}
    assert fig.axes[0].get_xlabel().startswith("printed") and fig.axes[0].get_ylabel().startswith("produced")
    assert fig._suptitle.get_text() == ("P, 2021\n2 of 3 produced cells within tolerance (1 of 4 cells missing, "
                                        "not shown)")


def test_beta_sweep_draws_two_configurations_of_a_method_as_two_lines(tmp_path, monkeypatch):
    """Runs of one method at latent 8 and latent 16 over the same β are two lines (as the summary table keeps them two
    columns), not one line whose points average the two configurations as if they were seeds."""
    runs = tmp_path / "runs"
    for dim, acc in ((8, 0.1), (16, 0.5)):
        for beta in (0.5, 2.0):
            cfg = build_run_config({"dataset": "polydigits", "method": {"name": "mopoe", "beta": beta, "latent_dim": dim},
                                    "tables": ["T1"]})
            run = Run(cfg, runs)
            run.init()
            run.write_metrics({"recon/joint": 10 * beta, "latent_acc_by_n/1": acc})
    drawn = _drawn(monkeypatch)
    plots.beta_sweep(build_report(runs, None).frame, tmp_path / "figs")
    (panels,) = drawn
    lines = {c.get_label(): list(c.lines[0].get_ydata()) for c in panels[0].containers}
    assert lines == {"mopoe latent=8": [0.1, 0.1], "mopoe latent=16": [0.5, 0.5]}


def test_a_figure_is_written_whole_or_not_at_all(tmp_path):
    # plots._save: savefig wrote the file in place, so a full disk left a cut-off PNG where the previous figure was
    # (and an OSError naming no file: a traceback); now rendered in memory and written atomically
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from conftest import file_size_limit

    from mmbench.plots import _save

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    (tmp_path / "fig.png").write_bytes(b"the figure before")
    with file_size_limit(2_000), pytest.raises(OSError) as e:
        _save(fig, tmp_path, "fig")
    assert (e.value.errno, e.value.filename) == (27, str(tmp_path / "fig.png"))
    assert sorted(os.listdir(tmp_path)) == ["fig.png"] and (tmp_path / "fig.png").read_bytes() == b"the figure before"
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    assert _save(fig, tmp_path, "fig") == [tmp_path / "fig.png", tmp_path / "fig.svg"]
    assert (tmp_path / "fig.png").read_bytes()[:4] == b"\x89PNG" and b"<svg" in (tmp_path / "fig.svg").read_bytes()


def test_every_reference_cell_has_a_named_panel_of_the_reproduction_figure():
    """A family missing from plots.SCALES gets a panel of its own under its raw name (MoPoE Table 5's batch-mean
    APs once would have): every family the reference files compare is on a named scale."""
    from mmbench.plots import SCALES
    from mmbench.references import load_reference_files

    cells, _ = load_reference_files(Path(__file__).resolve().parents[1] / "reference_results")
    assert {c.metric.split("/")[0].removesuffix("_by_n") for c in cells} <= set(SCALES)


def test_reproduction_draws_cells_at_another_budget_apart_and_counts_them(tmp_path, monkeypatch):
    """A cell whose runs are at another budget than the paper's (mmbench/budgets.py) is neither within nor outside
    tolerance: a grey mark of its own, counted in the title."""
    from mmbench.budgets import budget_of, render
    from mmbench.config import flatten

    runs = tmp_path / "runs"
    run = _run(runs, "mopoe", 0, {"coherence/joint": 0.30, "latent_acc_by_n/1": 0.9, "fid/m0": 100.0})
    refs = _refs(tmp_path)
    paper = {**budget_of(flatten(run.cfg.to_dict())), "train.epochs": 300}
    (refs / "budgets.yaml").write_text(render({"T1": {"mopoe": [paper]}}))
    saved = []
    monkeypatch.setattr(plots, "_save", lambda fig, out_dir, stem: saved.append(fig) or [])
    cells = build_report(runs, refs).cells
    assert list(reproduction_points(cells)["P, 2021"]["scored"]) == [False, False, False]
    reproduction(cells, tmp_path / "figs")
    points = {c.get_label(): list(c.lines[0].get_xdata()) for c in saved[0].axes[0].containers}
    assert points == {"another budget (not scored)": [0.33, 0.5]}  # FID on its own panel
    assert saved[0]._suptitle.get_text() == ("P, 2021\n0 of 3 produced cells within tolerance, 3 at another budget "
                                             "than the paper's (not scored) (1 of 4 cells missing, not shown)")
