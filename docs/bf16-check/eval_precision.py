"""bf16 decoders in evaluation (eval.precision) against fp32, paired: the same trained model, the same test tuples
and random draws, evaluated both ways. Per metric: the mean and the largest |bf16 - fp32| over the models, and that
mean difference over the seed-to-seed sd of the fp32 evaluations (of the models trained in one precision).

`python docs/bf16-check/eval_precision.py [RUNS_DIR]` (default $MMBENCH_RUNS) reads every finished run that holds
both evaluations (metrics.json and the set-aside metrics.<scoring>.json, see `Run.scored_with`) and prints a
Markdown table. Used by docs/bf16-check/eval_precision.sh."""
import json
import os
import statistics
import sys
from pathlib import Path

import yaml

root = Path(sys.argv[1] if len(sys.argv) > 1 else os.environ["MMBENCH_RUNS"])
pairs = {}  # train.precision -> [(fp32 metrics, bf16 metrics, fp32 eval seconds, bf16 eval seconds)]
for d in sorted(p for p in root.iterdir() if (p / "metrics.json").exists()):
    evals = [json.loads(p.read_text()) for p in d.glob("metrics*.json")]
    by = {e.get("eval_precision", "fp32"): e for e in evals}
    if set(by) >= {"fp32", "bf16"}:
        train = (yaml.safe_load((d / "config.yaml").read_text()) or {})["train"].get("precision", "fp32")
        pairs.setdefault(train, []).append((by["fp32"], by["bf16"]))
if not pairs:
    sys.exit(f"error: no run under {root} has both an fp32 and a bf16 evaluation; run docs/bf16-check/eval_precision.sh")
agree_all = []
for train, ps in sorted(pairs.items()):
    if len(ps) < 2:
        sys.exit(f"error: {len(ps)} {train}-trained run with both evaluations; at least 2 are needed for a seed sd")
    ts = [(a["eval_seconds"], b["eval_seconds"]) for a, b in ps]
    print(f"\n### {len(ps)} MoPoE models trained in {train}, each evaluated with fp32 and with bf16 decoders\n")
    print(f"Evaluation wall time (same tuples and settings): fp32 {statistics.mean(t[0] for t in ts):.1f} s, "
          f"bf16 {statistics.mean(t[1] for t in ts):.1f} s per model (mean).\n")
    print("| metric | fp32 mean ± seed sd | mean bf16 − fp32 | largest abs(bf16 − fp32) | mean difference / seed sd "
          "| within 0.5 sd |\n|---|---|---|---|---|---|")
    keys = sorted(set.intersection(*[set(a["metrics"]) & set(b["metrics"]) for a, b in ps]))
    for k in keys:
        a = [float(p[0]["metrics"][k]) for p in ps]
        diff = [float(p[1]["metrics"][k]) - x for p, x in zip(ps, a)]
        sd, md = statistics.stdev(a), statistics.mean(diff)
        z = abs(md) / sd if sd > 0 else (0.0 if md == 0 else float("inf"))
        agree_all.append(z <= 0.5)
        print(f"| {k} | {statistics.mean(a):.4f} ± {sd:.4f} | {md:+.4f} | {max(abs(x) for x in diff):.4f} | "
              f"{z:.3f} | {'yes' if z <= 0.5 else '**no**'} |")
print(f"\n{sum(agree_all)} of {len(agree_all)} metric rows: the mean paired difference is within 0.5 seed sd.")
