"""`mmbench bench steps --suite`: step times at the shapes of a suite's own runs (datasets, networks, methods, batch,
latent, precision), and the projections and pack caps `mmbench run --step-times` reads from such a table."""
import re

import pytest
import torch

from mmbench import bench, projection
from mmbench.config import build_run_config, deep_merge
from mmbench.data.base import Modality
from mmbench.results import Run
from mmbench.runner import make_packs

TINY = {"dataset": "polydigits", "method": {"name": "mopoe", "latent_dim": 8},
        "train": {"epochs": 2, "batch_size": 32, "max_train": 100, "max_test": 64}}


# A config whose runs cannot pack: a method refusing some of its options (pack_refusal). No method refuses any
# today (mrVAE's objective r did until 2026-12-07), so the fixture below makes mrVAE refuse objective r.
R_OBJECTIVE = {"method": {"name": "mrvae", "options": {"objective": "r"}}}
REFUSAL = "objective r refused for this test"


@pytest.fixture(autouse=True)
def _mrvae_refuses_objective_r(monkeypatch):
    from mmbench.registry import METHODS

    monkeypatch.setattr(METHODS.get("mrvae"), "pack_refusal", classmethod(
        lambda cls, options: REFUSAL if options.get("objective") == "r" else None))


def cfg(update=None, seed=0):
    d = deep_merge(TINY, update or {})
    d["seed"] = seed
    return build_run_config(d)


