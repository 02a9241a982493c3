"""The shipped reference files say what the papers say: claim strength (strict / hedged), the run filters of
individual tables and figures, and provenance a reader of the repository can follow."""
import math
import re
from pathlib import Path

import pytest
import yaml

from mmbench.config import build_run_config
from mmbench.errors import ConfigError
from mmbench.render import render_markdown
from mmbench.references import load_reference_files
from mmbench.report import build_report
from mmbench.results import Run

ROOT = Path(__file__).resolve().parents[1]
REFS = ROOT / "reference_results"


PAPER_FILES = sorted(p for p in REFS.glob("*.yaml") if p.name != "budgets.yaml")  # budgets.yaml: mmbench/budgets.py
BUDGETS = yaml.safe_load((REFS / "budgets.yaml").read_text())["budgets"]


def at_paper_budget(table, method):
    """The train/eval settings of the first budget the shipped budgets.yaml gives `table` and `method` (so that a
    test's run fills the paper's cells; a run at another budget is shown, not scored)."""
    out = {"train": {}, "eval": {}}
    for key, value in BUDGETS[table][method][0].items():
        section, name = key.split(".")
        out[section][name] = value
    return out


def run_with(runs_dir, method, metrics, tables, seed=0, eval=None, data=("polydigits", None), train=None,
             **method_fields):
    """A run of `tables` at the paper's budget of the first (its `train` and `eval` settings over it)."""
    budget = at_paper_budget(tables[0], method) if tables[0] in BUDGETS else {"train": {}, "eval": {}}
    cfg = build_run_config({"dataset": data[0], "variant": data[1], "method": {"name": method, **method_fields},
                            "seed": seed, "tables": list(tables), "train": {**budget["train"], **(train or {})},
                            "eval": {**budget["eval"], **dict(eval or {})}})
    run = Run(cfg, runs_dir)
    run.init()
    run.write_metrics(metrics, eval_precision=cfg.eval.precision)  # as evaluate writes it (the report checks it)


SMVAE_LR = {"lr_protocol": "smvae"}  # the suites' latent-classification protocols, pinned by the reference files
MMVAMP_LR = {"lr_protocol": "mmvamp"}
RATS = ("rats", "deposit")  # the recordings the MM-VAMP rat figures are on (their claims pin the variant)
MIXTURE_AS_AUTHORS = {"mixture_representation": "component", "ll_proposal": "component"}  # the suites' MMVAE reading


def shipped_claim(rep, claim_id):
    return next(c for c in rep.claims if c.id == claim_id)


# ----- claim strength ---------------------------------------------------------------------------------
def _claims_file(tmp_path, strength_of_failing):
    side = {"method": "mopoe", "metric": "latent_acc_by_n/1"}
    refs = tmp_path / f"refs-{strength_of_failing}"
    refs.mkdir()
    (refs / "p.yaml").write_text(yaml.safe_dump({"claims": [
        {"id": "holds", "paper": "P", "figure": "F", "quote": "q", "source": "s",
         "holds": [{"left": side, "op": ">", "right": 0.1}]},
        {"id": "does-not-hold", "paper": "P", "figure": "F", "quote": "typically q", "source": "s",
         "strength": strength_of_failing, "holds": [{"left": side, "op": ">", "right": 0.9}]},
    ]}))
    return refs


def test_a_hedged_claim_that_does_not_hold_is_shown_but_does_not_fail_compare(tmp_path):
    runs = tmp_path / "runs"
    run_with(runs, "mopoe", {"latent_acc_by_n/1": 0.5}, ["F"])
    hedged = build_report(runs, _claims_file(tmp_path, "hedged"))
    claim = shipped_claim(hedged, "does-not-hold")
    assert claim.strength == "hedged" and claim.status == "fails"
    assert hedged.failures == 0 and hedged.missing == 0
    md = render_markdown(hedged.summaries, hedged.refs, hedged.claims, hedged.paper_lines)
    assert "✗ does not hold (hedged: evidence, not a failure)" in md and "0.500 > 0.900" in md
    assert hedged.paper_lines == ["P: 0 of 0 cells within tolerance, 1 of 1 claims hold, 0 missing; "
                                  "hedged claims (evidence only): 0 of 1 hold"]

    strict = build_report(runs, _claims_file(tmp_path, "strict"))
    assert shipped_claim(strict, "does-not-hold").status == "fails" and strict.failures == 1
    assert "✗ fails" in render_markdown(strict.summaries, strict.refs, strict.claims)


def test_compare_exit_status_follows_claim_strength(tmp_path):
    runs = tmp_path / "runs"
    run_with(runs, "mopoe", {"latent_acc_by_n/1": 0.5}, ["F"])

    from typer.testing import CliRunner

    from mmbench.cli import app

    def report(refs):  # in process: the exit status --compare gives a CI job
        return CliRunner().invoke(app, ["report", "--runs-dir", str(runs), "--compare", str(refs), "--format", "md"],
                                  env={"COLUMNS": "200"})

    hedged = report(_claims_file(tmp_path, "hedged"))
    assert hedged.exit_code == 0, hedged.output
    assert "does not hold (hedged" in hedged.output and "hedged claims, evidence only: 0 of 1 hold" in hedged.output
    strict = report(_claims_file(tmp_path, "strict"))
    assert strict.exit_code == 1 and "1 failing" in strict.output


def test_claim_strength_is_validated(tmp_path):
    (tmp_path / "r.yaml").write_text(yaml.safe_dump({"claims": [
        {"id": "c", "paper": "P", "figure": "F", "quote": "q", "source": "s", "strength": "weak",
         "holds": [{"left": {"method": "m", "metric": "k"}, "op": ">", "right": 1}]}]}))
    with pytest.raises(ConfigError, match=r"r.yaml: claims\[0\].strength: must be one of strict, hedged, not 'weak'"):
        load_reference_files(tmp_path)


HEDGES = re.compile(r"\b(typically|may lead|most of the|overall)\b", re.I)  # hedges on the claim itself, not on an explanation


def test_shipped_claims_whose_quote_hedges_are_hedged():
    """A quote that hedges ("typically", "may lead to", "on most of the attributes", "overall") is never a strict
    pass/fail; nor is a check that its source calls a proxy or our reading."""
    _, claims = load_reference_files(REFS)
    strengths = {c.strength for c in claims}
    assert strengths == {"strict", "hedged"}
    for c in claims:
        if HEDGES.search(c.quote) or re.search(r"\bproxy\b|our reading", c.source):
            assert c.strength == "hedged", f"{c.id}: the quote or the source hedges, the claim must be hedged"


# ----- where filters of individual tables and figures ---------------------------------------------------
def test_smvae_fig2_claims_read_end_to_end_runs_only(tmp_path):
    """The suite tags SMVAE Fig. 3's two_stage runs with Fig. 2 too; Fig. 2's claims must not average them in."""
    runs = tmp_path / "runs"
    keys = [f"{f}/{n}" for f in ("latent_acc_by_n", "coherence_by_n") for n in (1, 2, 3, 4)]
    for method in ("mvae", "mmvae", "mopoe"):
        run_with(runs, method, {k: 0.6 for k in keys}, ["SMVAE Fig. 2"],
                 eval={**SMVAE_LR, **(MIXTURE_AS_AUTHORS if method == "mmvae" else {})})
    run_with(runs, "smvgon", {k: 0.3 for k in keys}, ["SMVAE Fig. 2"], eval=SMVAE_LR, options={"schedule": "end_to_end"})
    run_with(runs, "smvae", {k: 0.7 for k in keys}, ["SMVAE Fig. 2", "SMVAE Fig. 3"], eval=SMVAE_LR, options={"schedule": "end_to_end"})
    run_with(runs, "smvae", {k: 0.3 for k in keys}, ["SMVAE Fig. 2", "SMVAE Fig. 3"], eval=SMVAE_LR, options={"schedule": "two_stage"})
    rep = build_report(runs, REFS)
    # averaged with the two-stage run SMVAE would be at 0.5, below the baselines' 0.6
    assert shipped_claim(rep, "fig2-smvae-outperforms-existing").status == "holds"
    assert shipped_claim(rep, "fig3-end-to-end-beats-two-stage").status == "holds"
    lowest = shipped_claim(rep, "fig2-smvgon-lowest")
    assert lowest.status == "holds" and any("0.300 < 0.700 (smvae" in d for d in lowest.details)
    assert not any("0.500" in d for c in rep.claims if c.figure == "SMVAE Fig. 2" for d in c.details)


