"""Projected cost of a suite's runs from a `mmbench bench steps` table (`mmbench run --dry-run --step-times FILE`),
and the pack caps such a table sets (`mmbench run --step-times FILE`).

A table is read into run-steps per second by key and pack size: by method name for a table of PolyMNIST-shaped
batches (`bench steps [--pack]`, whose header says the shapes: only runs at those shapes are projected from it), or
by step shape (step_key) for a table measured at a suite's own shapes (`bench steps --suite`).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from .errors import MMBenchError

# ----- a run's step shape ---------------------------------------------------------------------------------
# What a training step's time depends on, one table column each: the data's shapes, the networks, the method and its
# options, the batch, the latent size, the precision. Not the seed, β, the learning rate or the epochs.
KEY_COLUMNS = ("dataset", "variant", "modalities", "architecture", "method", "options", "batch", "latent", "precision")


def step_key(cfg) -> Tuple[str, ...]:
    """A run's step shapes as the KEY_COLUMNS cells of a `bench steps --suite` table (runs with equal keys train
    equal steps)."""
    from .registry import DATASETS
    from .train import run_modalities

    variant = DATASETS.get(cfg.dataset)().check_variant(cfg.variant)
    return (cfg.dataset, variant, ",".join(m.name for m in run_modalities(cfg)), cfg.architecture_name(),
            cfg.method.name, json.dumps(dict(cfg.method.options), sort_keys=True, default=str), str(cfg.train.batch_size),
            str(cfg.method.latent_dim), cfg.train.precision)


def key_label(key) -> str:
    """A rate key for a message: a method name (a PolyMNIST-shaped table) or "method (dataset/variant, architecture,
    batch B, latent D)" (a table at a suite's shapes)."""
    if isinstance(key, str):
        return key
    k = dict(zip(KEY_COLUMNS, key))
    return (f"{k['method']} ({k['dataset']}/{k['variant']}, {k['architecture']}, batch {k['batch']}, latent "
            f"{k['latent']}" + (f", {k['options']}" if k["options"] != "{}" else "") + ")")


# ----- step-time tables read, and the projection -----------------------------------------------------------
class StepRates(dict):
    """read_step_times' answer: {key: {pack size: run-steps/s}}; `captured`: {key: the pack sizes whose rate is a
    captured step's} (read with `compiled`; the other sizes' rates are uncaptured steps')."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.captured: Dict[object, set] = {}
        self.failed: Dict[object, set] = {}  # {key: the pack sizes whose row failed ("n/a: ...", e.g. out of memory)}


def _digits(cell: str) -> int:
    """Significant digits a table cell's number is written with ("0.0140" -> 3, "71.4286" -> 6, "42.500" -> 5)."""
    return len(cell.strip().lstrip("+-").lower().split("e")[0].replace(".", "").lstrip("0"))


def _positive(cell) -> Optional[float]:
    """A table cell's number where it is one, finite and above 0 (not "", "nan", "inf", "n/a" or "0.000")."""
    try:
        v = float(cell)
    except (TypeError, ValueError):
        return None
    return v if 0 < v < float("inf") else None


