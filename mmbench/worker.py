"""Entry point of a worker process (used by `mmbench run`): `python -m mmbench.worker RUN_DIR [RUN_DIR ...]`.

One directory: the run's whole life, as `mmbench train` + `mmbench evaluate`. Several: a pack of runs of
one experiment trained together (mmbench/pack.py), then evaluated one by one; the exit code is 0 only
when every run of the pack finished.
"""
from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

# A Ctrl-C (or runner.stop_workers) while the imports below load torch: noted, and acted on when `main` starts (the
# default handler would end the worker with a traceback in the run's log). Only where this is the worker process.
_EARLY_INTERRUPT: list = []
if __name__ == "__main__":
    signal.signal(signal.SIGINT, lambda signum, frame: _EARLY_INTERRUPT.append(signum))
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # runner.spawn_worker blocked it until now

from . import yamlio  # noqa: E402
from .config import build_run_config  # noqa: E402
from .errors import MMBenchError, os_error_line  # noqa: E402
from .evaluate import execute_when_free  # noqa: E402
from .results import Run  # noqa: E402
from .hostmem import tune_host_allocator  # noqa: E402


def load_run(run_dir: str) -> Run:
    """The run whose directory (with its config.yaml) this is; used by workers and Slurm tasks."""
    d = Path(run_dir)
    cfg = build_run_config(yamlio.load((d / "config.yaml").read_text(encoding="utf-8"), str(d / "config.yaml")), str(d / "config.yaml"))
    return Run(cfg, d.parent)


def progress_writer(runs: Sequence[Run]) -> Callable[[str, int, int], None]:
    """A progress callback writing progress.json of every run this process holds, at most twice a second
    (and at the end of each phase); a run of the pack that another process is writing is left alone."""
    last = [0.0]

    def progress(phase: str, done: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] > 0.5 or done == total:
            last[0] = now
            for run in runs:
                if run.held_here():
                    run.progress(phase, done, total)

    return progress


def main(*run_dirs: str) -> int:
    if __name__ == "__main__":  # Ctrl-C raises KeyboardInterrupt again from here on
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if _EARLY_INTERRUPT:
        print("interrupted before the run started; it resumes from its last checkpoint", flush=True)
        return 130
    tune_host_allocator()
    gpu = os.environ.get("MMBENCH_WORKER_GPU")  # set by `mmbench run --gpus` (runner.worker_env)
    if gpu:
        import torch

        if not torch.cuda.is_available():  # else every run of this worker would train on the CPU unannounced
            print(f"error: this worker was given GPU {gpu} (--gpus) but torch sees no GPU; check the id with "
                  f"nvidia-smi, or drop --gpus to train on the CPU", flush=True)
            return 1
    runs = [load_run(d) for d in run_dirs]
    progress = progress_writer(runs)

    if len(runs) > 1:
        from .pack import execute_pack

        errors: dict = {}
        code = _said_in_one_line(lambda: errors.update(execute_pack(runs, None, progress)),
                                 "the runs of this pack resume from their last checkpoints")
        if code:
            return code
        for rid, err in errors.items():
            if err:
                print(f"error: {rid}: {err}", flush=True)
        return 1 if any(errors.values()) else 0
    # another `mmbench run` on this run: wait, never twice
    return _said_in_one_line(lambda: execute_when_free(runs[0], None, progress), "the run resumes from its last checkpoint")


def _said_in_one_line(work: Callable[[], object], resumes: str) -> int:
    """Do `work`; its failure is one line in log.txt (whose last line the runner shows), not a traceback: the
    user's error (1), an OSError about a path, e.g. a full disk, said with its fix as the CLI says it (1; one naming
    no path is a bug and propagates), Ctrl-C, which reaches the whole process group (130). 0 when it ends."""
    try:
        work()
    except MMBenchError as e:
        print(f"error: {e}", flush=True)
        return 1
    except OSError as e:
        line = os_error_line(e)
        if line is None:
            raise
        print(f"error: {line}", flush=True)
        return 1
    except KeyboardInterrupt:
        print(f"interrupted; {resumes}", flush=True)
        return 130
    return 0

if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