def test_mopoe_tables_2_to_4_read_the_beta_of_app_c2(tmp_path):
    """Tables 2-4 are "generated with beta = 5.0" (App. C.2): every cell filters on it, so beta-sweep runs at other
    betas that serve the same tables are never averaged in."""
    cells, _ = load_reference_files(REFS)
    for c in cells:
        if c.table in ("MoPoE Table 2", "MoPoE Table 3", "MoPoE Table 4"):
            pinned = {"eval.lr_protocol": "mopoe"} if c.metric.startswith("latent_") else {}
            setting = mixture_setting(c.method, c.metric, pinned)
            pinned.update({setting: "component"} if setting else {})
            pinned.update({"eval.ll_samples": 15} if c.metric.startswith("loglik") else {})
            assert c.where == {**pinned, "method.beta": 5.0}, f"{c.table} {c.row} {c.column}: where {c.where}"
    runs = tmp_path / "runs"
    run_with(runs, "mmvae", {"latent_acc/mnist": 0.95, "coherence/joint": 0.28}, ["MoPoE Table 2", "MoPoE Table 3"], beta=5.0)
    run_with(runs, "mmvae", {"latent_acc/mnist": 0.10, "coherence/joint": 0.90}, ["MoPoE Table 2", "MoPoE Table 3"],
             seed=1, beta=2.5)
    rep = build_report(runs, REFS)
    got = {(c.table, c.metric): (c.produced, c.n_runs) for c in rep.cells if c.method == "mmvae" and c.produced is not None}
    assert got == {("MoPoE Table 2", "latent_acc/mnist"): (0.95, 1), ("MoPoE Table 3", "coherence/joint"): (0.28, 1)}


def test_mmvamp_fig6_reads_the_pooled_views_accuracy(tmp_path):
    """"Odor separation only occurred within single views": a per-view classifier cannot see it; the pooled one can."""
    runs = tmp_path / "runs"
    # every model separates odors within each view (per-view accuracy 0.9); only MM-VAMP shares the space across views
    for method, beta, pooled in (("mmvamp", 1e-3, 0.85), ("independent", 1e-5, 0.3), ("aggregated", 1e-2, 0.35)):
        run_with(runs, method, {"latent_acc_by_n/1": 0.9, "latent_acc/pooled": pooled}, ["MM-VAMP Fig. 6"], beta=beta,
                 eval=MMVAMP_LR, data=RATS)
    claim = shipped_claim(build_report(runs, REFS), "fig6-rats-odor-separation-at-best-beta")
    assert claim.status == "holds" and claim.strength == "hedged"
    assert any("mmvamp latent_acc/pooled = 0.850 > 0.300" in d for d in claim.details)

    runs2 = tmp_path / "runs2"  # the baselines' views share one space as well: the claim must not hold
    for method, beta in (("mmvamp", 1e-3), ("independent", 1e-5), ("aggregated", 1e-2)):
        run_with(runs2, method, {"latent_acc_by_n/1": 0.9, "latent_acc/pooled": 0.88}, ["MM-VAMP Fig. 6"], beta=beta,
                 eval=MMVAMP_LR, data=RATS)
    assert shipped_claim(build_report(runs2, REFS), "fig6-rats-odor-separation-at-best-beta").status == "fails"
    runs3 = tmp_path / "runs3"  # the first runs on simulated rats: they decide nothing about the paper's recordings
    for method, beta, pooled in (("mmvamp", 1e-3, 0.85), ("independent", 1e-5, 0.3), ("aggregated", 1e-2, 0.35)):
        run_with(runs3, method, {"latent_acc_by_n/1": 0.9, "latent_acc/pooled": pooled}, ["MM-VAMP Fig. 6"], beta=beta,
                 eval=MMVAMP_LR, data=("rats", "simulated"))
    claim = shipped_claim(build_report(runs3, REFS), "fig6-rats-odor-separation-at-best-beta")
    assert claim.status == "missing" and "variant is 'simulated', the paper's is 'deposit'" in claim.excluded


def test_mmvamp_fig4a_reads_the_average_of_the_unimodal_aps(tmp_path):
    """Fig. 4a plots "the average classification performance of all unimodal latent representations":
    latent_ap_by_n/1 (the mean of img's and text's mean AP), a strict claim; one modality alone does not decide it."""
    runs = tmp_path / "runs"
    for method, img, text in (("mmvamp", 0.50, 0.80), ("independent", 0.55, 0.60), ("aggregated", 0.52, 0.58)):
        run_with(runs, method, {"latent_ap/img": img, "latent_ap/text": text, "latent_ap_by_n/1": (img + text) / 2},
                 ["MM-VAMP Fig. 4"], beta=1.0, eval=MMVAMP_LR)
    claim = shipped_claim(build_report(runs, REFS), "fig4a-latent-mmvamp-best")
    assert claim.strength == "strict" and claim.status == "holds", claim.details  # img alone: 0.50 < 0.55
    assert {s["metric"] for h in claim.holds for s in (h["left"], h["right"])} == {"latent_ap_by_n/1"}


# ----- the latent-classification protocol is part of what a latent cell means ---------------------------
PROTOCOL_OF_FILE = {"mopoe_iclr21.yaml": "mopoe", "smvae_iclr22.yaml": "smvae", "mmvamp.yaml": "mmvamp"}


def test_every_latent_cell_and_claim_side_pins_its_papers_protocol():
    """The same key (latent_acc/..., latent_ap/...) means another classifier under another eval.lr_protocol (MoPoE
    App. B: one regression per subset; SMVAE §5: fitted on all modalities; MM-VAMP App. B.2.2: unimodal), and
    latent_ap another score under eval.ap_scores: every latent cell and claim side filters on its paper's."""
    seen = 0
    for path in PAPER_FILES:
        data = yaml.safe_load(path.read_text())
        sides = [(c["metric"], c.get("where") or {}, f"cell {c['table']} {c['row']}/{c['column']}") for c in data["cells"]]
        sides += [(s["metric"], {**(k.get("where") or {}), **(s.get("where") or {})}, f"claim {k['id']}")
                  for k in data["claims"] for h in k["holds"] for s in (h["left"], h["right"]) if isinstance(s, dict)]
        for metric, where, what in sides:
            if metric.startswith("latent_"):
                seen += 1
                assert where.get("eval.lr_protocol") == PROTOCOL_OF_FILE[path.name], f"{path.name}: {what} {metric}"
                assert metric.startswith("latent_acc") or where.get("eval.ap_scores") == "hard", f"{path.name}: {what}"
            else:
                assert "eval.lr_protocol" not in where, f"{path.name}: {what} {metric} does not depend on it"
    assert seen > 200


def mixture_setting(method: str, metric: str, where: dict):
    """The eval setting an MMVAE number depends on (how a mixture posterior q(z | X_S), |S| >= 2, is read), or None."""
    if not method.startswith("mmvae") or metric == "coherence/joint":  # prior samples: no posterior
        return None
    family, _, arg = metric.partition("/")
    setting = "eval.ll_proposal" if family.startswith("loglik") else "eval.mixture_representation"
    if family.endswith("_by_n"):
        mixture = int(arg) >= 2
    else:
        mixture = arg == "joint" or "+" in arg.split("->")[0].split("/")[0]
    if family.startswith("latent") and where.get("eval.lr_protocol") == "smvae":
        mixture = True  # fitted on the full set's representation whatever subset is scored
    return setting if mixture else None


def test_every_mmvae_cell_and_claim_side_pins_how_a_mixture_posterior_is_read():
    """An MMVAE number over |S| >= 2 inputs means another quantity when the mixture is read as its mean (an ensemble:
    accuracy rises with the inputs) than as the selected component (the authors' evaluation, MoPoE utils/BaseMMVae.py
    moe_fusion; the suites' setting): every such cell and claim side pins the suites' reading."""
    pinned = 0
    for path in PAPER_FILES:
        data = yaml.safe_load(path.read_text())
        sides = [(c["method"], c["metric"], c.get("where") or {}, f"cell {c['table']} {c['row']}/{c['column']}")
                 for c in data["cells"]]
        sides += [(s["method"], s["metric"], {**(k.get("where") or {}), **(s.get("where") or {})}, f"claim {k['id']}")
                  for k in data["claims"] for h in k["holds"] for s in (h["left"], h["right"]) if isinstance(s, dict)]
        for method, metric, where, what in sides:
            setting = mixture_setting(method, metric, where)
            if setting:
                pinned += 1
                assert where.get(setting) == "component", f"{path.name}: {what} {method} {metric} needs {setting}"
    assert pinned == 52  # 12 cells and 8 claim sides of MoPoE, 18 and 14 of SMVAE
    suite_eval = {name: yaml.safe_load((ROOT / "suites" / name).read_text())["defaults"]["eval"]
                  for name in ("mopoe_iclr21.yaml", "smvae_iclr22.yaml")}
    for name, ev in suite_eval.items():
        assert ev["mixture_representation"] == ev["ll_proposal"] == "component", name


def test_a_run_reading_the_mixture_as_its_mean_does_not_fill_an_mmvae_multi_input_cell(tmp_path):
    runs = tmp_path / "runs"
    run_with(runs, "mmvae", {"latent_acc/mnist+svhn": 0.96}, ["MoPoE Table 2"], beta=5.0)  # eval defaults: mean
    cell = next(c for c in build_report(runs, REFS).cells
                if c.table == "MoPoE Table 2" and c.method == "mmvae" and c.metric == "latent_acc/mnist+svhn")
    assert cell.produced is None and "eval.mixture_representation is 'mean', the paper's is 'component'" in cell.excluded


