"""Wall time of a quick and a full-budget evaluation of one PolyMNIST MoPoE model (latent classification,
coherence, log-likelihood; FID needs weights not available here)."""
import copy, shutil, sys, time
from pathlib import Path
import yaml
from mmbench.config import build_run_config
from mmbench.results import Run
from mmbench.evaluate import evaluate
src = next(p for p in Path("/tmp/ex/runs").glob("polymnist-vanilla-mopoe-*") if "MoPoE Fig. 3" in (p / "config.yaml").read_text())
raw = yaml.safe_load((src / "config.yaml").read_text())
for name, ev in (("quick", {"test_samples": 1000}), ("full", {"test_samples": None, "lr_train_samples": 500, "ll_samples": 15, "joint_samples": 1000})):
    d = copy.deepcopy(raw); d["eval"].update(ev)
    cfg = build_run_config(d)
    run = Run(cfg, Path("/tmp/evaltime/runs")); run.init()
    shutil.copytree(src / "checkpoints", run.dir / "checkpoints", dirs_exist_ok=True)
    t0 = time.time(); evaluate(run, Path("/tmp/ex/data")); dt = time.time() - t0
    print(name, ev, f"{dt:.0f} s", flush=True)
