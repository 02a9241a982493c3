"""Before/after CPU time of the evaluation passes on one trained PolyMNIST MoPoE model (docs/metrics.md,
"Evaluation wall time"): `python docs/eval_ab.py loglik|coherence|latent`. "Before" is the unbatched loop kept
as the reference in tests/test_metrics_batched.py; both draw the same random numbers, and the script prints
how far their results are apart. Reads the MoPoE Fig. 3 smoke run from $MMBENCH_RUNS, data from $MMBENCH_DATA."""
import copy, dataclasses, os, sys, time
from pathlib import Path
import torch, yaml
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_metrics_batched import reference_importance_sampled, reference_coherence
from mmbench.config import build_run_config
from mmbench.results import Run
from mmbench.registry import DATASETS, METRICS
from mmbench.train import load_data, load_trained
from mmbench.metrics.context import EvalContext
from mmbench.metrics.loglik import importance_sampled
from mmbench.metrics.coherence import coherence
from mmbench.metrics.batched import for_eval
from mmbench.methods.base import all_subsets
runs = Path(os.environ.get("MMBENCH_RUNS", "runs")); data = Path(os.environ.get("MMBENCH_DATA", "data"))
src = next(p for p in runs.glob("polymnist-vanilla-mopoe-*") if "MoPoE Fig. 3" in (p / "config.yaml").read_text())
cfg = build_run_config(yaml.safe_load((src / "config.yaml").read_text()))
run = Run(cfg, runs); assert run.dir.exists(), run.dir
ev = dataclasses.replace(cfg.eval, test_samples=256, lr_train_samples=500, joint_samples=256)
dev = torch.device("cpu")
spec = DATASETS.get(cfg.dataset)(); variant = spec.check_variant(cfg.variant)
tr, te = load_data(cfg, data)
def ctx_for(model):
    return EvalContext(model=model, spec=spec, variant=variant, train=tr, test=te.subset(256, seed=2), test_full=te,
                       cfg=ev, device=dev, data_root=data)
plain = load_trained(run, dev); fast = for_eval(copy.deepcopy(plain), dev)
what = sys.argv[1]
def timed(label, fn):
    torch.manual_seed(0); c0, t0 = time.process_time(), time.time(); r = fn()
    print(f"{label}: {time.process_time() - c0:.1f} s CPU, {time.time() - t0:.0f} s wall, {torch.get_num_threads()} threads", flush=True)
    return r
if what == "loglik":  # one test batch of 256 tuples, 31 subsets, K=3 (the cost is linear in K)
    ctx = ctx_for(plain); x = next(iter(ctx.batches(ctx.test)))[1]; S = all_subsets(plain.names)
    a = timed("loglik before (unbatched loop, 256 tuples, K=3)", lambda: reference_importance_sampled(plain, x, S, 3))
    b = timed("loglik after (batched, channels_last, 256 tuples, K=3)", lambda: importance_sampled(fast, x, S, 3))
    print("max |diff| joint", (a[0] - b[0]).abs().max().item(), "of", a[0].abs().max().item())
elif what == "coherence":
    ca, cb = ctx_for(plain), ctx_for(fast)
    ca.classifiers(); cb.classifiers()
    a = timed("coherence before (256 tuples, 256 joint)", lambda: reference_coherence(ca))
    b = timed("coherence after", lambda: coherence(cb))
    print("equal:", all(a[k] == b[k] for k in a))
elif what == "latent":
    timed("latent_classification (256 test tuples, 500 train)", lambda: METRICS.get("latent_classification")(ctx_for(fast)))