def test_budget_biased_cells_pin_the_papers_budget_and_the_full_tiers_meet_it():
    """FID rises as its sample count falls and the K-sample log-likelihood bound falls with K: every FID cell pins
    eval.fid_samples 10000 and every log-likelihood cell eval.ll_samples 15 (MoPoE App. B), and the full tier of each
    suite that serves them runs at that budget (so its runs fill the cells; the quick/smoke tiers' do not)."""
    budget = {"fid": ("eval.fid_samples", 10000), "loglik": ("eval.ll_samples", 15)}
    counted = {}
    for path in PAPER_FILES:
        for c in yaml.safe_load(path.read_text())["cells"]:
            family = c["metric"].split("/")[0]
            if family in budget:
                key, value = budget[family]
                counted[family] = counted.get(family, 0) + 1
                assert (c.get("where") or {}).get(key) == value, f"{path.name}: {c['table']} {c['row']}/{c['column']}"
    assert counted == {"fid": 12, "loglik": 35}
    for suite, (section, value) in {"mrvae.yaml": ("fid_samples", 10000), "mopoe_iclr21.yaml": ("ll_samples", 15)}.items():
        data = yaml.safe_load((ROOT / "suites" / suite).read_text())
        assert data["defaults"]["eval"][section] == value and not data["tiers"]["full"], suite


def test_every_cell_and_claim_of_a_table_built_on_a_dataset_variant_pins_that_variant():
    """A table the suites reproduce on one variant (vanilla PolyMNIST, the rats' deposited data, ...) is matched only
    by runs on it: the MoPoE Fig. 3 cells, the SMVAE Fig. 2-3 and the rat claims matched any variant (runs on the
    extended PolyMNIST passed Fig. 3; rats runs on simulated data decided Fig. 5's strict claims)."""
    from mmbench.suite import load_suite

    variants = {}  # table -> the variants the suites' experiments reproducing it use
    for path in sorted((ROOT / "suites").glob("*.yaml")):
        for e in load_suite(path).experiments:
            for table in e.reproduces:
                variants.setdefault(table, set()).add(e.variant)
    cells, claims = load_reference_files(REFS)
    checked = 0
    for where_of, table, what in ([(c.where, c.table, f"{c.table} {c.row}/{c.column}") for c in cells]
                                  + [(c.where, c.figure, c.id) for c in claims]):
        wanted = variants.get(table, set()) - {None}
        if wanted:
            checked += 1
            assert (where_of or {}).get("variant") in wanted, f"{what}: pin variant ({', '.join(sorted(wanted))})"
    assert checked >= 50  # every variant-built table: MoPoE Fig. 3, mrVAE, MM-VAMP, SMVAE Figs. 2-3


def test_a_quick_tier_fid_does_not_fill_a_paper_fid_cell(tmp_path):
    runs = tmp_path / "runs"
    cfg = build_run_config({"dataset": "polydigits", "variant": "vanilla", "method": {"name": "mrvae"}, "seed": 0,
                            "tables": ["mrVAE Table 2a"], "train": {"select": "best_test_loss"},
                            "eval": {"fid_samples": 2000}})
    run = Run(cfg, runs)
    run.init()
    run.write_metrics({"fid/m0->m0": 100.0})
    cell = next(c for c in build_report(runs, REFS).cells if c.table == "mrVAE Table 2a" and c.method == "mrvae"
                and c.metric == "fid/m0->m0")
    assert cell.produced is None and "eval.fid_samples is 2000, the paper's is 10000" in (cell.excluded or ""), cell


def test_runs_of_another_protocol_do_not_fill_a_latent_cell_and_the_report_says_why(tmp_path):
    runs = tmp_path / "runs"
    run_with(runs, "mvae", {"latent_acc/mnist": 0.30}, ["SMVAE Table 1"])  # eval.lr_protocol's default: mopoe
    rep = build_report(runs, REFS)
    cell = next(c for c in rep.cells if c.table == "SMVAE Table 1" and c.method == "mvae" and c.metric == "latent_acc/mnist")
    assert cell.status == "missing" and cell.produced is None
    assert cell.excluded == "eval.lr_protocol is 'mopoe', the paper's is 'smvae' (1 run)"
    md = render_markdown(rep.summaries, rep.refs, rep.claims)
    assert "runs left out by the cell's filter: eval.lr_protocol is 'mopoe', the paper's is 'smvae' (1 run)" in md

    from typer.testing import CliRunner

    from mmbench.cli import app
    out = CliRunner().invoke(app, ["report", "--runs-dir", str(runs), "--compare", str(REFS), "--format", "csv",
                                   "--out", str(tmp_path / "r.csv")], env={"COLUMNS": "400"})
    assert out.exit_code == 1 and "1 missing cells and 0 missing claims have runs that their filter leaves out" in \
        " ".join(out.output.split()), out.output
    import pandas as pd
    row = pd.read_csv(tmp_path / "r.csv").query("table == 'SMVAE Table 1' and method == 'mvae' and metric == 'latent_acc/mnist'")
    assert list(row["excluded_by_filter"]) == [cell.excluded]

    run_with(runs, "mvae", {"latent_acc/mnist": 0.80}, ["SMVAE Table 1"], seed=1, eval=SMVAE_LR)
    cell = next(c for c in build_report(runs, REFS).cells
                if c.table == "SMVAE Table 1" and c.method == "mvae" and c.metric == "latent_acc/mnist")
    assert (cell.produced, cell.n_runs, cell.excluded) == (0.80, 1, None)  # the mopoe-protocol run is not averaged in


def test_a_claim_whose_runs_its_filter_leaves_out_says_which_setting(tmp_path):
    """A claim side pins its paper's protocol too: runs of the figure scored another way leave it missing, and the
    evidence names the setting, not "no runs tagged" (which stays for a figure without runs)."""
    runs = tmp_path / "runs"
    runs.mkdir()
    assert shipped_claim(build_report(runs, REFS), "fig4a-latent-mmvamp-best").details == [
        "no runs tagged 'MM-VAMP Fig. 4' match"]
    for method in ("mmvamp", "independent", "aggregated"):  # eval.lr_protocol's default: mopoe
        run_with(runs, method, {"latent_ap_by_n/1": 0.5}, ["MM-VAMP Fig. 4"], beta=1.0)
    claim = shipped_claim(build_report(runs, REFS), "fig4a-latent-mmvamp-best")
    assert claim.status == "missing"
    assert claim.excluded == "mmvamp latent_ap_by_n/1: eval.lr_protocol is 'mopoe', the paper's is 'mmvamp' (1 run)"
    assert all("no runs pass the filter" in d and "eval.lr_protocol is 'mopoe', the paper's is 'mmvamp'" in d
               for d in claim.details), claim.details

    from typer.testing import CliRunner

    from mmbench.cli import app
    out = CliRunner().invoke(app, ["report", "--runs-dir", str(runs), "--compare", str(REFS), "--format", "md"],
                             env={"COLUMNS": "400"})
    assert "0 missing cells and 1 missing claims have runs that their filter leaves out, e.g. claim " \
           "fig4a-latent-mmvamp-best" in " ".join(out.output.split()), out.output


def test_mopoe_fig3_flat_claim_states_both_readings():
    _, claims = load_reference_files(REFS)
    flat = next(c for c in claims if c.id == "fig3-mmvae-flat")
    assert flat.strength == "hedged"
    assert "should not be able to benefit" in flat.source and "Reading A" in flat.source and "Reading B (chosen)" in flat.source
    mopoe_gain = next(c for c in claims if c.id == "fig3-more-inputs-help-mopoe")
    assert mopoe_gain.strength == "strict" and {h["left"]["method"] for h in mopoe_gain.holds} == {"mopoe"}


# ----- provenance ---------------------------------------------------------------------------------------
UNFOLLOWABLE = re.compile(r"official-setups|shared/|rats\.md|peers\.md")


def test_no_citation_a_reader_of_the_repository_cannot_follow():
    """Citations name the paper (section, equation, table) or the authors' repository, file and function, never
    notes outside the repository. Tests are exempt: they may read shared data the integration tests need."""
    hits = []
    paths = [ROOT / "README.md"] + [p for d in ("mmbench", "suites", "reference_results", "docs")
                                    for p in sorted((ROOT / d).rglob("*")) if p.is_file()]
    for path in paths:
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        hits += [f"{path.relative_to(ROOT)}:{i}: {line.strip()}" for i, line in enumerate(text.splitlines(), 1)
                 if UNFOLLOWABLE.search(line)]
    assert not hits, "citations outside the repository:\n" + "\n".join(hits)


def test_mopoe_on_polymnist_has_one_learning_rate_across_suites():
    """MoPoE on vanilla PolyMNIST runs at one lr in every suite (the paper's 1e-3, MoPoE App. D.2; the job script's
    5e-4 is the documented alternative), not 1e-3 in one suite and 5e-4 in another."""
    from mmbench.suite import load_suite

    lrs = {(p.name, r.train.lr) for p in sorted((ROOT / "suites").glob("*.yaml")) for r in load_suite(p).runs("full")
           if r.method.name == "mopoe" and r.dataset == "polymnist" and r.variant == "vanilla"}
    assert {lr for _, lr in lrs} == {1e-3}, sorted(lrs)
    assert {name for name, _ in lrs} >= {"mopoe_iclr21.yaml", "mrvae.yaml"}


