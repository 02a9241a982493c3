"""Wall time of a quick and a full-budget evaluation of one PolyMNIST MoPoE model (latent classification,
coherence, log-likelihood; FID needs weights not available here).

`python docs/eval_time.py full` times the full budget; `python docs/eval_time.py full 1000` the same budget on the
first 1,000 test tuples of the seeded subset (for a loaded machine: the time is linear in the tuples beyond the
fixed cost of the regressions); `bf16` evaluates with bfloat16 decoders (eval.precision). Prints wall time and the
process's CPU time (all threads), which a machine shared with other jobs inflates less than the wall time, and the
time of each metric. `both-splits` evaluates on the train and test splits together (the rebuilt PolyMNIST of
`mnist_source=test-halves` has 5,000 tuples in each, so 10,000 distinct tuples, the real PolyMNIST test split's size):
for timing only, its metrics mean nothing (the model was trained on half of those tuples).
"""
import copy, os, shutil, sys, time
from pathlib import Path
import torch
import yaml
from mmbench.config import build_run_config
from mmbench.results import Run
import mmbench.evaluate
from mmbench.data.base import DataSplit
from mmbench.evaluate import evaluate
from mmbench.hostmem import tune_host_allocator
from mmbench.suite import load_suite
tune_host_allocator()  # as the CLI and its workers do (MMBENCH_MALLOC=default: glibc's defaults)
runs = Path(os.environ.get("MMBENCH_RUNS", "/tmp/ex/runs")); data = Path(os.environ.get("MMBENCH_DATA", "/tmp/ex/data"))
# EVALTIME_SRC: the trained run to evaluate (default: the MoPoE Fig. 3 PolyMNIST run under MMBENCH_RUNS)
src = Path(os.environ["EVALTIME_SRC"]) if os.environ.get("EVALTIME_SRC") else next(
    p for p in runs.glob("polymnist-vanilla-mopoe-*") if "MoPoE Fig. 3" in (p / "config.yaml").read_text())
raw = yaml.safe_load((src / "config.yaml").read_text())
# full: every test tuple, with the evaluation budget of MoPoE Fig. 3's MoPoE runs in suites/mopoe_iclr21.yaml, read
# from the suite (a copy typed here kept 1,000 joint samples after the suite moved to 10,000, as in the measurements of
# docs/metrics.md: 45,000 decoder rows fewer against the log-likelihood's 23 M)
fig3 = next(c for c in load_suite(Path(__file__).resolve().parents[1] / "suites" / "mopoe_iclr21.yaml").runs("full")
            if c.method.name == "mopoe" and "MoPoE Fig. 3" in c.tables).eval
budgets = {"quick": {"test_samples": 1000},
           "full": {"test_samples": None, **{k: getattr(fig3, k) for k in ("lr_train_samples", "ll_samples",
                                                                           "joint_samples")}}}
names = [a for a in sys.argv[1:] if a in budgets] or list(budgets)
cap = next((int(a) for a in sys.argv[1:] if a.isdigit()), None)
precision = "bf16" if "bf16" in sys.argv[1:] else "fp32"
if "both-splits" in sys.argv[1:]:
    def both_splits(cfg, data_root=None, _load=mmbench.evaluate.load_data):
        train, test = _load(cfg, data_root)
        assert not train.extra_labels and not train.redraw and all(isinstance(v, torch.Tensor) for v in train.x.values())
        return train, DataSplit(test.modalities, {k: torch.cat([train.x[k], v]) for k, v in test.x.items()},
                                torch.cat([train.labels, test.labels]))
    mmbench.evaluate.load_data = both_splits
for name in names:
    ev = dict(budgets[name], precision=precision, **({"test_samples": cap} if cap else {}))
    d = copy.deepcopy(raw); d["eval"].update(ev)
    cfg = build_run_config(d)
    run = Run(cfg, Path(os.environ.get("EVALTIME_RUNS", "/tmp/evaltime/runs"))); run.init()
    shutil.copytree(src / "checkpoints", run.dir / "checkpoints", dirs_exist_ok=True)
    t0, c0 = time.time(), time.process_time(); evaluate(run, data)
    print(name, ev, f"{time.time() - t0:.0f} s wall, {time.process_time() - c0:.0f} s CPU, "
          f"{torch.get_num_threads()} threads; per metric (s):", run.read_metrics()["metric_seconds"], flush=True)
