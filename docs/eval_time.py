"""Wall time of a quick and a full-budget evaluation of one PolyMNIST MoPoE model (latent classification,
coherence, log-likelihood; FID needs weights not available here).

`python docs/eval_time.py full` times the full budget; `python docs/eval_time.py full 1000` the same budget on the
first 1,000 test tuples of the seeded subset (for a loaded machine: the time is linear in the tuples beyond the
fixed cost of the regressions); `bf16` evaluates with bfloat16 decoders (eval.precision). Prints wall time and the
process's CPU time (all threads), which a machine shared with other jobs inflates less than the wall time, and the
time of each metric. `KEY=VALUE` sets an eval field. `both-splits` evaluates on the train and test splits together (the rebuilt PolyMNIST of
`mnist_source=test-halves` has 5,000 test tuples and 5,000 × `multiplicity` training tuples, so `full both-splits
10000` evaluates 10,000 distinct tuples, the real PolyMNIST test split's size; without the cap every tuple of both, 15,000
at multiplicity 2): for timing only, its metrics mean nothing (the model was trained on those training tuples). The
printed line says how many test tuples were evaluated.
"""
import copy, dataclasses, os, sys, time
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
# full: every test tuple, with the evaluation settings of MoPoE Fig. 3's MoPoE runs in suites/mopoe_iclr21.yaml, all
# of them read from the suite (metrics, samples, proposals), so the source run's own eval settings do not matter (until
# 2026-12-06 only lr_train_samples, ll_samples and joint_samples were read, and the source run's metrics list was kept;
# before that a copy typed here kept 1,000 joint samples after the suite moved to 10,000, as in the measurements of
# docs/metrics.md: 45,000 decoder rows fewer against the log-likelihood's 23 M)
fig3 = next(c for c in load_suite(Path(__file__).resolve().parents[1] / "suites" / "mopoe_iclr21.yaml").runs("full")
            if c.method.name == "mopoe" and "MoPoE Fig. 3" in c.tables).eval
budgets = {"quick": {"test_samples": 1000},
           "full": {**dataclasses.asdict(fig3), "test_samples": None}}
names = [a for a in sys.argv[1:] if a in budgets] or list(budgets)
cap = next((int(a) for a in sys.argv[1:] if a.isdigit()), None)
precision = "bf16" if "bf16" in sys.argv[1:] else "fp32"
# KEY=VALUE arguments set an eval field, e.g. classifier_epochs=30 where the source's data train a coherence classifier
# below the 0.9 floor in 10 epochs (PolyMNIST rebuilt from half the MNIST test split at multiplicity 2: one at 0.87)
sets = {k: yaml.safe_load(v) for k, v in (a.split("=", 1) for a in sys.argv[1:] if "=" in a)}
if "both-splits" in sys.argv[1:]:
    def both_splits(cfg, data_root=None, _load=mmbench.evaluate.load_data):
        train, test = _load(cfg, data_root)
        assert not train.extra_labels and not train.redraw and all(isinstance(v, torch.Tensor) for v in train.x.values())
        return train, DataSplit(test.modalities, {k: torch.cat([train.x[k], v]) for k, v in test.x.items()},
                                torch.cat([train.labels, test.labels]))
    mmbench.evaluate.load_data = both_splits
# the model is the source run's (its checkpoints name their run, and the timed run's id differs: eval settings are in it)
source = Run(build_run_config(raw), src.parent)
assert source.id == src.name, (source.id, src.name)
mmbench.evaluate.load_trained = (lambda run, device, data=None, _load=mmbench.evaluate.load_trained:
                                  _load(source, device, data))
for name in names:
    ev = dict(budgets[name], precision=precision, **({"test_samples": cap} if cap else {}), **sets)
    d = copy.deepcopy(raw); d["eval"].update(ev)
    cfg = build_run_config(d)
    run = Run(cfg, Path(os.environ.get("EVALTIME_RUNS", "/tmp/evaltime/runs"))); run.init()
    t0, c0 = time.time(), time.process_time(); evaluate(run, data)
    wall, cpu, record = time.time() - t0, time.process_time() - c0, run.read_metrics()
    print(name, ev, f"{record['test_tuples']} test tuples: {wall:.0f} s wall, {cpu:.0f} s CPU, "
          f"{torch.get_num_threads()} threads; per metric (s):", record["metric_seconds"], flush=True)
