"""The HTML report in a real browser (headless Chromium): every figure loads, no script error, a screenshot.
Skips where Debian's `chromium` is not installed (.ci/run installs it)."""

import pytest
import yaml
from typer.testing import CliRunner

from browser import check_page, chromium
from mmbench.cli import app
from mmbench.config import build_run_config
from mmbench.results import Run

needs_chromium = pytest.mark.skipif(chromium() is None, reason="chromium is not installed (apt-get install chromium)")


@needs_chromium
def test_the_probe_sees_broken_images_and_script_errors(tmp_path):
    """The check itself can fail: a page with an undecodable image and a throwing script."""
    page = tmp_path / "bad.html"
    page.write_text("<!doctype html><html><head><meta charset='utf-8'></head><body>"
                    "<img alt='ok' src='data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4"
                    "2mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=='>"
                    "<img alt='broken' src='data:image/png;base64,AAAA'><img alt='absent' src='nope.png'>"
                    "<script>undefinedFunction()</script></body></html>")
    res = check_page(page)
    assert res["images"] == 3 and sorted(res["broken"]) == ["absent", "broken"]
    assert len(res["errors"]) == 1 and "undefinedFunction" in res["errors"][0]


@needs_chromium
def test_html_report_loads_in_chromium(tmp_path):
    runs = tmp_path / "runs"
    # T1 sweeps β (a β-sweep figure), T2 has one β per method (a by-inputs figure)
    for method, beta, acc, table in (("mopoe", 0.5, 0.6, "T1"), ("mopoe", 1.0, 0.7, "T1"), ("mopoe", 2.0, 0.8, "T1"),
                                     ("mvae", 1.0, 0.4, "T1"), ("mopoe", 1.0, 0.7, "T2"), ("mvae", 1.0, 0.4, "T2")):
        for seed in (0,):
            cfg = build_run_config({"dataset": "polydigits", "method": {"name": method, "beta": beta}, "seed": seed,
                                    "tables": [table]})
            run = Run(cfg, runs)
            run.init()
            run.write_metrics({"latent_acc_by_n/1": acc + seed / 50, "latent_acc_by_n/2": acc + 0.1,
                               "coherence/joint": acc / 2, "recon/joint": 100 * beta})
            (run.dir / "history.json").write_text(
                '[{"epoch": 1, "train_loss": 9.0, "test_loss": 9.5}, {"epoch": 2, "train_loss": 7.0, "test_loss": 8.0}]')
    refs = tmp_path / "refs"
    refs.mkdir()
    base = {"paper": "Paper A, 2021", "table": "T1", "column": "joint", "metric": "coherence/joint"}
    (refs / "a.yaml").write_text(yaml.safe_dump({"cells": [
        {**base, "row": "MoPoE", "method": "mopoe", "value": 0.35, "tolerance": 0.05, "where": {"method.beta": 1.0}},
        {**base, "row": "MVAE", "method": "mvae", "value": 0.5, "tolerance": 0.05},
        {**base, "row": "MMVAE", "method": "mmvae", "value": 0.3, "tolerance": 0.05}]}))
    page = tmp_path / "report.html"
    result = CliRunner().invoke(app, ["report", "--runs-dir", str(runs), "--compare", str(refs), "--allow-missing",
                                      "--format", "html", "--out", str(page)])
    assert page.exists(), result.output
    text = page.read_text()
    assert "Paper_A_2021-reproduction" in text and "T1-training" in text and "by β" in text
    assert "T1-beta-sweep" in text and "T2-by-inputs" in text and "T1-by-inputs" not in text
    shot = tmp_path / "report.png"
    res = check_page(page, screenshot=shot)
    assert res["images"] == text.count("<img ") >= 4  # reproduction, by inputs, β sweep, training curves
    assert res["broken"] == [] and res["errors"] == []
    assert shot.exists() and shot.stat().st_size > 10_000
