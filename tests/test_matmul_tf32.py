"""MMBENCH_MATMUL_TF32=1: a GPU trains with float32 matmuls in TF32 (a kernel choice for docs/gpu-runs: with
MMBENCH_PACK_CONV=bmm a pack's convolutions become matmuls, which would otherwise run in full fp32 where cuDNN's
convolutions run in TF32). Named in the run's log and in its `trained_with`, restored when the trainer ends (the
evaluation after it is fp32), refused when misspelt; a CPU says it has no effect."""
import json

import pytest
import torch

from mmbench import train as train_mod
from mmbench.errors import MMBenchError
from mmbench.pack import train_pack
from mmbench.results import Run, number_provenance, trainer_label
from mmbench.kernels import chosen as kernel_choices
from mmbench.train import keeps_matmul_precision, matmul_tf32, note_code, train
from conftest import gpu_tests_asked, on_gpu_if_asked
from test_bench import pack_table_header
from test_train import cfg, trained_with_and_without, weights


@pytest.fixture(autouse=True)
def _flag_restored():
    before = torch.backends.cuda.matmul.allow_tf32
    yield
    torch.backends.cuda.matmul.allow_tf32 = before


def test_the_choice_is_read_checked_and_applied_on_a_gpu_only(monkeypatch):
    assert matmul_tf32("cuda") is None and kernel_choices() == {}  # unset: PyTorch's default
    monkeypatch.setenv("MMBENCH_MATMUL_TF32", "yes")
    with pytest.raises(MMBenchError, match=r"MMBENCH_MATMUL_TF32='yes': use 0 or 1 \(or leave it unset: 0, fp32 matmuls\)"):
        matmul_tf32("cuda")
    monkeypatch.setenv("MMBENCH_MATMUL_TF32", "0")
    assert matmul_tf32("cuda") is None and not torch.backends.cuda.matmul.allow_tf32
    monkeypatch.setenv("MMBENCH_MATMUL_TF32", "1")
    assert "no effect on cpu" in matmul_tf32("cpu") and not torch.backends.cuda.matmul.allow_tf32
    assert "TF32 on cuda:0 (MMBENCH_MATMUL_TF32=1)" in matmul_tf32("cuda:0")
    assert torch.backends.cuda.matmul.allow_tf32  # the flag cuBLAS reads (set without a GPU; nothing runs here)
    assert kernel_choices() == {"MMBENCH_MATMUL_TF32": "1"}


def test_a_trainer_leaves_the_flag_as_it_found_it_whether_it_returns_or_fails():
    @keeps_matmul_precision
    def trainer(fail):
        torch.backends.cuda.matmul.allow_tf32 = True
        if fail:
            raise RuntimeError("diverged")
        return "done"

    torch.backends.cuda.matmul.allow_tf32 = False
    assert trainer(False) == "done" and not torch.backends.cuda.matmul.allow_tf32
    with pytest.raises(RuntimeError):
        trainer(True)
    assert not torch.backends.cuda.matmul.allow_tf32


def test_the_trainers_keep_their_names_and_documentation():
    """keeps_matmul_precision wraps a trainer as functools.wraps does (its name in tracebacks and help)."""
    assert (train.__name__, train_pack.__name__) == ("train", "train_pack")
    assert train.__doc__.startswith("Train (or resume) the run's model") and "pack key" in train_pack.__doc__


def test_a_trainer_that_changed_nothing_writes_nothing_back():
    """A precision set through PyTorch's newer API stays readable after a trainer (writing the legacy flag back would
    make torch.get_float32_matmul_precision, which provenance reads, refuse)."""
    @keeps_matmul_precision
    def trainer():
        return "done"

    torch.set_float32_matmul_precision("medium")
    try:
        assert trainer() == "done" and torch.get_float32_matmul_precision() == "medium"
    finally:
        torch.set_float32_matmul_precision("highest")


def _as_on_a_gpu(monkeypatch, seen) -> str:
    """MMBENCH_MATMUL_TF32=1 as a GPU process applies it: on the GPU of device-check.sh (MMBENCH_GPU_TESTS=1) the real
    thing, elsewhere matmul_tf32 doing what it does there (the flag switched on, a line returned). `seen` gets the flag
    at each training-loss call, i.e. while the run trains. Returns the line the run's log must have."""
    monkeypatch.setenv("MMBENCH_MATMUL_TF32", "1")
    on_gpu_if_asked()
    if gpu_tests_asked():
        said = "float32 matmuls in TF32 on cuda"
    else:
        said = "float32 matmuls in TF32 (test)"

        def applied(device):
            torch.backends.cuda.matmul.allow_tf32 = True
            return said

        monkeypatch.setattr(train_mod, "matmul_tf32", applied)
    from mmbench.methods.mopoe import MoPoE  # the method of test_train's cfg

    loss = MoPoE.loss

    def watched(self, *a, **k):
        seen.append(torch.backends.cuda.matmul.allow_tf32)
        return loss(self, *a, **k)

    monkeypatch.setattr(MoPoE, "loss", watched)
    return said