def test_mrvae_and_mopoe_train_at_one_learning_rate_in_the_mrvae_suite():
    """App. E.3's "fair comparison between models": mrVAE trains at MoPoE's lr (1e-3, MoPoE App. D.2) in every tier."""
    from mmbench.suite import load_suite

    suite = load_suite(ROOT / "suites" / "mrvae.yaml")
    for tier in ("full", "quick", "smoke"):
        assert {(r.method.name, r.train.lr) for r in suite.runs(tier)} == {("mrvae", 1e-3), ("mopoe", 1e-3)}, tier


def test_mrvae_runs_at_beta_one_with_objective_q_in_every_tier():
    """suites/mrvae.yaml: Eq. (4) weighs every term 1, so mrVAE runs at beta 1 with objective q (the suite's header)
    while MoPoE keeps beta 2.5 (a second `method_overrides:` key once dropped the mrVAE entry: beta 2.5)."""
    from mmbench.suite import load_suite

    suite = load_suite(ROOT / "suites" / "mrvae.yaml")
    for tier in ("full", "quick", "smoke"):
        got = {(r.method.name, r.method.beta, r.method.options.get("objective")) for r in suite.runs(tier)}
        assert got == {("mrvae", 1.0, "q"), ("mopoe", 2.5, None)}, (tier, got)


def test_smvae_suite_scales_mvaes_unimodal_elbos_where_weights_differ():
    """SMVAE §5 scales every likelihood: the suite's MVAE runs weigh their unimodal ELBOs by the reconstruction
    weights on MNIST-SVHN-Text and CelebA (weights not all 1); on PolyMNIST (all 1) both readings agree and the runs
    keep the MoPoE suite's ids."""
    from mmbench.suite import load_suite

    suite = load_suite(ROOT / "suites" / "smvae_iclr22.yaml")
    for tier in ("full", "quick", "smoke"):
        got = {(r.dataset, r.method.options.get("unimodal_weights")) for r in suite.runs(tier) if r.method.name == "mvae"}
        assert got == {("mnist-svhn-text", "rec_weights"), ("celeba", "rec_weights"), ("polymnist", None)}, (tier, got)


def test_provenance_names_real_options():
    """docs/provenance.md: every `method.options.X` it offers is an option of some method, and every
    `--set PATH=` is a field of the run config (a stale name would send a reader nowhere)."""
    from mmbench.config import RunConfig
    from mmbench.registry import METHODS, _load_builtins
    from mmbench.report import flatten

    _load_builtins()
    text = (ROOT / "docs" / "provenance.md").read_text()
    options = set().union(*(set(cls.options) for _, cls in METHODS.items()))
    named = set(re.findall(r"method\.options\.(\w+)", text))
    assert named and named <= options, sorted(named - options)
    fields = set(flatten(RunConfig().to_dict()))
    paths = set(re.findall(r"--set ([\w.]+)=", text))
    assert paths and paths <= fields, sorted(paths - fields)


def test_extraction_repairs_are_flagged_in_the_cells():
    """Cells read from a garbled extraction say so in their source (SMVAE Tables 3-5)."""
    cells, _ = load_reference_files(REFS)
    flagged = {(c.table, c.row, c.column): c.value for c in cells if "the extraction prints this cell as" in c.source}
    assert flagged == {("SMVAE Table 3", "MVAE", "I | T"): 0.30, ("SMVAE Table 4", "JMVAE", "I | T"): 0.42,
                       ("SMVAE Table 5", "VAE", "Latent M+S+T"): 0.99, ("SMVAE Table 5", "VAE", "M+S+T → M"): 0.96}


def test_mmvamp_fig3_reconstruction_lowest_at_a_very_small_beta(tmp_path):
    """The hedged reading of "lowest reconstruction with a very small β": each method's recon/joint is lowest at one
    of the four smallest betas of the sweep; the strict claim checks 2^-8 against 2^3 only. A minimum at 2^-2 passes
    the strict claim and fails the hedged one; an incomplete sweep leaves it undecided."""
    betas = [2.0 ** k for k in range(-8, 4)]
    refs = tmp_path / "refs"
    refs.mkdir()
    (refs / "mmvamp.yaml").write_text((REFS / "mmvamp.yaml").read_text())

    def sweep(runs, curve, methods=("independent", "aggregated", "mmvamp"), skip=()):
        for method in methods:
            for beta in betas:
                if beta in skip:
                    continue
                cfg = build_run_config({"dataset": "polydigits", "variant": "translated", "seed": 0,
                                        "method": {"name": method, "beta": beta}, "tables": ["MM-VAMP Fig. 3"]})
                run = Run(cfg, runs)
                run.init()
                run.write_metrics({"recon/joint": curve(beta)})

    sweep(tmp_path / "mono", lambda b: 10 + math.log2(b))  # lowest at 2^-8
    rep = build_report(tmp_path / "mono", refs)
    strict, hedged = (shipped_claim(rep, "fig3-small-beta-lowest-reconstruction"),
                      shipped_claim(rep, "fig3-small-beta-lowest-reconstruction-argmin"))
    assert (strict.status, hedged.status, hedged.strength) == ("holds", "holds", "hedged")
    assert any("independent recon/joint is lowest at method.beta=0.00390625 (2.000; over 12 values)" in d
               for d in hedged.details)
    # minimum at 2^-2 (20), 2^-8 (26) still below 2^3 (30)
    sweep(tmp_path / "u", lambda b: 20 + abs(math.log2(b) + 2) * (1 if b < 0.25 else 2))
    rep = build_report(tmp_path / "u", refs)
    strict, hedged = (shipped_claim(rep, "fig3-small-beta-lowest-reconstruction"),
                      shipped_claim(rep, "fig3-small-beta-lowest-reconstruction-argmin"))
    assert strict.status == "holds" and hedged.status == "fails"
    assert any("lowest at method.beta=0.25 (20.000" in d and d.endswith("NO") for d in hedged.details)
    sweep(tmp_path / "part", lambda b: 10 + math.log2(b), skip=(2.0 ** -6,))
    assert shipped_claim(build_report(tmp_path / "part", refs),
                         "fig3-small-beta-lowest-reconstruction-argmin").status == "missing"


def test_extremum_claims_are_validated(tmp_path):
    side = {"method": "mopoe", "metric": "recon/joint"}
    base = {"id": "c", "paper": "P", "figure": "F", "quote": "q", "source": "s"}
    for claim, match in (({**base, "holds": [{"left": side, "op": "lowest_at", "right": [1.0]}]}, r"for_each.*needs"),
                         ({**base, "for_each": "method.beta", "holds": [{"left": side, "op": "lowest_at", "right": 1.0}]},
                          r"right.*non-empty list"),
                         ({**base, "for_each": "method.beta", "holds": [{"left": side, "op": "smallest", "right": [1]}]},
                          r"op.*lowest_at, highest_at")):
        (tmp_path / "p.yaml").write_text(yaml.safe_dump({"claims": [claim]}))
        with pytest.raises(ConfigError, match=match):
            load_reference_files(tmp_path)


def test_the_readmes_count_the_reference_files_right():
    """The counts the READMEs print (cells, claims, hedged claims) are those of the shipped files."""
    per_file = {}
    for path in PAPER_FILES:
        raw = yaml.safe_load(path.read_text()) or {}
        claims = raw.get("claims") or []
        per_file[path.name] = (len(raw.get("cells") or []), len(claims),
                               sum(c.get("strength") == "hedged" for c in claims))
    text = (REFS / "README.md").read_text()
    found = {m[0]: tuple(int(x) for x in m[1:]) for m in
             re.findall(r"\*\*`(\w+\.yaml)`\*\*[^(]*\((\d+) cells, (\d+) claims, (\d+) of them hedged\)", text)}
    assert found == per_file
    total = re.search(r"(\d+) printed cells and (\d+) quoted claims", (ROOT / "README.md").read_text())
    assert total and (int(total[1]), int(total[2])) == (sum(v[0] for v in per_file.values()),
                                                        sum(v[1] for v in per_file.values()))


CELL = {"paper": "P", "table": "T", "row": "r", "column": "c", "method": "mopoe", "metric": "coherence/joint",
        "value": 0.5, "std": 0.01, "tolerance": 0.02, "where": {"method.beta": 5.0}}
SIDE = {"method": "mopoe", "metric": "coherence/joint"}
CLAIM = {"id": "k", "paper": "P", "figure": "F", "quote": "q", "source": "s", "for_each": "method.beta",
         "holds": [{"left": SIDE, "op": ">", "right": {**SIDE, "method": "mvae"}}]}


