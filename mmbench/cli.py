"""The `mmbench` command line: prepare, train, evaluate, run, report, list."""
from __future__ import annotations

import math
import signal
import sys
import threading
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from .errors import MMBenchError, os_error_line

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Reproduce the tables and figures of multimodal-VAE papers.\n\n"
                       "Example: mmbench run suites/quickstart.yaml --tier smoke && mmbench report --compare reference_results/")


class _Output:
    """Standard output as the console writes to it, looked up at each write (a test's capture is honoured): a failed
    write names "standard output", so that `mmbench report > r.txt` on a full disk or over a quota is one line saying
    to free space (errors.os_error_line), not a traceback; a pipe closed early is still click's quiet exit."""

    def write(self, text: str) -> int:
        try:
            return sys.stdout.write(text)
        except OSError as e:
            raise OSError(e.errno, e.strerror, "standard output") from None

    def flush(self) -> None:
        try:
            sys.stdout.flush()
        except OSError as e:
            raise OSError(e.errno, e.strerror, "standard output") from None

    def __getattr__(self, name: str):  # isatty, fileno, encoding...: standard output's own
        return getattr(sys.stdout, name)


_OUTPUT = _Output()
console = Console(file=_OUTPUT, emoji=False)  # :name: in a user's text is printed as typed
err_console = Console(stderr=True, emoji=False)


def _path(option: str):
    """The parser of a path option or argument: an empty value (often an unset shell variable, `--runs-dir "$RUNS"`)
    is refused, where Path("") would silently be the current folder (runs, data or figures written there)."""
    def parse(value: str) -> Path:
        if not value.strip():
            raise MMBenchError(f"{option} {value!r}: an empty path would mean the current folder; give the path (is a shell "
                               f"variable unset?)")
        return Path(value)

    return parse


DATA_ROOT = typer.Option(None, "--data-root", parser=_path("--data-root"), metavar="PATH",
                         help="Prepared datasets live here (default: $MMBENCH_DATA or ./data).")
RUNS_DIR = typer.Option(None, "--runs-dir", parser=_path("--runs-dir"), metavar="PATH",
                        help="Run directories live here (default: $MMBENCH_RUNS or ./runs).")
SET = typer.Option([], "--set", "-s", help="Override a config field, e.g. --set train.epochs=3 --set method.beta=2.5.")


def _folder_given(path: Optional[Path], option: str, holding: str, must_exist: bool = True) -> None:
    """Refuse, before any work, a folder option naming a file (or, for an input, nothing)."""
    if path is None:
        return
    if path.exists() and not path.is_dir():
        raise MMBenchError(f"{option} {path} is a file; give the folder {holding}")
    if must_exist and not path.exists():
        raise MMBenchError(f"{option} {path} does not exist; give the folder {holding}")


@contextmanager
def progress_bar() -> Iterator:
    """A rich progress display, started on first use; yields `progress(phase, done, total)` (one bar per phase)."""
    cols = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(), TimeRemainingColumn())
    prog = Progress(*cols, console=err_console, transient=False)
    tasks = {}

    def update(phase: str, done: int, total: int) -> None:
        key = phase.split(" epoch ")[0]  # one bar for all training epochs
        if not tasks:
            prog.start()
        if key not in tasks:
            tasks[key] = prog.add_task(phase, total=total)
        prog.update(tasks[key], completed=done, total=total, description=phase)

    try:
        yield update
    finally:
        if tasks:
            prog.stop()


def _profile_note(profile: Optional[Path]) -> list:
    """The footnote of the kernel columns `bench steps --profile` adds (Markdown lines), or none."""
    if profile is None:
        return []
    from .bench import PROFILED_STEPS

    return [f"kernel_ms: milliseconds per step during which the device ran at least one kernel (torch.profiler over "
            f"{PROFILED_STEPS} steps after the timed ones; per-operator tables in {profile}/); kernel_share: that over median_s. Well "
            f"below 1, the device waits on the host (launches, Python, synchronisation), which packing and capture "
            f"remove; near 1, the kernels themselves bound the step. nan on a CPU (no device kernels).", ""]


def _writable(path: Path, option: str, folder: bool = False, what: str = "the figures") -> None:
    """Refuse, before any work, an output path that cannot be made: a file where a folder is wanted or the other
    way round, or a file where one of its parent folders would have to be."""
    if path.exists() and path.is_dir() != folder:
        raise MMBenchError(f"{option} {path} is a {'file' if folder else 'directory'}; name "
                           f"{f'a folder for {what} (made if missing)' if folder else 'the file to write'}")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise MMBenchError(f"{option} {path}: {parent} is a file, so no folder can be made there; choose another path")


@contextmanager
def _no_stub_left(run):
    """A command that fails before it computed anything (dataset not prepared, nothing to evaluate) leaves no run
    directory behind when it made it: only its config.yaml and lock would be in it."""
    existed = run.dir.exists()
    try:
        yield
    except BaseException:
        if not existed and run.dir.is_dir() and {p.name for p in run.dir.iterdir()} <= {"config.yaml", "run.lock"}:
            import shutil

            shutil.rmtree(run.dir, ignore_errors=True)
        raise


def _run_from_args(dataset: str, method: str, variant: Optional[str], seed: int, overrides: List[str],
                   runs_dir: Optional[Path]):
    from .config import build_run_config, deep_merge, parse_overrides
    from .results import Run

    base = {"dataset": dataset, "variant": variant, "seed": seed, "method": {"name": method}}
    given = parse_overrides(overrides)
    # what the arguments say is not said again by --set (one of the two would be silently dropped)
    for key, say in (("dataset", "the DATASET argument"), ("variant", "--variant"), ("seed", "--seed")):
        if key in given:
            raise MMBenchError(f"--set {key}=...: the {key} is set by {say}; drop the --set")
    if isinstance(given.get("method"), dict) and "name" in given["method"]:
        raise MMBenchError("--set method.name=...: the method is the METHOD argument; drop the --set")
    cfg = build_run_config(deep_merge(base, given), "")
    _folder_given(runs_dir, "--runs-dir", "run directories are kept in (made if missing)", must_exist=False)
    return Run(cfg, runs_dir)


@app.command()
def prepare(dataset: str = typer.Argument(..., help="Dataset name (see `mmbench list datasets`)."),
            variant: Optional[str] = typer.Option(None, "--variant", "-v", help="Dataset variant, e.g. extended."),
            seed: int = typer.Option(0, help="Seed of every random choice of the recipe."),
            force: bool = typer.Option(False, "--force", help="Rebuild even if a complete copy exists."),
            preview: Optional[Path] = typer.Option(None, "--preview", parser=_path("--preview"), metavar="PATH",
                                                   help="Write a PNG grid of test tuples here."),
            source: Optional[Path] = typer.Option(None, "--source", parser=_path("--source"), metavar="PATH",
                                                  help="Directory holding the raw files you already have."),
            backgrounds: Optional[Path] = typer.Option(None, "--backgrounds", parser=_path("--backgrounds"), metavar="PATH",
                                                       help="Background .jpg directory (PolyMNIST rebuilds)."),
            rebuild: bool = typer.Option(False, "--rebuild", help="Regenerate from the raw sources instead of a prebuilt archive."),
            simulate: bool = typer.Option(False, "--simulate", help="Build the 'simulated' variant: raw files simulated in the real format (rats)."),
            option: List[str] = typer.Option([], "--option", "-o", help="Dataset-specific KEY=VALUE, e.g. -o mnist_source=test-halves."),
            data_root: Optional[Path] = DATA_ROOT) -> None:
    """Build a dataset into compact arrays + manifest (idempotent).

    Example: mmbench prepare polymnist --variant extended --backgrounds ~/polymnist-backgrounds
    """
    from .config import parse_overrides
    from .data.base import prepare as do_prepare
    from .registry import DATASETS

    spec = DATASETS.get(dataset)()
    _folder_given(source, "--source", "holding the raw files you already have")
    _folder_given(backgrounds, "--backgrounds", "holding the background .jpg images")
    if preview:  # checked before the (long) preparation
        _writable(preview, "--preview")
        if preview.suffix.lower() != ".png":
            raise MMBenchError(f"--preview {preview}: the preview grid is a PNG image; name a .png file")
    if simulate:
        if variant not in (None, "simulated"):
            raise MMBenchError(f"--simulate builds the 'simulated' variant; drop --variant {variant}")
        variant = spec.check_variant("simulated")
    options = {"source": str(source.resolve()) if source else None,
               "backgrounds": str(backgrounds.resolve()) if backgrounds else None,
               "rebuild": True if rebuild else None, **parse_overrides(option, "-o")}
    with progress_bar() as progress:
        path = do_prepare(spec, variant, seed=seed, data_root=data_root, force=force, options=options,
                          progress=progress)
    console.print(f"prepared {dataset} ({spec.check_variant(variant)}) in {path}", markup=False)
    if preview:
        from .data.base import load_split, save_preview

        save_preview(load_split(spec, variant, "test", data_root), preview)
        console.print(f"preview grid: {preview}", markup=False)


