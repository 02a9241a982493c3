"""`mmbench run`: a pool of worker processes, one per listed device (CPU when none is listed).

Each run executes in its own process (`python -m mmbench.worker RUN_DIR`) that sees only its
device through CUDA_VISIBLE_DEVICES, logs to the run's log.txt and reports progress through the
run's progress.json, which the scheduler shows as one progress bar per worker. A failed run is
reported with its log path and does not stop the others; finished runs are skipped and
unfinished ones resume from their last checkpoint.
"""
from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .config import RunConfig
from .results import Run


@dataclass
class Outcome:
    run: Run
    ok: bool
    message: str = ""


def worker_slots(gpus: Optional[str], jobs: int) -> List[Optional[str]]:
    """CUDA_VISIBLE_DEVICES value of each worker: one per listed GPU, else `jobs` CPU workers."""
    if gpus:
        return [g.strip() for g in gpus.split(",") if g.strip()]
    return [""] * max(jobs, 1)


def _read_progress(run: Run) -> Optional[dict]:
    try:
        return json.loads((run.dir / "progress.json").read_text())
    except (OSError, ValueError):
        return None


def run_all(configs: Sequence[RunConfig], runs_dir: Path, data_root: Optional[Path], gpus: Optional[str] = None,
            jobs: int = 1, console: Optional[Console] = None) -> List[Outcome]:
    console = console or Console()
    runs = [Run(c, runs_dir) for c in configs]
    todo: "queue.Queue[Run]" = queue.Queue()
    outcomes: List[Outcome] = []
    for r in runs:
        if r.status() == "done":
            outcomes.append(Outcome(r, True, "already done"))
        else:
            r.init()
            todo.put(r)
    slots = worker_slots(gpus, jobs)
    active: Dict[int, Optional[Run]] = {i: None for i in range(len(slots))}
    lock = threading.Lock()

    def work(slot: int, device: str) -> None:
        while True:
            try:
                r = todo.get_nowait()
            except queue.Empty:
                return
            with lock:
                active[slot] = r
            env = dict(os.environ, CUDA_VISIBLE_DEVICES=device, PYTHONUNBUFFERED="1")
            if data_root is not None:
                env["MMBENCH_DATA"] = str(Path(data_root).resolve())
            with open(r.log_path, "a") as log:
                proc = subprocess.run([sys.executable, "-m", "mmbench.worker", str(r.dir)], env=env,
                                      stdout=log, stderr=subprocess.STDOUT)
            with lock:
                active[slot] = None
                if proc.returncode == 0:
                    outcomes.append(Outcome(r, True, "done"))
                else:
                    lines = r.log_path.read_text().strip().splitlines() if r.log_path.exists() else []
                    outcomes.append(Outcome(r, False, lines[-1] if lines else f"exit code {proc.returncode}"))

    n_todo = todo.qsize()
    threads = [threading.Thread(target=work, args=(i, d), daemon=True) for i, d in enumerate(slots)]
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed:.0f}/{task.total:.0f}"),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as prog:
        overall = prog.add_task(f"runs ({len(runs) - n_todo} already done)", total=max(n_todo, 1))
        bars = {i: prog.add_task(f"worker {i} [{d or 'cpu'}] idle", total=1, visible=n_todo > 0)
                for i, d in enumerate(slots)}
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            time.sleep(0.5)
            with lock:
                finished = sum(1 for o in outcomes if o.message != "already done")
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
            console.print(f"[red]FAILED[/red] {o.run.id}: {o.message} (log: {o.run.log_path})")
    return outcomes