@pytest.mark.parametrize("content, message", [
    ({"cells": [{**CELL, "value": "high"}]}, r"cells\[0\]\.value: must be a number, got 'high'"),
    ({"cells": [{**CELL, "tolerance": -0.02}]}, r"cells\[0\]\.tolerance: must be a number >= 0, got -0.02"),
    ({"cells": [{**CELL, "std": -0.01}]}, r"cells\[0\]\.std: must be a number >= 0"),
    ({"cells": [{**CELL, "method": "mvea"}]}, r"cells\[0\]\.method: unknown method 'mvea'; choose one of: .*mopoe"),
    ({"cells": [{**CELL, "where": {"method.betta": 5.0}}]}, r"cells\[0\]\.where\.method\.betta: unknown field; allowed"),
    ({"cells": [{**CELL, "where": {"method.beta": "high"}}]}, r"cells\[0\]\.where\.method\.beta: expected a number"),
    ({"claims": [{**CLAIM, "for_each": 7}]}, r"claims\[0\]\.for_each: must be a dotted config path"),
    ({"claims": [{**CLAIM, "for_each": "method.betta"}]}, r"claims\[0\]\.for_each 'method\.betta': unknown field"),
    ({"claims": [{**CLAIM, "for_each": "method"}]}, r"claims\[0\]\.for_each: 'method' is a section"),
    ({"claims": [{**CLAIM, "where": {"train.epoch": 5}}]}, r"claims\[0\]\.where\.train\.epoch: unknown field"),
    ({"claims": [{**CLAIM, "holds": [{"left": {**SIDE, "method": "mvea"}, "op": ">", "right": 0.1}]}]},
     r"claims\[0\]\.holds\[0\]\.left\.method: unknown method 'mvea'"),
    ({"claims": [{**CLAIM, "holds": [{"left": {**SIDE, "where": {"x": 1}}, "op": ">", "right": 0.1}]}]},
     r"claims\[0\]\.holds\[0\]\.left\.where\.x: unknown field"),
    ({"claims": [{**CLAIM, "holds": [{"left": {**SIDE, "metric": "latent_ap/img/*"}, "op": ">", "right": 0.1}]}]},
     r"claims\[0\]\.holds\[0\]\.quantifier: a metric ending in /\* needs quantifier most or all"),
    ({"claims": [{**CLAIM, "holds": [{"left": SIDE, "op": ">", "right": 0.1, "quantifier": "most"}]}]},
     r"claims\[0\]\.holds\[0\]\.quantifier: needs a comparison"),
    ({"claims": [{**CLAIM, "holds": [{"left": {**SIDE, "metric": "latent_ap/*/x"}, "op": ">", "right": 0.1,
                                      "quantifier": "most"}]}]}, r"claims\[0\]\.holds\[0\]\.left: with a quantifier"),
    ([{"cells": [CELL]}], r"p\.yaml: a reference file must be a mapping"),
    ({"cells": CELL}, r"p\.yaml: cells: must be a list"),
    ({"cells": [{**CELL, "value": float("nan")}]}, r"cells\[0\]\.value: must be a number, got nan"),
    ({"cells": [{**CELL, "runs": 0}]}, r"cells\[0\]\.runs: must be a positive integer \(the paper's number of runs\), got 0"),
    ({"cells": [{**CELL, "runs": True}]}, r"cells\[0\]\.runs: must be a positive integer .*got True"),
    ({"cells": [], "claims": []}, r"p\.yaml: holds no `cells` or `claims`"),
    ({"claims": [{**CLAIM, "holds": []}]}, r"claims\[0\]\.holds: must be a non-empty list"),
    ({"claims": [{**CLAIM, "holds": [{"left": SIDE, "op": "lowest_at", "right": [1.0], "margin": 0.1}]}]},
     r"claims\[0\]\.holds\[0\]\.right: with op lowest_at, a non-empty list of method\.beta values .*no margin"),
    ({"claims": [{**CLAIM, "holds": [{"left": {**SIDE, "metric": "latent_ap/img/*"}, "op": ">", "right": 0.1,
                                      "quantifier": "some"}]}]}, r"quantifier: a metric ending in /\* needs .*not 'some'"),
    ({"claims": [{**CLAIM, "holds": [{"left": SIDE, "op": ">", "right": {**SIDE, "metric": "latent_ap/img/*"}}]}]},
     r"claims\[0\]\.holds\[0\]\.quantifier: a metric ending in /\* needs quantifier most or all"),
    ({"claims": [{**CLAIM, "holds": [{"left": {**SIDE, "metric": "latent_ap/img/*"}, "op": "lowest_at", "right": [1.0],
                                      "quantifier": "most"}]}]}, r"claims\[0\]\.holds\[0\]\.quantifier: needs a comparison"),
])
def test_malformed_reference_files_are_named(tmp_path, content, message):
    """A cell or claim that could never match a run (a setting or method that does not exist) or whose numbers make
    no sense is an error naming file, entry and field, not a cell that stays missing forever."""
    (tmp_path / "p.yaml").write_text(yaml.safe_dump({"cells": [CELL], "claims": [CLAIM]}))
    load_reference_files(tmp_path)  # the well-formed file loads
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(content))
    with pytest.raises(ConfigError, match=message):
        load_reference_files(tmp_path)


def test_compare_names_an_empty_directory_and_a_file(tmp_path):
    from mmbench.errors import MMBenchError

    with pytest.raises(MMBenchError, match=f"reference directory {tmp_path} holds no reference files"):
        load_reference_files(tmp_path)
    with pytest.raises(MMBenchError, match=r"mopoe_iclr21.yaml is a file; --compare takes the directory holding the "
                                           r"reference files, e.g. reference_results/"):
        load_reference_files(REFS / "mopoe_iclr21.yaml")


def test_a_hedged_claim_without_runs_does_not_make_compare_fail(tmp_path):
    """A hedged claim with no runs is not a missing result: --compare passes without --allow-missing."""
    from typer.testing import CliRunner

    from mmbench.cli import app

    runs = tmp_path / "runs"
    run_with(runs, "mopoe", {"latent_acc_by_n/1": 0.5}, ["F"])
    refs = tmp_path / "refs"
    refs.mkdir()
    (refs / "p.yaml").write_text(yaml.safe_dump({"claims": [
        {"id": "unrun", "paper": "P", "figure": "G", "quote": "typically q", "source": "s", "strength": "hedged",
         "holds": [{"left": {"method": "mopoe", "metric": "latent_acc_by_n/1"}, "op": ">", "right": 0.1}]}]}))
    rep = build_report(runs, refs)
    assert shipped_claim(rep, "unrun").status == "missing" and rep.missing == 0
    assert CliRunner().invoke(app, ["report", "--runs-dir", str(runs), "--compare", str(refs)]).exit_code == 0


def test_an_extremum_with_runs_only_at_the_listed_values_is_undecided(tmp_path):
    """'lowest at β in [1, 2]' with runs at β = 1 and 2 only compares with nothing: missing, not holds."""
    runs = tmp_path / "runs"
    for beta, recon in ((1.0, 5.0), (2.0, 6.0)):
        run_with(runs, "mopoe", {"recon/joint": recon}, ["F"], beta=beta)
    refs = tmp_path / "refs"
    refs.mkdir()
    (refs / "p.yaml").write_text(yaml.safe_dump({"claims": [
        {"id": "k", "paper": "P", "figure": "F", "quote": "q", "source": "s", "for_each": "method.beta",
         "holds": [{"left": {"method": "mopoe", "metric": "recon/joint"}, "op": "lowest_at", "right": [1.0, 2.0]}]}]}))
    (k,) = build_report(runs, refs).claims
    assert k.status == "missing" and k.details[0].endswith("no runs at any other method.beta to compare with")


def test_a_quantified_claim_counts_the_keys_under_its_prefix(tmp_path):
    """`latent_ap/img/*` with quantifier most (all): the comparison holds for more than half (every one) of the
    attributes both sides report, at each for_each value; a tie is not "most"; a right-hand number works too."""
    runs = tmp_path / "runs"
    # attributes a, b, c, d: mmvamp above independent on a, b, c at beta 1 (3 of 4), on a, b only at beta 2 (a tie)
    ours = {1.0: (0.9, 0.8, 0.7, 0.1), 2.0: (0.9, 0.8, 0.1, 0.1)}
    for method, beta, aps in [("independent", b, (0.5, 0.5, 0.5, 0.5)) for b in (1.0, 2.0)] + \
            [("mmvamp", b, v) for b, v in ours.items()] + [("mmvamp", 4.0, (0.9,) * 4)]:  # no baseline at beta 4
        m = {f"latent_ap/img/{a}": v for a, v in zip("abcd", aps)}
        run_with(runs, method, {**m, "latent_ap/img": sum(aps) / 4, "latent_ap/img+text/a": 0.0}, ["F"], beta=beta)
    side = {"method": "mmvamp", "metric": "latent_ap/img/*"}
    base = {"method": "independent", "metric": "latent_ap/img/*"}
    refs = tmp_path / "refs"
    refs.mkdir()
    claims = [{"id": q + w, "paper": "P", "figure": "F", "quote": "q", "source": "s", "for_each": "method.beta",
               "where": {"method.beta": float(w[1])} if w.startswith("@") else None,
               "holds": [{"left": side, "op": ">", "right": base if w != "#" else 0.75, "quantifier": q}]}
              for q in ("most", "all") for w in ("@1", "", "#")] + [
        {"id": "most@4", "paper": "P", "figure": "F", "quote": "q", "source": "s", "where": {"method.beta": 4.0},
         "holds": [{"left": side, "op": ">", "right": base, "quantifier": "most"}]}]
    (refs / "p.yaml").write_text(yaml.safe_dump({"claims": claims}))
    rep = build_report(runs, refs)
    got = {c.id: c.status for c in rep.claims}
    assert got == {"most@1": "holds", "all@1": "fails", "most": "fails", "all": "fails", "most#": "fails", "all#": "fails",
                   "most@4": "missing"}
    details = {c.id: c.details for c in rep.claims}
    assert sorted(details["most"]) == ["mmvamp latent_ap/img/* > independent latent_ap/img/* (most) at method.beta=1.0: holds "
                               "for 3 of 4 keys: yes",
                               "mmvamp latent_ap/img/* > independent latent_ap/img/* (most) at method.beta=2.0: holds "
                               "for 2 of 4 keys: NO",
                               "mmvamp latent_ap/img/* > independent latent_ap/img/* (most) at method.beta=4.0: no key "
                               "under latent_ap/img/* has runs of both sides"]
    assert [d for d in details["most#"] if "beta=1.0" in d][0].endswith("holds for 2 of 4 keys: NO")  # 0.9, 0.8 > 0.75