@app.command()
def train(dataset: str = typer.Argument(..., help="Dataset name."),
          method: str = typer.Argument(..., help="Method name (see `mmbench list methods`)."),
          variant: Optional[str] = typer.Option(None, "--variant", "-v"),
          seed: int = typer.Option(0, help="Training seed."),
          overrides: List[str] = SET, runs_dir: Optional[Path] = RUNS_DIR, data_root: Optional[Path] = DATA_ROOT) -> None:
    """Train one model (resumes from its last checkpoint if interrupted).

    Example: mmbench train polydigits mopoe --set train.epochs=5 --set method.latent_dim=64
    """
    from .train import train as do_train

    run = _run_from_args(dataset, method, variant, seed, overrides, runs_dir)
    with _no_stub_left(run), run.lock():
        run.init()
        with progress_bar() as progress:
            summary = do_train(run, data_root, progress)
    last = summary["history"][-1] if summary["history"] else {}
    console.print(f"trained {run.id}: {summary['epochs']} epochs, test loss {last.get('test_loss', float('nan')):.2f}; "
                  f"checkpoints in {run.ckpt_dir}", markup=False)


@app.command()
def evaluate(dataset: str = typer.Argument(..., help="Dataset name."),
             method: str = typer.Argument(..., help="Method name."),
             variant: Optional[str] = typer.Option(None, "--variant", "-v"),
             seed: int = typer.Option(0, help="Training seed of the run to evaluate."),
             overrides: List[str] = SET, runs_dir: Optional[Path] = RUNS_DIR,
             data_root: Optional[Path] = DATA_ROOT,
             fid_weights: Optional[Path] = typer.Option(
                 None, "--fid-weights", parser=_path("--fid-weights"), metavar="PATH",
                     help="pytorch-fid Inception weights file pt_inception-2015-12-05-6726825d.pth "
                                             "(sha256-checked; default: the torch hub cache).")) -> None:
    """Evaluate a trained model with its configured metrics and write metrics.json.

    Example: mmbench evaluate polydigits mopoe --set train.epochs=5 --set eval.test_samples=500
    """
    import json

    from .evaluate import evaluate as do_evaluate, training_provenance

    if fid_weights is not None:  # eval.fid_weights is not part of the run id, so the same run is evaluated
        overrides = [*overrides, f"eval.fid_weights={json.dumps(str(fid_weights.expanduser().resolve()))}"]
    run = _run_from_args(dataset, method, variant, seed, overrides, runs_dir)
    with _no_stub_left(run), run.lock():
        trained = training_provenance(run)  # kept in the new provenance
        # Scored otherwise before (classifiers, eval.precision): that evaluation is kept, and put back on failure.
        with (run.scoring_aside() if run.status() == "rescore" else nullcontext()) as kept:
            if kept:
                console.print(f"kept the earlier evaluation ({kept}) as {run.dir / f'metrics.{kept}.json'}",
                              markup=False)
            run.init()  # config.yaml says how metrics.json is scored
            with progress_bar() as progress:
                metrics = do_evaluate(run, data_root, progress, provenance=trained)
    t = Table(title=run.id)
    t.add_column("metric")
    t.add_column("value")
    for k, v in metrics.items():
        t.add_row(k, f"{v:.4f}")
    console.print(t)


