"""`mmbench bench`: counts it cannot time with are one line, before any timing."""
import sys
from pathlib import Path

import pytest

from mmbench import projection
from mmbench.errors import MMBenchError


@pytest.mark.parametrize("args, message", [
    (["--steps", "0"], "error: --steps 0: must be at least 1"),
    (["--steps", "-2", "--pack", "1,2"], "error: --steps -2: must be at least 1"),
    (["--batch-size", "0"], "error: --batch-size 0: must be at least 1"),
    (["--latent-dim", "0"], "error: --latent-dim 0: must be at least 1"),
    (["--modalities", "2,0"], "error: --modalities 2,0: numbers of modalities must be at least 1"),
    (["--modalities", "2,x"], "error: --modalities '2,x': expected comma-separated numbers of modalities"),
    (["--pack", "1,0"], "error: --pack '1,0': pack sizes must be >= 1"),
    (["--pack", "1,x"], "error: --pack '1,x': expected comma-separated pack sizes"),
    # sizes torch cannot allocate (an overflow traceback before) and a subset count that never ends (a hang before)
    (["--batch-size", "99999999999999999999"], "error: --batch-size 99999999999999999999: at most 1,048,576"),
    (["--latent-dim", str(2 ** 20 + 1)], "error: --latent-dim 1048577: at most 1,048,576"),
    (["--modalities", "2,17"], "error: --modalities 2,17: at most 16 (the subset methods' 2^M - 1 subsets)"),
])
def test_bench_steps_counts_are_checked_first(args, message, monkeypatch, capsys):
    import mmbench.bench as bench
    from mmbench import cli

    monkeypatch.setattr(bench, "_timed", lambda *a, **k: pytest.fail("timed before checking the counts"))
    monkeypatch.setattr(sys, "argv", ["mmbench", "bench", "steps", "--methods", "mopoe", "--scaling", "mopoe",
                                      "--batch-size", "4", "--latent-dim", "4", *args])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_bench_steps_counts_at_their_bounds_are_allowed():
    from mmbench.bench import MAX_MODALITIES, MAX_SIZE, check_counts

    assert (MAX_SIZE, MAX_MODALITIES) == (2 ** 20, 16)
    check_counts(1, MAX_SIZE, MAX_SIZE, [1, MAX_MODALITIES])  # the largest values the messages name: no error


def test_bench_load_repeats_must_be_positive(monkeypatch, capsys, tmp_path):
    from mmbench import cli

    monkeypatch.setattr(sys, "argv", ["mmbench", "bench", "load", "polydigits", "--repeats", "0",
                                      "--data-root", str(tmp_path)])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    assert exit_.value.code == 2 and "error: --repeats 0: must be at least 1" in capsys.readouterr().err


def test_step_time_refuses_zero_steps():
    from mmbench.bench import step_time

    with pytest.raises(MMBenchError, match="time at least 1 step"):
        step_time("mopoe", 2, batch_size=2, latent_dim=4, steps=0)
    assert step_time("mopoe", 2, batch_size=2, latent_dim=4, steps=1, warmup=0)["median_s"] > 0


# ----- known answers: what `bench steps` computes from the times it measures (fake clock, fake steps) -----
def test_timed_reports_median_min_max_of_the_steps_after_the_warmup(monkeypatch):
    """One warm-up step (100 s, not reported), then steps of 4, 1 and 2 s: median 2 (not the mean 7/3), min 1,
    max 4, run-steps/s 1 / median = 0.5; every step is called once."""
    import types

    import torch

    from mmbench import bench

    now, durations = [0.0], iter([100.0, 4.0, 1.0, 2.0])

    def step():
        now[0] += next(durations)

    monkeypatch.setattr(bench, "time", types.SimpleNamespace(perf_counter=lambda: now[0]))
    r = bench._timed(step, 1, 3, torch.device("cpu"), [torch.zeros(2000), torch.zeros(500)])
    assert r == {"median_s": 2.0, "min_s": 1.0, "max_s": 4.0, "params_m": 0.0025, "run_steps_per_s": 0.5}
    assert next(durations, None) is None