def test_a_quantified_claim_never_counts_over_two_configurations(tmp_path):
    """Runs of two configurations of one side (latent 8 and 16) leave a quantified comparison undecided, named."""
    runs = tmp_path / "runs"
    run_with(runs, "mmvamp", {"latent_ap/img/a": 0.9}, ["F"])
    for dim in (8, 16):
        run_with(runs, "independent", {"latent_ap/img/a": 0.1}, ["F"], latent_dim=dim)
    refs = tmp_path / "refs"
    refs.mkdir()
    hold = {"left": {"method": "mmvamp", "metric": "latent_ap/img/*"}, "op": ">",
            "right": {"method": "independent", "metric": "latent_ap/img/*"}, "quantifier": "all"}
    (refs / "p.yaml").write_text(yaml.safe_dump({"claims": [
        {"id": "k", "paper": "P", "figure": "F", "quote": "q", "source": "s", "holds": [hold]}]}))
    claim = build_report(runs, refs).claims[0]
    assert claim.status == "missing" and "several configurations match (method.latent_dim (16, 8))" in claim.details[0]


def test_a_typo_in_a_metric_key_is_an_error_and_the_families_are_the_documented_ones(tmp_path):
    """'latent_accc/mnist' would only ever show as a missing cell: it is refused at load, naming the entry; the
    families accepted are those docs/metrics.md documents."""
    from mmbench.references import METRIC_FAMILIES

    documented = set(re.findall(r"^\| `([a-z_]+)[/`]", (ROOT / "docs" / "metrics.md").read_text(), re.M))
    assert set(METRIC_FAMILIES) == documented | {"latent_scatter"}  # latent_scatter: documented in prose
    refs = tmp_path / "refs"
    refs.mkdir()
    cell = {"paper": "P", "table": "T", "row": "r", "column": "c", "method": "mopoe", "metric": "latent_accc/mnist",
            "value": 0.5, "tolerance": 0.1}
    (refs / "p.yaml").write_text(yaml.safe_dump({"cells": [cell]}))
    with pytest.raises(ConfigError, match=r"cells\[0\]\.metric: 'latent_accc/mnist' is not a metric key mmbench writes"):
        load_reference_files(refs)
    side = {"method": "mopoe", "metric": "coherance/joint"}
    (refs / "p.yaml").write_text(yaml.safe_dump({"claims": [{"id": "c", "paper": "P", "figure": "F", "quote": "q",
                                                             "source": "s", "holds": [{"left": side, "op": ">",
                                                                                       "right": 0.1}]}]}))
    with pytest.raises(ConfigError, match=r"holds\[0\]\.left\.metric: 'coherance/joint' is not a metric key"):
        load_reference_files(refs)


def test_table_5_runs_without_batch_means_leave_its_cells_missing_and_the_report_says_why(tmp_path):
    """A CelebA run evaluated on fewer than 256 test tuples has whole-split APs but no batch means: MoPoE Table 5's
    cells (the batch means) stay missing, not filled from the other average, and the report names the reason."""
    from typer.testing import CliRunner

    from mmbench.cli import app

    runs = tmp_path / "runs"
    run_with(runs, "mopoe_style", {"latent_ap/img": 0.4, "coherence_ap/img->text": 0.15, "ap_batchmean_batches": 0.0},
             ["MoPoE Table 5"], beta=2.5)
    rep = build_report(runs, REFS)
    cell = next(c for c in rep.cells if c.table == "MoPoE Table 5" and c.method == "mopoe_style"
                and c.column == "Latent I")
    assert cell.metric == "latent_ap_batchmean/img" and cell.status == "missing" and cell.excluded is None
    assert cell.absent.startswith("1 run of MoPoE Table 5 with mopoe_style writes no latent_ap_batchmean/img")
    out = CliRunner().invoke(app, ["report", "--runs-dir", str(runs), "--compare", str(REFS), "--format", "csv",
                                   "--out", str(tmp_path / "r.csv")], env={"COLUMNS": "400"})
    assert out.exit_code == 1 and "missing cells have runs that write no such key, e.g. " in " ".join(out.output.split())


# ----- the papers' budgets (mmbench/budgets.py) -----------------------------------------------------------------
def test_the_budgets_file_is_what_the_suites_generate_and_covers_every_cell_and_claim():
    """reference_results/budgets.yaml is generated from the suites' full tiers (never typed in), byte for byte, and
    every shipped cell's table and method, and every method a claim compares, has a budget there."""
    from mmbench.budgets import render, suite_budgets

    generated = suite_budgets((ROOT / "suites").glob("*.yaml"))
    assert (REFS / "budgets.yaml").read_text() == render(generated), "regenerate: python -m mmbench.budgets"
    cells, claims = load_reference_files(REFS)
    assert [f"{c.table} {c.row}/{c.column}" for c in cells if not c.budgets] == []
    for c in claims:
        methods = {s["method"] for h in c.holds for s in (h["left"], h["right"]) if isinstance(s, dict)}
        assert c.budgets and methods <= set(c.budgets), c.id
    assert generated["MoPoE Fig. 3"]["mopoe"] == [{**BUDGETS["MoPoE Table 2"]["mopoe"][0], "train.epochs": 300}]


def test_python_m_mmbench_budgets_writes_the_shipped_file(tmp_path, capsys):
    from mmbench.budgets import main

    assert main([str(ROOT / "suites"), str(tmp_path)]) == 0
    assert (tmp_path / "budgets.yaml").read_text() == (REFS / "budgets.yaml").read_text()
    n_suites = len(list((ROOT / "suites").glob("*.yaml")))
    assert f"({len(BUDGETS)} tables from {n_suites} suites); update" in capsys.readouterr().out  # and SHA256SUMS
    assert main([str(tmp_path / "nothing"), str(tmp_path)]) == 2
    assert "holds no suite files" in capsys.readouterr().err


def _mopoe_table2_run(runs, value, train=None, eval=None):
    """A MoPoE run of MoPoE Table 2 (β 5.0, App. C.2) writing latent_acc/mnist, at the paper's budget unless told."""
    run_with(runs, "mopoe", {"latent_acc/mnist": value}, ["MoPoE Table 2"], data=("mnist-svhn-text", None),
             train=train, eval={"lr_protocol": "mopoe", **(eval or {})}, latent_dim=20, beta=5.0)


def _mopoe_fig3_run(runs, method, epochs, value, train=None, eval=None):
    """A run of MoPoE Fig. 3 (vanilla PolyMNIST, latent 512, β 2.5) writing the by-inputs keys its claims compare."""
    keys = [f"latent_acc_by_n/{n}" for n in range(1, 6)] + [f"coherence_by_n/{n}" for n in range(1, 5)]
    run_with(runs, method, {k: value for k in keys}, ["MoPoE Fig. 3"], data=("polymnist", "vanilla"),
             train={"epochs": epochs, **(train or {})}, eval={"lr_protocol": "mopoe", **(eval or {})}, latent_dim=512,
             beta=2.5)


def _mopoe_table2_cell(rep):
    return next(c for c in rep.cells if c.table == "MoPoE Table 2" and c.method == "mopoe"
                and c.metric == "latent_acc/mnist")


def test_a_quick_tier_run_is_shown_beside_a_paper_cell_and_never_scored(tmp_path, mmbench_here):
    """A run of MoPoE Table 2 trained for 15 of the paper's 150 epochs on 100,000 tuples filled the cell and, at the
    paper's value, showed ✓ (and a Welch verdict): a quick-tier number read as a reproduction."""
    quick, full = tmp_path / "quick", tmp_path / "full"
    _mopoe_table2_run(quick, 0.95, train={"epochs": 15, "max_train": 100000})
    _mopoe_table2_run(full, 0.95)
    cell = _mopoe_table2_cell(build_report(quick, REFS))
    assert cell.produced == 0.95 and cell.status == "off-budget" and cell.verdict is None
    assert cell.off_budget == "train.epochs 15 (paper: 150); train.max_train 100000 (paper: all)"
    cell = _mopoe_table2_cell(build_report(full, REFS))
    assert cell.status == "pass" and cell.off_budget is None and cell.verdict == "underpowered"
    r = mmbench_here("report", "--runs-dir", quick, "--compare", REFS, "--format", "md", width=400)
    out = r.stdout
    assert r.returncode == 1, out + r.stderr
    assert ("0.950 \\| 0.950 ± 0.010 \\| Δ +0.000 \\| not scored: another budget than the paper's (train.epochs 15 "
            "(paper: 150); 1 more setting)") in out  # no ✓
    assert "1 at another budget than the paper's (shown, not scored)" in out
    assert (re.search(r"; 0 failing, \d+ missing, 1 at another budget than the paper's \(not scored\)", out)
            and "1 cell and 0 strict claims have runs only at another budget than the paper's, e.g. Sutter" in out), out
    r = mmbench_here("report", "--runs-dir", quick, "--compare", REFS, "--allow-missing", width=400)
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_claim_decided_by_quick_tier_runs_is_shown_and_not_scored(tmp_path):
    runs = tmp_path / "runs"
    for method, value in (("mopoe", 0.9), ("mvae", 0.5)):
        for epochs in (300, 15):
            _mopoe_fig3_run(runs / str(epochs), method, epochs, value)
    claim = shipped_claim(build_report(runs / "300", REFS), "fig3-mopoe-beats-mvae-latent-coherence")
    assert claim.status == "holds" and claim.off_budget is None
    claim = shipped_claim(build_report(runs / "15", REFS), "fig3-mopoe-beats-mvae-latent-coherence")
    assert claim.status == "off-budget" and claim.off_budget == "train.epochs 15 (paper: 300)"
    assert claim.details[-1] == ("not scored: the runs compared are at another budget than the paper's (train.epochs "
                                 "15 (paper: 300)); at theirs it holds")


