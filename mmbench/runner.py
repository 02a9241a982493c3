"""`mmbench run`: a pool of worker processes, one per listed device (CPU when none is listed).

Each run executes in its own process (`python -m mmbench.worker RUN_DIR`) that sees only its
device through CUDA_VISIBLE_DEVICES, logs to the run's log.txt and reports progress through the
run's progress.json, which the scheduler shows as one progress bar per worker. A failed run is
reported with its log path and does not stop the others; finished runs are skipped and
unfinished ones resume from their last checkpoint.

Packing (mmbench/pack.py): runs that differ only in their seed and β (the seeds of a table, the values of a β sweep)
and are at the same epoch go to one worker as a pack of up to `pack` runs (None: split evenly over the workers, at
most DEFAULT_PACK_CAP) and train together as one stacked model; `pack=1` gives every run its own worker. A pack's
progress bar shows its first run; each run keeps its own log.
"""
from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .config import RunConfig
from .errors import MMBenchError
from .results import Run, left_out_because, read_run


@dataclass
class Outcome:
    run: Run
    ok: bool
    message: str = ""


GPU_ID = re.compile(r"\d+|(GPU|MIG)-[0-9A-Za-z/-]+")  # an index, or a UUID as nvidia-smi -L prints it


def gpu_slots(gpus: str) -> List[str]:
    """The GPU ids of `--gpus` (one worker each), validated."""
    ids = [g.strip() for g in gpus.split(",")]
    if not gpus.strip() or any(not g for g in ids):
        raise MMBenchError(f"--gpus {gpus!r}: list GPU ids separated by commas, e.g. --gpus 0,1")
    bad = [g for g in ids if not GPU_ID.fullmatch(g)]
    if bad:
        raise MMBenchError(f"--gpus {gpus}: {bad[0]!r} is not a GPU id; give indices as nvidia-smi lists them "
                           f"(e.g. --gpus 0,1; --gpus 0,0 puts two workers on GPU 0) or GPU-/MIG- UUIDs")
    return ids


def check_gpus_visible(ids: Sequence[str]) -> None:
    """Refuse GPU workers this machine cannot give: a worker told to use a GPU that torch cannot see would
    otherwise train on the CPU without a word."""
    import torch

    n = torch.cuda.device_count()
    shown = os.environ.get("CUDA_VISIBLE_DEVICES")
    if n == 0:
        raise MMBenchError(f"--gpus {','.join(ids)}: torch sees no GPU here (torch {torch.__version__}, CUDA "
                           f"{torch.version.cuda or 'none'}{f', CUDA_VISIBLE_DEVICES={shown!r}' if shown is not None else ''})"
                           f"; drop --gpus to train on the CPU (--jobs N for N workers)")
    if shown is None:  # ids are this machine's indices; under CUDA_VISIBLE_DEVICES they cannot be checked here
        beyond = [g for g in ids if g.isdigit() and int(g) >= n]
        if beyond:
            raise MMBenchError(f"--gpus {','.join(ids)}: GPU {beyond[0]} does not exist; this machine has {n} "
                               f"(0-{n - 1})")


def worker_slots(gpus: Optional[str], jobs: int) -> List[str]:
    """CUDA_VISIBLE_DEVICES value of each worker: one per listed GPU, else `jobs` CPU workers ("": no GPU)."""
    if gpus:
        ids = gpu_slots(gpus)
        check_gpus_visible(ids)
        return ids
    return [""] * max(jobs, 1)


def worker_env(device: str, data_root: Optional[Path]) -> Dict[str, str]:
    """A worker's environment: it sees only its own GPU (none for ""), and knows it was given one."""
    # PYTHONIOENCODING: its output goes to the run's log.txt, which is UTF-8 whatever the locale
    env = dict(os.environ, CUDA_VISIBLE_DEVICES=device, MMBENCH_WORKER_GPU=device, PYTHONUNBUFFERED="1",
               PYTHONIOENCODING="utf-8")
    if data_root is not None:
        env["MMBENCH_DATA"] = str(Path(data_root).resolve())
    return env


_WORKERS: Set[subprocess.Popen] = set()  # the live worker processes of this process's run_all (stop_workers)
_WORKERS_LOCK = threading.Lock()
_STOPPING = threading.Event()