def test_pack_step_time_run_steps_are_pack_size_over_the_median(monkeypatch):
    """A packed step of 4 runs with median 2 s (min 1, max 4) makes 4 / 2 = 2 run-steps per second."""
    from mmbench import bench

    monkeypatch.setattr(bench, "pack_step", lambda *a, **k: (None, []))
    monkeypatch.setattr(bench, "_timed", lambda *a, **k: {"median_s": 2.0, "min_s": 1.0, "max_s": 4.0,
                                                           "params_m": 0.0, "run_steps_per_s": 0.5})
    assert bench.pack_step_time("mopoe", 4) == {"pack": 4, "median_s": 2.0, "min_s": 1.0, "max_s": 4.0,
                                                "run_steps_per_s": 2.0}


def _meta_step(ops: int):
    """A step on the meta device issuing `ops` operations, plus one on its first call only (lazy state, as Adam's
    moments)."""
    import torch

    x, state = torch.ones(3, device="meta"), {}

    def step():
        if not state:
            state["m"] = x * 0
        for _ in range(ops):
            x.add(1)

    return step


def test_device_ops_counts_after_the_warmup_calls_and_counts_factory_operations():
    import torch

    from mmbench.bench import device_ops

    assert device_ops(_meta_step(5)) == 5 and device_ops(_meta_step(5), warmup=1) == 5
    assert device_ops(_meta_step(5), warmup=0) == 6  # the first call's lazy state counted
    assert device_ops(lambda: torch.zeros(3, device="meta"), warmup=0) == 1  # no tensor argument, a device result


def _fake_timings(monkeypatch, calls):
    """step_time / floor_step_time / pack_step_time with known medians (min = median / 2), and method_step /
    floor_step / pack_step as meta steps with known operation counts; every call recorded in `calls`."""
    from mmbench import bench

    def step_time(m, n_modalities, *a, **k):
        calls.append(("step_time", m, n_modalities))
        med = 0.1 * n_modalities + (0.01 if m == "mvae" else 0.0)
        return {"median_s": med, "min_s": med / 2, "max_s": 2 * med, "params_m": 1.0, "run_steps_per_s": 1 / med}

    def floor_step_time(n_modalities, *a, **k):
        calls.append(("floor_step_time", n_modalities, k.get("precision")))
        return {"median_s": 0.05 * n_modalities, "min_s": 0.01, "max_s": 1.0, "params_m": 1.0,
                "run_steps_per_s": 1 / (0.05 * n_modalities)}

    def pack_step_time(m, pack, n_modalities, *a, **k):
        calls.append(("pack_step_time", m, pack, n_modalities))
        return {"pack": pack, "median_s": 0.4, "min_s": 0.1, "max_s": 1.0, "run_steps_per_s": pack / 0.4}

    monkeypatch.setattr(bench, "step_time", step_time)
    monkeypatch.setattr(bench, "floor_step_time", floor_step_time)
    monkeypatch.setattr(bench, "pack_step_time", pack_step_time)
    monkeypatch.setattr(bench, "method_step", lambda m, n, *a, **k: (_meta_step(100 * n), []))
    monkeypatch.setattr(bench, "floor_step", lambda n, *a, **k: (_meta_step(10 * n), []))
    monkeypatch.setattr(bench, "pack_step", lambda m, pack, n, *a, **k: (_meta_step(400), []))