def test_a_damaged_budgets_block_is_named(tmp_path):
    refs = tmp_path / "refs"
    refs.mkdir()
    (refs / "budgets.yaml").write_text("budgets:\n  MoPoE Table 2:\n    mopoe:\n    - {train.epochs: 150}\n")
    with pytest.raises(ConfigError, match=r"budgets.yaml: budgets.MoPoE Table 2.mopoe: a budget names exactly the "
                                          r"settings train.epochs, train.batch_size, train.max_train, .*regenerate "
                                          r"it with `python -m "
                                          r"mmbench.budgets`"):
        load_reference_files(refs)
    (refs / "budgets.yaml").write_text("budgets:\n  MoPoE Table 2:\n    nosuch: []\n")
    with pytest.raises(ConfigError, match=r"budgets.MoPoE Table 2.nosuch"):
        load_reference_files(refs)


def test_a_run_below_the_full_tier_says_the_report_will_not_score_it(tmp_path, mmbench_here):
    env = {"MMBENCH_RUNS": str(tmp_path / "runs"), "MMBENCH_DATA": str(tmp_path / "data")}
    suite = ROOT / "suites" / "mopoe_iclr21.yaml"
    quick = mmbench_here("run", suite, "--tier", "quick", "--only", "polymnist-fig-3", "--dry-run", env=env)
    assert quick.returncode == 0 and ("note: quick-tier runs are at another budget than the papers' (epochs, tuples, "
                                      "samples): `mmbench report --compare` shows their numbers beside the papers' "
                                      "and scores none of them") in quick.stderr, quick.stderr
    full = mmbench_here("run", suite, "--only", "polymnist-fig-3", "--dry-run", env=env)
    assert full.returncode == 0 and "another budget" not in full.stderr, full.stderr


def test_runs_at_the_papers_budget_are_scored_where_quick_tier_runs_sit_beside_them(tmp_path):
    """A quick tier run before the full one into one runs directory made every cell and claim "ambiguous" (two
    configurations) and failed --compare: the runs at the paper's budget are scored, the others left out and
    counted."""
    runs = tmp_path / "runs"
    _mopoe_table2_run(runs, 0.95)
    _mopoe_table2_run(runs, 0.5, train={"epochs": 15})
    for method, at_300, at_15 in (("mopoe", 0.9, 0.1), ("mvae", 0.5, 0.6)):  # at 15 epochs it would not hold
        _mopoe_fig3_run(runs, method, 300, at_300)
        _mopoe_fig3_run(runs, method, 15, at_15)
    rep = build_report(runs, REFS)
    cell = _mopoe_table2_cell(rep)
    assert (cell.status, cell.produced, cell.n_runs, cell.set_aside, cell.ambiguous) == ("pass", 0.95, 1, 1, None)
    md = render_markdown(rep.summaries, rep.refs, rep.claims)
    assert ("0.950 \\| 0.950 ± 0.010 \\| Δ +0.000 ✓ \\| underpowered (p_Holm 1) \\| 1 of 5 runs \\| 1 run at "
            "another budget left out") in md
    from mmbench.verdicts import tidy_rows

    row = next(r for r in tidy_rows(rep.cells, rep.frame) if r["table"] == "MoPoE Table 2" and r["method"] == "mopoe"
               and r["metric"] == "latent_acc/mnist")
    assert row["other_budget_runs_left_out"] == 1 and row["tolerance_verdict"] == "pass"
    claim = shipped_claim(rep, "fig3-mopoe-beats-mvae-latent-coherence")
    assert claim.status == "holds" and claim.ambiguous is None and claim.off_budget is None, claim.details


def _fig7(runs, tier, joint):
    """The MoPoE suite's MNIST-SVHN-Text runs of `tier` for the methods in `joint`, writing coherence/joint."""
    from mmbench.suite import load_suite

    for cfg in load_suite(ROOT / "suites" / "mopoe_iclr21.yaml").runs(tier, only=["mst-tables-2-3"]):
        if cfg.method.name in joint:
            run = Run(cfg, runs)
            run.init()
            run.write_metrics({"coherence/joint": joint[cfg.method.name]})


def test_a_claim_failing_at_the_papers_budget_fails_whatever_quick_runs_sit_beside_it(tmp_path):
    """MoPoE Fig. 7: MoPoE's joint coherence below MMVAE's, both trained at the paper's budget, fails; MVAE's runs
    were quick-tier only, and the claim was reported "not scored" (the failure hidden, --allow-missing passed)."""
    runs = tmp_path / "runs"
    _fig7(runs, "full", {"mopoe": 0.1, "mmvae": 0.5})
    _fig7(runs, "quick", {"mvae": 0.2})
    claim = shipped_claim(build_report(runs, REFS), "fig7-joint-coherence-order")
    assert claim.status == "fails" and claim.off_budget is None, claim.details
    assert "mopoe coherence/joint = 0.100 >= 0.500 (mmvae coherence/joint): NO" in claim.details


def test_quick_runs_beside_an_unfinished_full_tier_leave_a_claim_missing_not_ambiguous(tmp_path, mmbench_here):
    """MVAE's full run still training, its quick run done: the claim compared full-tier MMVAE with quick-tier MVAE,
    found their budgets differ and was "ambiguous", failing --compare even with --allow-missing."""
    runs = tmp_path / "runs"
    _fig7(runs, "full", {"mopoe": 0.31, "mmvae": 0.28})  # Table 3's printed joint coherences: its cells pass
    _fig7(runs, "quick", {"mvae": 0.12, "mopoe": 0.31, "mmvae": 0.28})
    rep = build_report(runs, REFS)
    claim = shipped_claim(rep, "fig7-joint-coherence-order")
    assert (claim.status, claim.ambiguous, claim.off_budget) == ("missing", None, None), claim.details
    assert "mmvae coherence/joint > mvae coherence/joint: no runs" in claim.details and not rep.ambiguous_claims
    r = mmbench_here("report", "--runs-dir", runs, "--compare", REFS, "--allow-missing", width=300)
    assert r.returncode == 0, r.stdout + r.stderr
    _fig7(runs, "full", {"mvae": 0.12})  # its full run done: decided at the paper's budget, the quick runs said
    claim = shipped_claim(build_report(runs, REFS), "fig7-joint-coherence-order")
    assert claim.status == "holds" and claim.details[-1] == "3 runs at another budget than the paper's left out"


def test_an_evaluation_setting_no_metric_of_the_run_reads_does_not_take_it_off_the_papers_budget(tmp_path):
    """A MoPoE run computes no FID: its eval.fid_samples changes none of its numbers, and the run was shown "not
    scored" for it; eval.lr_train_samples, which its latent classification reads, still takes it off the budget."""
    for name, eval_set in (("fid", {"fid_samples": 5000}), ("lr", {"lr_train_samples": 100})):
        _mopoe_table2_run(tmp_path / name, 0.95, eval=eval_set)
    (run_dir,) = [d for d in (tmp_path / "fid").iterdir() if d.is_dir() and not d.name.startswith(".")]
    assert "fid" not in yaml.safe_load((run_dir / "config.yaml").read_text())["eval"]["metrics"]
    assert _mopoe_table2_cell(build_report(tmp_path / "fid", REFS)).status == "pass"
    cell = _mopoe_table2_cell(build_report(tmp_path / "lr", REFS))
    assert cell.status == "off-budget" and cell.off_budget == "eval.lr_train_samples 100 (paper: 500)"


def test_a_setting_the_cells_key_does_not_read_leaves_its_number_at_the_papers_budget(tmp_path):
    """The MoPoE Table 2 runs also compute coherence and log-likelihoods, so a run with fewer joint-coherence or
    importance samples, or a smaller per-epoch test-loss set (train.select: last never reads it), was shown "not
    scored" on its latent accuracy, which none of those settings touches."""
    for name, train, eval_set in (("joint", None, {"joint_samples": 1000}), ("ll", None, {"ll_samples": 3}),
                                  ("clf", None, {"classifier_epochs": 1}), ("max_test", {"max_test": 256}, None)):
        _mopoe_table2_run(tmp_path / name, 0.95, train=train, eval=eval_set)
        cell = _mopoe_table2_cell(build_report(tmp_path / name, REFS))
        assert (name, cell.status, cell.off_budget) == (name, "pass", None)