def test_a_run_trains_with_the_flag_on_and_evaluates_with_it_off(tmp_path, data_root, monkeypatch):
    torch.backends.cuda.matmul.allow_tf32 = False
    seen = []
    said = _as_on_a_gpu(monkeypatch, seen)
    run = Run(cfg(train={"epochs": 1, "max_test": 32}), tmp_path / "one")
    summary = train(run, data_root)
    assert seen and all(seen)
    assert not torch.backends.cuda.matmul.allow_tf32  # what an evaluation in this worker computes with
    assert said in run.log_path.read_text()
    # recorded where it takes effect: on a GPU (kernels.effective), not in this CPU simulation
    want = {"MMBENCH_MATMUL_TF32": "1"} if gpu_tests_asked() else None
    assert summary["trained_with"][-1].get("kernels") == want


def test_a_pack_checks_and_trains_with_the_flag_on_and_leaves_it_off(tmp_path, data_root, monkeypatch):
    torch.backends.cuda.matmul.allow_tf32 = False
    seen = []
    said = _as_on_a_gpu(monkeypatch, seen)
    runs = [Run(cfg(seed=s, train={"epochs": 1, "max_test": 32}), tmp_path) for s in range(2)]
    done = train_pack(runs, data_root)
    # the trial's reference losses (each run alone) are computed under the flag too: it checks what trains
    assert seen and all(seen)
    assert not torch.backends.cuda.matmul.allow_tf32
    for r in runs:
        assert done[r.id]["packed_with"] == 2 and said in r.log_path.read_text()
        want = {"MMBENCH_MATMUL_TF32": "1"} if gpu_tests_asked() else None
        assert done[r.id]["trained_with"][-1].get("kernels") == want


def test_on_a_cpu_the_run_says_it_has_no_effect_and_is_the_default_run(tmp_path, data_root, monkeypatch):
    c = cfg(train={"epochs": 1, "max_test": 32})
    default, asked = trained_with_and_without(c, tmp_path, data_root, monkeypatch, "MMBENCH_MATMUL_TF32", "1")
    assert asked.id == default.id
    assert "MMBENCH_MATMUL_TF32=1 has no effect on cpu" in asked.log_path.read_text()
    assert "MMBENCH_MATMUL_TF32" not in default.log_path.read_text()
    a, d = weights(asked), weights(default)
    assert all(torch.equal(a[k], d[k]) for k in d)


def test_the_report_names_the_choices_sorted_and_a_commit_it_does_not_know():
    """trainer_label: the choices in name order, whatever order the record holds them in (two runs with the same
    choices are one trainer to the report), ', '-separated; '?' for an entry without a commit."""
    two = {"git_commit": "c1", "kernels": {"MMBENCH_MATMUL_TF32": "1", "MMBENCH_ADAM": "fused"}}
    assert trainer_label(two) == "c1 (MMBENCH_ADAM=fused, MMBENCH_MATMUL_TF32=1)"
    assert trainer_label({"kernels": {"MMBENCH_ADAM": "fused"}}) == "? (MMBENCH_ADAM=fused)"
    assert trainer_label({"git_commit": "c1", "kernels": {}}) == "c1"


def test_trained_with_lists_each_change_of_code_or_kernels_on_resume(monkeypatch):
    monkeypatch.setattr(train_mod.results_mod, "git_commit", lambda: "c1")
    state = {"epoch": 0}
    note_code(state, {})
    state["epoch"] = 2
    note_code(state, {"MMBENCH_ADAM": "fused"})
    note_code(state, {"MMBENCH_ADAM": "fused"})  # the same again: nothing new
    state["epoch"], state["step"] = 3, 7
    note_code(state, {})  # back to the defaults: listed, though the defaults name no choice
    note_code(state, {"MMBENCH_ADAM": "fused"}, step=9)
    assert [(c["from_epoch"], c["from_step"], c.get("kernels")) for c in state["code"]] == [
        (0, 0, None), (2, 0, {"MMBENCH_ADAM": "fused"}), (3, 7, None), (3, 9, {"MMBENCH_ADAM": "fused"})]
    assert trainer_label(state["code"][1]) == "c1 (MMBENCH_ADAM=fused)" and trainer_label(state["code"][0]) == "c1"
    assert number_provenance({"trained_with": state["code"][:3]})["trained by"] == "c1 + c1 (MMBENCH_ADAM=fused) + c1"