def test_step_table_known_answers(monkeypatch):
    """Methods and the floor at the largest M (3), the floor in the methods' precision: floor 0.15 s, MoPoE 0.3 s
    -> x_floor 2, MVAE 0.31 s -> x_floor 0.31 / 0.15 (medians, not minima); ops counted at M = 3; the scaling rows
    at each M."""
    from mmbench import bench

    calls = []
    _fake_timings(monkeypatch, calls)
    res = bench.step_table(["mopoe", "mvae"], ["mopoe"], [2, 3], batch_size=8, latent_dim=4, steps=1,
                           precision="bf16")
    rows = {r["method"]: r for r in res["methods"]}
    assert rows["mopoe"]["x_floor"] == pytest.approx(2.0)
    assert rows["mvae"]["x_floor"] == pytest.approx(0.31 / 0.15)
    assert rows["(bare networks: floor)"]["median_s"] == pytest.approx(0.15)
    assert rows["(bare networks: floor)"]["x_floor"] == 1.0
    assert (rows["mopoe"]["ops"], rows["(bare networks: floor)"]["ops"]) == (300, 30)
    assert [(r["M"], r["median_s"]) for r in res["scaling"]] == [(2, pytest.approx(0.2)), (3, pytest.approx(0.3))]
    assert ("floor_step_time", 3, "bf16") in calls


def test_floor_step_runs_in_the_precision_asked(monkeypatch):
    """The floor x_floor divides by runs under the same autocast as the methods' steps (bench steps --precision)."""
    from mmbench import bench

    entered, real = [], bench._autocast

    def autocast(precision, dev):
        entered.append((precision, dev.type))
        return real(precision, dev)

    monkeypatch.setattr(bench, "_autocast", autocast)
    bench.floor_step(2, batch_size=2, latent_dim=4, precision="bf16")[0]()
    assert entered == [("bf16", "cpu")]


def test_pack_table_known_answers(monkeypatch):
    """Unpacked at the asked M (3): 1 / 0.3 run-steps/s and 300 ops; a pack of 4 timed at 0.4 s a packed step:
    10 run-steps/s, and its 400 operations are 100 per run-step."""
    from mmbench import bench

    calls = []
    _fake_timings(monkeypatch, calls)
    unpacked, packed = bench.pack_table(["mopoe"], [4], batch_size=8, latent_dim=4, steps=1, n_modalities=3)
    assert (unpacked["pack"], unpacked["ops_per_run_step"]) == (1, 300)
    assert unpacked["run_steps_per_s"] == pytest.approx(1 / 0.3)
    assert (packed["pack"], packed["run_steps_per_s"], packed["ops_per_run_step"]) == (4, 10.0, 100.0)
    assert calls == [("step_time", "mopoe", 3), ("pack_step_time", "mopoe", 4, 3)]


def test_compiled_pack_table_times_each_pack_uncaptured_and_captured(monkeypatch, tmp_path):
    """`bench steps --pack 4 --compile`: the pack timed uncaptured and then captured in the same call (one row each),
    so that capture's gain is not confounded with the machine; a table reader takes the captured rows only for
    captured runs (`mmbench run --compile`), then in place of the uncaptured ones."""
    from mmbench import bench

    calls, flags = [], []
    _fake_timings(monkeypatch, calls)
    timed = bench.pack_step_time
    monkeypatch.setattr(bench, "pack_step_time", lambda *a, **k: flags.append(k["compile"]) or timed(*a, **k))
    rows = bench.pack_table(["mopoe"], [4], batch_size=8, latent_dim=4, steps=1, n_modalities=3, compile=True)
    assert [(r["pack"], r["mode"]) for r in rows] == [(1, "unpacked"), (4, "packed"), (4, "packed (compiled)")]
    assert flags == [False, True]
    f = tmp_path / "t.md"
    f.write_text("| method | pack | mode | median_s | run_steps_per_s |\n|-|-|-|-|-|\n| mopoe | 1 | unpacked | 0.1 | 10 |\n"
                 "| mopoe | 4 | packed | 0.2 | 20 |\n| mopoe | 4 | packed (compiled) | 0.1 | 40 |\n"
                 "| mvae | 4 | packed (compiled) | 0.1 | 30 |\n| mvae | 4 | packed | 0.1 | 15 |\n")
    assert projection.read_step_times(f) == {"mopoe": {1: 10.0, 4: 20.0}, "mvae": {4: 15.0}}
    assert projection.read_step_times(f, compiled=True) == {"mopoe": {1: 10.0, 4: 40.0}, "mvae": {4: 30.0}}


