"""The reproducible record: complete provenance, honest aggregation of mixed runs, result bundles."""
import io
import json
import os
import re
import shutil
import tarfile
from importlib.metadata import version
from pathlib import Path

import pytest
import torch
import yaml

from typer.testing import CliRunner

from mmbench.bundle import export_runs, import_bundle, read_bundle
from mmbench.cli import app
from mmbench.config import build_run_config
from mmbench.errors import MMBenchError
import mmbench.evaluate as evaluate_mod
from mmbench.evaluate import execute
from mmbench.metrics.context import state_digest
from mmbench.render import render_markdown
from mmbench.report import build_report
from mmbench.results import NUMERIC_PACKAGES, Run

from conftest import left_in

ROOT = Path(__file__).resolve().parents[1]


def fake_run(runs_dir, seed, metrics, prov=None, tables=("T1",), method="mopoe"):
    cfg = build_run_config({"dataset": "polydigits", "method": {"name": method}, "seed": seed, "tables": list(tables)})
    run = Run(cfg, runs_dir)
    run.init()
    (run.dir / "provenance.json").write_text(json.dumps(prov if prov is not None else run.provenance()))
    run.log("trained")
    run.write_metrics(metrics)
    return run


def test_provenance_records_what_can_change_a_number(tmp_path, data_root):
    cfg = build_run_config({"dataset": "polydigits", "method": {"name": "mopoe", "latent_dim": 8},
                            "train": {"epochs": 1, "batch_size": 64, "max_train": 128},
                            "eval": {"metrics": ["coherence"], "test_samples": 64, "classifier_epochs": 1,
                                     "classifier_min_accuracy": 0.0, "joint_samples": 16}})
    run = Run(cfg, tmp_path / "runs")
    execute(run, data_root)
    prov = json.loads((run.dir / "provenance.json").read_text())
    assert prov["packages"] == {p: version(p) for p in NUMERIC_PACKAGES}
    assert prov["cpu"] and prov["gpu"] is None  # the tests hide every GPU
    assert prov["threads"]["torch_threads"] == torch.get_num_threads()
    assert prov["determinism"]["deterministic_algorithms"] == torch.are_deterministic_algorithms_enabled()
    assert set(prov["determinism"]) >= {"cudnn_deterministic", "cudnn_benchmark", "cuda_matmul_allow_tf32"}
    manifest = json.loads(next((data_root / "polydigits").glob("*/manifest.json")).read_text())
    from mmbench.data.base import manifest_digest

    assert prov["dataset_digest"] == manifest_digest(manifest)
    assert prov["dataset_build"] == {"seed": manifest["seed"], "options": manifest["options"]}
    # The classifier digest is the digest of the classifiers coherence used (the cached files).
    clf_dir = next((data_root / "classifiers").iterdir())
    from mmbench.metrics.classifiers import build
    from mmbench.registry import DATASETS

    spec = DATASETS.get("polydigits")()
    mods = {m.name: m for m in spec.modalities("vanilla")}
    clfs = {}
    for name, mod in mods.items():
        clfs[name] = build(spec, mod, "vanilla")
        clfs[name].load_state_dict(torch.load(clf_dir / f"{name}.pt"))
    assert prov["classifiers"] == {"set": "mmbench", "dropout": "off", "architecture": spec.classifier_for("vanilla"),
                                   "epochs": 1, "digest": state_digest(clfs)}
    with torch.no_grad():
        next(iter(clfs["m0"].parameters())).view(-1)[0] += 1e-3
    assert state_digest(clfs) != prov["classifiers"]["digest"]


def _refs(tmp_path):
    refs = tmp_path / "refs"
    refs.mkdir()
    (refs / "p.yaml").write_text(yaml.safe_dump({"cells": [
        {"paper": "P", "table": "T1", "row": "MoPoE", "column": "Joint", "method": "mopoe",
         "metric": "coherence/joint", "value": 0.35, "tolerance": 0.06}]}))
    return refs


def test_a_claim_comparing_runs_of_different_provenance_says_so_and_refuse_mixed_fails_on_it(tmp_path):
    """A cell pooling runs of other data or code shows "⚠ mixed"; a claim comparing MoPoE on one dataset build with
    MVAE on another held with no mark. Now its details say so, and --refuse-mixed fails on it as on a cell."""
    runs = tmp_path / "runs"
    base = {"git_commit": "aaa", "dataset_digest": "d1", "packages": {"torch": "2.14.1"}}
    fake_run(runs, 0, {"coherence/joint": 0.6}, base, tables=("F",))
    fake_run(runs, 0, {"coherence/joint": 0.4}, base, tables=("F",), method="mvae")
    refs = tmp_path / "refs"
    refs.mkdir()
    (refs / "p.yaml").write_text(yaml.safe_dump({"claims": [
        {"id": "c", "paper": "P", "figure": "F", "quote": "q", "source": "p. 1",
         "holds": [{"left": {"method": "mopoe", "metric": "coherence/joint"}, "op": ">",
                    "right": {"method": "mvae", "metric": "coherence/joint"}}]}]}))
    (c,) = build_report(runs, refs).claims
    assert c.status == "holds" and c.mixed == [] and not any("mixed" in d for d in c.details)
    runs2 = tmp_path / "runs2"
    fake_run(runs2, 0, {"coherence/joint": 0.6}, base, tables=("F",))
    fake_run(runs2, 0, {"coherence/joint": 0.4}, {**base, "dataset_digest": "d2"}, tables=("F",), method="mvae")
    rep = build_report(runs2, refs)
    (c,) = rep.claims
    assert c.status == "holds" and c.mixed == ["dataset digest"] and rep.mixed_claims == [c]
    assert "⚠ mixed: the runs compared differ in dataset digest" in c.details
    cli = ["report", "--runs-dir", str(runs2), "--compare", str(refs)]
    assert CliRunner().invoke(app, cli).exit_code == 0
    refused = CliRunner().invoke(app, cli + ["--refuse-mixed"])
    assert refused.exit_code == 1
    assert "0 cells and 1 claims pool runs whose provenance differs" in " ".join(refused.output.split())


def test_provenance_records_the_prepare_options_the_data_were_built_with(tmp_path, data_root, monkeypatch):
    """provenance's dataset_build carries the manifest's prepare options (e.g. PolyMNIST rebuilt from MNIST's test
    split), not only its seed: the report says the data are not the paper's."""
    import mmbench.evaluate as ev

    cfg = build_run_config({"dataset": "polydigits", "method": {"name": "mopoe", "latent_dim": 8},
                            "train": {"epochs": 1, "batch_size": 64, "max_train": 64, "max_test": 64},
                            "eval": {"metrics": []}})
    run = Run(cfg, tmp_path / "runs")
    import mmbench.train as tr

    real = tr.data_identity  # the prepared copy as training records it and evaluation checks and records it
    options = {"mnist_source": "test-halves", "multiplicity": 12}

    def built_so(cfg, data_root=None):
        return {**real(cfg, data_root), "seed": 3, "options": options}

    monkeypatch.setattr(tr, "data_identity", built_so)
    monkeypatch.setattr(ev, "data_identity", built_so)
    execute(run, data_root)
    prov = json.loads((run.dir / "provenance.json").read_text())
    assert prov["dataset_build"] == {"seed": 3, "options": options}


def test_markdown_report_keeps_the_three_decimals_of_every_cell(tmp_path):
    """The Markdown tables print each cell as report.py formats it (tabulate would turn "0.800" into "0.8", so a column
    mixed 3 decimals and fewer), in the summary and in the comparison with the paper alike."""
    runs = tmp_path / "runs"
    fake_run(runs, 0, {"coherence/joint": 0.8})
    md = render_markdown(*(lambda rep: (rep.summaries, rep.refs))(build_report(runs, _refs(tmp_path))))
    rows = [line for line in md.splitlines() if line.startswith("| joint coherence") or line.startswith("| MoPoE")]
    assert len(rows) == 2 and all("0.800" in row for row in rows), rows
    assert "0.350" in rows[1] and "| 0.8 " not in md and "0.35 " not in md


def test_report_flags_cells_pooling_runs_of_different_code_or_packages(tmp_path):
    runs = tmp_path / "runs"
    base = {"git_commit": "aaa", "dataset_digest": "d1", "packages": {"torch": "2.14.1", "numpy": "2.4.6"}}
    fake_run(runs, 0, {"coherence/joint": 0.30}, base)
    fake_run(runs, 1, {"coherence/joint": 0.40}, base)
    refs = _refs(tmp_path)
    rep = build_report(runs, refs)
    assert rep.cells[0].mixed == [] and rep.mixed == []
    fake_run(runs, 2, {"coherence/joint": 0.35}, {**base, "git_commit": "bbb", "packages": {"torch": "2.14.1",
                                                                                            "numpy": "2.5.0"}})
    rep = build_report(runs, refs)
    assert rep.cells[0].mixed == ["mmbench commit", "numpy"] and rep.cells[0].status == "pass"
    md = render_markdown(rep.summaries, rep.refs)
    assert "⚠ mixed mmbench commit, numpy" in md
    assert "1 pool runs whose provenance differs" in md
    cli = ["report", "--runs-dir", str(runs), "--compare", str(refs), "--format", "md"]
    ok = CliRunner().invoke(app, cli)
    assert ok.exit_code == 0, ok.output
    refused = CliRunner().invoke(app, cli + ["--refuse-mixed"])
    assert refused.exit_code == 1
    said = " ".join(refused.output.split())
    assert "1 cells and 0 claims pool runs whose provenance differs (--refuse-mixed)" in said
    assert "mmbench commit, numpy" in said
    # the same evaluating code, but one run was resumed under other code: its training differs
    runs2 = tmp_path / "runs2"
    fake_run(runs2, 0, {"coherence/joint": 0.30}, {**base, "trained_with": [{"git_commit": "t1"}]})
    fake_run(runs2, 1, {"coherence/joint": 0.40}, {**base, "trained_with": [{"git_commit": "t1"}, {"git_commit": "t2"}]})
    assert build_report(runs2, refs).cells[0].mixed == ["trained by"]
    # a run evaluated with bf16 decoders pooled with fp32 ones (runs recorded before eval.precision: fp32)
    runs3 = tmp_path / "runs3"
    fake_run(runs3, 0, {"coherence/joint": 0.30}, base)
    fake_run(runs3, 1, {"coherence/joint": 0.40}, {**base, "eval_precision": "fp32"})
    assert build_report(runs3, refs).cells[0].mixed == []
    fake_run(runs3, 2, {"coherence/joint": 0.35}, {**base, "eval_precision": "bf16"})
    assert build_report(runs3, refs).cells[0].mixed == ["eval precision"]


