"""The pace of MoPoE Fig. 3's packs as device-check.sh trained them, and what it makes of the whole figure.

Reads every run directory under MMBENCH_RUNS (or the folder given): its config (method, train.precision, batch size) and
provenance (`train_tuples_per_second`: a pack's steady rate, all its runs' tuples, over the epochs after the first where
there are several; `packed_with`), or where a run was stopped before its evaluation wrote provenance, the last epoch
line of its log (the same rate, as the process had it then). One row per pack; then the fp32 packs' rates of Fig. 3's
methods summed (at one batch size; a method whose pack was split, its slowest), which is the pace of Fig. 3 when its
three packs share one GPU, and the GPU time of the paper's budget at that pace: 15 runs × 300 epochs (MoPoE, App. D.2) ×
60,000 tuples (PolyMNIST's training split). Packs that shared the GPU slowed each other, the bf16 pack included, so the
figure is a pace measured with a fourth pack beside the three.

    python docs/gpu-runs/fig3_pace.py [RUNS_DIR] > fig3-pace.md
"""
from __future__ import annotations

import json
import os
import re
import sys
from collections import defaultdict
from pathlib import Path

import yaml

RUNS, EPOCHS, TUPLES = 15, 300, 60_000  # the paper's Fig. 3: 3 methods × 5 seeds, 300 epochs of the training split
METHODS = ("mvae", "mmvae", "mopoe")  # Fig. 3's methods: a pace without one of them is not the figure's


# A trainer's log line for an epoch (mmbench/train.py epoch_line): the epoch's tuples and seconds, then the process's
# steady rate so far (its epochs after the first, as provenance records it at the end) and the pack's size.
EPOCH_LINE = re.compile(r" epoch epoch=\d+ .*; trained \d+ tuples in \S+ s; steady ([\d.]+(?:e[+-]\d+)?) tuples/s"
                        r"(?: \(a pack of (\d+)\))?$")


def logged_rate(log: Path):
    """(tuples/s, pack size) from a run's last epoch line: the steady rate of the process that trained it, so of the
    last pack (or run alone) it trained in, or None: for a run without provenance (stopped, or failed, before its
    evaluation)."""
    if not log.exists():
        return None
    epochs = [m.groups() for m in map(EPOCH_LINE.search, log.read_text(errors="replace").splitlines()) if m]
    if not epochs or float(epochs[-1][0]) <= 0:
        return None
    return float(epochs[-1][0]), int(epochs[-1][1] or 1)


def packs(runs_dir: Path, from_logs=None):
    """{(method, precision, batch, pack size): [pack tuples/s as each of its runs recorded it]} over the trained runs;
    a run without a provenance rate (stopped by a time limit, or failed, before its evaluation) gives the rate its last
    epoch line logged, and its method is added to `from_logs` (a set) where given."""
    out = defaultdict(list)
    for d in sorted(p for p in runs_dir.iterdir() if p.is_dir()):
        if not (d / "config.yaml").exists():
            continue
        cfg = yaml.safe_load((d / "config.yaml").read_text())
        prov = json.loads((d / "provenance.json").read_text()) if (d / "provenance.json").exists() else {}
        rate, size = prov.get("train_tuples_per_second"), prov.get("packed_with", 1)
        if rate is None:
            logged = logged_rate(d / "log.txt")
            if logged is None:
                continue
            rate, size = logged
            if from_logs is not None:
                from_logs.add(cfg["method"]["name"])
        key = (cfg["method"]["name"], cfg["train"].get("precision") or "fp32", cfg["train"]["batch_size"], size)
        out[key].append(rate)
    return out


def report(runs_dir: Path) -> str:
    from_logs = set()
    found = packs(runs_dir, from_logs)
    if not found:
        raise SystemExit(f"no trained run with a recorded training rate under {runs_dir}")
    lines = ["| method | precision | runs per pack | runs | pack tuples/s | run-steps/s |", "|---|---|---|---|---|---|"]
    # one row per method, precision and pack size: device-check trains one pack of each (several packs of one kind
    # would show as one row, their fastest)
    several, per_method = [], defaultdict(list)  # per_method: the run-steps/s of each fp32 row of Fig. 3's methods
    for (method, precision, batch, size), rates in sorted(found.items()):
        rate = max(rates)  # every run of a pack records the pack's rate: one value (max: robust to a stopped run)
        steps = rate / batch
        lines.append(f"| {method} | {precision} | {size} | {len(rates)} | {rate:,.0f} | {steps:.1f} |")
        if precision == "fp32" and method in METHODS:
            per_method[method].append(steps)
        if len(rates) > size:
            several.append(method)
    # A method's packs of several sizes trained one after another in its worker (e.g. the halves of a pack split for
    # device memory): its pace lies between their rates, so the slowest counts (the GPU-hours an upper bound).
    fp32_steps = sum(min(v) for v in per_method.values())
    split = sorted(m for m, v in per_method.items() if len(v) > 1)
    lines.append("")
    fig = [k for k in found if k[1] == "fp32" and k[0] in METHODS]  # the figure's packs
    batches = sorted({k[2] for k in fig})
    others = sorted({k[0] for k in found if k[0] not in METHODS})
    if others:
        lines.append(f"Not Fig. 3's methods, left out of its pace: {', '.join(others)}.")
    if from_logs:
        lines.append(f"Read from the last epoch line of run logs (runs stopped or failed before their evaluation wrote "
                     f"provenance): {', '.join(sorted(from_logs))}.")
    if split:
        lines.append(f"Packs of several sizes for {', '.join(split)} (trained one after another, e.g. a pack split for "
                     f"device memory): each method's slowest counts in the pace.")
    if several:
        lines.append(f"More runs than one pack holds for {', '.join(sorted(set(several)))}: several packs of one kind, "
                     f"shown as one row at the fastest rate recorded.")
    missing = [m for m in METHODS if not any(k[0] == m for k in fig)]
    if missing:  # e.g. stopped by the time limit before its provenance was written: no projection from the rest
        lines.append(f"No recorded fp32 rate for {', '.join(missing)}: no pace of the whole figure (the packs without "
                     f"one did not finish; their logs say how far they got).")
    elif len(batches) > 1:
        lines.append(f"The fp32 packs trained at different batch sizes ({', '.join(map(str, batches))}): no pace of "
                     f"the whole figure (its steps per epoch depend on the batch).")
    elif fp32_steps:
        batch = batches[0]
        total = RUNS * EPOCHS * (TUPLES // batch)
        lines.append(f"The fp32 packs together: {fp32_steps:.1f} run-steps/s. At that pace the paper's budget ({RUNS} "
                     f"runs × {EPOCHS} epochs × {TUPLES // batch} steps = {total:,} run-steps) takes "
                     f"{total / fp32_steps / 3600:.2f} GPU-hours (the target: 1), with the packs sharing the GPU as "
                     f"they did here ({len(found)} rows above, bf16 included; a pack that finished early left the "
                     f"others' later epochs less contended).")
    return "\n".join(lines)


if __name__ == "__main__":
    print(report(Path(sys.argv[1] if len(sys.argv) > 1 else os.environ.get("MMBENCH_RUNS", "runs"))))