@pytest.mark.parametrize("env, where, want", [
    ({"MMBENCH_ADAM": "fused"}, dict(device_type="cpu"), {"MMBENCH_ADAM": "fused"}),  # Adam's counts everywhere
    ({"MMBENCH_MATMUL_TF32": "1", "MMBENCH_CUDNN_BENCHMARK": "1"}, dict(device_type="cpu"), {}),  # GPU-only switches
    ({"MMBENCH_MATMUL_TF32": "1", "MMBENCH_CUDNN_BENCHMARK": "1"}, dict(device_type="cuda"),
     {"MMBENCH_MATMUL_TF32": "1", "MMBENCH_CUDNN_BENCHMARK": "1"}),
    ({"MMBENCH_COMPILE": "1"}, dict(device_type="cuda"), {}),  # asked, but the step was not captured
    ({"MMBENCH_COMPILE": "1"}, dict(device_type="cuda", captured=True), {"MMBENCH_COMPILE": "1"}),
    ({"MMBENCH_PACK_MODE": "vmap", "MMBENCH_PACK_CONV": "bmm"}, dict(device_type="cpu"), {}),  # unpacked
    ({"MMBENCH_PACK_MODE": "loop"}, dict(device_type="cpu", pack_mode_applies=True), {}),  # a CPU's default
    ({"MMBENCH_PACK_MODE": "loop"}, dict(device_type="cuda", pack_mode_applies=True), {"MMBENCH_PACK_MODE": "loop"}),
    ({"MMBENCH_PACK_MODE": "vmap", "MMBENCH_PACK_CONV": "bmm"}, dict(device_type="cpu", pack_mode_applies=True),
     {"MMBENCH_PACK_MODE": "vmap"}),  # an fp32 pack without convolutions: no matmul convolutions
    ({"MMBENCH_PACK_MODE": "loop", "MMBENCH_PACK_CONV": "bmm"}, dict(device_type="cuda"),
     {}),  # a bf16 pack: it loops whatever the mode
    ({"MMBENCH_PACK_MODE": "vmap", "MMBENCH_PACK_CONV": "bmm"},
     dict(device_type="cpu", pack_mode_applies=True, matmul_convs=True),
     {"MMBENCH_PACK_MODE": "vmap", "MMBENCH_PACK_CONV": "bmm"}),
])
def test_trained_with_records_the_choices_that_take_effect(monkeypatch, env, where, want):
    from mmbench.kernels import effective

    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert effective(**where) == want


def test_a_trained_run_trained_again_keeps_its_record(tmp_path, data_root, monkeypatch):
    """train() of a run with no epochs left (e.g. its evaluation was interrupted) trains nothing and adds no entry,
    whatever the process's code or choices."""
    run = Run(cfg(train={"epochs": 1, "max_test": 32}), tmp_path / "r")
    first = train(run, data_root)["trained_with"]
    monkeypatch.setenv("MMBENCH_ADAM", "fused")
    monkeypatch.setattr(train_mod.results_mod, "git_commit", lambda: "other")
    assert train(run, data_root)["trained_with"] == first and len(first) == 1


def test_a_packs_record_names_its_matmul_convolutions_only_where_it_vmaps(tmp_path, data_root, monkeypatch):
    monkeypatch.setenv("MMBENCH_PACK_CONV", "bmm")
    for mode, want in (("loop", None), ("vmap", {"MMBENCH_PACK_MODE": "vmap", "MMBENCH_PACK_CONV": "bmm"})):
        monkeypatch.setenv("MMBENCH_PACK_MODE", mode)
        runs = [Run(cfg(seed=s, train={"epochs": 1, "max_test": 32}), tmp_path / mode) for s in range(2)]
        done = train_pack(runs, data_root)
        assert [done[r.id]["packed_with"] for r in runs] == [2, 2]
        assert [done[r.id]["trained_with"][-1].get("kernels") for r in runs] == [want, want], mode