def test_bench_steps_pack_reports_the_best_pack_per_method(monkeypatch, tmp_path):
    """`bench steps --pack 1,2,4 --modalities 2,3`: packs 2 and 4 (1 is the unpacked row) at M = 3; the summary
    names the pack with the most run-steps/s per method (MoPoE 4 at 30, MVAE 2 at 12), not the fewest."""
    from mmbench import bench, cli

    seen = {}

    def pack_table(methods, packs, *a, **k):
        seen.update(packs=list(packs), n_modalities=k["n_modalities"])
        nan = float("nan")
        return [{"method": m, "pack": p, "mode": "x", "median_s": 1.0, "run_steps_per_s": v, "ops_per_run_step": 1.0}
                for m, p, v in [("mopoe", 1, 10.0), ("mopoe", 2, 18.0), ("mopoe", 4, 30.0),
                                ("mvae", 1, 10.0), ("mvae", 2, 12.0), ("mvae", 4, 8.0), ("mmvamp", 2, nan)]]

    monkeypatch.setattr(bench, "pack_table", pack_table)
    out = tmp_path / "t.md"
    monkeypatch.setattr(sys, "argv", ["mmbench", "bench", "steps", "--methods", "mopoe,mvae,mmvamp", "--pack", "1,2,4",
                                      "--modalities", "2,3", "--out", str(out)])
    try:
        cli.main()
    except SystemExit as e:
        assert e.code in (0, None)
    assert seen == {"packs": [2, 4], "n_modalities": 3}
    best = out.read_text().split("Pack size with the most run-steps per second:")[1].strip().splitlines()[2:]
    assert [[c.strip() for c in line.strip("|").split("|")] for line in best] == [
        ["mopoe", "4", "30.000"], ["mvae", "2", "12.000"]]


def test_bench_steps_in_bf16_says_where_the_cpu_emulates_it(monkeypatch, tmp_path, capsys):
    """`bench steps --precision bf16` on a CPU without bfloat16 instructions says its times are not bf16's best."""
    from mmbench import bench, cli

    seen = []
    monkeypatch.setattr(bench, "pack_table", lambda m, p, *a, **k: seen.append(k["precision"]) or [
        {"method": "mopoe", "pack": 2, "mode": "x", "median_s": 1.0, "run_steps_per_s": 2.0, "ops_per_run_step": 1.0}])
    for has, expected in ((False, 1), (True, 0)):
        monkeypatch.setattr("mmbench.train.cpu_has_bf16", lambda: has)
        monkeypatch.setattr(sys, "argv", ["mmbench", "bench", "steps", "--methods", "mopoe", "--pack", "2",
                                          "--precision", "bf16", "--out", str(tmp_path / "t.md")])
        try:
            cli.main()
        except SystemExit as e:
            assert e.code in (0, None)
        err = " ".join(capsys.readouterr().err.split())
        assert err.count("note: timing in bf16 on a CPU without bfloat16 instructions") == expected, err
    assert seen == ["bf16", "bf16"]


# ----- `bench steps --profile DIR`: where a step's time goes ----------------------------------------------
def test_busy_seconds_is_the_union_of_the_kernels_intervals():
    """Overlapping kernels (streams) count once, a gap not at all, a kernel inside another adds nothing."""
    from mmbench.bench import busy_seconds

    assert busy_seconds([]) == 0.0
    assert busy_seconds([(5, 6), (0, 2), (1, 3)]) == 4.0
    assert busy_seconds([(0, 10), (2, 3), (4, 12)]) == 12.0


