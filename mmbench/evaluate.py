"""Evaluation of a trained run: every configured metric through the model interface -> metrics.json."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from .data.base import load_split
from .errors import MMBenchError
from .metrics.batched import for_eval
from .metrics.context import EvalContext
from .registry import DATASETS, METRICS
from .results import RecordError, Run, atomic_json, parse_provenance
from .devices import device_of
from .train import ProgressFn, data_identity, load_data, load_trained, slow_bf16_note, train


def eval_context(run: Run, model, device, data_root: Optional[Path] = None,
                 progress: Optional[ProgressFn] = None) -> EvalContext:
    """What every metric of `run` reads: `model` on `device`, the run's data, its evaluation split of the test set
    (eval.test_samples), its eval settings and seed; and torch's global generator seeded as evaluation seeds it, so
    a metric called next draws what it draws inside `evaluate` (docs/ scripts re-score runs through this)."""
    cfg = run.cfg
    spec = DATASETS.get(cfg.dataset)()
    variant = spec.check_variant(cfg.variant)
    train_split, test_full = load_data(cfg, data_root)
    whole = None if cfg.train.max_train is None else \
        (lambda: load_split(spec, variant, "train", data_root).select(train_split.names))
    ctx = EvalContext(model=model, spec=spec, variant=variant, train=train_split, classifier_train=whole,
                      test=evaluation_split(test_full, cfg.eval.test_samples), test_full=test_full, cfg=cfg.eval,
                      run_seed=cfg.seed,
                      device=device, data_root=data_root, progress=progress or (lambda *a: None),
                      out_dir=run.dir / "artifacts")
    torch.manual_seed(cfg.seed + 1)
    return ctx


def evaluate(run: Run, data_root: Optional[Path] = None, progress: Optional[ProgressFn] = None,
             provenance: Optional[Dict[str, Any]] = None) -> Dict[str, float]:
    """Run every configured metric; write provenance.json, then metrics.json (whose presence means done)."""
    cfg = run.cfg
    device = device_of()
    # the prepared copy (an unknown variant refused before the model loads): checked against the training's, recorded
    data = data_identity(cfg, data_root)
    model = for_eval(load_trained(run, device, data), device, cfg.eval.precision)
    note = slow_bf16_note(cfg.eval.precision, device, "evaluating the decoders (eval.precision)")
    if note:
        run.log(note)
    ctx = eval_context(run, model, device, data_root, progress)
    metrics: Dict[str, float] = {}
    metric_seconds: Dict[str, float] = {}  # wall time of each metric (with set-up it is first to need), in metrics.json
    t0 = time.monotonic()
    for name in cfg.eval.metrics:
        t = time.monotonic()
        metrics.update(METRICS.get(name)(ctx))
        metric_seconds[name] = round(time.monotonic() - t, 2)
    eval_seconds = round(time.monotonic() - t0, 2)
    prov = dict(provenance or {})
    started = prov.pop("started", t0)
    if "classifier_set" in ctx.extra:  # a metric scored samples with coherence classifiers: which, and how
        prov.update(classifier_set=ctx.extra["classifier_set"], classifier_dropout=cfg.eval.classifier_dropout)
    atomic_json(run.dir / "provenance.json", run.provenance(
        dataset_digest=data["digest"] if data else None,
        # how the data were built (`mmbench prepare` options and seed), for the report's reader: e.g. PolyMNIST rebuilt
        # from the MNIST test split is "vanilla" too, but not the paper's data
        dataset_build={"seed": data["seed"], "options": data["options"]} if data else None,
        eval_seconds=eval_seconds,
        eval_precision=cfg.eval.precision,
        wall_seconds=round(time.monotonic() - started, 2), peak_rss_mb=peak_rss_mb(), **ctx.provenance, **prov))
    run.write_metrics(metrics, eval_seconds=eval_seconds, metric_seconds=metric_seconds, test_tuples=len(ctx.test),
                      eval_precision=cfg.eval.precision, **ctx.extra)
    return metrics


def peak_rss_mb() -> Optional[int]:
    """Peak resident memory of this process so far in MB (a pack's worker: the whole pack's), for sizing Slurm's
    --mem; None where the OS does not say (the host-allocator setting keeps it at its high-water mark)."""
    try:
        import resource
    except ImportError:
        return None
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux: kilobytes
    return round(kb / 1024)


def trained_provenance(summary: Dict[str, Any], started: float) -> Dict[str, Any]:
    """The training's part of provenance.json, from a trainer's summary (train.train, pack.train_pack)."""
    prov = {"train_seconds": round(summary["train_seconds"], 2), "epochs": summary["epochs"], "started": started,
            "train_tuples_per_second": summary.get("tuples_per_second"), "trained_with": summary["trained_with"]}
    return {**prov, "packed_with": summary["packed_with"]} if "packed_with" in summary else prov


def training_provenance(run: Run) -> Dict[str, Any]:
    """What the run's provenance.json (or, while it is set aside, the newest provenance.<scoring>.json) says about
    the training (seconds, epochs, the code that trained it), for an evaluation of the same checkpoint again; {}
    when there is none."""
    paths = [run.dir / "provenance.json"] + sorted(run.dir.glob("provenance.*.json"), key=lambda p: -p.stat().st_mtime)
    path = next((p for p in paths if p.exists()), None)
    if path is None:
        return {}
    try:
        prov = parse_provenance(path.read_bytes(), str(path))
    except RecordError as e:
        raise MMBenchError(f"{e}; put a good copy back, or move it away to evaluate without the training's "
                           f"provenance (its time and code)") from None
    return {k: prov[k] for k in ("train_seconds", "train_tuples_per_second", "epochs", "trained_with") if k in prov}


def evaluation_split(test_full, n):
    """The test tuples the metrics read: `eval.test_samples` of them (all when None), in a seeded shuffled order
    also when whole. A split stored class by class (MNIST-SVHN-Text) would otherwise give batch-norm classifiers
    in training mode (eval.classifier_dropout: as_authors) one-class batches; the MoPoE code's test loader
    shuffles (eval_metrics/coherence.py)."""
    return test_full.subset(n, seed=2, keep_order=False)


def execute(run: Run, data_root: Optional[Path] = None, progress: Optional[ProgressFn] = None) -> Dict[str, Any]:
    """The whole life of one run: train (or resume), evaluate, record provenance. Skips a finished run."""
    with run.lock():
        status = run.status()
        if status == "done":
            return run.read_metrics()
        if status == "rescore":  # trained and evaluated, but scored otherwise (classifiers, eval.precision)
            want = run.scoring_wanted()
            with run.scoring_aside() as old:  # put back if this evaluation fails
                run.init()
                if not run.bring_back(want):
                    run.log(f"evaluating again as {want}" + (f" (kept {old} as metrics.{old}.json)" if old else ""))
                    evaluate(run, data_root, progress, provenance=training_provenance(run))
            return run.read_metrics()
        run.init()
        t0 = time.monotonic()
        run.log(f"run {run.id} on {device_of()}")
        summary = train(run, data_root, progress)
        evaluate(run, data_root, progress, provenance=trained_provenance(summary, t0))
        run.log("done")
        return run.read_metrics()


def execute_when_free(run: Run, data_root: Optional[Path] = None, progress: Optional[ProgressFn] = None,
                      who: str = "worker") -> Dict[str, Any]:
    """`execute`, but when another process holds the run's lock (a second `mmbench run` of the same suite,
    local or on Slurm), wait until it lets go and look again: the run is then done (nothing is trained
    twice) or stopped (it resumes here)."""
    import fcntl

    from .results import RunLockedError

    while True:
        try:
            return execute(run, data_root, progress)
        except RunLockedError:
            run.log(f"{who}: run locked by another process; waiting")
            with open(run.dir / "run.lock", "a+") as f:
                fcntl.flock(f, fcntl.LOCK_EX)
                fcntl.flock(f, fcntl.LOCK_UN)
