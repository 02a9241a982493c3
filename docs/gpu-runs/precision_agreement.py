"""bf16 against fp32: per metric, the mean ± sd over seeds of the finished MoPoE PolyMNIST runs of each
`train.precision`, and whether they agree (|difference of means| <= 2 x the larger seed-to-seed sd).

`python docs/gpu-runs/precision_agreement.py [RUNS_DIR]` (default $MMBENCH_RUNS) prints a Markdown table; the runs
must differ only in seed and precision (else it stops, naming the fields), and there must be >= 2 of each.
Used by docs/gpu-runs/device-check.sh and docs/bf16-check/run.sh."""
import json
import statistics
import sys

from mmbench.results import load_runs


def setting(r) -> dict:
    """The run's settings as section.field -> value, without seed, tables and train.precision."""
    d = r["config"].to_dict()
    flat = {f"{part}.{k}": v for part in ("method", "train", "eval") for k, v in d.pop(part).items()}
    flat.update(d)
    for k in ("seed", "tables", "train.precision"):
        flat.pop(k)
    return flat


runs = [r for r in load_runs(sys.argv[1] if len(sys.argv) > 1 else None)
        if r["config"].method.name == "mopoe" and r["config"].dataset == "polymnist"]
fp = [r for r in runs if r["config"].train.precision == "fp32"]
bf = [r for r in runs if r["config"].train.precision == "bf16"]
if len(fp) < 2 or len(bf) < 2:
    sys.exit(f"error: {len(fp)} fp32 and {len(bf)} bf16 finished MoPoE PolyMNIST runs; at least 2 of each are needed")
settings = [setting(r) for r in runs]
differ = sorted(k for k in settings[0] if len({json.dumps(s[k], sort_keys=True) for s in settings}) > 1)
if differ:
    sys.exit(f"error: the runs differ in {', '.join(differ)} besides seed and precision; compare runs of one setting")
print(f"MoPoE on PolyMNIST: {len(fp)} fp32 runs, {len(bf)} bf16 runs (agree: |mean difference| <= 2 x the larger "
      f"seed-to-seed standard deviation)\n")
print("| metric | fp32 mean ± sd | bf16 mean ± sd | difference / larger sd | agree |\n|---|---|---|---|---|")
keys = sorted(set.intersection(*[set(r["metrics"]) for r in fp + bf]))
agree = []
for k in keys:
    a, b = [float(r["metrics"][k]) for r in fp], [float(r["metrics"][k]) for r in bf]
    sa, sb = statistics.stdev(a), statistics.stdev(b)
    ma, mb = statistics.mean(a), statistics.mean(b)
    z = abs(ma - mb) / max(sa, sb) if max(sa, sb) > 0 else (0.0 if ma == mb else float("inf"))
    agree.append(z <= 2)
    print(f"| {k} | {ma:.4f} ± {sa:.4f} | {mb:.4f} ± {sb:.4f} | {z:.2f} | {'yes' if z <= 2 else '**no**'} |")
print(f"\n{sum(agree)} of {len(agree)} metrics agree.")