@app.command()
def run(suite: Path = typer.Argument(..., parser=_path("SUITE"), metavar="SUITE",
                                     help="Suite YAML file, e.g. suites/quickstart.yaml."),
        tier: str = typer.Option("full", help="full (paper settings), quick or smoke."),
        gpus: Optional[str] = typer.Option(None, "--gpus", help="Comma-separated GPU ids, one worker each (e.g. 0,1)."),
        jobs: int = typer.Option(1, "--jobs", "-j", help="CPU workers when no --gpus are given."),
        dry_run: bool = typer.Option(False, "--dry-run", help="List the runs with their status; run nothing."),
        only: Optional[str] = typer.Option(None, "--only", help="Comma-separated experiment names of the suite to run."),
        pack: Optional[int] = typer.Option(None, "--pack", help="Cap on runs trained together as one stacked model "
                                           "(runs differing only in seed and method.beta; default: split evenly "
                                           "over the workers, or over --slurm-array-parallelism tasks with "
                                           "--executor slurm, at most 15 a pack; 1: every run alone)."),
        compile: bool = typer.Option(False, "--compile", help="Capture training steps (packed and unpacked) with "
                                     "torch.compile (reduce-overhead, CUDA graphs); GPU workers only."),
        cudnn_benchmark: bool = typer.Option(False, "--cudnn-benchmark", help="cuDNN benchmark mode on GPU workers: "
                                             "convolution algorithms chosen by timing (said in each run's log)."),
        step_times: Optional[Path] = typer.Option(None, "--step-times", parser=_path("--step-times"), metavar="PATH",
                                                  help="A `mmbench bench steps --pack` table "
                                                  "(e.g. docs/step_times_h200.md): each method's packs are capped "
                                                  "at its fastest measured pack size (without --pack they grow to "
                                                  "it where it is the table's largest); with --dry-run it also "
                                                  "projects the tier's training time on that GPU (with --compile "
                                                  "from its captured rows)."),
        overrides: List[str] = SET, runs_dir: Optional[Path] = RUNS_DIR, data_root: Optional[Path] = DATA_ROOT,
        executor: str = typer.Option("local", "--executor", help="local (worker processes here) or slurm (a job "
                                                                  "array through submitit)."),
        slurm_partition: Optional[str] = typer.Option(None, "--slurm-partition", help="Slurm partition."),
        slurm_gpus: Optional[int] = typer.Option(None, "--slurm-gpus-per-job", help="GPUs per job."),
        slurm_cpus: Optional[int] = typer.Option(None, "--slurm-cpus-per-job", help="CPUs per job."),
        slurm_mem: Optional[str] = typer.Option(None, "--slurm-mem", help="Memory per job, e.g. 16G."),
        slurm_time: Optional[int] = typer.Option(None, "--slurm-time", help="Time limit per job in minutes (a run "
                                                                            "that needs longer is requeued)."),
        slurm_parallel: Optional[int] = typer.Option(None, "--slurm-array-parallelism", help="Array tasks at once."),
        slurm_opt: List[str] = typer.Option([], "--slurm-opt", help="Any other sbatch option, e.g. --slurm-opt "
                                                                    "account=mylab --slurm-opt qos=high."),
        detach: bool = typer.Option(False, "--detach", help="With --executor slurm: return after submitting (see "
                                                            "the jobs with --dry-run).")) -> None:
    """Run every experiment of a suite (skips finished runs, resumes unfinished ones).

    Example: mmbench run suites/quickstart.yaml --tier smoke --gpus 0,1
    Example: mmbench run suites/mopoe_iclr21.yaml --executor slurm --slurm-partition gpu --slurm-gpus-per-job 1
    """
    from .config import parse_overrides
    from .results import Run, default_runs_dir
    from .runner import run_all
    from .suite import load_suite

    if pack is not None and pack < 1:
        raise MMBenchError(f"--pack {pack}: must be >= 1 (1 trains every run alone)")
    if jobs < 1:
        raise MMBenchError(f"--jobs {jobs}: must be >= 1 (CPU worker processes)")
    if gpus is not None:
        from .runner import gpu_slots

        gpu_slots(gpus)  # ids well formed (whether the GPUs exist is checked before anything runs)
        if jobs != 1:
            raise MMBenchError("--jobs sets CPU workers; with --gpus each listed id is one worker (repeat an id, "
                               "e.g. --gpus 0,0, for two on one GPU); drop one of the two")
    caps = _pack_caps(step_times, compile) if step_times is not None else None
    if compile and not gpus:
        raise MMBenchError("--compile captures CUDA graphs; use it with --gpus")
    if cudnn_benchmark and not gpus:
        raise MMBenchError("--cudnn-benchmark tunes cuDNN's convolutions on GPU workers; use it with --gpus")
    if executor not in ("local", "slurm"):
        raise MMBenchError(f"--executor {executor!r}: choose local or slurm")
    cli_slurm = {k: v for k, v in dict(partition=slurm_partition, gpus_per_job=slurm_gpus, cpus_per_job=slurm_cpus,
                                        mem=slurm_mem, time=slurm_time, array_parallelism=slurm_parallel).items()
                 if v is not None}
    if executor != "slurm" and (cli_slurm or slurm_opt or detach):  # checked before a dry run too
        raise MMBenchError("--slurm-* options and --detach apply to --executor slurm; add --executor slurm")
    _folder_given(runs_dir, "--runs-dir", "run directories are kept in (made if missing)", must_exist=False)
    s = load_suite(suite)
    configs = s.runs(tier, parse_overrides(overrides), only=only.split(",") if only is not None else None)
    if tier != "full" and tier not in s.tiers:  # the suite's full settings under another tier's name: say so
        err_console.print(f"note: {escape(str(suite))} defines no {tier!r} tier, so its runs use the suite's full settings "
                          f"(tiers it defines: {', '.join(s.tiers) or 'none'})", highlight=False, soft_wrap=True)
    elif tier != "full":  # mmbench/budgets.py: the report shows these runs' numbers and scores none of them
        err_console.print(f"note: {tier}-tier runs are at another budget than the papers' (epochs, tuples, samples): "
                          f"`mmbench report --compare` shows their numbers beside the papers' and scores none of them",
                          highlight=False, soft_wrap=True)
    runs_dir = runs_dir or default_runs_dir()
    options = None
    if executor == "slurm":  # the --slurm-* values checked before a dry run too: it previews what the run submits
        from .slurm import parse_sbatch, resolve_options, site_config_path, site_options

        if slurm_opt:
            cli_slurm["sbatch"] = parse_sbatch(slurm_opt)
        if pack is not None:
            cli_slurm["pack"] = pack  # runs per array task
        site = site_options()
        options = [(c, resolve_options([(site, str(site_config_path())), (s.slurm, f"{suite}: slurm"),
                                        (e.slurm, f"{suite}: {e.name}.slurm"), (cli_slurm, "--slurm-*")]))
                   for c, e in s.runs_with_experiments(tier, parse_overrides(overrides),
                                                       only=only.split(",") if only is not None else None)]
    if dry_run:
        from .runner import resume_point
        from .projection import step_key
        from .suite import ESTIMATE_BASIS, human_seconds, seconds_per_sample, train_tuples

        rates = seconds_per_sample(runs_dir, data_root)
        runs = [Run(c, runs_dir) for c in configs]
        distinct = len({r.id for r in runs})
        t = Table(title=f"{s.name} ({tier}): {len(configs)} runs" + (f" ({distinct} distinct: a run two experiments "
                                                                      f"share is listed under each)"
                                                                      if distinct < len(configs) else ""))
        t.add_column("run", no_wrap=True)  # whole on one line where the table fits so (_fold_if_cropped)
        for c in ("reproduces", "epochs", "tuples trained", "est. train time", "status"):  # tuples: epochs × split
            t.add_column(c, min_width=12 if c == "tuples trained" else None)  # "~18,000,000" whole in a narrow terminal
        gpu = _gpu_projection(configs, runs_dir, data_root, step_times, pack, caps, compile) if step_times else None
        if gpu:
            t.add_column("GPU time (packed)")
        slurm_states = _slurm_states(configs, runs_dir)
        if slurm_states:
            t.add_column("Slurm job (log)")
        counts: Dict[str, int] = {}
        total, unknown, pending, expected = 0.0, 0, 0, 0
        listed: set = set()  # run ids already counted: a run two experiments share is shown twice, counted once
        for c, r in zip(configs, runs):
            status = r.status()
            again = r.id in listed
            listed.add(r.id)
            counts[status] = counts.get(status, 0) + (not again)
            n, prepared = train_tuples(c, data_root)
            expected += bool(n) and not prepared and not again
            rate = rates.get(step_key(c))
            trains = status not in ("done", "rescore")  # a rescore is evaluated again, not trained
            left = n * (1 - resume_point(r)[0] / max(c.train.epochs, 1)) if n and trains else n  # a resumed run's rest
            est = left * rate if n and rate else None
            if trains and not again:
                total += est or 0.0
                unknown += est is None
                pending += 1
            row = [r.id, _tables_brief(c.tables), str(c.train.epochs),
                   ("" if prepared else "~") + f"{n:,}" if n else "? (not prepared)",
                   "- (evaluation only)" if status == "rescore" else human_seconds(est) if est else "?", status]
            if gpu:
                g = gpu["per_run"].get(r.id)
                row.append("-" if not trains else human_seconds(g) if g else "?")
            if slurm_states:
                st = slurm_states[r.id]
                row[5] = st["state"] + (f" ({st['detail']})" if st["state"] == "failed" else "")
                row.append(f"{st['job']} ({st['log']})" if st["job"] else "")
            t.add_row(*row)
        console.print(_fold_if_cropped(t))
        known = pending - unknown
        console.print(", ".join(f"{v} {k}" for k, v in sorted(counts.items())) + "; " +
                      (f"remaining training of {known} timed run(s) ≈ {human_seconds(total)} at the pace of finished "
                       f"runs of the same step shapes ({ESTIMATE_BASIS})" if known
                       else "nothing to train" if not pending else "no timing yet") +
                      (f"; {unknown} run(s) without an estimate (no finished run of their step shapes"
                       + ("" if known else f": {ESTIMATE_BASIS}") + ")" if unknown else "") +
                      (f"; ~: {expected} run(s) sized by their dataset's default recipe (not prepared here)"
                       if expected else ""))
        if gpu:
            console.print(gpu["summary"])
        disk = _checkpoint_space(runs)
        if disk:
            console.print(disk, markup=False, highlight=False)  # a folder named [x] is printed as named
        return
    import os

    # read by the trainers in each worker (pack.py; train.py captured, cudnn_autotune)
    for asked, name in ((compile, "MMBENCH_COMPILE"), (cudnn_benchmark, "MMBENCH_CUDNN_BENCHMARK")):
        if asked:
            os.environ[name] = "1"
    _warn_if_no_room([Run(c, runs_dir) for c in configs])
    if executor == "slurm":
        from .slurm import available, run_slurm

        reason = available()  # before preparing data or training classifiers here
        if reason:
            raise MMBenchError(f"--executor slurm: Slurm cannot be used here: {reason}")
        _prepare_for(configs, data_root)
        results = run_slurm(configs, runs_dir, data_root, options, err_console, wait=not detach, caps=caps)
        if detach:  # the dry run of these runs: the same selection, settings (--set: other run ids) and directories
            import shlex

            follow = ["mmbench run", shlex.quote(str(suite)), "--tier", shlex.quote(tier)]
            follow += ["--only", shlex.quote(only)] if only is not None else []
            follow += [w for o in overrides for w in ("--set", shlex.quote(o))]
            if runs_dir.resolve() != default_runs_dir().resolve():
                follow += ["--runs-dir", shlex.quote(str(runs_dir.resolve()))]
            from .data.base import data_root_words

            follow += data_root_words(data_root)
            console.print(f"submitted; follow with `{' '.join(follow)} --dry-run`", highlight=False, soft_wrap=True)
            return
        failed = [r for r, ok, _ in results if not ok]
        console.print(f"{len(results) - len(failed)} of {len(results)} runs finished; results in {runs_dir}", markup=False)
        if failed:
            raise typer.Exit(1)
        return
    if gpus is not None:
        from .runner import check_gpus_visible, gpu_slots

        check_gpus_visible(gpu_slots(gpus))  # before preparing data or writing run directories
    _prepare_for(configs, data_root)
    outcomes = run_all(configs, runs_dir, data_root, gpus=gpus, jobs=jobs, console=err_console, pack=pack,
                       caps=caps)
    failed = [o for o in outcomes if not o.ok]
    console.print(f"{len(outcomes) - len(failed)} of {len(outcomes)} runs finished; results in {runs_dir}",
                  markup=False)
    if failed:
        raise typer.Exit(1)


def _checkpoint_room(runs) -> Optional[tuple]:
    """(runs not started, the bytes their checkpoints will take, the bytes free, the runs folder): each distinct run
    without a checkpoint yet whose model could be sized (an estimate never stops a run); None where there is none."""
    from .suite import checkpoint_bytes, free_bytes

    fresh = {r.id: r for r in runs if r.status() == "pending"}
    sizes = [s for s in (checkpoint_bytes(r.cfg) for r in fresh.values()) if s is not None]
    if not sizes:
        return None
    folder = runs[0].dir.parent
    return len(sizes), sum(sizes), free_bytes(folder), folder


def _checkpoint_space(runs) -> Optional[str]:
    """The dry run's line on disk space: what the checkpoints of the runs not started will take, and what is free."""
    from .suite import human_bytes

    room = _checkpoint_room(runs)
    if room is None:
        return None
    n, need, free, folder = room
    return (f"checkpoints of the {n} run(s) not started: ~{human_bytes(need)} on disk (each run's last.pt and "
            f"best.pt); {human_bytes(free)} free in {folder}" + ("" if free >= need else " — not enough"))


def _warn_if_no_room(runs) -> None:
    """Before training: a warning where the checkpoints of the runs not started will not fit on the runs' disk (a
    run that fills it stops with its last checkpoint kept, and resumes once space is freed; better known now)."""
    from .suite import human_bytes

    room = _checkpoint_room(runs)
    if room is None or room[2] >= room[1]:
        return
    n, need, free, folder = room
    err_console.print(f"[yellow]warning:[/yellow] the checkpoints of the {n} run(s) not started will take "
                      f"~{human_bytes(need)} (each run's last.pt and best.pt), and {escape(str(folder))} has "
                      f"{human_bytes(free)} free; free space, or runs will stop when the disk is full (each resumes "
                      f"from its last checkpoint once there is room)", highlight=False, soft_wrap=True)


def _slurm_states(configs, runs_dir: Path) -> Dict[str, dict]:
    """Slurm state of each run that was ever submitted (empty when none was)."""
    from .results import Run

    runs = [Run(c, runs_dir) for c in configs]
    if not any((r.dir / "slurm.json").exists() for r in runs):
        return {}
    from .slurm import run_states

    return run_states(runs)