def test_eval_precision_rescores_the_trained_model_and_keeps_both_evaluations(tmp_path, data_root, monkeypatch):
    """eval.precision is not part of the run id: asking for bf16 after an fp32 evaluation evaluates the same
    checkpoint again (no training), sets the fp32 metrics aside, and asking for fp32 again brings them back.
    On a CPU without bfloat16 instructions the bf16 evaluation's log says it runs slower than fp32 there."""
    monkeypatch.setattr("mmbench.train.cpu_has_bf16", lambda: False)
    slow = "evaluating the decoders (eval.precision) in bf16 on a CPU without bfloat16 instructions"
    base = {"dataset": "polydigits", "method": {"name": "mopoe", "latent_dim": 8},
            "train": {"epochs": 1, "batch_size": 64, "max_train": 128},
            "eval": {"metrics": ["loglik"], "test_samples": 12, "ll_samples": 2}}
    fp32 = Run(build_run_config(base), tmp_path / "runs")
    execute(fp32, data_root)
    first = json.loads(fp32.metrics_path.read_text())
    assert first["eval_precision"] == "fp32" and fp32.scored_with() == "fp32" and fp32.status() == "done"
    assert list(first["metric_seconds"]) == ["loglik"] and first["metric_seconds"]["loglik"] <= first["eval_seconds"]
    low_cfg = json.loads(json.dumps(base))
    low_cfg["eval"]["precision"] = "bf16"
    low = Run(build_run_config(low_cfg), tmp_path / "runs")
    assert low.id == fp32.id and low.status() == "rescore"
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump({"name": "s", "experiments": [
        {"name": "e", "dataset": "polydigits", "methods": ["mopoe"], "metrics": ["loglik"],
         "overrides": {"method": {"latent_dim": 8}, "train": base["train"], "eval": {"test_samples": 12, "ll_samples": 2}}}]}))
    dry = CliRunner().invoke(app, ["run", str(suite), "--dry-run", "--runs-dir", str(tmp_path / "runs"), "--data-root",
                                   str(data_root), "--set", "eval.precision=bf16"])
    said = " ".join(dry.output.split())
    assert dry.exit_code == 0 and "1 rescore; nothing to train" in said and "- (evaluation" in said, dry.output
    ckpt = (low.ckpt_dir / "last.pt").stat().st_mtime_ns
    out = execute(low, data_root)
    assert (low.ckpt_dir / "last.pt").stat().st_mtime_ns == ckpt  # not retrained
    assert out["eval_precision"] == "bf16" and low.scored_with() == "bf16"
    assert json.loads((low.dir / "provenance.json").read_text())["eval_precision"] == "bf16"
    assert json.loads((low.dir / "metrics.fp32.json").read_text()) == first
    a, b = first["metrics"]["loglik/joint"], out["metrics"]["loglik/joint"]
    assert a != b and abs(a - b) < 1e-3 * abs(a)  # the decoders' rounding moved it, by a little
    assert fp32.status() == "rescore"
    with pytest.MonkeyPatch.context() as mp:  # brought back, not recomputed (an evaluation gives the same metrics)
        mp.setattr(evaluate_mod, "evaluate", lambda *a, **k: pytest.fail("evaluated again"))
        assert execute(fp32, data_root) == first
    assert json.loads((low.dir / "metrics.bf16.json").read_text())["metrics"] == out["metrics"]
    assert "evaluating again as bf16 (kept fp32 as metrics.fp32.json)" in low.log_path.read_text()
    assert low.log_path.read_text().count(slow) == 1  # the bf16 evaluation's, not the fp32 one's
    trained = {k: json.loads((low.dir / "provenance.bf16.json").read_text())[k] for k in ("train_seconds", "trained_with")}
    assert trained["train_seconds"] > 0 and len(trained["trained_with"]) == 1  # carried over from the fp32 evaluation
    # `mmbench evaluate` of a run scored otherwise keeps the earlier evaluation and the training's provenance
    sets = ["method.latent_dim=8", "train.epochs=1", "train.batch_size=64", "train.max_train=128",
            "eval.metrics=[loglik]", "eval.test_samples=12", "eval.ll_samples=2", "eval.precision=bf16"]
    cli = CliRunner().invoke(app, ["evaluate", "polydigits", "mopoe", "--runs-dir", str(tmp_path / "runs"),
                                   "--data-root", str(data_root), *[a for s_ in sets for a in ("--set", s_)]])
    assert cli.exit_code == 0, cli.output
    assert "kept the earlier evaluation (fp32)" in " ".join(cli.output.split())
    assert json.loads((low.dir / "metrics.fp32.json").read_text()) == first
    prov = json.loads((low.dir / "provenance.json").read_text())
    assert prov["eval_precision"] == "bf16" and {k: prov[k] for k in trained} == trained
    assert yaml.safe_load((low.dir / "config.yaml").read_text())["eval"]["precision"] == "bf16"
    # A re-scoring stopped after setting metrics.json aside: still trained and evaluated (never retrained), and the
    # evaluation asked for is brought back.
    for name in ("metrics", "provenance"):
        (low.dir / f"{name}.json").replace(low.dir / f"{name}.bf16.json")
    assert fp32.status() == "rescore" and low.status() == "rescore"
    log_lines = len(low.log_path.read_text().splitlines())
    assert execute(fp32, data_root) == first and len(low.log_path.read_text().splitlines()) == log_lines
    # An evaluation that fails (here: the checkpoints are gone) puts the earlier metrics and config back.
    (low.dir / "metrics.bf16.json").unlink()
    (low.ckpt_dir).rename(tmp_path / "ckpt-away")
    with pytest.raises(MMBenchError, match="has results but no checkpoint to evaluate again"):
        execute(low, data_root)
    assert json.loads(fp32.metrics_path.read_text()) == first and fp32.status() == "done"
    assert yaml.safe_load((low.dir / "config.yaml").read_text())["eval"]["precision"] == "fp32"


