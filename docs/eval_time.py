"""Wall time of a quick and a full-budget evaluation of one PolyMNIST MoPoE model (latent classification,
coherence, log-likelihood; FID needs weights not available here)."""
import copy, os, shutil, sys, time
from pathlib import Path
import yaml
from mmbench.config import build_run_config
from mmbench.results import Run
from mmbench.evaluate import evaluate
runs = Path(os.environ.get("MMBENCH_RUNS", "/tmp/ex/runs")); data = Path(os.environ.get("MMBENCH_DATA", "/tmp/ex/data"))
src = next(p for p in runs.glob("polymnist-vanilla-mopoe-*") if "MoPoE Fig. 3" in (p / "config.yaml").read_text())
raw = yaml.safe_load((src / "config.yaml").read_text())
budgets = {"quick": {"test_samples": 1000},
           "full": {"test_samples": None, "lr_train_samples": 500, "ll_samples": 15, "joint_samples": 1000}}
for name in sys.argv[1:] or list(budgets):  # e.g. `python docs/eval_time.py full`
    ev = budgets[name]
    d = copy.deepcopy(raw); d["eval"].update(ev)
    cfg = build_run_config(d)
    run = Run(cfg, Path(os.environ.get("EVALTIME_RUNS", "/tmp/evaltime/runs"))); run.init()
    shutil.copytree(src / "checkpoints", run.dir / "checkpoints", dirs_exist_ok=True)
    t0 = time.time(); evaluate(run, data); dt = time.time() - t0
    print(name, ev, f"{dt:.0f} s", flush=True)