def test_bench_steps_names_it_on_a_gpu_and_says_it_has_no_effect_on_a_cpu(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("MMBENCH_MATMUL_TF32", "1")
    heads = {}
    for device in ("cpu", "cuda"):
        if device == "cuda":  # no GPU here: the header is what is checked, the timing is stubbed
            monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
            monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Test GPU")
        torch.backends.cuda.matmul.allow_tf32 = False
        head = pack_table_header(monkeypatch, tmp_path / f"{device}.md", "--device", device)
        heads[device] = (head, capsys.readouterr().err, torch.backends.cuda.matmul.allow_tf32)
    head, err, flag = heads["cpu"]
    assert "TF32" not in head and "has no effect on cpu" in " ".join(err.split()) and not flag
    head, err, flag = heads["cuda"]
    assert "; TF32 matmuls (MMBENCH_MATMUL_TF32=1)" in head and flag  # on for every step timed


def test_provenance_json_carries_the_choices(tmp_path, data_root, monkeypatch):
    """`trained_with` reaches provenance.json through evaluation, as the report reads it."""
    from mmbench.evaluate import evaluate, trained_provenance

    monkeypatch.setenv("MMBENCH_ADAM", "fused")
    run = Run(cfg(train={"epochs": 1, "max_test": 32}, eval={"metrics": ["loglik"], "test_samples": 16,
                                                              "ll_samples": 2}), tmp_path / "r")
    evaluate(run, data_root, provenance=trained_provenance(train(run, data_root), 0.0))  # as the runner does
    prov = json.loads((run.dir / "provenance.json").read_text())
    assert prov["trained_with"][-1]["kernels"] == {"MMBENCH_ADAM": "fused"}


def test_both_trainers_record_a_captured_step(tmp_path, data_root, monkeypatch):
    """MMBENCH_COMPILE=1 is in `trained_with` where the step was captured: train.captured stubbed to capture (as the
    identity, no compiler), unpacked and in a vmapped pack."""
    monkeypatch.setenv("MMBENCH_COMPILE", "1")
    monkeypatch.setattr(train_mod, "captured", lambda fn, device: fn)
    alone = train(Run(cfg(train={"epochs": 1, "max_test": 32}), tmp_path / "alone"), data_root)
    assert alone["trained_with"][-1]["kernels"] == {"MMBENCH_COMPILE": "1"}
    monkeypatch.setenv("MMBENCH_PACK_MODE", "vmap")
    runs = [Run(cfg(seed=s, train={"epochs": 1, "max_test": 32}), tmp_path / "pack") for s in range(2)]
    done = train_pack(runs, data_root)
    for r in runs:
        assert "packed training step captured" in r.log_path.read_text()
        assert done[r.id]["trained_with"][-1]["kernels"] == {"MMBENCH_PACK_MODE": "vmap", "MMBENCH_COMPILE": "1"}


def test_a_trained_pack_trained_again_keeps_its_record(tmp_path, data_root, monkeypatch):
    """As test_a_trained_run_trained_again_keeps_its_record, for train_pack: no epochs left, no entry added."""
    runs = [Run(cfg(seed=s, train={"epochs": 1, "max_test": 32}), tmp_path) for s in range(2)]
    first = train_pack(runs, data_root)
    monkeypatch.setenv("MMBENCH_ADAM", "fused")
    monkeypatch.setattr(train_mod.results_mod, "git_commit", lambda: "other")
    again = train_pack(runs, data_root)
    for r in runs:
        assert len(first[r.id]["trained_with"]) == 1 and again[r.id]["trained_with"] == first[r.id]["trained_with"]


def test_a_pack_resumed_mid_epoch_records_the_step_its_code_took_over_at(tmp_path, data_root, monkeypatch):
    """A pack stopped after step 2 of its first epoch and resumed under another commit: every run's `trained_with`
    lists the second commit from epoch 0 (the state's count), step 2: the step the pack resumed at, which _train_group
    takes out of the runs' state before it records the code."""
    runs = [Run(cfg(seed=s, train={"epochs": 1, "max_test": 32}), tmp_path) for s in range(2)]

    def progress(phase, done, total):
        if done == 2:
            train_mod.request_stop("test stop")

    with pytest.raises(train_mod.TrainingInterrupted):
        train_pack(runs, data_root, progress)
    monkeypatch.setattr(train_mod.results_mod, "git_commit", lambda: "other")
    done = train_pack(runs, data_root)
    for r in runs:
        assert done[r.id]["packed_with"] == 2
        assert [(c["git_commit"], c["from_epoch"], c["from_step"]) for c in done[r.id]["trained_with"]][1:] == [
            ("other", 0, 2)]


def test_a_bf16_packs_record_names_neither_its_mode_nor_matmul_convolutions(tmp_path, data_root, monkeypatch):
    """A bf16 pack loops over its runs wherever packs are vmapped (pack.vmaps_at): neither MMBENCH_PACK_CONV=bmm nor
    MMBENCH_PACK_MODE changes how it computes, so neither its record nor its log names them."""
    monkeypatch.setenv("MMBENCH_PACK_MODE", "vmap")
    monkeypatch.setenv("MMBENCH_PACK_CONV", "bmm")
    runs = [Run(cfg(seed=s, train={"epochs": 1, "max_train": 32, "max_test": 32, "precision": "bf16"}), tmp_path)
            for s in range(2)]
    done = train_pack(runs, data_root)
    for r in runs:
        assert done[r.id]["packed_with"] == 2 and "batched matmuls" not in r.log_path.read_text()
        assert "kernels" not in done[r.id]["trained_with"][-1]