def shape_table(rows, where="GPU Z"):
    """A `bench steps --suite` table: (config, pack, run-steps/s) rows under the columns the command writes."""
    cols = [*projection.KEY_COLUMNS, "runs", "pack", "mode", "median_s", "run_steps_per_s"]
    lines = [f"Run-steps per second at the step shapes of s.yaml's full runs (…), median of 5 steps; {where}, torch 2.",
             "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for c, pack, rate in rows:
        mode = "unpacked" if pack == 1 else "packed"
        lines.append("| " + " | ".join([*projection.step_key(c), "1", str(pack), mode, f"{pack / rate:.4f}", str(rate)])
                     + " |")
    return "\n".join(lines) + "\n"


def test_synthetic_batch_is_drawn_as_data_is_stored_and_converted_as_the_trainers_convert_it():
    """Images: bytes / 255; text: one-hot character indices over the alphabet; spikes: counts / 10; `lead` axes in
    front (a pack's runs); the same generator seed draws the same batch."""
    mods = [Modality("img", (3, 4, 4)), Modality("txt", (6, 5), "text", "categorical"),
            Modality("rat", (7, 3), "spikes", "sse")]
    x = bench.synthetic_batch(mods, 8, torch.Generator().manual_seed(0), lead=(2,))
    img, txt, rat = x["img"], x["txt"], x["rat"]
    assert img.shape == (2, 8, 3, 4, 4) and img.dtype == torch.float32
    assert 0 <= img.min() and img.max() <= 1 and torch.allclose(img * 255, (img * 255).round(), atol=1e-4)
    assert img.unique().numel() > 100  # bytes over the whole range, not a constant
    assert txt.shape == (2, 8, 6, 5) and (txt.sum(-1) == 1).all() and set(txt.argmax(-1).unique().tolist()) == set(range(5))
    counts = rat * 10
    assert rat.shape == (2, 8, 7, 3) and torch.allclose(counts, counts.round())
    assert set(counts.round().unique().tolist()) == {0.0, 1.0, 2.0, 3.0}
    again = bench.synthetic_batch(mods, 8, torch.Generator().manual_seed(0), lead=(2,))
    assert all(torch.equal(x[k], again[k]) for k in x)


def test_step_key_holds_what_a_step_costs_and_nothing_else():
    """Seed, β, learning rate and epochs do not change a step; the method, its options, the latent size, the batch,
    the precision, the modalities and the networks do."""
    base = projection.step_key(cfg())
    assert dict(zip(projection.KEY_COLUMNS, base)) == {
        "dataset": "polydigits", "variant": "vanilla", "modalities": "m0,m1,m2,m3,m4", "architecture": "polymnist_cnn",
        "method": "mopoe", "options": "{}", "batch": "32", "latent": "8", "precision": "fp32"}
    assert projection.key_label(base) == "mopoe (polydigits/vanilla, polymnist_cnn, batch 32, latent 8)"
    assert projection.step_key(cfg(seed=3)) == base
    assert projection.step_key(cfg({"method": {"beta": 2.5}, "train": {"lr": 1e-3, "epochs": 9}})) == base
    others = [{"method": {"latent_dim": 16}}, {"train": {"batch_size": 64}}, {"train": {"precision": "bf16"}},
              {"method": {"name": "mvae"}}, {"modalities": ["m0", "m1"]},
              {"method": {"architecture": "polymnist_resnet"}}]
    keys = [projection.step_key(cfg(u)) for u in others]
    assert base not in keys and len(set(keys)) == len(keys)
    q, r = (projection.step_key(cfg({"method": {"name": "mrvae", "options": {"objective": o}}})) for o in "qr")
    assert q != r and r[5] == '{"objective": "r"}'


def test_suite_step_rows_time_each_shape_unpacked_and_up_to_its_own_packs(monkeypatch):
    """MoPoE at 2 β × 2 seeds (one pack of 4, β packing: packs 2 and 3 are timed, 5 is not), MVAE alone (unpacked
    only), mrVAE objective r × 2 seeds (refused by the fixture: one row saying why).
    Each timed step really runs (a packed one on a batch per run); the rates are
    pack / median; a time limit leaves later shapes listed as not measured."""
    ran = []

    def fake_timed(step, warmup, steps, dev, params):
        step()
        ran.append(tuple(params[0].shape))
        return {"median_s": 0.25}

    monkeypatch.setattr(bench, "_timed", fake_timed)
    mopoe = [cfg({"method": {"beta": b}}, s) for b in (1.0, 2.0) for s in (0, 1)]
    configs = mopoe + [cfg({"method": {"name": "mvae"}})] + [cfg(R_OBJECTIVE, s) for s in (0, 1)]
    rows = bench.suite_step_rows(configs, [2, 3, 5], steps=1)
    got = [(r["method"], r["runs"], r["pack"], r["mode"].split(":")[0], r["run_steps_per_s"]) for r in rows]
    assert got[:5] == [("mopoe", 4, 1, "unpacked", 4.0), ("mopoe", 4, 2, "packed", 8.0),
                       ("mopoe", 4, 3, "packed", 12.0), ("mvae", 1, 1, "unpacked", 4.0),
                       ("mrvae", 2, 1, "unpacked", 4.0)]
    assert got[5][:4] == ("mrvae", 2, 2, "n/a") and got[5][4] != got[5][4] and len(got) == 6
    assert f"not packed: method mrvae: {REFUSAL}" in rows[5]["mode"]
    first = tuple(next(p for p in bench._run_model(mopoe[0], torch.device("cpu")).parameters()).shape)
    assert ran[:2] == [first, (2, *first)]  # the packed step's parameters are stacked over its 2 runs
    limited = bench.suite_step_rows(configs, [2], steps=1, time_limit=1e-9)
    assert [r["method"] for r in limited if r["mode"].startswith("not measured")] == ["mvae", "mrvae"]
    assert [r["mode"] for r in limited[:2]] == ["unpacked", "packed"]  # the first shape always runs
    with pytest.raises(Exception, match="--steps 0"):
        bench.suite_step_rows(configs, [2], steps=0)


def test_a_suite_table_projects_each_run_from_its_own_shape(tmp_path, data_root):
    """Read back, a table at a suite's shapes is keyed by shape: MoPoE at latent 8 (3 seeds: one pack of 3 at the
    pack-3 rate, 30 run-steps/s; 2 epochs x floor(100 / 32) = 6 steps a run: 3 x 6 / 30 = 0.6 s, 0.2 s a run) and at
    latent 16 (alone, 5 run-steps/s: 1.2 s) each from its own row; a run at a shape the table lacks is not projected
    and the summary says so; a table measured on a CPU says it projects the CPU."""
    from mmbench.cli import _gpu_projection

    runs_dir = tmp_path / "runs"
    small = [cfg(seed=s) for s in range(3)]
    wide = cfg({"method": {"latent_dim": 16}})
    times = tmp_path / "t.md"
    times.write_text(shape_table([(small[0], 1, 10.0), (small[0], 3, 30.0), (wide, 1, 5.0)]))
    rates = projection.read_step_times(times)
    assert rates == {projection.step_key(small[0]): {1: 10.0, 3: 30.0}, projection.step_key(wide): {1: 5.0}}
    gpu = _gpu_projection(small + [wide], runs_dir, data_root, times, None)
    assert gpu["per_run"] == {**{Run(c, runs_dir).id: pytest.approx(0.2) for c in small},
                              Run(wide, runs_dir).id: pytest.approx(1.2)}
    assert "projected training on one GPU (GPU Z," in gpu["summary"] and "for 4 of 4 unfinished" in gpu["summary"]
    lost = cfg({"train": {"batch_size": 64}})
    gpu = _gpu_projection(small + [lost], runs_dir, data_root, times, None)
    assert gpu["per_run"][Run(lost, runs_dir).id] is None
    assert "1 at step shapes this table did not measure" in gpu["summary"]
    times.write_text(shape_table([(small[0], 1, 10.0)], where="2 CPU threads, x86_64"))
    assert "projected training on the CPU (2 CPU threads" in _gpu_projection(small, runs_dir, data_root, times,
                                                                             None)["summary"]


def test_a_suite_table_caps_each_shapes_packs_at_its_fastest_size(tmp_path):
    """Caps from a table at a suite's shapes hold per shape: MoPoE at latent 8 fastest at 2 of 1-3 trains 3 seeds in
    packs of 2 and 1, while MoPoE at latent 16, fastest at 3, keeps its pack of 3."""
    small = [cfg(seed=s) for s in range(3)]
    wide = [cfg({"method": {"latent_dim": 16}}, s) for s in range(3)]
    times = tmp_path / "t.md"
    times.write_text(shape_table([(small[0], 1, 10.0), (small[0], 2, 20.0), (small[0], 3, 15.0),
                                  (wide[0], 1, 10.0), (wide[0], 3, 25.0)]))
    caps = projection.best_packs(projection.read_step_times(times))
    assert caps == {projection.step_key(small[0]): 2}
    import io

    from rich.console import Console

    import mmbench.cli as cli

    err, saved = io.StringIO(), cli.err_console
    cli.err_console = Console(file=err, width=80)
    try:
        assert cli._pack_caps(times) == caps
    finally:
        cli.err_console = saved
    assert " ".join(err.getvalue().split()).endswith(  # each shape said as a person reads it, not as a tuple
        "packs capped at the fastest measured size: mopoe (polydigits/vanilla, polymnist_cnn, batch 32, latent 8) 2")
    packs = make_packs([Run(c, tmp_path) for c in small + wide], None, 1, caps)
    assert sorted(len(p) for p in packs) == [1, 2, 3]
    assert [len(p) for p in packs if p[0].cfg.method.latent_dim == 16] == [3]


def test_bench_steps_suite_writes_the_table_dry_run_projects_from(tmp_path, mmbench_here, data_root):
    """The command end to end on a CPU: a suite of MoPoE × 2 seeds and MVAE; each shape's rows as measured; the dry
    run then projects every run of the suite from that file, each from its shape's rate."""
    suite = tmp_path / "suite.yaml"
    suite.write_text("name: s\ndescription: d\ndefaults:\n  method: {latent_dim: 8}\n"
                     "  train: {epochs: 1, batch_size: 16, max_train: 64, max_test: 32}\n"
                     "experiments:\n  - name: e\n    reproduces: [MoPoE Fig. 3]\n    dataset: polydigits\n"
                     "    methods: [mopoe, mvae]\n    seeds: [0, 1]\n")
    out = tmp_path / "steps.md"
    r = mmbench_here("bench", "steps", "--suite", suite, "--pack", "2,4", "--steps", "1", "--out", out)
    assert r.returncode == 0, r.stderr
    rates = projection.read_step_times(out)
    from mmbench.suite import load_suite

    configs = load_suite(suite).runs("full")
    keys = [projection.step_key(c) for c in configs]
    assert set(rates) == set(keys) and all(set(v) == {1, 2} for v in rates.values())  # pack 4 > the 2 seeds
    text = out.read_text()
    assert "s.yaml's full runs (4 runs, 2 shapes" in text.replace(str(suite), "s.yaml") and "CPU threads" in text
    env = {"MMBENCH_DATA": str(data_root), "MMBENCH_RUNS": str(tmp_path / "runs")}
    r = mmbench_here("run", suite, "--dry-run", "--step-times", out, env=env, width=300)
    assert r.returncode == 0, r.stderr
    summary = " ".join(r.stdout.split())
    # a shape whose pack of 2 measured slower than a run alone (the CPU loops a pack) is capped: its seeds train alone
    caps = projection.best_packs(rates)
    n_packs = sum(2 if caps.get(k) == 1 else 1 for k in set(keys))
    assert "projected training on the CPU (" in summary
    assert f"for 4 of 4 unfinished run(s) in {n_packs} pack(s)" in summary
    shown = re.findall(r"│ (polydigits-vanilla-(mopoe|mvae)-\S+).*│ ([\d.]+ (?:ms|s)) *│\s*$", r.stdout, re.MULTILINE)
    assert len(shown) == 4
    from mmbench.cli import _gpu_projection

    # 1 epoch of 64 tuples at batch 16: 4 steps a run; a pack of 2 at its pack-2 rate: 2 x 4 / rate, 4 / rate a run
    gpu = _gpu_projection(configs, tmp_path / "runs", data_root, out, None, caps)
    for c in configs:
        k = projection.step_key(c)
        assert gpu["per_run"][Run(c, tmp_path / "runs").id] == pytest.approx(4 / rates[k][caps.get(k, 2)])


@pytest.mark.parametrize("args, message", [
    (["--batch-size", "64"], "--batch-size: with --suite each run's own settings are timed"),
    (["--precision", "bf16"], "--precision: with --suite"),
    (["--time-limit", "0"], "--time-limit 0: must be a positive number of seconds"),
    (["--methods", "jmvae"], "--methods jmvae: none of"),
    (["--latent-dim", "16"], "--latent-dim: with --suite each run's own settings are timed; drop --latent-dim"),
    (["--scaling", "mopoe"], "--scaling: with --suite"),
    (["--modalities", "2,3"], "--modalities: with --suite"),
    (["--profile", "profiles"], "--profile: with --suite"),
])
def test_bench_steps_suite_refuses_options_it_would_not_use(args, message, tmp_path, mmbench_here):
    suite = tmp_path / "suite.yaml"
    suite.write_text("name: s\ndescription: d\nexperiments:\n  - name: e\n    dataset: polydigits\n    methods: [mopoe]\n")
    r = mmbench_here("bench", "steps", "--suite", suite, *args)
    assert r.returncode == 2 and message in r.stderr, r.stderr
    # what the refusal suggests is an option of `bench steps` (it once sent the user to --set, which it lacks)
    from typer.testing import CliRunner

    from mmbench.cli import app

    usage = CliRunner().invoke(app, ["bench", "steps", "--help"], env={"COLUMNS": "200"}).output
    assert all(f" {o} " in usage for o in re.findall(r"--[a-z][a-z-]+", r.stderr)), r.stderr
    r = mmbench_here("bench", "steps", "--tier", "quick")
    assert r.returncode == 2 and "--tier applies to --suite" in r.stderr, r.stderr
    r = mmbench_here("bench", "steps", "--time-limit", "60", "--methods", "nosuch")  # an error either way: not timed
    assert r.returncode == 2 and "--time-limit applies to --suite" in r.stderr, r.stderr


def test_bench_steps_suite_times_the_tiers_runs_of_the_methods_asked(tmp_path, mmbench_here, monkeypatch):
    """--tier picks the runs timed and --methods filters their methods (the timing stubbed: this is about which runs
    reach bench.suite_step_rows and the table written from its rows): the quick tier's 2 seeds at batch 16 of MoPoE
    and MVAE, not MMVAE; the header counts the runs (4) and shapes (2), not the rows (3); a shape not measured has
    empty time cells."""
    suite = tmp_path / "suite.yaml"
    suite.write_text("name: s\ndescription: d\ndefaults:\n  method: {latent_dim: 8}\n"
                     "tiers:\n  quick: {seeds: 2, train: {batch_size: 16}}\n"
                     "experiments:\n  - name: e\n    dataset: polydigits\n    methods: [mopoe, mvae, mmvae]\n"
                     "    seeds: [0, 1, 2]\n")
    seen = []

    def rows(configs, packs, steps, device, compile, progress=None, time_limit=None):
        seen.extend(configs)
        heads = [dict(zip(projection.KEY_COLUMNS, projection.step_key(c)), runs=2) for c in (configs[0], configs[-1])]
        return [{**heads[0], "pack": 1, "mode": "unpacked", "median_s": 0.5, "run_steps_per_s": 2.0},
                {**heads[0], "pack": 2, "mode": "packed", "median_s": 0.5, "run_steps_per_s": 4.0},
                {**heads[1], "pack": 1, "mode": "not measured: --time-limit 1 s reached",
                 "median_s": float("nan"), "run_steps_per_s": float("nan")}]

    monkeypatch.setattr(bench, "suite_step_rows", rows)
    out = tmp_path / "steps.md"
    r = mmbench_here("bench", "steps", "--suite", suite, "--tier", "quick", "--methods", "mopoe,mvae", "--pack", "2",
                     "--steps", "3", "--out", out)
    assert r.returncode == 0, r.stderr
    assert sorted((c.method.name, c.seed, c.train.batch_size) for c in seen) == [
        ("mopoe", 0, 16), ("mopoe", 1, 16), ("mvae", 0, 16), ("mvae", 1, 16)]
    text = out.read_text()
    assert "s.yaml's quick runs (4 runs, 2 shapes: one per dataset" in text.replace(str(suite), "s.yaml"), text
    lines = [line for line in text.splitlines() if line.startswith("| polydigits")]
    assert [[c.strip() for c in line.split("|")[-4:-1]] for line in lines] == [
        ["unpacked", "0.5000", "2.00"], ["packed", "0.5000", "4.00"], ["not measured: --time-limit 1 s reached", "", ""]]


def test_dry_run_counts_a_run_two_experiments_share_once(tmp_path, mmbench_here, data_root):
    """Two experiments listing the same configuration (as SMVAE Figs. 2 and 3 share runs) train it once: the dry run
    shows it under each, but counts, sizes and projects it once."""
    suite = tmp_path / "suite.yaml"
    exp = "    dataset: polydigits\n    methods: [mopoe]\n"
    suite.write_text("name: s\ndescription: d\ndefaults:\n  method: {latent_dim: 8}\n"
                     "  train: {epochs: 2, batch_size: 32, max_train: 100}\nexperiments:\n"
                     f"  - name: a\n    reproduces: [MoPoE Fig. 3]\n{exp}  - name: b\n    reproduces: [MoPoE Fig. 11]\n{exp}")
    times = tmp_path / "t.md"
    times.write_text(shape_table([(cfg({"train": {"epochs": 2}}), 1, 10.0)]))
    env = {"MMBENCH_DATA": str(data_root), "MMBENCH_RUNS": str(tmp_path / "runs")}
    r = mmbench_here("run", suite, "--dry-run", "--step-times", times, env=env, width=250)
    assert r.returncode == 0, r.stderr
    out = " ".join(r.stdout.split())
    assert "s (full): 2 runs (1 distinct: a run two experiments share is listed under each)" in out
    assert "1 pending;" in out and "for 1 of 1 unfinished run(s) in 1 pack(s)" in out  # 2 x floor(100/32) / 10 = 0.6 s
    assert "no timing yet; 1 run(s) without an estimate" in out  # nothing finished here to time it by, once
    assert r.stdout.count("polydigits-vanilla-mopoe-s0-") == 2
    # unprepared, the shared run is sized by its dataset's default recipe, and said to be so, once
    suite.write_text(suite.read_text().replace("polydigits", "polymnist"))
    env = {"MMBENCH_DATA": str(tmp_path / "nodata"), "MMBENCH_RUNS": str(tmp_path / "runs")}
    r = mmbench_here("run", suite, "--dry-run", env=env, width=250)
    assert r.returncode == 0, r.stderr
    out = " ".join(r.stdout.split())
    assert "1 pending; no timing yet; 1 run(s) without an estimate" in out, out
    assert "~: 1 run(s) sized by their dataset's default recipe (not prepared here)" in out, out


def test_synthetic_images_span_every_byte_value():
    """Image bytes are drawn over 0..255 inclusive (a full-white pixel occurs), not 0..254."""
    x = bench.synthetic_batch([Modality("img", (3, 8, 8))], 16, torch.Generator().manual_seed(0))["img"]
    assert set((x * 255).round().long().unique().tolist()) == set(range(256))


def test_a_packed_suite_step_stacks_one_model_per_seed_and_draws_with_each_runs_generator(monkeypatch):
    """config_pack_step of 2 runs of a seed-5 config: run s's parameters are those of the run with seed 5 + s as its
    trainer builds it, its batch has the pack's axis in front, and its noise comes from a generator seeded 5 + s."""
    from mmbench.pack import StackedModel

    seen = {}
    original = StackedModel.loss_backward  # the training step's loss and backward (looped on a CPU)

    def loss_backward(self, x, gens, *args, **kwargs):
        seen["gens"] = [g.initial_seed() for g in gens]
        seen["x"] = {k: tuple(v.shape) for k, v in x.items()}
        return original(self, x, gens, *args, **kwargs)

    monkeypatch.setattr(StackedModel, "loss_backward", loss_backward)
    c = cfg(seed=5)
    step, params = bench.config_pack_step(c, 2)
    alone = [list(bench._run_model(cfg(seed=s), torch.device("cpu")).parameters()) for s in (5, 6)]
    assert len(params) == len(alone[0])
    for i, p in enumerate(params):
        assert torch.equal(p[0].detach(), alone[0][i].detach()) and torch.equal(p[1].detach(), alone[1][i].detach())
    assert not torch.equal(params[0][0], params[0][1])
    step()
    assert seen["gens"] == [5, 6]
    assert seen["x"] == {f"m{i}": (2, 32, 3, 28, 28) for i in range(5)}


def test_suite_step_rows_warm_a_captured_step_longer_and_stop_a_shape_only_when_it_cannot_pack(monkeypatch):
    """With `compile` each size is timed uncaptured (2 warm-up steps) and captured (3); a shape that cannot be packed
    gets one row saying why and no other pack size is tried; a pack that fails otherwise (out of memory) gets a row
    and the larger sizes are still tried."""
    made, warmups = [], []
    real_pack_step = bench.config_pack_step

    def fake_step(c, device="cpu", compile=False):
        made.append((c.method.name, 1, compile))
        return (lambda: None), [torch.zeros(1)]

    def fake_pack_step(c, n, device="cpu", compile=False):
        made.append((c.method.name, n, compile))
        if c.method.name == "mvae":
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        if c.method.name == "mrvae":
            return real_pack_step(c, n, device, compile)  # refuses: not packed
        return (lambda: None), [torch.zeros(1)]

    def fake_timed(step, warmup, steps, dev, params):
        warmups.append(warmup)
        return {"median_s": 0.5}

    monkeypatch.setattr(bench, "config_step", fake_step)
    monkeypatch.setattr(bench, "config_pack_step", fake_pack_step)
    monkeypatch.setattr(bench, "_timed", fake_timed)
    configs = [cfg({"method": {"name": m}} if m != "mrvae" else R_OBJECTIVE, s) for m in ("mopoe", "mvae", "mrvae")
               for s in range(3)]
    rows = bench.suite_step_rows(configs, [1, 2, 3], steps=1, compile=True)  # pack 1 is the unpacked row
    got = [(r["method"], r["pack"], r["mode"].split(":")[0], r["run_steps_per_s"]) for r in rows]
    nan = [r["run_steps_per_s"] != r["run_steps_per_s"] for r in rows]
    timed = [(m, n, mode, v) for (m, n, mode, v), missing in zip(got, nan) if not missing]
    assert timed == [("mopoe", 1, "unpacked", 2.0), ("mopoe", 1, "unpacked (compiled)", 2.0),
                     ("mopoe", 2, "packed", 4.0), ("mopoe", 2, "packed (compiled)", 4.0),
                     ("mopoe", 3, "packed", 6.0), ("mopoe", 3, "packed (compiled)", 6.0),
                     ("mvae", 1, "unpacked", 2.0), ("mvae", 1, "unpacked (compiled)", 2.0),
                     ("mrvae", 1, "unpacked", 2.0), ("mrvae", 1, "unpacked (compiled)", 2.0)]
    assert warmups == [2, 3] * 5
    failed = [(r["method"], r["pack"], r["mode"]) for r, missing in zip(rows, nan) if missing]
    assert [(m, n) for m, n, _ in failed] == [("mvae", 2), ("mvae", 2), ("mvae", 3), ("mvae", 3), ("mrvae", 2)]
    # a captured step's failure is marked so (read_step_times caps uncaptured runs only by uncaptured failures)
    assert [mode.split(":")[0] for m, _, mode in failed if m == "mvae"] == ["n/a", "n/a (compiled)"] * 2
    assert all("out of memory" in mode for m, _, mode in failed if m == "mvae")
    assert failed[-1][2].startswith(f"n/a: not packed: method mrvae: {REFUSAL}")
    assert made[-3:] == [("mrvae", 1, False), ("mrvae", 1, True), ("mrvae", 2, False)]


def test_config_step_trains_in_the_runs_precision_and_captures_its_loss_only_when_asked(monkeypatch):
    """config_step's step runs under the run's own precision (autocast bf16 for a bf16 run) and, with `compile`,
    calls torch.compile on the model's loss in mode reduce-overhead."""
    precisions, compiled = [], []
    real_autocast = bench._autocast

    def autocast(precision, dev):
        precisions.append(precision)
        return real_autocast(precision, dev)

    def fake_compile(fn, mode=None, **kwargs):
        compiled.append(mode)
        return fn

    monkeypatch.setattr(bench, "_autocast", autocast)
    monkeypatch.setattr(torch, "compile", fake_compile)
    step, _ = bench.config_step(cfg({"train": {"precision": "bf16"}}))
    step()
    assert precisions == ["bf16"] and compiled == []
    step, _ = bench.config_step(cfg(), compile=True)
    step()
    assert precisions == ["bf16", "fp32"] and compiled == ["reduce-overhead"]


def test_a_suite_table_read_for_compiled_runs_prefers_each_shapes_captured_rows(tmp_path):
    """Read with `compiled`, a captured row of a shape's pack size stands even when its uncaptured row comes after it;
    read without, captured rows are skipped."""
    c = cfg()
    cols = [*projection.KEY_COLUMNS, "runs", "pack", "mode", "median_s", "run_steps_per_s"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for pack, mode, rate in ((1, "unpacked (compiled)", 12.0), (1, "unpacked", 10.0),
                             (2, "packed (compiled)", 30.0), (2, "packed", 20.0)):
        lines.append("| " + " | ".join([*projection.step_key(c), "2", str(pack), mode, f"{pack / rate:.4f}", str(rate)]) + " |")
    times = tmp_path / "t.md"
    times.write_text("\n".join(lines) + "\n")
    assert projection.read_step_times(times, compiled=True) == {projection.step_key(c): {1: 12.0, 2: 30.0}}
    assert projection.read_step_times(times) == {projection.step_key(c): {1: 10.0, 2: 20.0}}


def test_a_step_schedule_is_timed_in_its_first_stage_and_options_order_does_not_change_a_shape(monkeypatch):
    """SMVAE two_stage by its default stage-1 fraction needs the run's planned length (plan_steps) before a step:
    the suite's timed step is planned as a long run and times, not a row saying it cannot. The options' order does
    not change a step's key, and a shape's label names its options (two shapes that differ only there read apart)."""
    monkeypatch.setattr(bench, "_timed", lambda step, warmup, steps, dev, params: (step(), {"median_s": 0.5})[1])
    two = cfg({"method": {"name": "smvae", "options": {"schedule": "two_stage"}}})
    rows = bench.suite_step_rows([two], [2], steps=1)
    assert [(r["pack"], r["mode"], r["run_steps_per_s"]) for r in rows[:1]] == [(1, "unpacked", 2.0)]
    assert bench._run_model(two, torch.device("cpu")).total_steps == 10 ** 9
    a = projection.step_key(cfg({"method": {"name": "smvae", "options": {"schedule": "two_stage", "stage1_steps": 3}}}))
    b = projection.step_key(cfg({"method": {"name": "smvae", "options": {"stage1_steps": 3, "schedule": "two_stage"}}}))
    assert a == b and a[5] == '{"schedule": "two_stage", "stage1_steps": 3}'
    assert projection.key_label(a) == ('smvae (polydigits/vanilla, polymnist_cnn, batch 32, latent 8, '
                                       '{"schedule": "two_stage", "stage1_steps": 3})')
    assert projection.key_label(projection.step_key(two)) != projection.key_label(projection.step_key(cfg(
        {"method": {"name": "smvae"}})))
    # a file holding a suite table (step-shape keys) beside a PolyMNIST-shaped one (method names) is read by shape
    assert projection.by_shape({a: {1: 2.0}, "mopoe": {1: 3.0}}) is True


def test_shapes_differ_leaves_the_modality_count_unchecked_where_the_table_does_not_say_it():
    """A step table whose header and rows do not give M (modalities None) still projects a run at its other shapes;
    where the table says M, a run with another number of modalities differs."""
    shapes = {"architecture": "polymnist_cnn", "modalities": None, "batch_size": 32, "latent_dim": 8,
              "precision": "fp32"}
    assert projection.shapes_differ(cfg(), shapes) is None
    assert projection.shapes_differ(cfg(), {**shapes, "modalities": 5}) is None
    assert projection.shapes_differ(cfg(), {**shapes, "modalities": 3}) == "5 modalities, not 3"