def test_kernel_seconds_reads_the_gpu_events_only_and_refuses_a_trace_without_kernels():
    """From the profiler's events (microseconds): the device's kernels, not the host operators that launched them
    (their intervals would count the host's time as the device's); no kernel recorded -> an error, not 0 % busy."""
    import types

    from torch.autograd import DeviceType

    from mmbench.bench import kernel_seconds

    def ev(kind, start, end, annotation=False):
        return types.SimpleNamespace(device_type=kind, time_range=types.SimpleNamespace(start=start, end=end),
                                     is_user_annotation=annotation)

    events = [ev(DeviceType.CPU, 0, 10_000), ev(DeviceType.CUDA, 100, 400), ev(DeviceType.CUDA, 300, 600),
              ev(DeviceType.CUDA, 1_000, 1_500),
              ev(DeviceType.CUDA, 100, 1_500, annotation=True)]  # e.g. Optimizer.step's range on the GPU, gaps and all
    assert kernel_seconds(events, steps=2) == pytest.approx(1_000 / 1e6 / 2)
    with pytest.raises(MMBenchError, match="recorded no GPU kernels"):
        kernel_seconds([ev(DeviceType.CPU, 0, 10)], steps=1)


def test_bench_steps_profile_writes_one_table_per_timed_step(monkeypatch, tmp_path):
    """`bench steps --pack 2 --profile DIR` (tiny shapes, the CPU): each timed step, unpacked and packed, profiled
    into its own file holding the operators it ran; the table gains kernel_ms / kernel_share (nan: a CPU has no
    device kernels) and says what they mean; a file given as the folder is refused before any timing."""
    from mmbench import bench, cli

    prof, out = tmp_path / "prof", tmp_path / "t.md"

    def run(*extra):
        monkeypatch.setattr(sys, "argv", ["mmbench", "bench", "steps", "--methods", "mopoe", "--batch-size", "4",
                                          "--latent-dim", "4", "--modalities", "2", "--steps", "1", *extra])
        try:
            cli.main()
        except SystemExit as e:
            return e.code
        return 0

    assert run("--pack", "2", "--profile", str(prof), "--out", str(out)) in (0, None)
    assert sorted(p.name for p in prof.iterdir()) == ["mopoe-pack2.txt", "mopoe-unpacked.txt"]
    for name, what in (("mopoe-unpacked.txt", "mopoe, unpacked"), ("mopoe-pack2.txt", "mopoe, pack of 2")):
        text = (prof / name).read_text()
        assert text.startswith(f"{what}: timed median") and "aten::convolution_backward" in text
    md = out.read_text()
    assert "kernel_ms |   kernel_share" in md and "kernel_share: that over median_s" in md
    assert run("--scaling", "", "--profile", str(prof / "steps")) in (0, None)
    assert sorted(p.name for p in (prof / "steps").iterdir()) == ["floor.txt", "mopoe.txt"]
    monkeypatch.setattr(bench, "_timed", lambda *a, **k: pytest.fail("timed before checking --profile"))
    assert run("--pack", "2", "--profile", str(out)) == 2


def test_a_failed_profile_keeps_the_timing(monkeypatch, tmp_path):
    """The profile is a diagnostic: when it fails (no kernel trace, a profiler error) the row keeps its measured time,
    its kernel columns are nan and the file says why."""
    from mmbench import bench

    def fails(step, dev, steps=3):
        raise MMBenchError("--profile: torch.profiler recorded no GPU kernels")

    monkeypatch.setattr(bench, "profile_step", fails)
    f = tmp_path / "p.txt"
    r = bench._profiled({"median_s": 0.5}, lambda: None, __import__("torch").device("cpu"), f, "mopoe, pack of 2")
    assert r["median_s"] == 0.5 and r["kernel_ms"] != r["kernel_ms"] and r["kernel_share"] != r["kernel_share"]
    assert f.read_text().startswith("mopoe, pack of 2: timed median 500.00 ms per step; profiling failed: MMBenchError: --profile:")