def _step_time_rates(step_times: Path, compiled: bool = False) -> Dict[str, Dict[int, float]]:
    """`--step-times FILE` read (projection.read_step_times; its captured rows where the runs are captured, `--compile`)."""
    from .projection import read_step_times

    write = "write one with `mmbench bench steps --pack 1,5,15 --device cuda --out FILE`"
    if not step_times.exists():
        raise MMBenchError(f"--step-times {step_times}: no such file; {write}")
    if step_times.is_dir():
        raise MMBenchError(f"--step-times {step_times} is a directory; give the Markdown file of step times ({write})")
    try:
        step_times.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise MMBenchError(f"--step-times {step_times} is not UTF-8 text (byte {e.start}); give the Markdown file of "
                           f"step times ({write})") from None
    return read_step_times(step_times, compiled)


def _fold_if_cropped(t: Table) -> Table:
    """t as printed on `console`: its first column (run ids, no_wrap) whole where the table then fits the terminal,
    its other columns wrapping first; otherwise that column folds, as a narrow terminal must, rather than pushing the
    columns at the right past the terminal's edge, where they are cut off."""
    import io

    from rich.cells import cell_len

    probe = Console(file=io.StringIO(), width=console.width, color_system=None, emoji=False)  # as `console`
    probe.print(t, crop=False)
    if max((cell_len(line) for line in probe.file.getvalue().splitlines()), default=0) > console.width:
        t.columns[0].no_wrap, t.columns[0].overflow = False, "fold"
    return t


def _pack_caps(step_times: Path, compiled: bool = False) -> Dict[str, int]:
    """`--step-times FILE`: each method's fastest measured pack size (projection.measured_caps: caps, and the larger
    sizes unasked packs grow to), said on stderr."""
    from .projection import by_shape, key_label, measured_caps, shapes_label, step_table_shapes
    from .runner import DEFAULT_PACK_CAP

    rates = _step_time_rates(step_times, compiled)
    caps = measured_caps(rates, DEFAULT_PACK_CAP)
    where = ""  # which runs a method-keyed table's caps apply to (runner.make_packs)
    if not by_shape(rates) and (caps or caps.grow):
        try:
            caps.shapes = step_table_shapes(step_times)
            where = f" (runs at the table's shapes only: {shapes_label(caps.shapes)})"
        except MMBenchError:
            where = " (its header does not say the shapes it was measured at: runs of every shape)"
    if caps:
        err_console.print(f"--step-times {escape(str(step_times))}: packs capped at the fastest measured size: "
                          + ", ".join(f"{key_label(m)} {n}" + (" (alone)" if n == 1 else "")
                                      + ((f" (the largest that ran: its pack of {caps.failed[m]} failed in the table)"
                                          if n > 1 or 1 in rates.get(m, {}) else
                                          f" (no pack of it ran in the table: its pack of {caps.failed[m]} failed)")
                                         if m in caps.failed else "")
                                      for m, n in sorted(caps.items())) + where, highlight=False, soft_wrap=True)
    if caps.grow:
        err_console.print(f"--step-times {escape(str(step_times))}: packs made without --pack grow beyond "
                          f"{DEFAULT_PACK_CAP} to the fastest measured size: "
                          + ", ".join(f"{key_label(m)} {n}" for m, n in sorted(caps.grow.items())) + where,
                          highlight=False, soft_wrap=True)
    return caps


def _tables_brief(tables: List[str]) -> str:
    """A run's tables with each paper named once: "MoPoE Table 5, Fig. 12, Fig. 13"."""
    out, last = [], None
    for t in tables:
        paper, _, rest = t.partition(" ")
        out.append(rest if paper == last and rest else t)
        last = paper
    return ", ".join(out)