def test_bundle_round_trip_gives_the_same_report(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    fake_run(a, 0, {"coherence/joint": 0.30})
    r1 = fake_run(a, 1, {"coherence/joint": 0.40})
    (r1.dir / "artifacts").mkdir()
    (r1.dir / "artifacts" / "latents.npz").write_bytes(b"x" * 100)
    (r1.dir / "checkpoints").mkdir()
    torch.save({"model": {"w": torch.zeros(3)}, "epoch": 1}, r1.dir / "checkpoints" / "last.pt")
    (r1.dir / "history.json").write_text('[{"epoch": 1, "train_loss": 2.5, "test_loss": 3.0}]')
    unfinished = Run(build_run_config({"dataset": "polydigits", "seed": 7}), a)
    unfinished.init()
    manifest = export_runs(a, tmp_path / "x.tar.gz")
    assert sorted(manifest["runs"]) == sorted(p.name for p in a.iterdir() if (p / "metrics.json").exists())
    assert "checkpoints/last.pt" not in manifest["runs"][r1.id]["files"]
    assert "artifacts/latents.npz" in manifest["runs"][r1.id]["files"]
    res = import_bundle(tmp_path / "x.tar.gz", b)
    assert sorted(res["added"]) == sorted(manifest["runs"]) and res["present"] == []
    refs = _refs(tmp_path)
    ra, rb = build_report(a, refs), build_report(b, refs)
    assert render_markdown(ra.summaries, ra.refs) == render_markdown(rb.summaries, rb.refs)
    for rid in manifest["runs"]:
        for f in ("config.yaml", "metrics.json", "provenance.json", "log.txt"):
            assert (a / rid / f).read_bytes() == (b / rid / f).read_bytes()
    assert not list(b.glob(".import-*"))
    # the training curves travel without the checkpoints (plots.run_history reads history.json, else last.pt)
    from mmbench.plots import run_history

    assert run_history(b / r1.id) == run_history(a / r1.id) == [{"epoch": 1, "train_loss": 2.5, "test_loss": 3.0}]
    # Importing again adds nothing and changes nothing; checkpoints travel only when asked.
    assert import_bundle(tmp_path / "x.tar.gz", b) == {"added": [], "present": sorted(manifest["runs"])}
    with_ckpt = export_runs(a, tmp_path / "y.tar.gz", checkpoints=True)
    assert "checkpoints/last.pt" in with_ckpt["runs"][r1.id]["files"]
    # the manifest says whether checkpoints travel; import holds only the small records in memory
    assert (manifest["checkpoints"], read_bundle(tmp_path / "y.tar.gz")[0]["checkpoints"]) == (False, True)
    assert sorted(read_bundle(tmp_path / "y.tar.gz")[1].kept) == sorted(
        f"runs/{rid}/{f}" for rid in manifest["runs"] for f in ("config.yaml", "metrics.json", "provenance.json"))


def test_import_refuses_conflicts_and_writes_nothing(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    fake_run(a, 0, {"coherence/joint": 0.30})
    fake_run(a, 1, {"coherence/joint": 0.40})
    export_runs(a, tmp_path / "x.tar.gz")
    mine = fake_run(b, 1, {"coherence/joint": 0.41})  # same run id, other results
    before = {p: p.read_bytes() for p in b.rglob("*") if p.is_file()}
    with pytest.raises(MMBenchError, match=rf"1 conflicting run\(s\), nothing imported; first: run {mine.id} exists "
                                           r"here with different results"):
        import_bundle(tmp_path / "x.tar.gz", b)
    assert {p: p.read_bytes() for p in b.rglob("*") if p.is_file()} == before
    (mine.dir / "metrics.json").unlink()  # now unfinished here: still refused, never overwritten
    before = {p: p.read_bytes() for p in b.rglob("*") if p.is_file()}
    with pytest.raises(MMBenchError, match="exists here unfinished"):
        import_bundle(tmp_path / "x.tar.gz", b)
    assert {p: p.read_bytes() for p in b.rglob("*") if p.is_file()} == before


def _write_tar(dst, items):
    """A .tar.gz of (name, bytes) items."""
    with tarfile.open(dst, "w:gz") as tout:
        for name, data in items:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tout.addfile(info, io.BytesIO(data))


def _rewrite(src, dst, edit):
    with tarfile.open(src, "r:gz") as tin:
        items = [edit(m.name, tin.extractfile(m).read()) for m in tin.getmembers()]
    _write_tar(dst, [(name, data) for name, data in items if name is not None])


def test_import_verifies_digests_and_paths(tmp_path):
    a = tmp_path / "a"
    run = fake_run(a, 0, {"coherence/joint": 0.30})
    good = tmp_path / "x.tar.gz"
    export_runs(a, good)
    read_bundle(good)
    edited = tmp_path / "edited.tar.gz"
    _rewrite(good, edited, lambda n, d: (n, d.replace(b"0.3", b"0.9") if n.endswith("metrics.json") else d))
    with pytest.raises(MMBenchError, match=rf"runs/{run.id}/metrics.json does not match its sha256"):
        import_bundle(edited, tmp_path / "b")
    dropped = tmp_path / "dropped.tar.gz"
    _rewrite(good, dropped, lambda n, d: (None, d) if n.endswith("log.txt") else (n, d))
    with pytest.raises(MMBenchError, match="lacks .*log.txt, which its manifest lists"):
        import_bundle(dropped, tmp_path / "b")
    escape = tmp_path / "escape.tar.gz"
    _rewrite(good, escape, lambda n, d: (n.replace("runs/", "runs/../../"), d) if n.endswith("log.txt") else (n, d))
    with pytest.raises(MMBenchError, match="not a plain file inside the bundle"):
        import_bundle(escape, tmp_path / "b")
    twice = tmp_path / "twice.tar.gz"  # a second copy under an equivalent name, which no digest covers
    with tarfile.open(good, "r:gz") as tin:
        items = [(m.name, tin.extractfile(m).read()) for m in tin.getmembers()]
    _write_tar(twice, [(f"./runs/{run.id}/metrics.json", b"{}")] + items)
    with pytest.raises(MMBenchError, match=rf"holds runs/{run.id}/metrics.json twice"):
        import_bundle(twice, tmp_path / "b")
    (tmp_path / "junk.tar.gz").write_bytes(b"not a tarball")
    with pytest.raises(MMBenchError, match="is not a readable .tar.gz"):
        import_bundle(tmp_path / "junk.tar.gz", tmp_path / "b")
    assert not (tmp_path / "b").exists() or not any((tmp_path / "b").iterdir())


def test_export_import_cli(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    fake_run(a, 0, {"coherence/joint": 0.30})
    out = CliRunner().invoke(app, ["export", str(tmp_path / "x.tar.gz"), "--runs-dir", str(a)])
    assert out.exit_code == 0 and "1 finished runs" in " ".join(out.output.split()), out.output
    out = CliRunner().invoke(app, ["import", str(tmp_path / "x.tar.gz"), "--runs-dir", str(b)])
    assert out.exit_code == 0 and "1 runs added" in " ".join(out.output.split()), out.output
    out = CliRunner().invoke(app, ["export", str(tmp_path / "y.tar.gz"), "--runs-dir", str(tmp_path / "none")])
    assert isinstance(out.exception, MMBenchError) and "no finished runs to export" in str(out.exception)
    # a suite's runs: the message names the tier it looked at, and how to choose another
    out = CliRunner().invoke(app, ["export", str(tmp_path / "y.tar.gz"), "--runs-dir", str(a), "--suite",
                                   str(ROOT / "suites" / "quickstart.yaml")])
    assert isinstance(out.exception, MMBenchError) and "quickstart.yaml's full tier (the default; --tier smoke|quick" in str(
        out.exception)
    # bundles and run files get the user's usual file mode, not mkstemp's private 0600
    assert (tmp_path / "x.tar.gz").stat().st_mode & 0o777 == 0o666 & ~_umask()
    written = [f for d in (a, b) for f in d.glob("*/*.json")]
    assert written and all(f.stat().st_mode & 0o777 == 0o666 & ~_umask() for f in written)
    imported = [d for d in b.iterdir() if d.is_dir()]  # and folders theirs, not mkdtemp's private 0700
    assert imported and all(d.stat().st_mode & 0o777 == 0o777 & ~_umask() for d in imported)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _rebundle(src, dst, edit):
    """A copy of bundle `src` with edit(name, data) -> data applied to its run files, its manifest's digests made to
    match (as an export of damaged runs would have made it)."""
    import hashlib

    with tarfile.open(src, "r:gz") as tin:
        files = {m.name: tin.extractfile(m).read() for m in tin.getmembers()}
    manifest = json.loads(files.pop("bundle.json"))
    files = {name: edit(name, data) for name, data in files.items()}
    for rid, entry in manifest["runs"].items():
        for rel, meta in entry["files"].items():
            data = files[f"runs/{rid}/{rel}"]
            meta.update(sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    _write_tar(dst, [("bundle.json", json.dumps(manifest).encode()), *files.items()])


def test_export_leaves_out_runs_it_cannot_read_and_import_refuses_them(tmp_path):
    a = tmp_path / "a"
    good = fake_run(a, 0, {"coherence/joint": 0.30})
    bad_metrics = fake_run(a, 1, {"coherence/joint": 0.40})
    bad_metrics.metrics_path.write_text(bad_metrics.metrics_path.read_text()[:30])
    bad_config = fake_run(a, 2, {"coherence/joint": 0.50})
    (bad_config.dir / "config.yaml").write_text("dataset: polydigits\nmethod: {name: mopoe\n")
    left_out = []
    manifest = export_runs(a, tmp_path / "x.tar.gz", left_out=left_out)
    assert list(manifest["runs"]) == [good.id]
    why = dict(left_out)
    assert set(why) == {bad_metrics.id, bad_config.id}
    assert why[bad_metrics.id].startswith("metrics.json unreadable (not valid JSON")
    assert why[bad_config.id].startswith("config.yaml unreadable (not valid YAML")
    with pytest.raises(MMBenchError, match=f"run {a / bad_metrics.id}: metrics.json unreadable"):
        export_runs(a, tmp_path / "y.tar.gz")  # without a list to name them in: refused
    out = CliRunner().invoke(app, ["export", str(tmp_path / "z.tar.gz"), "--runs-dir", str(a)])
    said = " ".join(out.output.split())
    assert out.exit_code == 0 and "1 finished runs" in said and "2 left out" in said, out.output
    assert f"left out {bad_metrics.id}: metrics.json unreadable" in said
    # A bundle holding a damaged run (made by an mmbench that did not check) is refused whole, nothing written.
    for damage in (lambda d: b"[]", lambda d: d[:20]):
        damaged = tmp_path / "damaged.tar.gz"
        _rebundle(tmp_path / "x.tar.gz", damaged, lambda n, d: damage(d) if n.endswith("metrics.json") else d)
        with pytest.raises(MMBenchError, match=rf"run {good.id}'s metrics.json cannot be read .*nothing imported"):
            import_bundle(damaged, tmp_path / "b")
    _rebundle(tmp_path / "x.tar.gz", damaged, lambda n, d: d[:50] if n.endswith("provenance.json") else d)
    with pytest.raises(MMBenchError, match=rf"run {good.id}'s provenance.json cannot be read"):
        import_bundle(damaged, tmp_path / "b")
    assert not (tmp_path / "b").exists() or not any((tmp_path / "b").iterdir())


def test_export_never_overwrites_a_bundle_unless_forced(tmp_path):
    a = tmp_path / "a"
    fake_run(a, 0, {"coherence/joint": 0.30})
    out = tmp_path / "x.tar.gz"
    out.write_bytes(b"an earlier bundle")
    res = CliRunner().invoke(app, ["export", str(out), "--runs-dir", str(a)])
    assert isinstance(res.exception, MMBenchError) and "already exists" in str(res.exception) and "--force" in str(res.exception)
    assert out.read_bytes() == b"an earlier bundle"
    res = CliRunner().invoke(app, ["export", str(tmp_path), "--runs-dir", str(a)])
    assert isinstance(res.exception, MMBenchError) and "is a directory" in str(res.exception)
    res = CliRunner().invoke(app, ["export", str(out), "--runs-dir", str(a), "--force"])
    assert res.exit_code == 0, res.output
    assert list(read_bundle(out)[0]["runs"]) == [p.name for p in a.iterdir()]
    assert "--force" in CliRunner().invoke(app, ["export", "--help"]).output


@pytest.mark.skipif(shutil.which("tar") is None, reason="no tar command to pack a bundle again with")
@pytest.mark.parametrize("how", [["-C", "{x}", "."], ["-C", "{t}", "x"]])
def test_a_bundle_unpacked_and_packed_again_with_tar_imports(tmp_path, how):
    """`tar xzf` then `tar czf` (from inside the folder: ./ names and folder entries; or from above it: one top
    folder) keeps every file and digest, so the bundle imports as exported (before: refused for its folder entries)."""
    import subprocess

    a = tmp_path / "a"
    runs = [fake_run(a, s, {"coherence/joint": v}) for s, v in ((0, 0.3), (1, 0.4))]
    export_runs(a, tmp_path / "x.tar.gz")
    (tmp_path / "x").mkdir()
    subprocess.run(["tar", "xzf", str(tmp_path / "x.tar.gz"), "-C", str(tmp_path / "x")], check=True)
    again = tmp_path / "again.tar.gz"
    subprocess.run(["tar", "czf", str(again)] + [w.format(x=tmp_path / "x", t=tmp_path) for w in how], check=True)
    res = import_bundle(again, tmp_path / "b")
    assert sorted(res["added"]) == sorted(r.id for r in runs)
    for r in runs:
        assert (tmp_path / "b" / r.id / "metrics.json").read_bytes() == r.metrics_path.read_bytes()


# ----- behaviours a mutation pass found unguarded -----
def test_import_refuses_a_config_that_hashes_to_another_id(tmp_path):
    import hashlib
    run = fake_run(tmp_path / "a", 0, {"coherence/joint": 0.3})
    export_runs(tmp_path / "a", tmp_path / "x.tar.gz")
    with tarfile.open(tmp_path / "x.tar.gz", "r:gz") as t:
        files = {m.name: t.extractfile(m).read() for m in t.getmembers()}
    man = json.loads(files.pop("bundle.json"))
    name = f"runs/{run.id}/config.yaml"
    files[name] = files[name].replace(b"seed: 0", b"seed: 5")
    man["runs"][run.id]["files"]["config.yaml"] = {"sha256": hashlib.sha256(files[name]).hexdigest(), "size": len(files[name])}
    with tarfile.open(tmp_path / "y.tar.gz", "w:gz") as t:
        for n, d in [("bundle.json", json.dumps(man).encode()), *files.items()]:
            info = tarfile.TarInfo(n); info.size = len(d); t.addfile(info, io.BytesIO(d))
    with pytest.raises(MMBenchError, match="config hashes to"):
        import_bundle(tmp_path / "y.tar.gz", tmp_path / "b")
    assert not (tmp_path / "b").exists() or not any((tmp_path / "b").iterdir())


def test_import_refuses_over_an_unreadable_local_metrics(tmp_path):
    fake_run(tmp_path / "a", 0, {"coherence/joint": 0.3})
    export_runs(tmp_path / "a", tmp_path / "x.tar.gz")
    mine = fake_run(tmp_path / "b", 0, {"coherence/joint": 0.3})
    mine.metrics_path.write_text("{trunc")
    with pytest.raises(MMBenchError, match="metrics.json that cannot be read"):
        import_bundle(tmp_path / "x.tar.gz", tmp_path / "b")


def test_export_of_a_suite_without_tier_takes_its_full_tier_runs(tmp_path):
    """`export --suite S` bundles the suite's full-tier runs (the default), not those of another tier."""
    from mmbench.suite import load_suite

    suite = ROOT / "suites" / "quickstart.yaml"
    ids = {}
    for tier in ("full", "quick"):
        run = Run(load_suite(suite).runs(tier)[0], tmp_path / "a")
        run.init()
        (run.dir / "provenance.json").write_text(json.dumps(run.provenance()))
        run.write_metrics({"coherence/joint": 0.3}, eval_precision=run.cfg.eval.precision)
        ids[tier] = run.id
    assert ids["full"] != ids["quick"]
    out = CliRunner().invoke(app, ["export", str(tmp_path / "x.tar.gz"), "--runs-dir", str(tmp_path / "a"), "--suite",
                                   str(suite)])
    assert out.exit_code == 0, out.output
    assert list(read_bundle(tmp_path / "x.tar.gz")[0]["runs"]) == [ids["full"]]


def test_evaluate_records_the_tuples_it_scored_and_not_the_raw_start_time(tmp_path, data_root):
    """metrics.json's test_tuples is eval.test_samples; provenance.json has wall_seconds, not the start time."""
    cfg = build_run_config({"dataset": "polydigits", "method": {"name": "mopoe", "latent_dim": 8},
                            "train": {"epochs": 1, "batch_size": 64, "max_train": 64},
                            "eval": {"metrics": ["loglik"], "test_samples": 32, "ll_samples": 2}})
    run = Run(cfg, tmp_path / "runs")
    execute(run, data_root)
    assert json.loads(run.metrics_path.read_text())["test_tuples"] == 32
    prov = json.loads((run.dir / "provenance.json").read_text())
    assert "started" not in prov and prov["wall_seconds"] >= prov["eval_seconds"]


def test_evaluate_seeds_the_metrics_from_the_run_seed_and_times_each_metric_alone(tmp_path, data_root, monkeypatch):
    """evaluate: a metric sees the run's seed (ctx.run_seed) and torch seeded with seed + 1; metric_seconds holds
    each metric's own time, not the time since the first began."""
    import time
    from types import SimpleNamespace

    from mmbench import evaluate as evaluate_module

    seen = {}

    def probe(name):
        def metric(ctx):
            seen[name] = (ctx.run_seed, torch.rand(3))
            time.sleep(0.3 if name == "loglik" else 0)
            return {name: 0.0}
        return metric

    monkeypatch.setattr(evaluate_module, "METRICS", SimpleNamespace(get=probe))
    cfg = build_run_config({"dataset": "polydigits", "method": {"name": "mopoe", "latent_dim": 8}, "seed": 3,
                            "train": {"epochs": 1, "batch_size": 64, "max_train": 64},
                            "eval": {"metrics": ["loglik", "coherence"], "test_samples": 32}})
    run = Run(cfg, tmp_path / "runs")
    execute(run, data_root)
    assert seen["loglik"][0] == 3
    assert torch.equal(seen["loglik"][1], torch.rand(3, generator=torch.Generator().manual_seed(4)))
    assert json.loads(run.metrics_path.read_text())["metric_seconds"]["coherence"] < 0.2


def test_state_digest_reads_shapes_and_dtypes_and_not_the_modules_order():
    """state_digest: the same bytes under another shape or dtype give another digest; the modules' order does not."""
    def holding(t):
        module = torch.nn.Module()
        module.register_buffer("w", t)
        return module

    t = torch.arange(6.0)
    digest = state_digest({"a": holding(t), "b": holding(t + 1)})
    assert state_digest({"b": holding(t + 1), "a": holding(t)}) == digest
    assert state_digest({"a": holding(t.reshape(2, 3)), "b": holding(t + 1)}) != digest
    assert state_digest({"a": holding(t.view(torch.int32)), "b": holding(t + 1)}) != digest


# ----- behaviours a second mutation pass (config, suites, results, bundles) found unguarded -----
def test_import_skips_a_run_here_with_the_same_numbers_evaluated_at_another_time(tmp_path):
    """Only the metrics decide a conflict: the same numbers with other bookkeeping (timings) are the same results."""
    a, b = tmp_path / "a", tmp_path / "b"
    theirs = fake_run(a, 0, {"coherence/joint": 0.30})
    theirs.write_metrics({"coherence/joint": 0.30}, eval_seconds=12.0)
    export_runs(a, tmp_path / "x.tar.gz")
    mine = fake_run(b, 0, {"coherence/joint": 0.30})
    mine.write_metrics({"coherence/joint": 0.30}, eval_seconds=99.0)
    before = mine.metrics_path.read_bytes()
    assert import_bundle(tmp_path / "x.tar.gz", b) == {"added": [], "present": [mine.id]}
    assert mine.metrics_path.read_bytes() == before


def test_read_bundle_refuses_a_file_its_manifest_does_not_list_and_another_version(tmp_path):
    run = fake_run(tmp_path / "a", 0, {"coherence/joint": 0.30})
    good = tmp_path / "x.tar.gz"
    export_runs(tmp_path / "a", good)
    with tarfile.open(good, "r:gz") as tin:
        items = [(m.name, tin.extractfile(m).read()) for m in tin.getmembers()]
    extra = tmp_path / "extra.tar.gz"
    _write_tar(extra, items + [(f"runs/{run.id}/artifacts/planted.npz", b"x")])
    with pytest.raises(MMBenchError, match=rf"holds runs/{run.id}/artifacts/planted.npz, which its manifest does not list"):
        import_bundle(extra, tmp_path / "b")
    newer = tmp_path / "newer.tar.gz"
    _rewrite(good, newer, lambda n, d: (n, d.replace(b'"version": 1', b'"version": 2')) if n == "bundle.json" else (n, d))
    with pytest.raises(MMBenchError, match="is format 'mmbench-bundle' v2; this mmbench reads mmbench-bundle v1"):
        import_bundle(newer, tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_export_leaves_large_artifacts_behind(tmp_path, monkeypatch):
    import mmbench.bundle as bundle

    run = fake_run(tmp_path / "a", 0, {"coherence/joint": 0.30})
    (run.dir / "artifacts").mkdir()
    (run.dir / "artifacts" / "small.npz").write_bytes(b"x" * 50)
    (run.dir / "artifacts" / "large.npz").write_bytes(b"x" * 51)
    monkeypatch.setattr(bundle, "ARTIFACT_MAX_BYTES", 50)
    files = export_runs(tmp_path / "a", tmp_path / "x.tar.gz")["runs"][run.id]["files"]
    assert "artifacts/small.npz" in files and "artifacts/large.npz" not in files


@pytest.mark.parametrize("need", ["metrics.json", "config.yaml"])
def test_import_refuses_a_bundled_run_without_metrics_or_config(tmp_path, need):
    run = fake_run(tmp_path / "a", 0, {"coherence/joint": 0.30})
    export_runs(tmp_path / "a", tmp_path / "x.tar.gz")
    with tarfile.open(tmp_path / "x.tar.gz", "r:gz") as tin:
        files = {m.name: tin.extractfile(m).read() for m in tin.getmembers()}
    manifest = json.loads(files.pop("bundle.json"))
    del manifest["runs"][run.id]["files"][need], files[f"runs/{run.id}/{need}"]
    _write_tar(tmp_path / "y.tar.gz", [("bundle.json", json.dumps(manifest).encode()), *files.items()])
    with pytest.raises(MMBenchError, match=f"run {run.id} has no {need}; it is not a finished run"):
        import_bundle(tmp_path / "y.tar.gz", tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_read_bundle_refuses_a_link(tmp_path):
    run = fake_run(tmp_path / "a", 0, {"coherence/joint": 0.30})
    export_runs(tmp_path / "a", tmp_path / "x.tar.gz")
    with tarfile.open(tmp_path / "x.tar.gz", "r:gz") as tin, tarfile.open(tmp_path / "y.tar.gz", "w:gz") as tout:
        for m in tin.getmembers():
            tout.addfile(m, tin.extractfile(m))
        link = tarfile.TarInfo(f"runs/{run.id}/artifacts/passwd")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tout.addfile(link)
    with pytest.raises(MMBenchError, match=rf"holds 'runs/{run.id}/artifacts/passwd', which is not a plain file"):
        import_bundle(tmp_path / "y.tar.gz", tmp_path / "b")


def test_import_never_replaces_a_run_that_appears_while_it_unpacks(tmp_path, monkeypatch):
    import tempfile

    import mmbench.bundle as bundle

    run = fake_run(tmp_path / "a", 0, {"coherence/joint": 0.30})
    export_runs(tmp_path / "a", tmp_path / "x.tar.gz")
    b = tmp_path / "b"
    mkdtemp = tempfile.mkdtemp

    def meanwhile(*args, **kw):  # another process finishes the same run here after import's check
        (b / run.id).mkdir(parents=True)
        (b / run.id / "metrics.json").write_text("theirs")
        return mkdtemp(*args, **kw)

    monkeypatch.setattr(bundle.tempfile, "mkdtemp", meanwhile)
    with pytest.raises(MMBenchError, match=rf"run {run.id} appeared in .* while the bundle was being imported; it was "
                                           r"left as it is; import again to add the runs still missing"):
        import_bundle(tmp_path / "x.tar.gz", b)
    assert (b / run.id / "metrics.json").read_text() == "theirs" and not list(b.glob(".import-*"))


def test_export_refuses_a_directory_as_the_bundle(tmp_path):
    fake_run(tmp_path / "a", 0, {"coherence/joint": 0.30})
    (tmp_path / "out").mkdir()
    with pytest.raises(MMBenchError, match="out is a directory; name the bundle file to write, e.g. .*results.tar.gz"):
        export_runs(tmp_path / "a", tmp_path / "out", force=True)


def test_the_report_says_on_what_data_a_table_was_produced(tmp_path):
    """PolyMNIST rebuilt from the MNIST test split is variant "vanilla" too: the report names the build options in the
    produced table's title and in the paper table's summary line; a default build adds nothing."""
    from mmbench.results import data_build

    assert data_build({"dataset_build": {"seed": 0, "options": {}}}) == "" == data_build({})
    assert data_build({"dataset_build": {"seed": 3, "options": {"multiplicity": 12, "mnist_source": "test-halves"}}}) \
        == "mnist_source=test-halves, multiplicity=12, seed 3"
    runs = tmp_path / "runs"
    for seed in (0, 1):
        r = fake_run(runs, seed, {"latent_acc/m0": 0.5, "latent_acc_by_n/1": 0.5}, tables=("T1",))
        prov = json.loads((r.dir / "provenance.json").read_text())
        prov["dataset_build"] = {"seed": 0, "options": {"mnist_source": "test-halves", "multiplicity": 12}}
        (r.dir / "provenance.json").write_text(json.dumps(prov))
    refs = tmp_path / "refs"
    refs.mkdir()
    (refs / "p.yaml").write_text(yaml.safe_dump({"cells": [
        {"paper": "P", "table": "T1", "row": "MoPoE", "column": "m0", "method": "mopoe", "metric": "latent_acc/m0",
         "value": 0.5, "tolerance": 0.1}]}))
    rep = build_report(runs, refs)
    assert rep.cells[0].data == ["mnist_source=test-halves, multiplicity=12"]
    assert any("[data built with mnist_source=test-halves, multiplicity=12]" in title for title, _ in rep.summaries)
    assert "produced on data built with mnist_source=test-halves, multiplicity=12" in rep.refs[0][2]
    md = render_markdown(rep.summaries, rep.refs, rep.claims)
    assert "data built with mnist_source=test-halves" in md
    fake_run(runs, 2, {"latent_acc/m0": 0.5, "latent_acc_by_n/1": 0.5}, tables=("T2",))  # a default build
    assert not any("data built" in title for title, _ in build_report(runs, refs).summaries if "T2" in title)


def test_export_refuses_a_checkpoint_it_cannot_read(tmp_path):
    """With --checkpoints, a truncated last.pt is not shipped as if it were whole: the export names it and writes
    nothing; without --checkpoints the run's records export as before."""
    a = tmp_path / "a"
    run = fake_run(a, 0, {"coherence/joint": 0.30})
    run.ckpt_dir.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save({"model": {"w": torch.zeros(1000)}, "epoch": 1}, buf)
    (run.ckpt_dir / "last.pt").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(MMBenchError, match=r"last\.pt.*; put a good copy back, or export without --checkpoints "
                                           r"\(nothing was written\)"):
        export_runs(a, tmp_path / "x.tar.gz", checkpoints=True)
    assert not (tmp_path / "x.tar.gz").exists()
    export_runs(a, tmp_path / "y.tar.gz")


def test_export_checks_a_checkpoint_without_reading_its_weights(tmp_path, monkeypatch):
    """The readability check before an export maps the tensors (torch.load mmap=True: the file's zip directory and
    records are read, a file cut short still fails, above) instead of reading a table's gigabytes a third time."""
    run = _big_checkpoint_run(tmp_path / "a")
    real, seen = torch.load, []

    def load(path, *a, **k):
        seen.append((Path(path).name, k.get("mmap")))
        return real(path, *a, **k)
    monkeypatch.setattr(torch, "load", load)
    export_runs(tmp_path / "a", tmp_path / "x.tar.gz", checkpoints=True)
    assert seen == [("last.pt", True)], seen
    assert run.id in import_bundle(tmp_path / "x.tar.gz", tmp_path / "b")["added"]


def _big_checkpoint_run(runs_dir, size=50_000):
    run = fake_run(runs_dir, 0, {"coherence/joint": 0.30})
    run.ckpt_dir.mkdir(parents=True, exist_ok=True)
    torch.save({"model": {"w": torch.arange(size, dtype=torch.float32)}, "epoch": 1}, run.ckpt_dir / "last.pt")
    return run


def test_bundles_copy_files_in_pieces_and_never_read_one_whole(tmp_path, monkeypatch):
    """Export hashes and copies each file in pieces of CHUNK bytes and import verifies and unpacks them so too: a table's
    checkpoints (hundreds of MB each) never sit in memory together. A whole-file read of a large file fails here."""
    import mmbench.bundle as bundle
    import mmbench.train as train_mod

    monkeypatch.setattr(bundle, "CHUNK", 4096)
    run = _big_checkpoint_run(tmp_path / "a")
    big = run.ckpt_dir / "last.pt"
    assert big.stat().st_size > 40 * 4096
    path_read_bytes, tar_read = Path.read_bytes, tarfile.ExFileObject.read

    def read_bytes(self):
        assert self.stat().st_size <= 4096, f"{self} read whole"
        return path_read_bytes(self)

    def read(self, size=-1):
        assert size is not None and 0 <= size <= 4096, f"a bundle member read whole ({size})"
        return tar_read(self, size)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    monkeypatch.setattr(tarfile.ExFileObject, "read", read)
    monkeypatch.setattr(train_mod, "read_checkpoint", lambda *a, **k: None)  # torch.load reads the file whole
    manifest = export_runs(tmp_path / "a", tmp_path / "x.tar.gz", checkpoints=True)
    assert manifest["runs"][run.id]["files"]["checkpoints/last.pt"]["size"] == big.stat().st_size
    assert import_bundle(tmp_path / "x.tar.gz", tmp_path / "b")["added"] == [run.id]
    monkeypatch.undo()
    for p in run.dir.rglob("*"):
        if p.is_file():
            assert (tmp_path / "b" / run.id / p.relative_to(run.dir)).read_bytes() == p.read_bytes(), p


def test_export_refuses_a_file_that_changes_while_it_is_exported(tmp_path, monkeypatch):
    """A checkpoint rewritten between its hashing and its copy (a run still writing) would ship a digest that does
    not match it: the export stops, names the file, and writes no bundle."""
    import mmbench.bundle as bundle

    run = _big_checkpoint_run(tmp_path / "a")
    digest = bundle._file_digest

    def then_changed(path):
        out = digest(path)
        if path.name == "last.pt":
            with open(path, "r+b") as f:
                f.seek(100)
                f.write(b"\xff" * 8)
        return out

    monkeypatch.setattr(bundle, "_file_digest", then_changed)
    with pytest.raises(MMBenchError, match=rf"{run.id}/checkpoints/last.pt changed while it was being exported; "
                                           r"export again when no run is writing to .* \(nothing was written\)"):
        export_runs(tmp_path / "a", tmp_path / "x.tar.gz", checkpoints=True)
    assert not (tmp_path / "x.tar.gz").exists() and not list(tmp_path.glob("*.tmp*")) and \
        sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def test_import_refuses_a_bundle_that_changes_after_it_was_verified(tmp_path, monkeypatch):
    """The bundle is read twice (verified, then unpacked); one copied over in between is checked again as it is
    unpacked: nothing is imported and no temporary folder stays."""
    import mmbench.bundle as bundle

    run = _big_checkpoint_run(tmp_path / "a")
    export_runs(tmp_path / "a", tmp_path / "x.tar.gz", checkpoints=True)
    _rewrite(tmp_path / "x.tar.gz", tmp_path / "edited.tar.gz",
             lambda n, d: (n, d[:-8] + b"\x00" * 8 if n.endswith("last.pt") else d))
    unpack = bundle.BundleFiles.unpack

    def copied_over(self, *args):
        shutil.copy(tmp_path / "edited.tar.gz", self.path)
        return unpack(self, *args)

    monkeypatch.setattr(bundle.BundleFiles, "unpack", copied_over)
    b = tmp_path / "b"
    with pytest.raises(MMBenchError, match=rf"runs/{run.id}/checkpoints/last.pt changed since it was verified .*"
                                           r"nothing imported"):
        import_bundle(tmp_path / "x.tar.gz", b)
    assert left_in(b) == []


def test_a_bundle_cut_short_is_a_one_line_error_and_nothing_is_imported(tmp_path):
    """A download cut off in the middle of a checkpoint's data (the bundle is read as a stream, member by member) is
    named as an unreadable .tar.gz, not a traceback, and nothing is written."""
    _big_checkpoint_run(tmp_path / "a", size=300_000)
    export_runs(tmp_path / "a", tmp_path / "x.tar.gz", checkpoints=True)
    data = (tmp_path / "x.tar.gz").read_bytes()
    (tmp_path / "cut.tar.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(MMBenchError, match=r"cut.tar.gz is not a readable .tar.gz \(.*\); copy it again"):
        import_bundle(tmp_path / "cut.tar.gz", tmp_path / "b")
    assert not (tmp_path / "b").exists()


# ----- behaviours a mutation pass over bundle.py (streamed copies, checks after verification) found unguarded -----
@pytest.mark.parametrize("change", ["cut", "grown"])
def test_export_refuses_a_file_cut_short_or_grown_while_it_is_exported(tmp_path, monkeypatch, change):
    """A checkpoint that shrinks (tar's copy runs out of data: an OSError inside tarfile) or grows (the first `size`
    bytes still match their digest) between its hashing and its copy is named like one rewritten in place, and no
    bundle or temporary file is left."""
    import mmbench.bundle as bundle

    run = _big_checkpoint_run(tmp_path / "a")
    digest = bundle._file_digest

    def then_changed(path):
        out = digest(path)
        if path.name == "last.pt":
            data = path.read_bytes()
            path.write_bytes(data[:1000] if change == "cut" else data + b"more")
        return out

    monkeypatch.setattr(bundle, "_file_digest", then_changed)
    with pytest.raises(MMBenchError, match=rf"{run.id}/checkpoints/last.pt changed while it was being exported; "
                                           rf"export again when no run is writing to {re.escape(str(run.ckpt_dir))} "
                                           r"\(nothing was written\)"):
        export_runs(tmp_path / "a", tmp_path / "x.tar.gz", checkpoints=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def test_an_interrupted_export_leaves_no_temporary_file(tmp_path, monkeypatch):
    """Ctrl-C (KeyboardInterrupt, not an Exception) in the middle of a copy removes the half-written bundle too."""
    import mmbench.bundle as bundle

    _big_checkpoint_run(tmp_path / "a")

    def interrupted(self, size=-1):
        raise KeyboardInterrupt

    monkeypatch.setattr(bundle._Hashing, "read", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_runs(tmp_path / "a", tmp_path / "x.tar.gz", checkpoints=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def test_bundle_members_are_readable_by_everyone_who_unpacks_them_with_tar(tmp_path):
    run = fake_run(tmp_path / "a", 0, {"coherence/joint": 0.30})
    export_runs(tmp_path / "a", tmp_path / "x.tar.gz")
    with tarfile.open(tmp_path / "x.tar.gz", "r:gz") as t:
        modes = {m.name: m.mode for m in t.getmembers()}
    assert f"runs/{run.id}/metrics.json" in modes and set(modes.values()) == {0o644}, modes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "x.tar.gz"]  # the temporary file renamed, not copied


def test_an_interrupted_import_leaves_no_temporary_folder(tmp_path, monkeypatch):
    """Ctrl-C (KeyboardInterrupt, not an Exception) while a run is unpacked removes its temporary folder."""
    import mmbench.bundle as bundle

    fake_run(tmp_path / "a", 0, {"coherence/joint": 0.30})
    export_runs(tmp_path / "a", tmp_path / "x.tar.gz")

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(bundle.shutil, "copyfileobj", interrupted)
    with pytest.raises(KeyboardInterrupt):
        import_bundle(tmp_path / "x.tar.gz", tmp_path / "b")
    assert left_in(tmp_path / "b") == []


def test_export_cli_with_checkpoints_ships_them(tmp_path):
    run = _big_checkpoint_run(tmp_path / "a", size=1000)
    out = CliRunner().invoke(app, ["export", str(tmp_path / "x.tar.gz"), "--runs-dir", str(tmp_path / "a"),
                                   "--checkpoints"])
    assert out.exit_code == 0, out.output
    assert "checkpoints/last.pt" in read_bundle(tmp_path / "x.tar.gz")[0]["runs"][run.id]["files"]


@pytest.mark.parametrize("after", ["lost", "cut"])
def test_import_refuses_a_bundle_that_loses_a_file_or_is_cut_short_after_it_was_verified(tmp_path, monkeypatch, after):
    """The bundle copied over between its verification and its unpacking by one that lacks a listed file (which
    would import the run without it) or that ends early in a checkpoint's data (a tar error inside the copy, outside
    the member reader's guard): a one-line error, nothing imported, no temporary folder left."""
    import mmbench.bundle as bundle

    run = _big_checkpoint_run(tmp_path / "a", size=300_000)
    export_runs(tmp_path / "a", tmp_path / "x.tar.gz", checkpoints=True)
    changed = tmp_path / "changed.tar.gz"
    if after == "lost":
        _rewrite(tmp_path / "x.tar.gz", changed, lambda n, d: (None, d) if n.endswith("log.txt") else (n, d))
        expect = rf"lost runs/{run.id}/log.txt since it was verified .*import again once it is whole"
    else:
        data = (tmp_path / "x.tar.gz").read_bytes()
        changed.write_bytes(data[: len(data) // 2])
        expect = r"x.tar.gz is not a readable .tar.gz \(.*\); copy it again"
    unpack = bundle.BundleFiles.unpack

    def copied_over(self, *args):
        shutil.copy(changed, self.path)
        return unpack(self, *args)

    monkeypatch.setattr(bundle.BundleFiles, "unpack", copied_over)
    b = tmp_path / "b"
    with pytest.raises(MMBenchError, match=expect):
        import_bundle(tmp_path / "x.tar.gz", b)
    assert left_in(b) == []


def test_read_bundle_refuses_an_absolute_member_and_a_tarball_of_several_folders(tmp_path):
    """A member named from / is refused as outside the bundle (not merely as unlisted); a tarball of several top
    folders and no bundle.json is "not made by mmbench export", not a traceback."""
    run = fake_run(tmp_path / "a", 0, {"coherence/joint": 0.30})
    export_runs(tmp_path / "a", tmp_path / "x.tar.gz")
    _rewrite(tmp_path / "x.tar.gz", tmp_path / "abs.tar.gz",
             lambda n, d: ("/" + n, d) if n.endswith("log.txt") else (n, d))
    with pytest.raises(MMBenchError, match=rf"holds '/runs/{run.id}/log.txt', which is not a plain file inside"):
        read_bundle(tmp_path / "abs.tar.gz")
    _write_tar(tmp_path / "other.tar.gz", [("one/a.txt", b"a"), ("two/b.txt", b"b")])
    with pytest.raises(MMBenchError, match="has no valid bundle.json; it was not made by `mmbench export`"):
        read_bundle(tmp_path / "other.tar.gz")


def _one_run_bundle(tmp_path) -> Path:
    """tmp_path/x.tar.gz: a bundle of one finished run (in tmp_path/a)."""
    fake_run(tmp_path / "a", 0, {"coherence/joint": 0.30})
    export_runs(tmp_path / "a", tmp_path / "x.tar.gz")
    return tmp_path / "x.tar.gz"


def test_a_bundle_that_cannot_be_opened_is_a_one_line_error(tmp_path, monkeypatch):
    """An OSError opening or reading the bundle (permissions, an I/O error on a network disk) names the bundle."""
    import mmbench.bundle as bundle

    _one_run_bundle(tmp_path)

    def denied(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(bundle.tarfile, "open", denied)
    with pytest.raises(MMBenchError, match=r"x.tar.gz is not a readable .tar.gz \(.*Permission denied\)"):
        import_bundle(tmp_path / "x.tar.gz", tmp_path / "b")


def test_import_reads_a_record_of_exactly_the_kept_size_whole(tmp_path, monkeypatch):
    """Import reads records up to KEPT_MAX_BYTES into memory; one of exactly that size is kept whole (not cut at
    its last piece), one byte larger is not kept."""
    import mmbench.bundle as bundle

    run = fake_run(tmp_path / "a", 0, {f"coherence/m{i}": 0.30 for i in range(300)})  # the largest record
    export_runs(tmp_path / "a", tmp_path / "x.tar.gz")
    size = run.metrics_path.stat().st_size
    assert size > max(p.stat().st_size for p in run.dir.iterdir() if p.name != "metrics.json") + 2000
    monkeypatch.setattr(bundle, "CHUNK", 16)
    monkeypatch.setattr(bundle, "KEPT_MAX_BYTES", size)
    assert import_bundle(tmp_path / "x.tar.gz", tmp_path / "b")["added"] == [run.id]
    monkeypatch.setattr(bundle, "KEPT_MAX_BYTES", size - 1)
    assert f"runs/{run.id}/metrics.json" not in read_bundle(tmp_path / "x.tar.gz")[1].kept


# ----- behaviours a mutation pass (style methods, small metrics modules) found unguarded -----
def test_state_digest_reads_the_modules_names():
    """state_digest docstring: the digest covers the names too: the same classifier under another modality differs."""
    module = torch.nn.Linear(2, 2)
    assert state_digest({"img": module}) != state_digest({"text": module})


@pytest.mark.parametrize("multilabel,dropout", [(False, "off"), (True, "as_authors")])
def test_eval_context_loads_the_classifiers_once_and_records_what_they_are(monkeypatch, multilabel, dropout):
    """EvalContext.classifiers: one get_classifiers call per context; the accuracies under classifier_accuracy
    (classifier_ap on a multi-label dataset); provenance names the set, dropout, architecture and epochs; dropout
    stays active only for classifier_dropout: as_authors (the MoPoE code never calls .eval() on them)."""
    from types import SimpleNamespace

    import mmbench.metrics.context as context
    from mmbench.config import EvalConfig

    clfs = {"m0": torch.nn.Sequential(torch.nn.Dropout(0.5), torch.nn.Linear(3, 2))}
    calls = []
    monkeypatch.setattr(context, "get_classifiers", lambda *a, **k: calls.append(a) or (clfs, {"m0": 0.75}))
    spec = SimpleNamespace(multilabel=multilabel, classifier_for=lambda variant: f"net-{variant}")
    cfg = EvalConfig(classifier_dropout=dropout, classifier_epochs=7)
    ctx = context.EvalContext(model=None, spec=spec, variant="v", train=None, test=None, test_full=None, cfg=cfg,
                              device=torch.device("cpu"))
    got = ctx.classifiers()
    assert ctx.classifiers() is got and len(calls) == 1
    assert ctx.extra == {("classifier_ap" if multilabel else "classifier_accuracy"): {"m0": 0.75},
                         "classifier_set": "mmbench", "classifier_dropout": dropout}
    assert ctx.provenance["classifiers"] == {"set": "mmbench", "dropout": dropout, "architecture": "net-v",
                                             "epochs": 7, "digest": state_digest(clfs)}
    assert got["m0"].training is (dropout == "as_authors")


def _bundle_with(tmp_path, edit_files=None, edit_manifest=None, name="y.tar.gz"):
    """A bundle of one exported run, its files edited (name -> bytes) and its manifest listing them again."""
    import hashlib

    run = fake_run(tmp_path / "a", 0, {"coherence/joint": 0.30})
    export_runs(tmp_path / "a", tmp_path / "x.tar.gz")
    with tarfile.open(tmp_path / "x.tar.gz", "r:gz") as tin:
        files = {m.name: tin.extractfile(m).read() for m in tin.getmembers()}
    manifest = json.loads(files.pop("bundle.json"))
    files.update((edit_files or (lambda rid: {}))(run.id))
    manifest["runs"][run.id]["files"] = {n.split("/", 2)[2]: {"sha256": hashlib.sha256(d).hexdigest(), "size": len(d)}
                                         for n, d in files.items()}
    if edit_manifest:
        manifest = edit_manifest(manifest, run.id)
    head = manifest if isinstance(manifest, bytes) else json.dumps(manifest).encode()
    _write_tar(tmp_path / name, [("bundle.json", head), *files.items()])
    return run, tmp_path / name


@pytest.mark.parametrize("edit", [
    lambda m, rid: [m], lambda m, rid: None, lambda m, rid: {**m, "runs": None}, lambda m, rid: {**m, "runs": [rid]},
    lambda m, rid: {**m, "runs": {rid: []}}, lambda m, rid: {**m, "runs": {rid: {}}},
    lambda m, rid: {**m, "runs": {rid: {"files": {"log.txt": None}}}},
    lambda m, rid: {**m, "runs": {rid: {"files": {"log.txt": {"size": 1}}}}},
    lambda m, rid: b"[" * 100000 + b"]" * 100000],
    ids=["list", "null", "runs null", "runs list", "run list", "run without files", "file null", "file without sha256",
         "nested deep"])
def test_import_refuses_a_manifest_of_another_shape_in_one_line(tmp_path, edit):
    """A bundle.json that is JSON but not the mapping export writes (a list, `runs` or a file's entry missing or of
    another type, nested thousands deep) is a one-line error, not a traceback."""
    _, bundle = _bundle_with(tmp_path, edit_manifest=edit)
    with pytest.raises(MMBenchError, match=r"bundle.json|not made by `mmbench export`"):
        import_bundle(bundle, tmp_path / "b")
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("clash", ["artifacts", "log.txt/x"])
def test_import_refuses_a_name_listed_both_as_a_file_and_as_a_folder(tmp_path, clash):
    """runs/<id>/artifacts as a file beside runs/<id>/artifacts/lat.npz (or a file under log.txt/) cannot both be
    unpacked: refused while verifying, before anything is written, in one line naming the two."""
    def edit(rid):
        extra = {f"runs/{rid}/{clash}": b"plain"}
        return {**extra, f"runs/{rid}/artifacts/lat.npz": b"x"} if clash == "artifacts" else extra

    run, bundle = _bundle_with(tmp_path, edit_files=edit)
    (tmp_path / "b").mkdir()
    with pytest.raises(MMBenchError, match=rf"holds runs/{run.id}/{clash.split('/')[0]} both as a file and as a "
                                           rf"folder"):
        import_bundle(bundle, tmp_path / "b")
    assert left_in(tmp_path / "b") == []


def test_import_of_a_name_too_long_for_the_file_system_is_one_line_and_leaves_nothing(tmp_path):
    run, bundle = _bundle_with(tmp_path, edit_files=lambda rid: {f"runs/{rid}/artifacts/{'n' * 300}.npz": b"x"})
    with pytest.raises(MMBenchError, match=rf"runs/{run.id}/artifacts/n+\.npz has a name too long for the file "
                                           r"system here; nothing imported"):
        import_bundle(bundle, tmp_path / "b")
    assert left_in(tmp_path / "b") == []  # no temporary folder left


def test_import_refuses_a_link_to_nothing_in_place_of_a_run(tmp_path):
    """A dangling symlink named as a bundled run is a conflict found before anything is written (it does not
    `exist()`, but no run can be renamed onto it): not an error half-way with the other runs already added."""
    a, b = tmp_path / "a", tmp_path / "b"
    fake_run(a, 0, {"coherence/joint": 0.30})
    r1 = fake_run(a, 1, {"coherence/joint": 0.40})
    export_runs(a, tmp_path / "x.tar.gz")
    b.mkdir()
    (b / r1.id).symlink_to(tmp_path / "gone")
    with pytest.raises(MMBenchError, match=rf"nothing imported; first: run {r1.id} exists here as a link to "
                                           rf"nothing"):
        import_bundle(tmp_path / "x.tar.gz", b)
    assert [p.name for p in b.iterdir()] == [r1.id]


@pytest.mark.parametrize("where", ["runs", "runs/sub"])
def test_import_into_a_runs_dir_that_is_a_file_is_one_line(tmp_path, where):
    fake_run(tmp_path / "a", 0, {"coherence/joint": 0.30})
    export_runs(tmp_path / "a", tmp_path / "x.tar.gz")
    (tmp_path / "runs").write_text("not a folder")
    with pytest.raises(MMBenchError, match=rf"{tmp_path / 'runs'} is a file, not a directory"):
        import_bundle(tmp_path / "x.tar.gz", tmp_path / where)
    assert (tmp_path / "runs").read_text() == "not a folder"


@pytest.mark.parametrize("record", ["metrics.json", "provenance.json"])
def test_a_record_nested_thousands_deep_is_refused_in_one_line(tmp_path, record):
    """json.loads raises RecursionError, not ValueError, on arrays nested ~100000 deep: a damaged record, not a
    traceback (as yamlio does for config.yaml)."""
    run, bundle = _bundle_with(tmp_path, edit_files=lambda rid: {f"runs/{rid}/{record}": b"[" * 100000 + b"]" * 100000})
    with pytest.raises(MMBenchError, match=rf"{record} cannot be read \(not valid JSON: nested too deeply"):
        import_bundle(bundle, tmp_path / "b")


def test_a_full_disk_during_export_or_import_names_the_file_and_leaves_nothing(tmp_path):
    # bundle.export_runs and BundleFiles.unpack: the tar's or a member's short write (a full disk) named no file, so
    # mmbench showed a traceback; it now names the file being written (os_error_line: free space), and no partial
    # bundle, staging folder or run is left
    from conftest import file_size_limit

    a, b = tmp_path / "a", tmp_path / "b"
    r = fake_run(a, 0, {"coherence/joint": 0.30})
    (r.dir / "artifacts").mkdir()
    (r.dir / "artifacts" / "latents.npz").write_bytes(os.urandom(200_000))  # does not compress
    (tmp_path / "x.tar.gz").write_bytes(b"the bundle before")
    with file_size_limit(50_000), pytest.raises(OSError) as e:
        export_runs(a, tmp_path / "x.tar.gz", force=True)
    assert (e.value.errno, e.value.filename) == (27, str(tmp_path / "x.tar.gz"))
    assert (tmp_path / "x.tar.gz").read_bytes() == b"the bundle before" and sorted(os.listdir(tmp_path)) == ["a", "x.tar.gz"]
    export_runs(a, tmp_path / "x.tar.gz", force=True)
    with file_size_limit(50_000), pytest.raises(OSError) as e:
        import_bundle(tmp_path / "x.tar.gz", b)
    assert e.value.errno == 27  # the file named is the one being written, in the run's staging folder
    assert re.fullmatch(rf"{re.escape(str(b))}/\.import-{r.id}-\w+/artifacts/latents\.npz", e.value.filename)
    assert not left_in(b)  # no staging folder left, no run
    assert import_bundle(tmp_path / "x.tar.gz", b)["added"] == [r.id]


def test_an_unpacking_error_that_is_not_a_full_disk_is_not_blamed_on_the_file_written(tmp_path, monkeypatch):
    # BundleFiles.unpack names the member being written only for a full disk's errors (ENOSPC, EDQUOT, EFBIG); an
    # I/O error (reading the bundle, say) keeps naming nothing: not the written file's fault
    import mmbench.bundle as bundle

    _one_run_bundle(tmp_path)

    def failing(*a, **k):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(bundle.shutil, "copyfileobj", failing)
    with pytest.raises(OSError) as e:
        import_bundle(tmp_path / "x.tar.gz", tmp_path / "b")
    assert (e.value.errno, e.value.filename) == (5, None)
    assert not left_in(tmp_path / "b")


def test_an_import_killed_before_its_rename_leaves_nothing_the_report_or_export_reads(tmp_path, monkeypatch):
    """A SIGKILL (no `finally` runs) between unpacking a run into its .import-* folder and renaming it into place
    leaves that folder, holding the run's records; the report and export are not about it (it is no run directory,
    not one left out), and importing again adds the run and removes the folder (no import is using it: imports
    into one runs directory unpack one at a time)."""
    import mmbench.bundle as bundle

    run = fake_run(tmp_path / "a", 0, {"coherence/joint": 0.30})
    export_runs(tmp_path / "a", tmp_path / "x.tar.gz")

    def killed(*a, **k):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:  # as a SIGKILL: the rename never happens and the temporary folder stays
        m.setattr(bundle.os, "rename", killed)
        m.setattr(bundle.shutil, "rmtree", lambda *a, **k: None)
        with pytest.raises(KeyboardInterrupt):
            import_bundle(tmp_path / "x.tar.gz", tmp_path / "b")
    assert [n.startswith(f".import-{run.id}-") for n in left_in(tmp_path / "b")] == [True]
    assert build_report(tmp_path / "b", _refs(tmp_path)).skipped == []
    assert bundle.finished_runs(tmp_path / "b") == []  # export: no run there yet
    assert import_bundle(tmp_path / "x.tar.gz", tmp_path / "b") == {"added": [run.id], "present": []}
    (tmp_path / "b" / ".snapshot").mkdir()  # hidden but not an import's: the user's (a file system's), kept
    assert import_bundle(tmp_path / "x.tar.gz", tmp_path / "b") == {"added": [], "present": [run.id]}
    assert left_in(tmp_path / "b") == [".snapshot", run.id]  # the killed import's removed
    left_out = []
    assert sorted(export_runs(tmp_path / "b", tmp_path / "y.tar.gz", left_out=left_out)["runs"]) == [run.id]
    assert left_out == []


def test_an_import_waits_for_another_unpacking_into_the_same_runs(tmp_path):
    """bundle.import_bundle: imports into one runs directory unpack one at a time (files.folder_lock), so one never
    removes the .import-* folder of another still unpacking."""
    import threading
    import time

    from mmbench.files import folder_lock

    run = fake_run(tmp_path / "a", 0, {"coherence/joint": 0.30})
    export_runs(tmp_path / "a", tmp_path / "x.tar.gz")
    (tmp_path / "b").mkdir()
    done = []
    t = threading.Thread(target=lambda: done.append(import_bundle(tmp_path / "x.tar.gz", tmp_path / "b")))
    try:
        with folder_lock(tmp_path / "b"):  # as another import unpacking (another open file: flock tells them apart)
            t.start()
            time.sleep(0.5)
            assert done == [] and not (tmp_path / "b" / run.id).exists()
    finally:
        t.join(30)
    assert done == [{"added": [run.id], "present": []}]


def test_an_import_unpacks_where_flock_is_emulated_with_fcntl_locks_as_on_nfs(tmp_path, nfs_flock):
    # bundle.import_bundle's lock on the runs folder (files.folder_lock) failed with EBADF on NFS (see test_data's
    # test of prepare on NFS)
    run = fake_run(tmp_path / "a", 0, {"coherence/joint": 0.30})
    export_runs(tmp_path / "a", tmp_path / "x.tar.gz")
    assert import_bundle(tmp_path / "x.tar.gz", tmp_path / "b") == {"added": [run.id], "present": []}


def test_an_export_removes_the_half_bundle_a_killed_export_left_and_no_other(tmp_path):
    # bundle.export_runs (files.remove_abandoned_temps): an export killed outright (SIGKILL) left its half-written
    # bundle, .B.tar.gz.<random>, beside the bundle for ever; an export holds an flock on its temporary file while it
    # writes, so the next export removes only those no process holds, and not one just created
    import fcntl
    import os
    import time

    fake_run(tmp_path / "a", 0, {"coherence/joint": 0.30})
    out = tmp_path / "B.tar.gz"
    killed, writing, young, other = (tmp_path / n for n in (".B.tar.gz.k1ll3d_x", ".B.tar.gz.wr1t1ng_", ".B.tar.gz.n0w_0000",
                                                           ".C.tar.gz.k1ll3d_y"))
    for p in (killed, writing, young, other):
        p.write_bytes(b"\x1f\x8b half a bundle")
    for p in (killed, writing, other):
        os.utime(p, (time.time() - 60, time.time() - 60))
    held = os.open(writing, os.O_RDWR)
    fcntl.flock(held, fcntl.LOCK_EX)  # another export, still writing
    try:
        export_runs(tmp_path / "a", out)
    finally:
        os.close(held)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == [
        ".B.tar.gz.n0w_0000", ".B.tar.gz.wr1t1ng_", ".C.tar.gz.k1ll3d_y"]
    assert read_bundle(out)[0]["runs"]
    import mmbench.bundle as bundle

    real_open, probed = bundle.tarfile.open, []

    def probing(name, *a, **k):  # while the bundle is written, another process cannot take its temporary file's lock
        fd = os.open(name, os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            probed.append(Path(name).name)
        finally:
            os.close(fd)
        return real_open(name, *a, **k)

    bundle.tarfile.open = probing
    fds = len(os.listdir("/proc/self/fd"))
    try:
        export_runs(tmp_path / "a", tmp_path / "D.tar.gz")
    finally:
        bundle.tarfile.open = real_open
    assert len(probed) == 1 and probed[0].startswith(".D.tar.gz.")
    assert len(os.listdir("/proc/self/fd")) == fds  # the held descriptor is let go with the bundle written


def test_export_leaves_behind_a_checkpoint_write_cut_short_by_a_kill(tmp_path):
    """A process killed while atomic_write wrote last.pt leaves its hidden temporary file (.last.pt.<random>)
    beside the checkpoints: half a file, not the run's; it does not travel."""
    run = fake_run(tmp_path / "a", 0, {"coherence/joint": 0.30})
    (run.dir / "checkpoints").mkdir()
    torch.save({"model": {"w": torch.zeros(3)}, "epoch": 1}, run.dir / "checkpoints" / "last.pt")
    (run.dir / "checkpoints" / ".last.pt.k1ll3d_x").write_bytes(b"PK\x03\x04 half a checkpoint")
    (run.dir / "checkpoints" / ".staging").mkdir()  # a hidden folder's files are not the run's either
    (run.dir / "checkpoints" / ".staging" / "best.pt").write_bytes(b"half")
    (run.dir / "artifacts").mkdir(exist_ok=True)
    (run.dir / "artifacts" / "fig.png").write_bytes(b"png")
    (run.dir / "artifacts" / ".fig.png.k1ll3d_y").write_bytes(b"half a figure")
    files = export_runs(tmp_path / "a", tmp_path / "x.tar.gz", checkpoints=True)["runs"][run.id]["files"]
    assert "checkpoints/last.pt" in files and not [f for f in files if "/." in f or f.startswith(".")]
    assert "artifacts/fig.png" in files