def read_step_times(path, compiled: bool = False) -> StepRates:
    """Run-steps per second by method and pack size from a `mmbench bench steps` Markdown file: the
    `--pack` table (method | pack | ... | run_steps_per_s) and/or the step table (method | M | median_s),
    whose median_s gives the unpacked rate 1 / median_s. Rows of captured steps ("(compiled)") count only
    with `compiled` (runs trained with `mmbench run --compile`), and then in place of the uncaptured ones.
    A table measured at a suite's shapes (`--suite`: the KEY_COLUMNS in its head) is keyed by those cells
    (step_key) instead of the method name."""
    rates = StepRates()
    captured = rates.captured  # (with `compiled`) the packs whose rate came from a captured row
    head: List[str] = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.strip().startswith("|") else None
        if not cells:
            head = []
            continue
        if set("".join(cells)) <= set("-: "):
            continue
        if not head:
            head = cells
            continue
        row = dict(zip(head, cells))
        try:
            if "run_steps_per_s" in row and "pack" in row and row.get("method"):
                key = tuple(row[c] for c in KEY_COLUMNS) if all(c in row for c in KEY_COLUMNS) else row["method"]
                mode = row.get("mode", "")
                if mode.startswith("packed") and int(row["pack"]) == 1:
                    continue  # `--pack 1`'s vmapped pack of one: `mmbench run` trains a lone run unpacked, so pack 1 is that row
                if mode.startswith("n/a"):  # out of memory, say (with `compiled` captured or not); not packable: no cap
                    if (compiled or not mode.startswith("n/a (compiled)")) and "not pack" not in mode:
                        rates.failed.setdefault(key, set()).add(int(row["pack"]))
                    continue
                v = _positive(row["run_steps_per_s"]) or 0.0
                step = _positive(row.get("median_s", ""))
                if step and (not v or _digits(row["median_s"]) > _digits(row["run_steps_per_s"])):
                    v = int(row["pack"]) / step  # the rate's cell is rounded coarser (0.01 for 1 / 71.4286 s)
                is_captured = mode.endswith("(compiled)")
                if is_captured and not compiled:
                    continue  # a captured step's rate; the runs train uncaptured
                if compiled and not is_captured and int(row["pack"]) in captured.get(key, ()):
                    continue  # the captured row of this pack size, read already, stands
                if v > 0:  # not nan, and not a rate rounded to 0 without a step time
                    rates.setdefault(key, {})[int(row["pack"])] = v
                    if is_captured:
                        captured.setdefault(key, set()).add(int(row["pack"]))
            elif "median_s" in row and "M" in row and row.get("method") and (step := _positive(row["median_s"])):
                rates.setdefault(row["method"], {}).setdefault(1, 1.0 / step)
        except ValueError:
            continue
    for k in captured:  # with `compiled`: a captured row that ran stands over an uncaptured failure of its size
        rates.failed[k] = rates.failed.get(k, set()) - captured[k]
    rates.failed = {k: v for k, v in rates.failed.items() if v}
    if not rates:
        if rates.failed:
            raise MMBenchError(f"{path}: every timed row of the table failed (n/a), so it gives no step time; time "
                               f"smaller packs with `mmbench bench steps`")
        raise MMBenchError(f"{path}: no step times found; expected the Markdown output of "
                           f"`mmbench bench steps` (optionally with --pack)")
    return rates


# The header `mmbench bench steps` writes above its tables (cli.py bench_steps): what the rates were measured at.
SHAPES_HEAD = re.compile(r"PolyMNIST-shaped batches \((?:M = (\d+) × )?3×28×28(?: per modality)?, PolyMNIST CNN\), "
                         r"batch (\d+), latent (\d+)(?:, (fp32|bf16))?")


def step_table_shapes(path) -> Dict[str, object]:
    """The shapes a `mmbench bench steps` Markdown file was measured at, from its header: architecture, number of
    3×28×28 modalities (the header's M, else the step table's M column), batch size, latent size and precision (fp32
    where an older header names none). A file that does not say them is refused: its rates would be applied to runs
    of any shape."""
    text = Path(path).read_text(encoding="utf-8")
    found = SHAPES_HEAD.search(text)
    if not found:
        raise MMBenchError(f"--step-times {path}: its header does not say the shapes its steps were measured at "
                           f"(\"PolyMNIST-shaped batches (…, PolyMNIST CNN), batch B, latent D\"); use a table written "
                           f"by `mmbench bench steps --out FILE`")
    m = found.group(1)
    if m is None:  # the step table: its methods' rows give M
        rows = re.search(r"^\|\s*method\s*\|\s*M\s*\|.*\n\|[-|: ]+\|\n\|[^|]*\|\s*(\d+)\s*\|", text, re.MULTILINE)
        m = rows.group(1) if rows else None
    return {"architecture": "polymnist_cnn", "modalities": int(m) if m else None, "batch_size": int(found.group(2)),
            "latent_dim": int(found.group(3)), "precision": found.group(4) or "fp32"}


def shapes_label(shapes: Dict[str, object]) -> str:
    """step_table_shapes' answer for a message: "PolyMNIST CNN, M=5, batch 256, latent 512, fp32"."""
    return ("PolyMNIST CNN, " + (f"M={shapes['modalities']}, " if shapes["modalities"] is not None else "")
            + f"batch {shapes['batch_size']}, latent {shapes['latent_dim']}, {shapes['precision']}")


def shapes_differ(cfg, shapes: Dict[str, object]) -> Optional[str]:
    """How a run's shapes differ from those a step table was measured at (step_table_shapes); None when they match.
    Only a matching run is projected from the table: a step's time depends on its networks and sizes."""
    from .registry import DATASETS

    spec = DATASETS.get(cfg.dataset)()
    mods = [m for m in spec.modalities(spec.check_variant(cfg.variant))
            if cfg.modalities is None or m.name in cfg.modalities]
    if any(tuple(m.shape) != (3, 28, 28) for m in mods):
        return f"modalities of {cfg.dataset} not 3×28×28 images"
    if shapes["modalities"] is not None and len(mods) != shapes["modalities"]:
        return f"{len(mods)} modalities, not {shapes['modalities']}"
    for what, have, want in (("architecture", cfg.architecture_name(), shapes["architecture"]),
                             ("batch", cfg.train.batch_size, shapes["batch_size"]),
                             ("latent", cfg.method.latent_dim, shapes["latent_dim"]),
                             ("precision", cfg.train.precision, shapes["precision"])):
        if have != want:
            return f"{what} {have}, not {want}"
    return None


