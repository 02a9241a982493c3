"""bf16 decoders in evaluation (eval.precision) against fp32, paired: the same trained model, the same test tuples
and random draws, evaluated both ways.

`python docs/bf16-check/eval_precision.py [RUNS_DIR]` (default $MMBENCH_RUNS) reads every finished run that holds
both evaluations, scored with the same coherence classifiers (metrics.json and the set-aside
metrics.<scoring>.json, see `Run.scored_with`) and prints Markdown.
Runs are grouped by method and train.precision. A group of seeds gets, per metric, the mean and largest
|bf16 - fp32| and that mean difference over the seed-to-seed sd of the fp32 evaluations (within 0.5 sd: "yes"); a
single model gets, per metric family, how many keys moved and by how much at most. Used by
docs/bf16-check/eval_precision.sh."""
import json
import os
import statistics
import sys
from pathlib import Path

import yaml

root = Path(sys.argv[1] if len(sys.argv) > 1 else os.environ["MMBENCH_RUNS"])
groups = {}  # (method, train.precision) -> [(run name, fp32 metrics.json, bf16 metrics.json)]
for d in sorted(p for p in root.iterdir() if (p / "metrics.json").exists()):
    # pair evaluations scored with the same coherence classifiers (set, dropout), differing only in precision
    by = {(e.get("classifier_set"), e.get("classifier_dropout"), e.get("eval_precision", "fp32")): e
          for e in (json.loads(p.read_text()) for p in sorted(d.glob("metrics*.json")))}
    clf = next((k[:2] for k in sorted(by, key=str) if k[:2] + ("fp32",) in by and k[:2] + ("bf16",) in by), None)
    if clf is not None:
        cfg = yaml.safe_load((d / "config.yaml").read_text()) or {}
        key = (cfg["method"]["name"], cfg["train"].get("precision", "fp32"))
        groups.setdefault(key, []).append((d.name, by[clf + ("fp32",)], by[clf + ("bf16",)]))
if not groups:
    sys.exit(f"error: no run under {root} has both an fp32 and a bf16 evaluation; run docs/bf16-check/eval_precision.sh")


def seconds(ps, i):
    return statistics.mean(p[i]["eval_seconds"] for p in ps)


agree_all = []
for (method, train), ps in sorted(groups.items()):
    keys = sorted(set.intersection(*[set(a["metrics"]) & set(b["metrics"]) for _, a, b in ps]))
    if len(ps) == 1:
        name, a, b = ps[0]
        print(f"\n### {name} (trained in {train}; {a['test_tuples']} test tuples), evaluated with fp32 and with bf16 "
              f"decoders\n\nEvaluation wall time: fp32 {a['eval_seconds']:.1f} s, bf16 {b['eval_seconds']:.1f} s.\n")
        print("| metric family | keys | keys that moved | fp32 range | largest abs(bf16 − fp32) |\n|---|---|---|---|---|")
        for fam in sorted({k.split("/")[0] for k in keys}):
            ks = [k for k in keys if k.split("/")[0] == fam]
            va = [float(a["metrics"][k]) for k in ks]
            diff = [abs(float(b["metrics"][k]) - float(a["metrics"][k])) for k in ks]
            print(f"| {fam} | {len(ks)} | {sum(x > 0 for x in diff)} | {min(va):.4f} – {max(va):.4f} | {max(diff):.4f} |")
        continue
    print(f"\n### {len(ps)} {method} models trained in {train}, each evaluated with fp32 and with bf16 decoders\n")
    print(f"Evaluation wall time (same tuples and settings): fp32 {seconds(ps, 1):.1f} s, bf16 {seconds(ps, 2):.1f} s "
          f"per model (mean).\n")
    print("| metric | fp32 mean ± seed sd | mean bf16 − fp32 | largest abs(bf16 − fp32) | mean difference / seed sd "
          "| within 0.5 sd |\n|---|---|---|---|---|---|")
    for k in keys:
        a = [float(p[1]["metrics"][k]) for p in ps]
        diff = [float(p[2]["metrics"][k]) - x for p, x in zip(ps, a)]
        sd, md = statistics.stdev(a), statistics.mean(diff)
        z = abs(md) / sd if sd > 0 else (0.0 if md == 0 else float("inf"))
        agree_all.append(z <= 0.5)
        print(f"| {k} | {statistics.mean(a):.4f} ± {sd:.4f} | {md:+.4f} | {max(abs(x) for x in diff):.4f} | "
              f"{z:.3f} | {'yes' if z <= 0.5 else '**no**'} |")
if agree_all:
    print(f"\n{sum(agree_all)} of {len(agree_all)} metric rows of seed groups: the mean paired difference is within "
          f"0.5 seed sd.")