def pack_table_header(monkeypatch, out, *options) -> str:
    """The first line of `mmbench bench steps --methods mopoe --pack 2 [options]`'s table, its timing stubbed."""
    from mmbench import bench, cli

    monkeypatch.setattr(bench, "pack_table", lambda *a, **k: [
        {"method": "mopoe", "pack": 2, "mode": "x", "median_s": 1.0, "run_steps_per_s": 2.0, "ops_per_run_step": 1.0}])
    monkeypatch.setattr(sys, "argv", ["mmbench", "bench", "steps", "--methods", "mopoe", "--pack", "2", *options,
                                      "--out", str(out)])
    try:
        cli.main()
    except SystemExit as e:
        assert e.code in (0, None)
    return out.read_text().splitlines()[0]


@pytest.mark.parametrize("env, says", [
    ({}, "; packs looped over their runs, torch"),
    ({"MMBENCH_PACK_CONV": "bmm"}, "; packs looped over their runs, torch"),  # bmm changes only a vmapped pack
    ({"MMBENCH_PACK_MODE": "vmap"}, "; packs vmapped, torch"),
    ({"MMBENCH_PACK_MODE": "vmap", "MMBENCH_PACK_CONV": "bmm", "MMBENCH_ADAM": "fused"},
     "; packs vmapped, convolutions as batched matmuls (MMBENCH_PACK_CONV=bmm); Adam fused (MMBENCH_ADAM=fused), "
     "torch"),
    ({"MMBENCH_ADAM": "fused"}, "; packs looped over their runs; Adam fused (MMBENCH_ADAM=fused), torch"),
    # a bf16 pack loops over its runs wherever packs are vmapped (StackedModel.vectorised_for); the header once said
    # "vmapped, convolutions as batched matmuls" of bf16 steps timed looped with PyTorch's convolutions
    ({"MMBENCH_PACK_MODE": "vmap", "MMBENCH_PACK_CONV": "bmm", "precision": "bf16"},
     "; packs looped over their runs, torch"),
])
def test_bench_steps_pack_header_names_the_kernels_the_environment_chose(monkeypatch, tmp_path, env, says):
    """The table's header says how the packs computed (vmapped or looped, the convolutions' kernels, Adam's), as the
    environment set them for the timed steps (MMBENCH_PACK_MODE, MMBENCH_PACK_CONV, MMBENCH_ADAM) and the
    precision allows."""
    env = dict(env)
    precision = env.pop("precision", "fp32")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    head = pack_table_header(monkeypatch, tmp_path / "t.md", "--precision", precision)
    assert says in head, head
    assert head.count("Adam fused") == ("MMBENCH_ADAM" in env)
    assert head.count("batched matmuls") == ("matmuls" in says)


def test_bench_steps_time_the_trainers_adam_and_count_foreach_on_meta(monkeypatch):
    """Timed steps use the trainers' Adam (train.new_adam: fused under MMBENCH_ADAM=fused, as the header says); the
    operation counts on meta use the multi-tensor kernels a GPU gets by default (a for-loop Adam issues ~10
    operations per parameter tensor, not per step)."""
    import torch

    from mmbench.bench import _adam

    p = [torch.nn.Parameter(torch.zeros(2))]
    monkeypatch.setenv("MMBENCH_ADAM", "fused")
    assert _adam(p, torch.device("cpu")).defaults["fused"] is True
    monkeypatch.setenv("MMBENCH_ADAM", "default")
    assert _adam(p, torch.device("meta")).defaults["foreach"] is True


