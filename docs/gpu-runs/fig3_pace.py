"""The pace of MoPoE Fig. 3's packs as device-check.sh trained them, and what it makes of the whole figure.

Reads every run directory under MMBENCH_RUNS (or the folder given): its config (method, train.precision, batch size)
and provenance (`train_tuples_per_second`: a pack's steady rate, all its runs' tuples, over the epochs after the
first where there are several; `packed_with`), or where a run was stopped before its evaluation wrote provenance,
the epoch lines of its log (the same rate from the tuples and seconds each epoch logged). One row per pack; then the
fp32 packs' rates of Fig. 3's methods summed (at one batch size), which is the pace of Fig. 3 when its three packs share
one GPU, and the GPU time of the paper's budget at that pace: 15 runs × 300 epochs (MoPoE, App. D.2) × 60,000 tuples
(PolyMNIST's training split). Packs that shared the GPU slowed each other, the bf16 pack included, so the figure is a
pace measured with a fourth pack beside the three.

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


# A trainer's log line for an epoch (mmbench/train.py epoch_line): the tuples its process trained in it and the seconds.
EPOCH_LINE = re.compile(r" epoch epoch=\d+ .*; trained (\d+) tuples in ([\d.]+(?:e[+-]\d+)?) s"
                        r"(?: \(a pack of (\d+)\))?$")


def logged_rate(log: Path):
    """(tuples/s, pack size) from a run's epoch lines, over the epochs after the first where there are several (as
    the trainers' Throughput counts them), or None: for a run stopped before its provenance was written."""
    if not log.exists():
        return None
    epochs = [m.groups() for m in map(EPOCH_LINE.search, log.read_text(errors="replace").splitlines()) if m]
    use = epochs[1:] or epochs
    seconds = sum(float(s) for _, s, _ in use)
    if not use or seconds <= 0:
        return None
    return sum(int(n) for n, _, _ in use) / seconds, int(use[-1][2] or 1)


def packs(runs_dir: Path, from_logs=None):
    """{(method, precision, batch, pack size): [pack tuples/s as each of its runs recorded it]} over the trained runs;
    a run without a provenance rate (stopped by a time limit before its evaluation) gives the rate of its logged
    epochs, and its method is added to `from_logs` (a set) where given."""
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
    fp32_steps, several = 0.0, []
    for (method, precision, batch, size), rates in sorted(found.items()):
        rate = max(rates)  # every run of a pack records the pack's rate: one value (max: robust to a stopped run)
        steps = rate / batch
        lines.append(f"| {method} | {precision} | {size} | {len(rates)} | {rate:,.0f} | {steps:.1f} |")
        if precision == "fp32" and method in METHODS:
            fp32_steps += steps
        if len(rates) > size:
            several.append(method)
    lines.append("")
    fig = [k for k in found if k[1] == "fp32" and k[0] in METHODS]  # the figure's packs
    batches = sorted({k[2] for k in fig})
    others = sorted({k[0] for k in found if k[0] not in METHODS})
    if others:
        lines.append(f"Not Fig. 3's methods, left out of its pace: {', '.join(others)}.")
    if from_logs:
        lines.append(f"Read from the epoch lines of run logs (runs stopped before their evaluation wrote provenance): "
                     f"{', '.join(sorted(from_logs))}.")
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