def _gpu_projection(configs, runs_dir: Path, data_root: Optional[Path], step_times: Path,
                    pack: Optional[int], caps: Optional[Dict[str, int]] = None, compiled: bool = False) -> Dict:
    """Projected training time of the unfinished runs on the GPU that `step_times` was measured on, with
    the runs packed as `mmbench run --pack` (and `caps`, --step-times) would pack them on one GPU."""
    from .projection import (by_shape, key_label, projected_seconds, rate_key, rate_size, shapes_differ, shapes_label,
                             step_key, step_table_shapes)
    from .results import Run
    from .runner import make_packs, resume_point
    from .suite import human_seconds, train_tuples

    rates = _step_time_rates(step_times, compiled)
    shaped = by_shape(rates)  # measured at a suite's shapes (`bench steps --suite`): each run looked up by its own
    shapes = None if shaped else step_table_shapes(step_times)
    seen: set = set()  # a run listed by two experiments (a shared configuration) trains once
    todo = [r for r in (Run(c, runs_dir) for c in configs) if not (r.id in seen or seen.add(r.id))]
    todo = [r for r in todo if r.status() not in ("done", "rescore")]  # a rescore is not trained again
    other: Dict[str, int] = {}  # how runs differ from the table's shapes -> how many

    def steps_of(r):
        why = (("not a step shape this table measured" if step_key(r.cfg) not in rates else None) if shaped
               else shapes_differ(r.cfg, shapes))
        if why:
            other[why] = other.get(why, 0) + 1
            return None
        n = train_tuples(r.cfg, data_root)[0]  # unprepared: the size its default recipe builds
        epochs = r.cfg.train.epochs  # a run resumed from a checkpoint trains only its remaining epochs
        return None if n is None else (epochs - resume_point(r)[0]) * max(n // epochs // r.cfg.train.batch_size, 1)

    packs = make_packs(todo, pack, 1, caps)
    per_run = projected_seconds(packs, rates, steps_of)
    known = [v for v in per_run.values() if v is not None]
    n_packs = sum(per_run[g[0].id] is not None for g in packs)  # the packs projected (a pack is projected whole)
    uncaptured: Dict[str, int] = {}  # with --compile: projected packs whose rate is an uncaptured step's -> how many
    key_of = rate_key(rates)
    for g in (g for g in packs if compiled and per_run[g[0].id] is not None):
        m = key_of(g[0].cfg)
        if rate_size(rates[m], len(g)) not in rates.captured.get(m, ()):
            uncaptured[key_label(m)] = uncaptured.get(key_label(m), 0) + 1
    import re

    found = re.search(r"steps; ([^,]+),", step_times.read_text(encoding="utf-8"))
    where = found.group(1) if found else "the measured device"
    n_other = sum(other.values())
    shown = ", ".join(f"{why}: {n}" for why, n in sorted(other.items(), key=lambda kv: -kv[1])[:3])
    summary = (f"projected training on {'the CPU' if 'CPU threads' in where else 'one GPU'} ({where}, step times from "
               f"{step_times}): "
               f"{human_seconds(sum(known)) if known else '?'} for {len(known)} of {len(todo)} unfinished run(s) in "
               + (f"{n_packs} of {len(packs)}" if n_packs != len(packs) else f"{n_packs}") + " pack(s)"
               + (f" ({sum(uncaptured.values())} of them from uncaptured step times: the table has no captured row "
                  f"for {', '.join(sorted(uncaptured))} at their pack size)" if uncaptured else "")
               + (f"; {n_other} at step shapes this table did not measure (`mmbench bench steps --suite SUITE` "
                  f"measures a suite's), not projected" if n_other and shaped else
                  f"; {n_other} not at the table's shapes ({shapes_label(shapes)}; {shown}"
                  + (", ..." if len(other) > 3 else "") + "), not projected from this table"
                  if n_other else "")
               + (f"; {len(todo) - len(known) - n_other} without a step time for their method or a known dataset size"
                  if len(todo) - len(known) - n_other else "") + ".")
    return {"per_run": per_run, "summary": summary}


def _prepare_for(configs, data_root: Optional[Path]) -> None:
    """Before dispatching: embedded datasets are prepared, others must be; classifiers are trained once."""
    from .data.base import dataset_dir, load_split, prepare as do_prepare, read_manifest
    from .metrics.classifiers import get_classifiers
    from .registry import DATASETS

    # FID weights are fetched and checked before any training, so a missing file costs seconds, not a run.
    for weights in dict.fromkeys(c.eval.fid_weights for c in configs if "fid" in c.eval.metrics):
        from .metrics.fid import resolve_weights

        resolve_weights(weights)
    prepared, trained = set(), set()
    for c in configs:
        spec = DATASETS.get(c.dataset)()
        variant = spec.check_variant(c.variant)
        if (c.dataset, variant) not in prepared:
            prepared.add((c.dataset, variant))
            if read_manifest(dataset_dir(c.dataset, variant, data_root)) is None:
                if not getattr(spec, "embedded", False):
                    raise MMBenchError(f"dataset {c.dataset} ({variant}) is not prepared; run "
                                       f"`{spec.prepare_hint(variant, data_root)}` first")
                # built as `mmbench prepare` builds it (seed 0): a run's data_seed draws its subsets (train.max_train,
                # train.max_test), not the build, which one copy serves every run of (its seed in provenance.json)
                with progress_bar() as progress:
                    do_prepare(spec, variant, data_root=data_root, progress=progress)
        key = (c.dataset, variant, c.eval.classifier_epochs, c.eval.classifiers)
        # every metric that scores with the classifiers (CelebA's coherence_ap too), once per cache: before, a
        # dataset seen first without coherence was never trained for, and coherence_ap's classifiers were trained by
        # the workers
        if {"coherence", "coherence_ap"} & set(c.eval.metrics) and key not in trained:
            trained.add(key)
            train_split = load_split(spec, variant, "train", data_root)
            test_split = load_split(spec, variant, "test", data_root)
            with progress_bar() as progress:
                _, acc = get_classifiers(spec, variant, train_split, test_split, c.eval, data_root, progress,
                                         check=False)
            score = "test mean AP" if spec.multilabel else "test accuracy"
            console.print(f"{c.eval.classifiers} coherence classifiers for {c.dataset} ({variant}): {score} "
                          + ", ".join(f"{m} {a:.3f}" for m, a in acc.items()))


def _write_tidy(rep, fmt: str, out: Optional[Path]) -> None:
    """One tidy row per reference cell (mmbench/verdicts.py TIDY_COLUMNS), as CSV or a JSON list."""
    import json

    import pandas as pd

    from .results import atomic_write
    from .verdicts import TIDY_COLUMNS, tidy_rows

    rows = tidy_rows(rep.cells, rep.frame)
    if fmt == "json":
        text = json.dumps(rows, indent=1)
    else:
        flat = [{**r, "mixed_provenance": ";".join(r["mixed_provenance"]), "run_ids": ";".join(r["run_ids"])}
                for r in rows]
        text = pd.DataFrame(flat, columns=TIDY_COLUMNS).to_csv(index=False)
    if out:
        atomic_write(out, text)
        console.print(f"wrote {out}: {len(rows)} rows", markup=False)
    else:
        _OUTPUT.write(text)  # standard output, named where its write fails (now, not at the interpreter's exit)
        _OUTPUT.flush()


def _render_report(rep, fmt: str, out: Optional[Path], plots: Optional[Path], title: str) -> None:
    import tempfile

    from .plots import all_figures
    from .render import render_html, render_latex, render_markdown, render_terminal
    from .results import atomic_write

    with tempfile.TemporaryDirectory() as tmp:
        images = []
        if plots or fmt == "html":
            notes: List[str] = []
            written = all_figures(rep, Path(plots or tmp), notes)
            images = [p for p in written if p.suffix == ".png"]
            if plots:
                for path in written:
                    console.print(f"wrote {path}", markup=False)
            for note in notes:
                console.print(escape(note), highlight=False, soft_wrap=True)
        args = (rep.summaries, rep.refs, rep.claims, rep.paper_lines)
        text = {"md": lambda: render_markdown(*args, title=title), "terminal": lambda: render_markdown(*args, title=title),
                "latex": lambda: render_latex(*args, title=title),
                "html": lambda: render_html(*args, images=images, title=title)}[fmt]()
        if fmt == "terminal":
            render_terminal(console, *args)
        elif not out:
            console.print(text, markup=False, highlight=False, soft_wrap=True)
        if out:
            atomic_write(out, text)
            console.print(f"wrote {out}", markup=False)


@app.command()
def report(runs_dir: Optional[Path] = RUNS_DIR,
           compare: Optional[Path] = typer.Option(None, "--compare", parser=_path("--compare"), metavar="PATH",
                                                  help="Reference directory, e.g. reference_results/."),
           fmt: str = typer.Option("terminal", "--format", help="terminal, md, latex, html, or csv/json (one tidy row "
                                   "per reference cell: produced and printed statistics, verdicts, run ids)."),
           out: Optional[Path] = typer.Option(None, "--out", parser=_path("--out"), metavar="PATH",
                                              help="Also write the report to this file (Markdown for "
                                                                  "terminal/md, else the chosen format; an existing "
                                                                  "file is replaced: a report is made again from the "
                                                                  "runs)."),
           plots: Optional[Path] = typer.Option(None, "--plots", parser=_path("--plots"), metavar="PATH",
                                                help="Write the figures (PNG and SVG) into this folder."),
           allow_missing: bool = typer.Option(False, "--allow-missing", help="With --compare: missing cells and "
                                              "claims (and those with runs only at another budget than the paper's) "
                                              "do not fail."),
           refuse_mixed: bool = typer.Option(False, "--refuse-mixed", help="With --compare: fail when a cell pools runs "
                                             "whose code, data, classifiers or numerical packages differ."),
           title: str = typer.Option("mmbench report", "--title", help="Heading of the md/latex/html report.")) -> None:
    """Aggregate runs (mean ± std over seeds); with --compare, diff them against the papers' values and claims.

    Example: mmbench report --compare reference_results/ --format html --out report.html
    """
    from .references import Cell
    from .report import build_report

    formats = ("terminal", "md", "latex", "html", "csv", "json")
    if fmt not in formats:
        raise MMBenchError(f"--format {fmt!r} is not supported; choose one of: {', '.join(formats)}")
    if out is not None:
        _writable(out, "--out")
    if plots is not None:
        _writable(plots, "--plots", folder=True)
    if compare is None and (allow_missing or refuse_mixed):
        raise MMBenchError(f"{'--allow-missing' if allow_missing else '--refuse-mixed'} applies to a comparison; add "
                           f"--compare reference_results/")
    rep = build_report(runs_dir, compare)
    # csv/json: data for a program on stdout, so the summary lines go to stderr
    say = err_console if fmt in ("csv", "json") and not out else console
    if fmt in ("csv", "json"):
        _write_tidy(rep, fmt, out)
    else:
        _render_report(rep, fmt, out, plots, title)
    if rep.skipped:
        say.print(f"{len(rep.skipped)} run directories left out of the report:", highlight=False)
        for name, why in rep.skipped:
            say.print(f"  {name}: {escape(why)}", highlight=False, soft_wrap=True)
    if compare:
        strict, hedged = rep.strict_claims, [c for c in rep.claims if c.strength == "hedged"]
        say.print(f"{sum(c.status == 'pass' for c in rep.cells)} of {len(rep.cells)} reference cells within "
                  f"tolerance, {sum(c.status == 'holds' for c in strict)} of {len(strict)} claims hold; "
                  f"{rep.failures} failing, {rep.missing} missing"
                  + (f", {len(rep.off_budget)} at another budget than the paper's (not scored)" if rep.off_budget
                     else "")
                  + (f" (hedged claims, evidence only: {sum(c.status == 'holds' for c in hedged)} of {len(hedged)} "
                     "hold)" if hedged else ""))
        if refuse_mixed and (rep.mixed or rep.mixed_claims):
            first = rep.mixed[0] if rep.mixed else None
            example = (f"{first.paper} {first.table} {first.row}/{first.column}: {', '.join(first.mixed)}" if first
                       else f"claim {rep.mixed_claims[0].id}: {', '.join(rep.mixed_claims[0].mixed)}")
            say.print(f"{len(rep.mixed)} cells and {len(rep.mixed_claims)} claims pool runs whose provenance differs "
                      f"(--refuse-mixed), e.g. {example}; re-run those runs with one environment, or drop "
                      f"--refuse-mixed", highlight=False, soft_wrap=True)
        if rep.ambiguous:
            first = rep.ambiguous[0]
            say.print(f"{len(rep.ambiguous)} cells are matched by runs of several configurations and not scored, e.g. "
                      f"{first.paper} {first.table} {first.row}/{first.column}: {first.ambiguous}; report each "
                      f"configuration from its own runs directory (e.g. one per tier)")
        if rep.ambiguous_claims:
            first = rep.ambiguous_claims[0]
            say.print(f"{len(rep.ambiguous_claims)} claims cannot compare their runs as they are, e.g. claim {first.id} "
                      f"({first.figure}): {first.ambiguous}; report each configuration or tier from its own runs "
                      f"directory", highlight=False, soft_wrap=True)
        filtered = [c for c in rep.cells if c.status == "missing" and c.excluded]
        filtered_claims = [c for c in rep.claims if c.status == "missing" and c.excluded]
        if filtered or filtered_claims:
            example = (f"{filtered[0].paper} {filtered[0].table} {filtered[0].row}/{filtered[0].column}: "
                       f"{filtered[0].excluded}" if filtered else
                       f"claim {filtered_claims[0].id} ({filtered_claims[0].figure}), {filtered_claims[0].excluded}")
            say.print(f"{len(filtered)} missing cells and {len(filtered_claims)} missing claims have runs that their "
                      f"filter leaves out, e.g. {example}; run with the paper's setting (the suite's default) for "
                      f"these", highlight=False, soft_wrap=True)
        absent = [c for c in rep.cells if c.status == "missing" and c.absent]
        if absent:
            say.print(f"{len(absent)} missing cells have runs that write no such key, e.g. {absent[0].paper} "
                      f"{absent[0].table} {absent[0].row}/{absent[0].column}: {absent[0].absent}",
                      highlight=False, soft_wrap=True)
        if rep.off_budget:
            first = rep.off_budget[0]
            name = (f"{first.paper} {first.table} {first.row}/{first.column}" if isinstance(first, Cell)
                    else f"claim {first.id} ({first.figure})")
            n_cells = sum(isinstance(c, Cell) for c in rep.off_budget)
            n_claims = len(rep.off_budget) - n_cells
            say.print(f"{n_cells} cell{'' if n_cells == 1 else 's'} and {n_claims} strict claim"
                      f"{'' if n_claims == 1 else 's'} have runs only at another budget than the "
                      f"paper's, e.g. {name}: {first.off_budget}; they are shown and not scored (missing for "
                      f"--compare): train the suite's full tier for them ({compare / 'budgets.yaml'} lists "
                      f"each table's budget)", highlight=False, soft_wrap=True)
        if (rep.failures or rep.ambiguous or rep.ambiguous_claims
                or ((rep.missing or rep.off_budget) and not allow_missing)
                or (refuse_mixed and (rep.mixed or rep.mixed_claims))):
            raise typer.Exit(1)


@app.command("export")
def export(out: Path = typer.Argument(..., parser=_path("OUT"), metavar="OUT",
                                      help="The bundle to write, e.g. results-gpubox.tar.gz."),
           suite: Optional[Path] = typer.Option(None, "--suite", parser=_path("--suite"), metavar="PATH",
                                                help="Only the finished runs of this suite."),
           tier: Optional[str] = typer.Option(None, help="With --suite: which tier's runs (default: full)."),
           checkpoints: bool = typer.Option(False, "--checkpoints", help="Include the checkpoints (large)."),
           force: bool = typer.Option(False, "--force", help="Replace OUT if it exists (else refused)."),
           runs_dir: Optional[Path] = RUNS_DIR) -> None:
    """Pack finished runs (config, metrics, provenance, log, small artifacts) into a bundle with a digest manifest.
    A run whose config.yaml, metrics.json or provenance.json cannot be read is left out, and listed.

    Example: mmbench export gpubox.tar.gz --suite suites/mopoe_iclr21.yaml --tier quick
    """
    from .bundle import export_runs
    from .results import Run, default_runs_dir

    _writable(out, "OUT")
    runs_dir = runs_dir or default_runs_dir()
    ids = None
    if tier is not None and suite is None:
        raise MMBenchError(f"--tier {tier} selects a suite's runs; add --suite SUITE.yaml (without it every finished "
                           f"run is exported)")
    if suite is not None:
        from .suite import load_suite

        ids = [Run(c, runs_dir).id for c in load_suite(suite).runs(tier or "full")]
    left_out: List = []
    selection = (f"suite {suite}'s {tier or 'full'} tier" + ("" if tier else " (the default; --tier smoke|quick "
                                                                 "chooses another)")) if suite is not None else None
    manifest = export_runs(runs_dir, out, ids, checkpoints, left_out=left_out, force=force, selection=selection)
    for name, why in left_out:
        err_console.print(f"[yellow]left out[/yellow] {name}: {escape(why)}", highlight=False, soft_wrap=True)
    nfiles = sum(len(r["files"]) for r in manifest["runs"].values())
    console.print(f"wrote {out}: {len(manifest['runs'])} finished runs, {nfiles} files"
                  + (f"; {len(left_out)} left out (listed above)" if left_out else ""), markup=False)


@app.command("import")
def import_(bundle: Path = typer.Argument(..., parser=_path("BUNDLE"), metavar="BUNDLE",
                                          help="A bundle made by `mmbench export`."),
            runs_dir: Optional[Path] = RUNS_DIR) -> None:
    """Merge a bundle's runs into the runs directory (digests verified; never overwrites; conflicts refused).

    Example: mmbench import gpubox.tar.gz && mmbench report --compare reference_results/
    """
    from .bundle import import_bundle
    from .results import default_runs_dir

    runs_dir = runs_dir or default_runs_dir()
    res = import_bundle(bundle, runs_dir)
    console.print(f"{bundle}: {len(res['added'])} runs added, {len(res['present'])} already here with the same "
                  f"results; runs in {runs_dir}", markup=False)


classifiers_app = typer.Typer(no_args_is_help=True, help="Coherence classifiers.\n\n"
                              "Example: mmbench classifiers train polymnist --variant extended")
app.add_typer(classifiers_app, name="classifiers")


@classifiers_app.command("train")
def classifiers_train(dataset: str = typer.Argument(..., help="A prepared dataset."),
                      variant: Optional[str] = typer.Option(None, "--variant", "-v"),
                      epochs: int = typer.Option(10, help="Training epochs per modality."),
                      modalities: Optional[str] = typer.Option(None, help="Comma-separated modalities (default: all)."),
                      data_root: Optional[Path] = DATA_ROOT) -> None:
    """Train (or load from the cache) one coherence classifier per modality and print their test accuracy.

    Example: mmbench classifiers train polymnist --epochs 30   (--modalities m0,m1 for some of them)
    """
    from .config import EvalConfig
    from .data.base import load_split
    from .metrics.classifiers import cache_dir, get_classifiers
    from .registry import DATASETS

    spec = DATASETS.get(dataset)()
    variant = spec.check_variant(variant)
    if epochs < 1:
        raise MMBenchError(f"--epochs {epochs}: must be >= 1 (training epochs per classifier)")
    cfg = EvalConfig(classifier_epochs=epochs)
    names = None
    if modalities is not None:
        names = [n.strip() for n in modalities.split(",")]
        known = [m.name for m in spec.modalities(variant)]
        if not names or any(n not in known for n in names):
            raise MMBenchError(f"--modalities {modalities!r}: choose among {', '.join(known)}")
    train_split, test_split = (load_split(spec, variant, s, data_root).select(names) for s in ("train", "test"))
    with progress_bar() as progress:
        _, acc = get_classifiers(spec, variant, train_split, test_split, cfg, data_root, progress, check=False)
    t = Table(title=f"coherence classifiers: {dataset} ({variant}), {epochs} epochs")
    t.add_column("modality")
    t.add_column("test accuracy")
    for m, a in acc.items():
        t.add_row(m, f"{a:.4f}")
    console.print(t)
    console.print(f"cached in {cache_dir(spec, variant, epochs, data_root)}", markup=False)


@classifiers_app.command("import")
def classifiers_import(dataset: str = typer.Argument(..., help="A prepared dataset: polymnist, mnist-svhn-text or celeba."),
                       source: Path = typer.Option(..., "--from", parser=_path("--from"), metavar="PATH",
                                                   help="Folder with the MoPoE authors' classifier files."),
                       variant: Optional[str] = typer.Option(None, "--variant", "-v"),
                       data_root: Optional[Path] = DATA_ROOT) -> None:
    """Import the MoPoE authors' trained coherence classifiers, checked parameter by parameter; measure them.

    Example: mmbench classifiers import polymnist --from data/trained_classifiers/trained_clfs_polyMNIST
    (then `eval.classifiers: authors` makes coherence use them).
    """
    from .data.base import load_split
    from .metrics.authors_classifiers import authors_set, cache_dir as authors_cache_dir, import_classifiers
    from .registry import DATASETS

    spec = DATASETS.get(dataset)()
    authors_set(spec)  # refuses a dataset the authors distribute no classifiers for, before reading data
    _folder_given(source, "--from", "holding the authors' classifier files")
    variant = spec.check_variant(variant)
    test_split = load_split(spec, variant, "test", data_root)
    acc = import_classifiers(spec, variant, test_split, source, data_root)
    t = Table(title=f"the authors' coherence classifiers: {dataset} ({variant})")
    t.add_column("modality")
    t.add_column("test mean AP" if spec.multilabel else "test accuracy")
    for m, a in acc.items():
        t.add_row(m, f"{a:.4f}")
    console.print(t)
    console.print(f"cached in {authors_cache_dir(spec, variant, data_root)}", markup=False)


bench_app = typer.Typer(no_args_is_help=True, help="Measure mmbench itself on this machine.\n\n"
                        "Example: mmbench bench steps --methods mopoe,mrvae --pack 1,5,15 --device cuda")
app.add_typer(bench_app, name="bench")


@bench_app.command("load")
def bench_load(dataset: str = typer.Argument(..., help="A prepared dataset."),
               variant: Optional[str] = typer.Option(None, "--variant", "-v"),
               split: str = typer.Option("train", help="train or test."),
               repeats: int = typer.Option(3, help="Timed loads (the best is reported)."),
               data_root: Optional[Path] = DATA_ROOT) -> None:
    """Time loading one split of a prepared dataset into memory (manifest check included).

    Example: mmbench bench load polymnist --split train
    """
    import time

    from .data.base import Indexed, load_split
    from .registry import DATASETS

    if repeats < 1:
        raise MMBenchError(f"--repeats {repeats}: must be at least 1")
    spec = DATASETS.get(dataset)()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        data = load_split(spec, variant, split, data_root)
        times.append(time.perf_counter() - t0)
    size = sum(v.base.numel() + v.index.numel() * 8 if isinstance(v, Indexed) else v.numel() for v in data.x.values())
    console.print(f"{dataset} ({spec.check_variant(variant)}) {split}: {len(data)} tuples, {size / 2**20:.0f} MiB "
                  f"in memory; load {min(times):.2f} s (best of {len(times)}; all: "
                  + ", ".join(f"{t:.2f}" for t in times) + ")")


@bench_app.command("steps")
def bench_steps(ctx: typer.Context,
                methods: Optional[str] = typer.Option(None, help="Comma-separated methods (default: all registered)."),
                scaling: str = typer.Option("mopoe,smvae,mmvamp", help="Methods timed for every M in --modalities."),
                modalities: str = typer.Option("2,3,4,5", help="Numbers of modalities for the scaling table."),
                batch_size: int = typer.Option(256, "--batch-size"),
                latent_dim: int = typer.Option(512, "--latent-dim"),
                steps: int = typer.Option(5, help="Timed steps per measurement (median reported)."),
                device: str = typer.Option("cpu", help="cpu or cuda (the first visible GPU)."),
                pack: Optional[str] = typer.Option(None, "--pack", help="Comma-separated pack sizes, e.g. 1,5,15: "
                                                   "run-steps per second of each method unpacked and packed "
                                                   "(mmbench/pack.py) instead of the step-time tables."),
                precision: str = typer.Option("fp32", help="fp32 or bf16 (autocast), as train.precision."),
                compile: bool = typer.Option(False, "--compile", help="On cuda: capture the loss (packed with --pack) "
                                             "with torch.compile mode reduce-overhead (CUDA graphs)."),
                cudnn_benchmark: bool = typer.Option(False, "--cudnn-benchmark", help="On cuda: cuDNN benchmark mode "
                                                     "(convolution algorithms chosen by timing during the warm-up), "
                                                     "as `mmbench run --cudnn-benchmark`."),
                out: Optional[Path] = typer.Option(None, "--out", parser=_path("--out"), metavar="PATH",
                                                   help="Also write the tables as Markdown here."),
                profile: Optional[Path] = typer.Option(None, "--profile", parser=_path("--profile"), metavar="PATH",
                                                       help="A folder: also profile each timed step "
                                                       "(torch.profiler) into a file there, and add the device's busy "
                                                       "time per step (kernel_ms, kernel_share; GPU) to the table."),
                suite: Optional[Path] = typer.Option(None, "--suite", parser=_path("--suite"), metavar="PATH",
                                                     help="Time the steps of this suite's runs at "
                                                     "their own shapes (dataset, modalities, architecture, method and "
                                                     "options, batch, latent, precision), one row per shape, unpacked "
                                                     "and at each --pack size up to the runs' own packs: the table "
                                                     "`mmbench run SUITE --dry-run --step-times FILE` projects every "
                                                     "run from. --methods filters its methods."),
                tier: str = typer.Option("full", help="With --suite: the tier whose runs are timed."),
                time_limit: Optional[float] = typer.Option(None, "--time-limit", help="With --suite: seconds after "
                                                           "which no new shape is started (the table lists the rest "
                                                           "as not measured).")) -> None:
    """Time one training step (loss, backward, Adam) of every method on PolyMNIST-shaped batches, or (--suite) at
    the shapes of a suite's runs.

    Example: mmbench bench steps --steps 5 --out docs/step_times.md
    Example: mmbench bench steps --methods mopoe,mvae,mmvae --pack 1,5,15 --device cuda
    Example: mmbench bench steps --methods mopoe --pack 15 --device cuda --profile profiles/
    Example: mmbench bench steps --suite suites/mmvamp.yaml --pack 5 --device cuda --out steps-mmvamp.md
    """
    import platform

    import pandas as pd
    import torch
    from tabulate import tabulate

    from .bench import pack_table, step_table
    from .registry import METHODS

    def given(name: str) -> bool:  # on the command line, not a default
        return getattr(ctx.get_parameter_source(name), "name", None) == "COMMANDLINE"

    if suite is None:
        for name, option in (("tier", "--tier"), ("time_limit", "--time-limit")):
            if given(name):
                raise MMBenchError(f"{option} applies to --suite (the runs of a suite); add --suite SUITE or drop it")
    else:
        for name, option in (("scaling", "--scaling"), ("modalities", "--modalities"), ("batch_size", "--batch-size"),
                             ("latent_dim", "--latent-dim"), ("precision", "--precision"), ("profile", "--profile")):
            if given(name):
                raise MMBenchError(f"{option}: with --suite each run's own settings are timed; drop {option} (or "
                                   f"time a suite whose runs have that setting: edit the suite file)")
        if time_limit is not None and time_limit <= 0:
            raise MMBenchError(f"--time-limit {time_limit:g}: must be a positive number of seconds")
    if out is not None:
        _writable(out, "--out")  # before the measurement, not after it
    if profile is not None:
        _writable(profile, "--profile", folder=True, what="the profiles")
    names = methods.split(",") if methods else METHODS.names()
    scaling_names = [m for m in scaling.split(",") if m]
    for n in names + scaling_names:
        METHODS.get(n)  # unknown names fail before any timing
    try:
        ms = [int(v) for v in modalities.split(",")]
    except ValueError:
        raise MMBenchError(f"--modalities {modalities!r}: expected comma-separated numbers of modalities, "
                           f"e.g. 2,3,4,5") from None
    if device not in ("cpu", "cuda"):
        raise MMBenchError(f"--device {device!r} is not allowed; choose cpu or cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise MMBenchError("--device cuda: no GPU is visible to torch; use --device cpu")
    if precision not in ("fp32", "bf16"):
        raise MMBenchError(f"--precision {precision!r} is not allowed; choose fp32 or bf16")
    if compile and device != "cuda":
        raise MMBenchError("--compile captures CUDA graphs; use it with --device cuda")
    if cudnn_benchmark:
        if device != "cuda":
            raise MMBenchError("--cudnn-benchmark tunes cuDNN's convolutions; use it with --device cuda")
        torch.backends.cudnn.benchmark = True
    try:
        packs = [int(v) for v in pack.split(",")] if pack else []
    except ValueError:
        raise MMBenchError(f"--pack {pack!r}: expected comma-separated pack sizes, e.g. 1,5,15") from None
    if any(n < 1 for n in packs):
        raise MMBenchError(f"--pack {pack!r}: pack sizes must be >= 1")
    where = (torch.cuda.get_device_name(0) if device == "cuda"
             else f"{torch.get_num_threads()} CPU threads, {platform.processor() or platform.machine()}")
    if cudnn_benchmark:
        where += " (cuDNN benchmark mode)"
    if packs:  # how a pack computes its loss, set by the environment (mmbench/pack.py, mmbench/packconv.py)
        from .pack import vectorised_on, vmaps_at
        from .packconv import conv_mode
        vmapped = vectorised_on(device) and vmaps_at(precision)  # as StackedModel.vectorised_for decides it
        where += ("; packs vmapped" + (", convolutions as batched matmuls (MMBENCH_PACK_CONV=bmm)"
                                       if conv_mode() == "bmm" else "") if vmapped else "; packs looped over their runs")
    from .train import adam_options, matmul_tf32, slow_bf16_note
    if adam_options()["fused"]:
        where += "; Adam fused (MMBENCH_ADAM=fused)"
    tf32 = matmul_tf32(device)  # MMBENCH_MATMUL_TF32=1: switched on for every step timed here, as the trainers do
    if tf32 and device == "cuda":
        where += "; TF32 matmuls (MMBENCH_MATMUL_TF32=1)"
    elif tf32:
        err_console.print(tf32)
    note = slow_bf16_note(precision, device, "timing")
    if profile is not None:  # every option checked: the folder is made only for a measurement
        profile.mkdir(parents=True, exist_ok=True)
    if note:
        err_console.print(note)
    if suite is not None:
        md = _suite_step_table(suite, tier, methods, packs, steps, device, compile, time_limit, where)
    elif packs:
        with err_console.status("timing") as status:
            rows = pack_table(names, [n for n in packs if n > 1] or packs, batch_size, latent_dim, steps,
                              progress=lambda s: status.update(f"timing {s}"), device=device,
                              precision=precision, compile=compile, n_modalities=max(ms), profile=profile)
        t = pd.DataFrame(rows)
        head = (f"Run-steps per second, unpacked and packed (mmbench/pack.py), PolyMNIST-shaped batches (M = {max(ms)} "
                f"× 3×28×28, PolyMNIST CNN), batch {batch_size}, latent {latent_dim}, {precision}, median of {steps} "
                f"steps; {where}, torch {torch.__version__}.")
        ok = t[t["run_steps_per_s"].notna()]
        best = ok.loc[ok.groupby("method")["run_steps_per_s"].idxmax(), ["method", "pack", "run_steps_per_s"]]
        md = [head, "", tabulate(t, headers="keys", tablefmt="github", showindex=False, floatfmt=".3f"), "",
              "ops_per_run_step: the tensor operations an uncaptured fp32 step issues on the device, per run "
              "(views and bare allocations excluded; counted on PyTorch's meta device for the vmapped pack a GPU runs, "
              "mmbench/bench.py device_ops; a pack's operations batch its runs, so where launches bound a GPU step, "
              "packing divides its cost per run)." + _peak_note(device), "", *_profile_note(profile),
              "Pack size with the most run-steps per second:", "",
              tabulate(best, headers="keys", tablefmt="github", showindex=False, floatfmt=".3f"), ""]
    else:
        with err_console.status("timing") as status:
            res = step_table(names, scaling_names, ms, batch_size, latent_dim, steps,
                             progress=lambda s: status.update(f"timing {s}"), device=device, precision=precision,
                             compile=compile, profile=profile)
        head = (f"Training-step time on PolyMNIST-shaped batches (3×28×28 per modality, PolyMNIST CNN), batch "
                f"{batch_size}, latent {latent_dim}, {precision}, median of {steps} steps; {where}, torch "
                f"{torch.__version__}" + ("; each method's loss captured with torch.compile(mode=\"reduce-overhead\") "
                                          "(CUDA graphs), the floor not" if compile else "") + ".")
        t1 = pd.DataFrame(res["methods"])
        t2 = pd.DataFrame(res["scaling"])
        md = [head, "", tabulate(t1, headers="keys", tablefmt="github", showindex=False, floatfmt=".3f"), "",
              "x_floor: the method's step over the bare networks' step (each encoder, one z, each decoder, a "
              "squared-error + KL loss, backward, Adam; mmbench/bench.py floor_step_time), same shapes and precision.",
              "ops: the tensor operations one uncaptured fp32 step issues on the device, views and bare allocations excluded, counted on "
              "PyTorch's meta device (mmbench/bench.py device_ops); on a GPU each launches at least one kernel, so "
              "where launches bound the step (small networks) its time grows with them." + _peak_note(device), "",
              *_profile_note(profile)]
        if not t2.empty:
            wide = t2.pivot(index="M", columns="method", values="median_s").reset_index()
            wide["M"] = wide["M"].astype(str)
            md += ["Median seconds per step by number of modalities M:", "",
                   tabulate(wide, headers="keys", tablefmt="github", showindex=False, floatfmt=".3f"), ""]
    text = "\n".join(md)
    console.print(text, markup=False, highlight=False, soft_wrap=True)
    if out:
        from .results import atomic_write

        atomic_write(out, text)
        console.print(f"wrote {out}", markup=False)


def _suite_step_table(suite: Path, tier: str, methods: Optional[str], packs: List[int], steps: int, device: str,
                      compile: bool, time_limit: Optional[float], where: str) -> List[str]:
    """`bench steps --suite`: the Markdown lines of the table of run-steps per second at the suite's step shapes."""
    import torch
    from tabulate import tabulate

    from .bench import suite_step_rows
    from .projection import KEY_COLUMNS
    from .suite import load_suite

    s = load_suite(suite)
    configs = s.runs(tier)
    if methods:
        keep = methods.split(",")
        configs = [c for c in configs if c.method.name in keep]
        if not configs:
            raise MMBenchError(f"--methods {methods}: none of {suite}'s {tier} runs uses them (its methods: "
                               f"{', '.join(dict.fromkeys(c.method.name for c in s.runs(tier)))})")
    with err_console.status("timing") as status:
        rows = suite_step_rows(configs, [n for n in packs if n > 1], steps, device, compile,
                               progress=lambda t: status.update(f"timing {t}"), time_limit=time_limit)
    cols = [*KEY_COLUMNS, "runs", "pack", "mode", "median_s", "run_steps_per_s"]
    cols += ["peak_gib"] if device == "cuda" else []  # the device memory a step took (bench._timed): what fits
    digits = {"median_s": 4, "run_steps_per_s": 2, "peak_gib": 2}
    cells = [[r.get(c, "") if c not in digits else
              ("" if r.get(c, math.nan) != r.get(c, math.nan) else f"{r[c]:.{digits[c]}f}") for c in cols]
             for r in rows]
    n_shapes = len({tuple(r[c] for c in KEY_COLUMNS) for r in rows})
    head = (f"Run-steps per second at the step shapes of {suite}'s {tier} runs ({len(configs)} runs, {n_shapes} "
            f"shapes: one per dataset, variant, modalities, architecture, method and options, batch, latent and "
            f"precision; mmbench/bench.py suite_step_rows), on random batches of each dataset's shapes, unpacked and "
            f"packed up to the runs' own packs, median of {steps} steps; {where}, torch {torch.__version__}.")
    return [head, "", tabulate(cells, headers=cols, tablefmt="github", disable_numparse=True), "",
            "runs: how many of the suite's runs train at that shape. A method with a step schedule (smvae two_stage) "
            "is timed in its first stage. `mmbench run SUITE --dry-run --step-times FILE` projects each run from the "
            "row of its shape (projection.step_key); `mmbench run --step-times FILE` caps each shape's packs at its "
            "fastest size." + _peak_note(device, suite=True), ""]


def _peak_note(device: str, suite: bool = False) -> str:
    """The sentence under a GPU step table saying what its peak_gib column holds (bench._timed); none on a CPU."""
    if device != "cuda":
        return ""
    return (" peak_gib: the most device memory the step held (weights, Adam, batch, activations, the libraries' "
            "workspaces; PyTorch's allocator, torch.cuda.max_memory_allocated: not the CUDA context"
            + (", nor the training split a run keeps on the device); a pack that runs out of it in training is split "
               "in two (mmbench/pack.py)." if suite else ")."))


def prepare_options(spec) -> str:
    """A dataset's variants and the `mmbench prepare` options it accepts, each as it is given and with its help."""
    from .data.base import FLAGS, LOCATION_FLAGS

    given = {k: FLAGS.get(k) or (f"--{k} DIR" if k in LOCATION_FLAGS else f"-o {k}=...") for k in spec.option_names}
    return "; ".join([f"variants: {', '.join(spec.variants)}"]
                     + [f"{given[k]}: {h}" for k, h in spec.option_names.items()])


@app.command("list")
def list_(what: str = typer.Argument(..., help="methods, datasets, suites, metrics or architectures.")) -> None:
    """List registered names with one-line descriptions.

    Example: mmbench list methods
    """
    from .registry import ARCHITECTURES, DATASETS, METHODS, METRICS, describe
    from .suite import load_suite, suites_dir

    tables = {"methods": METHODS, "datasets": DATASETS, "metrics": METRICS, "architectures": ARCHITECTURES}
    t = Table(title=what, show_header=False)
    t.add_column("name", style="bold")
    t.add_column("description")
    if what == "suites":
        for p in sorted(suites_dir().glob("*.yaml")):
            s = load_suite(p)
            t.add_row(str(p), s.description.strip().splitlines()[0] if s.description.strip() else s.name)
    elif what in tables:
        for name, obj in tables[what].items():
            # method.options: defaults, what is allowed; a dataset's variants and `prepare` options
            summary = (obj.options_summary() if what == "methods" else prepare_options(obj) if what == "datasets"
                       else "")
            t.add_row(name, describe(obj) + (f"\n[dim]{escape(summary)}[/dim]" if summary else ""))
    else:
        raise MMBenchError(f"cannot list {what!r}; choose one of: {', '.join([*tables, 'suites'])}")
    console.print(t)


INTERRUPTED = "interrupted; finished work is kept and unfinished runs resume from their last checkpoint"


def tolerant_output() -> None:
    """A terminal or pipe whose encoding is not UTF-8 (a Latin-1 or ASCII locale, PYTHONIOENCODING=ascii) shows the
    characters it cannot print (—, β, ✓) as "?" instead of stopping the command with a UnicodeEncodeError; files
    mmbench writes are UTF-8 whatever the locale."""
    for stream in (sys.stdout, sys.stderr):
        encoding = (getattr(stream, "encoding", None) or "").lower().replace("-", "").replace("_", "")
        if encoding not in ("utf8", "utf8sig") and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="replace")


def _terminated(signum, frame) -> None:
    """SIGTERM (`kill PID`, a batch system's stop) handled as Ctrl-C: the workers of a `mmbench run` are interrupted
    too (they would go on training, orphaned), and the command ends with the interrupted line and status 130."""
    runner = sys.modules.get("mmbench.runner")  # imported where a run started workers
    if runner is not None:
        runner.stop_workers()
    raise KeyboardInterrupt


def main() -> None:
    from .files import check_environment
    from .hostmem import tune_host_allocator
    from .kernels import check_all

    tolerant_output()
    previous = signal.signal(signal.SIGTERM, _terminated) if threading.current_thread() is threading.main_thread() \
        else None
    try:
        tune_host_allocator()  # before any command's tensors; workers inherit it through the environment
        if "--help" not in sys.argv[1:]:  # the environment's kernel choices, before any work a misspelt one would stop
            check_all()
            check_environment()  # the runs and data folders and MMBENCH_FSYNC, before the work, not at its first write
        app()
    except MMBenchError as e:
        err_console.print(f"[red]error:[/red] {escape(str(e))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except OSError as e:
        line = os_error_line(e)
        if line is None:  # not about a path the user gave: a bug, shown in full
            raise
        err_console.print(f"[red]error:[/red] {escape(line)}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print(INTERRUPTED)
        sys.exit(130)
    except SystemExit as e:
        if e.code == 130:  # typer turns Ctrl-C inside a command into a silent exit 130
            err_console.print(INTERRUPTED)
        raise
    finally:
        if previous is not None:  # a process calling main() (the tests) gets its own handler back
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    main()