def test_step_table_shapes_read_from_what_bench_steps_writes(monkeypatch, tmp_path):
    """`run --dry-run --step-times` projects only runs at a table's shapes, read from the header `bench steps`
    writes: the pack table's (M, batch, latent, precision as asked), the step table's (M from its rows) as in the
    H100 record (written before headers named the precision: fp32), the H200 record's."""
    from mmbench.projection import step_table_shapes

    out = tmp_path / "t.md"
    pack_table_header(monkeypatch, out, "--batch-size", "64", "--latent-dim", "16", "--modalities", "2,3",
                      "--precision", "bf16")
    assert step_table_shapes(out) == {"architecture": "polymnist_cnn", "modalities": 3, "batch_size": 64,
                                      "latent_dim": 16, "precision": "bf16"}
    docs = Path(__file__).resolve().parent.parent / "docs"
    for name in ("step_times_h100.md", "step_times_h200.md"):
        assert step_table_shapes(docs / name) == {"architecture": "polymnist_cnn", "modalities": 5, "batch_size": 256,
                                                  "latent_dim": 512, "precision": "fp32"}, name
    (tmp_path / "steps.md").write_text(
        "Training-step time on PolyMNIST-shaped batches (3×28×28 per modality, PolyMNIST CNN), batch 128, latent 32, "
        "bf16, median of 5 steps; cpu, torch 2\n\n| method | M | median_s |\n|---|---|---|\n| mopoe | 4 | 0.5 |\n")
    assert step_table_shapes(tmp_path / "steps.md") == {"architecture": "polymnist_cnn", "modalities": 4,
                                                        "batch_size": 128, "latent_dim": 32, "precision": "bf16"}


def test_a_dropped_pack_is_collected_before_the_next_pack_is_timed(monkeypatch):
    """A pack (StackedModel's vmapped closures) is a reference cycle: dropped, its tensors stay alive until Python's
    collector runs, which on a GPU leaves the last pack's memory in the way of the next, larger one (out-of-memory
    rows that are not). release_device_memory collects and empties the cache; the step tables call it after every
    pack size."""
    import gc
    import weakref

    import torch

    from mmbench import bench

    freed, resets = [], []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: freed.append(True))
    monkeypatch.setattr(torch._dynamo, "reset", lambda: resets.append(True))

    def dropped_pack():
        step, params = bench.pack_step("mopoe", 2, n_modalities=2, batch_size=4, latent_dim=4)
        alive = weakref.ref(params[0])
        del step, params
        assert alive() is not None  # the cycle holds it
        return alive

    gc.disable()
    try:
        alive = dropped_pack()
        bench.release_device_memory(torch.device("cpu"))
        assert alive() is not None and freed == [] and resets == []  # on the CPU nothing to do ...
        bench.release_device_memory(torch.device("cpu"), on_cpu_too=True)
        assert alive() is None and freed == []  # ... unless asked (pack.py: a dropped pack on a CPU, ~9 GB of ResNets)
        alive = dropped_pack()
        bench.release_device_memory(torch.device("cuda"))
        assert alive() is None and freed == [True] and resets == []
        bench.release_device_memory(torch.device("cuda"), compiled=True)  # a captured step's CUDA graphs' pool
        assert resets == [True] and freed == [True, True]
    finally:
        gc.enable()
    calls = []
    monkeypatch.setattr(bench, "release_device_memory", lambda dev, **kw: calls.append(dev.type))
    bench.pack_table(["mopoe"], [2, 3], batch_size=4, latent_dim=4, steps=1, n_modalities=2)
    assert calls == ["cpu", "cpu"]  # after each pack size


def test_timed_steps_count_their_steps_as_the_trainers_do():
    """A timed step is a training step: its counters advance once per step, after the update and outside the loss
    (MultimodalVAE.count_step, as train.train counts), unpacked and packed (every run of the pack)."""
    import inspect

    from mmbench.bench import config_pack_step, config_step
    from mmbench.config import build_run_config

    cfg = build_run_config({"dataset": "polydigits", "method": {"name": "mrvae", "latent_dim": 4,
                                                              "options": {"anneal_rate": 0.1}},
                            "train": {"batch_size": 8}})
    step, _ = config_step(cfg)
    for _ in range(3):
        step()
    assert int(inspect.getclosurevars(step).nonlocals["model"].step) == 3
    pstep, _ = config_pack_step(cfg, 2)
    for _ in range(2):
        pstep()
    assert inspect.getclosurevars(pstep).nonlocals["sm"].buffers["model.step"].tolist() == [2, 2]