def killed_by(returncode: Optional[int], runs: int) -> Optional[str]:
    """What to say of a worker process that a signal ended (a negative return code), for a pack of `runs`; None for a
    worker that exited. SIGKILL, unasked, is on Linux most often the kernel's out-of-memory killer."""
    if returncode is None or returncode >= 0:
        return None
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = f"signal {-returncode}"
    if -returncode != signal.SIGKILL:
        return f"its worker process was killed by {name}; re-run the same command to resume from its last checkpoint"
    fewer = f"--pack N below its {runs} runs, or " if runs > 1 else ""
    return (f"its worker process was killed by SIGKILL, most often the out-of-memory killer (`dmesg` says): train "
            f"fewer runs at once ({fewer}fewer workers per device), then re-run to resume from its last checkpoint")


def spawn_worker(cmd: List[str], **kw: Any) -> subprocess.Popen:
    """A worker process started with SIGINT blocked (a mask its exec keeps): a Ctrl-C or stop_workers' SIGINT that
    arrives while its interpreter starts stays pending until mmbench.worker has set its handler and unblocks it; it
    ended the worker with a KeyboardInterrupt traceback in the run's log, or silently, before."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})  # this thread's mask, which the child inherits
    try:
        return subprocess.Popen(cmd, **kw)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def stop_workers(grace_s: float = 30.0) -> None:
    """Interrupt the workers this process started, as Ctrl-C would (SIGINT: each run resumes from its last
    checkpoint), where a signal reached this process alone (`kill PID`, a batch system's SIGTERM): orphaned, they
    would go on training. Waits up to `grace_s` for them to stop, then kills what is left (its files are written
    atomically: a re-run resumes it as well)."""
    with _WORKERS_LOCK:
        _STOPPING.set()  # no worker starts after this
        procs = [p for p in _WORKERS if p.poll() is None]
    for p in procs:
        try:
            p.send_signal(signal.SIGINT)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace_s
    for p in procs:
        try:
            p.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            p.kill()


_RESUME_POINTS: Dict[tuple, Tuple[int, int]] = {}


def resume_point(run: Run) -> Tuple[int, int]:
    """(epoch, step) the run resumes at: runs pack together only from the same point. A checkpoint is read once
    per version of the file (path, size, modification time): `--dry-run` asks for each run several times."""
    last = run.ckpt_dir / "last.pt"
    try:
        st = last.stat()
    except OSError:
        return (0, 0)
    version = (str(last.resolve()), st.st_ino, st.st_size, st.st_mtime_ns)
    if version not in _RESUME_POINTS:
        from .train import read_checkpoint

        try:
            state = read_checkpoint(last)["state"]
        except MMBenchError:  # unreadable: its training says so (the same error), the others go on
            return (0, 0)
        _RESUME_POINTS[version] = (int(state["epoch"]), int(state.get("step", 0)))
    return _RESUME_POINTS[version]


def unique_runs(runs: Sequence[Run]) -> List[Run]:
    """One Run per run id, in first-seen order: a suite may list the same configuration in several
    experiments (e.g. SMVAE Figs. 2 and 3 share their PolyMNIST runs); the run then serves the union of their
    tables (Run.init merges them into config.yaml) and is scheduled once, never twice at the same time."""
    first: Dict[str, Run] = {}
    for r in runs:
        if r.id in first:
            kept = first[r.id]
            kept.cfg.tables = sorted(set(kept.cfg.tables) | set(r.cfg.tables))
        else:
            first[r.id] = r
    return list(first.values())


# The largest pack `mmbench run` makes unasked (no --pack): the largest measured on a GPU (docs/gpu-runs/README.md,
# H200 2026-12-04: packs of 1, 5 and 15). A β sweep's group is larger (MM-VAMP's translated PolyMNIST: 12 β × 5
# seeds per method) and its memory grows with the pack; --pack N sets another cap, and a measured step table
# (--step-times) lowers it where a smaller pack measured faster and raises it to a larger pack it measured fastest.
DEFAULT_PACK_CAP = 15


def make_packs(runs: Sequence[Run], pack: Optional[int], workers: int = 1, caps: Optional[Dict[str, int]] = None,
               note: Optional[Callable[[Run, str], None]] = None) -> List[List[Run]]:
    """Runs grouped into packs: same pack key (all but the seed and β), same resume point (epoch, step), packable method
    and architecture, at most `pack` runs each (1: every run alone; None: a group is split evenly over the
    `workers`, so that no worker idles while another trains a big pack, in packs of at most DEFAULT_PACK_CAP), in the
    order given. `caps`: a method's
    (or, from a table at a suite's shapes, a step shape's: projection.step_key) largest useful pack (projection.best_packs of a
    measured step table), and, a projection.PackCaps, the larger sizes unasked packs grow to (`grow`); `note(run,
    text)` hears of each run it splits or packs beyond DEFAULT_PACK_CAP."""
    from .projection import rate_key, shapes_differ
    from .pack import pack_key, unpackable_reason

    if pack is not None and pack < 1:
        from .errors import MMBenchError

        raise MMBenchError(f"--pack {pack}: must be >= 1 (1 trains every run alone)")
    groups: Dict[tuple, List[Run]] = {}
    reasons: Dict[str, Optional[str]] = {}
    for r in runs:
        key = pack_key(r.cfg)
        if pack == 1:
            groups[(r.id,)] = [r]
            continue
        if key not in reasons:
            reasons[key] = unpackable_reason(r.cfg)
        groups.setdefault((r.id,) if reasons[key] else (key, resume_point(r)), []).append(r)
    out: List[List[Run]] = []
    grow = getattr(caps, "grow", {})
    key_of = rate_key({**(caps or {}), **grow})
    shapes = getattr(caps, "shapes", None)  # a method-keyed table's shapes: runs at others are not capped by it
    for g in groups.values():
        measured = key_of(g[0].cfg) if caps or grow else None  # the group's row of the step table
        if measured is not None and shapes and shapes_differ(g[0].cfg, shapes):
            measured = None
        even = -(-len(g) // max(workers, 1))  # the group split evenly over the workers
        largest = DEFAULT_PACK_CAP
        if pack is None and len(g) > 1 and grow.get(measured, 0) > largest:
            largest = grow[measured]
            if note and even > DEFAULT_PACK_CAP:
                for r in g:
                    note(r, f"packs of {r.cfg.method.name} of up to {largest} run(s), beyond the default "
                            f"{DEFAULT_PACK_CAP}: the step-time table given measured that size fastest (--step-times)")
        cap = pack or min(even, largest)
        best = caps.get(measured) if caps else None
        if best is not None and best < min(cap, len(g)):  # packing more runs of this method measured slower
            if note:
                for r in g:
                    failed = getattr(caps, "failed", {}).get(measured)
                    note(r, f"packs of {r.cfg.method.name} capped at {best} run(s) instead of {min(cap, len(g))}: "
                            + (f"the largest that ran in the step-time table given, where a pack of {failed} failed "
                               f"(--step-times)" if failed else
                               "the most run-steps/s of the step-time table given (--step-times)"))
            cap = best
        out += [g[i:i + cap] for i in range(0, len(g), cap)]
    return out


def _read_progress(run: Run) -> Optional[dict]:
    """progress.json as Run.progress writes it ({phase, done, total}); None while it is missing, half written or
    not that (a stale or damaged file: the bar waits for the worker's next write instead of stopping the run)."""
    try:
        p = json.loads((run.dir / "progress.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if (not isinstance(p, dict) or not isinstance(p.get("phase"), str)
            or any(isinstance(p.get(k), bool) or not isinstance(p.get(k), (int, float)) for k in ("done", "total"))):
        return None
    return p


def run_all(configs: Sequence[RunConfig], runs_dir: Path, data_root: Optional[Path], gpus: Optional[str] = None,
            jobs: int = 1, console: Optional[Console] = None, pack: Optional[int] = 1,
            caps: Optional[Dict[str, int]] = None) -> List[Outcome]:
    console = console or Console()
    slots = worker_slots(gpus, jobs)  # before any run directory is written
    _STOPPING.clear()  # a stop_workers of an earlier run_all in this process
    runs = unique_runs([Run(c, runs_dir) for c in configs])
    todo: "queue.Queue[List[Run]]" = queue.Queue()
    outcomes: List[Outcome] = []
    pending = []
    for r in runs:
        if r.status() == "done":
            try:  # a finished run the report cannot read is not done: say which record and the fix
                read_run(r.dir)
            except MMBenchError as e:
                outcomes.append(Outcome(r, False, f"finished, but {left_out_because(e)}"))
                continue
            outcomes.append(Outcome(r, True, "already done"))
        else:
            r.init()
            pending.append(r)
    for group in make_packs(pending, pack, len(slots), caps, note=Run.log):
        todo.put(group)
    active: Dict[int, Optional[Run]] = {i: None for i in range(len(slots))}
    lock = threading.Lock()

    def work(slot: int, device: str) -> None:
        while True:
            try:
                group = todo.get_nowait()
            except queue.Empty:
                return
            r = group[0]
            with lock:
                active[slot] = r
            env = worker_env(device, data_root)
            try:
                log = open(r.log_path, "a")
            except OSError as e:  # e.g. log.txt a folder: the run fails with a line, not a dead worker thread
                with lock:
                    active[slot] = None
                    outcomes.extend(Outcome(g, False, f"cannot write its log {r.log_path} "
                                                      f"({e.strerror or type(e).__name__}); move it away")
                                    for g in group)
                continue
            with log:
                with _WORKERS_LOCK:
                    stopping = _STOPPING.is_set()  # stop_workers: the rest stays pending for the next `mmbench run`
                    if not stopping:
                        proc = spawn_worker([sys.executable, "-m", "mmbench.worker", *(str(g.dir) for g in group)],
                                            env=env, stdout=log, stderr=subprocess.STDOUT)
                        _WORKERS.add(proc)
                if stopping:
                    with lock:
                        active[slot] = None
                    return
                try:
                    proc.wait()
                finally:
                    with _WORKERS_LOCK:
                        _WORKERS.discard(proc)
            killed = killed_by(proc.returncode, len(group)) if not _STOPPING.is_set() else None
            with lock:
                active[slot] = None
                for g in group:  # a pack's runs succeed or fail one by one
                    if (proc.returncode == 0 and len(group) == 1) or (len(group) > 1 and g.status() == "done"):
                        outcomes.append(Outcome(g, True, "done"))
                    elif killed:  # its log ends wherever the process stopped: that line would say nothing of why
                        g.log(f"error: {killed}")
                        outcomes.append(Outcome(g, False, killed))
                    else:
                        try:
                            lines = g.log_path.read_text(errors="replace").strip().splitlines()
                        except OSError:  # missing, or not a file (another run of the pack)
                            lines = []
                        outcomes.append(Outcome(g, False, lines[-1] if lines else f"exit code {proc.returncode}"))

    n_todo = len(pending)
    before = len(outcomes)  # the finished runs: done, or (not ok) with records the report cannot read
    unreadable = sum(not o.ok for o in outcomes)
    threads = [threading.Thread(target=work, args=(i, d), daemon=True) for i, d in enumerate(slots)]
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed:.0f}/{task.total:.0f}"),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as prog:
        overall = prog.add_task(f"runs ({before - unreadable} already done"
                                + (f", {unreadable} with unreadable records" if unreadable else "") + ")",
                                total=max(n_todo, 1))
        bars = {i: prog.add_task(f"worker {i} [{d or 'cpu'}] idle", total=1, visible=n_todo > 0)
                for i, d in enumerate(slots)}
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            time.sleep(0.5)
            with lock:
                finished = len(outcomes) - before
                # (a pack's runs are counted when the pack ends)
                for i, r in active.items():
                    p = _read_progress(r) if r else None
                    if r and p:
                        prog.update(bars[i], description=f"worker {i} {r.id[:40]} {p['phase']}",
                                    completed=p["done"], total=max(p["total"], 1))
                    elif not r:
                        prog.update(bars[i], description=f"worker {i} idle", completed=0, total=1)
            prog.update(overall, completed=finished)
        prog.update(overall, completed=n_todo)
    for o in outcomes:
        if not o.ok:
            # one line whatever the width (a pipe or a log file: no hard wrap at 80 columns), markup-free message
            console.print(f"[red]FAILED[/red] {o.run.id}: {escape(o.message)} (log: {escape(str(o.run.log_path))})",
                          soft_wrap=True, highlight=False)
    return outcomes