def test_the_per_epoch_test_loss_set_counts_where_it_chooses_the_model():
    """train.max_test sizes the test loss that picks mrVAE's evaluated model (train.select: best_test_loss)."""
    from mmbench.budgets import at_budget, reads

    (paper,) = BUDGETS["mrVAE Table 1a"]["mrvae"]
    for select, at in (("best_test_loss", False), ("last", True)):
        cfg = {**paper, "train.max_test": 256, "train.select": select}
        assert reads("train.max_test", "coherence/m0->m1", cfg) is not at
        assert at_budget(cfg, [paper], "coherence/m0->m1") is at
    assert reads("eval.joint_samples", "coherence/joint") and not reads("eval.joint_samples", "coherence/m0->m1")
    assert reads("eval.precision", "loglik/m0") and not reads("eval.precision", "latent_acc/m0")


def test_a_claim_compares_sides_that_differ_only_in_settings_its_keys_do_not_read(tmp_path):
    """MVAE's Fig. 3 runs with fewer importance samples (a log-likelihood setting) and bf16 decoders: the latent
    comparisons are decided (before, the runs were at another budget and the claim not scored); the coherence ones,
    whose samples the decoders make, name the scoring setting that differs."""
    runs = tmp_path / "runs"
    _mopoe_fig3_run(runs, "mopoe", 300, 0.9)
    _mopoe_fig3_run(runs, "mvae", 300, 0.5, eval={"ll_samples": 5})
    claim = shipped_claim(build_report(runs, REFS), "fig3-mopoe-beats-mvae-latent-coherence")
    assert (claim.status, claim.off_budget, claim.ambiguous) == ("holds", None, None), claim.details
    runs = tmp_path / "bf16"
    _mopoe_fig3_run(runs, "mopoe", 300, 0.9)
    _mopoe_fig3_run(runs, "mvae", 300, 0.5, eval={"precision": "bf16"})
    claim = shipped_claim(build_report(runs, REFS), "fig3-mopoe-beats-mvae-latent-coherence")
    assert "mopoe latent_acc_by_n/1 = 0.900 > 0.500 (mvae latent_acc_by_n/1): yes" in claim.details, claim.details
    assert claim.status == "missing" and ("mopoe coherence_by_n/1 > mvae coherence_by_n/1: the sides' runs were "
                                          "trained or scored with other budgets or scoring settings (eval.precision "
                                          "('bf16', 'fp32')); compare runs of one tier") in claim.details, claim.details


def test_the_keys_said_to_read_a_setting_are_keys_mmbench_writes():
    from mmbench.budgets import BUDGET, READ_BY
    from mmbench.references import METRIC_FAMILIES
    from mmbench.report import COMPARABLE

    for setting, readers in READ_BY.items():
        assert setting in COMPARABLE and setting.startswith("eval."), setting
        assert all(r.split("/")[0] in METRIC_FAMILIES for r in readers), (setting, readers)
    assert set(BUDGET) <= set(COMPARABLE)


def test_a_run_at_another_batch_size_is_not_the_papers_number(tmp_path):
    """Batch 32 (mrVAE on a CPU) takes 8x the paper's optimiser steps per epoch at 256: not the paper's budget."""
    _mopoe_table2_run(tmp_path, 0.95, train={"batch_size": 32})
    cell = _mopoe_table2_cell(build_report(tmp_path, REFS))
    assert cell.status == "off-budget" and cell.off_budget == "train.batch_size 32 (paper: 256)"


def test_a_run_beside_its_twin_re_made_with_a_setting_the_key_does_not_read_is_scored(tmp_path):
    """A run at the paper's budget and its twin re-made with `--set eval.joint_samples=1000` in one runs directory:
    for a latent key both are at the budget, two configurations, and the cell and claim were ambiguous (failing
    --compare --allow-missing). The run at the whole budget is scored, the twin set aside and counted."""
    _mopoe_table2_run(tmp_path / "t2", 0.95)
    _mopoe_table2_run(tmp_path / "t2", 0.5, eval={"joint_samples": 1000})
    cell = _mopoe_table2_cell(build_report(tmp_path / "t2", REFS))
    assert (cell.status, cell.produced, cell.set_aside, cell.ambiguous) == ("pass", 0.95, 1, None)
    runs = tmp_path / "f3"
    _mopoe_fig3_run(runs, "mopoe", 300, 0.9)
    _mopoe_fig3_run(runs, "mvae", 300, 0.5)
    _mopoe_fig3_run(runs, "mvae", 300, 0.95, eval={"joint_samples": 1000})  # counted, it would fail the claim
    claim = shipped_claim(build_report(runs, REFS), "fig3-mopoe-beats-mvae-latent-coherence")
    assert (claim.status, claim.ambiguous) == ("holds", None), claim.details
    assert claim.details[-1] == "1 run at another budget than the paper's left out"
    _mopoe_table2_run(tmp_path / "alone", 0.95, eval={"joint_samples": 1000})  # the twin alone: at the budget
    assert _mopoe_table2_cell(build_report(tmp_path / "alone", REFS)).status == "pass"


def test_runs_a_claims_where_leaves_out_do_not_set_aside_the_runs_it_compares(tmp_path):
    """Fig. 3's claim pins β 2.5. MVAE's β 2.5 runs made with `--set eval.joint_samples=1000` (at the budget for the
    latent and conditional keys) sat beside β 5.0 runs at the whole budget in one runs directory: counted together,
    the compared runs were set aside as the pair's lesser twin and the claim shown "not scored"."""
    runs = tmp_path / "runs"
    _mopoe_fig3_run(runs, "mopoe", 300, 0.9)
    _mopoe_fig3_run(runs, "mvae", 300, 0.5, eval={"joint_samples": 1000})
    keys = [f"latent_acc_by_n/{n}" for n in range(1, 6)] + [f"coherence_by_n/{n}" for n in range(1, 5)]
    run_with(runs, "mvae", dict.fromkeys(keys, 0.95), ["MoPoE Fig. 3"], data=("polymnist", "vanilla"),
             train={"epochs": 300}, eval={"lr_protocol": "mopoe"}, latent_dim=512, beta=5.0)
    claim = shipped_claim(build_report(runs, REFS), "fig3-mopoe-beats-mvae-latent-coherence")
    assert (claim.status, claim.off_budget, claim.ambiguous) == ("holds", None, None), claim.details


def test_a_second_configuration_is_not_hidden_as_the_lesser_twin_of_the_papers(tmp_path):
    """Beside a run at the whole budget, a run with eval.lr_standardize (which a latent accuracy reads) and fewer
    joint-coherence samples (which it does not): another configuration, not a twin; it was set aside "at another
    budget" and the cell scored from the first."""
    _mopoe_table2_run(tmp_path, 0.95)
    _mopoe_table2_run(tmp_path, 0.5, eval={"lr_standardize": True, "joint_samples": 1000})
    cell = _mopoe_table2_cell(build_report(tmp_path, REFS))
    assert cell.status == "ambiguous" and cell.ambiguous == "eval.lr_standardize (False, True)", cell


def test_seeds_that_differ_only_in_settings_the_key_does_not_read_are_one_configuration(tmp_path):
    """Three seeds of Table 2, two made with eval.fid_samples 5000 and one at the whole budget: one latent-accuracy
    experiment of three seeds (it was ambiguous, or the two set aside "at another budget")."""
    for seed, eval_set in ((0, {"fid_samples": 5000}), (1, {"fid_samples": 5000}), (2, {})):
        run_with(tmp_path, "mopoe", {"latent_acc/mnist": 0.94 + seed / 100}, ["MoPoE Table 2"], seed=seed,
                 data=("mnist-svhn-text", None), eval={"lr_protocol": "mopoe", **eval_set}, latent_dim=20, beta=5.0)
    cell = _mopoe_table2_cell(build_report(tmp_path, REFS))
    assert (cell.status, cell.n_runs, cell.set_aside, cell.ambiguous) == ("pass", 3, 0, None), cell
    assert cell.produced == pytest.approx(0.95)


def test_an_extremum_is_not_decided_over_a_sweep_missing_values_set_aside(tmp_path):
    """MM-VAMP Fig. 3's argmin over β: the true minimum at β 2^-2 (not listed), its runs quick-tier only. With them
    left out, the lowest of the other eleven was at a listed β and the claim held."""
    import math

    for method in ("independent", "aggregated", "mmvamp"):
        for beta in [2.0 ** k for k in range(-8, 4)]:
            run_with(tmp_path, method, {"recon/joint": 0.0 if beta == 0.25 else 10 + math.log2(beta)},
                     ["MM-VAMP Fig. 3"], data=("polydigits", "translated"),
                     train={"epochs": 10} if beta == 0.25 else None, beta=beta)
    claim = shipped_claim(build_report(tmp_path, REFS), "fig3-small-beta-lowest-reconstruction-argmin")
    assert claim.status == "missing", claim.details
    assert any("method.beta=0.25 has runs only at another budget than the paper's" in d for d in claim.details)