def pack_rate(rates: Dict[int, float], size: int) -> float:
    """Run-steps per second of a pack of `size`: the measured size closest below it (packing more runs
    than measured is assumed to run no faster per run)."""
    return rates[rate_size(rates, size)]


def rate_size(rates: Dict[int, float], size: int) -> int:
    """The measured pack size whose rate pack_rate gives a pack of `size`."""
    below = [n for n in rates if n <= size]
    return max(below) if below else min(rates)


def best_packs(rates: Dict[str, Dict[int, float]]) -> Dict[str, int]:
    """Caps on pack sizes: each method's pack size with the most run-steps per second, where a larger size was
    measured slower (a method measured at one size, or fastest at its largest, is not capped: beyond the table
    nothing is known). 1: packing measured slower than a run alone."""
    best = {m: fastest_pack(r) for m, r in rates.items()}
    return {m: n for m, n in best.items() if n < max(rates[m])}


def fastest_pack(rates: Dict[int, float]) -> int:
    """The pack size with the most run-steps per second (a tie: the smaller size)."""
    return max(sorted(rates), key=lambda n: rates[n])


class PackCaps(dict):
    """What a measured step table says of pack sizes (`mmbench run --step-times FILE`): as a dict, best_packs' caps
    ({key: size}, each pack at most that); `grow`: the keys whose fastest measured size is the table's largest and
    above the default cap of unasked packs (runner.DEFAULT_PACK_CAP), which unasked packs (no --pack) then grow to.
    An asked --pack is never raised."""

    def __init__(self, caps: Dict[object, int], grow: Optional[Dict[object, int]] = None,
                 failed: Optional[Dict[object, int]] = None):
        super().__init__(caps)
        self.grow: Dict[object, int] = dict(grow or {})
        self.failed: Dict[object, int] = dict(failed or {})  # {key: the smallest pack size that failed} behind a cap
        # the shapes a method-keyed table was measured at (step_table_shapes): runs at others are not capped by it
        self.shapes: Optional[Dict[str, object]] = None


def measured_caps(rates: Dict[object, Dict[int, float]], default: int) -> PackCaps:
    """best_packs(rates), and where a key was fastest at its largest measured size above `default`, that size (the
    table measured it and nothing faster: beyond it nothing is known). Where a pack size failed in the table (its
    row "n/a": out of memory, say; read_step_times' `failed`), the key's packs are capped below it, at the largest
    size that ran (1 if none did)."""
    caps = best_packs(rates)
    grow = {k: fastest_pack(r) for k, r in rates.items() if fastest_pack(r) == max(r) > default}
    failed = {}
    for k, sizes in getattr(rates, "failed", {}).items():
        ran = [n for n in rates.get(k, {}) if n < min(sizes)]
        cap = max(ran) if ran else 1
        if cap < caps.get(k, min(sizes)):
            caps[k], failed[k] = cap, min(sizes)
        if grow.get(k, 0) > caps.get(k, grow.get(k, 0)):
            del grow[k]
    return PackCaps(caps, grow, failed)


def by_shape(rates: Dict[object, Dict[int, float]]) -> bool:
    """Whether read_step_times read a table measured at a suite's shapes (keys: step_key cells, not method names)."""
    return any(isinstance(k, tuple) for k in rates)


def rate_key(rates: Dict[object, Dict[int, float]]) -> Callable:
    """The function from a run's config to its key in `rates`: its step shapes (step_key) or its method's name."""
    return step_key if by_shape(rates) else (lambda cfg: cfg.method.name)


def projected_seconds(packs, rates: Dict[object, Dict[int, float]], steps_of: Callable) -> Dict[str, Optional[float]]:
    """Seconds of training each run costs on the measured GPU when its pack trains together (a pack of R
    runs of S steps takes R·S / rate(R) seconds, shared by its runs); None where no step time or step count.
    `rates` by method name, or by step shapes (by_shape)."""
    key_of = rate_key(rates)
    out: Dict[str, Optional[float]] = {}
    for group in packs:
        m = key_of(group[0].cfg)
        steps = [steps_of(r) for r in group]
        if m not in rates or any(s is None for s in steps):
            out.update({r.id: None for r in group})
            continue
        rate = pack_rate(rates[m], len(group))
        total = len(group) * max(steps) / rate
        out.update({r.id: total / len(group) for r in group})
    return out
