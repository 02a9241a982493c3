"""Entry point of one run's worker process: `python -m mmbench.worker RUN_DIR` (used by `mmbench run`)."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import yaml

from .config import build_run_config
from .errors import MMBenchError
from .evaluate import execute_when_free
from .results import Run


def main(run_dir: str) -> int:
    d = Path(run_dir)
    cfg = build_run_config(yaml.safe_load((d / "config.yaml").read_text()), str(d / "config.yaml"))
    run = Run(cfg, d.parent)
    last = [0.0]

    def progress(phase: str, done: int, total: int) -> None:
        now = time.time()
        if now - last[0] > 0.5 or done == total:
            last[0] = now
            run.progress(phase, done, total)

    try:
        execute_when_free(run, None, progress)  # another `mmbench run` on this run: wait, never twice
    except MMBenchError as e:
        print(f"error: {e}", flush=True)
        return 1
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group: a line in log.txt, not a traceback
        print("interrupted; the run resumes from its last checkpoint", flush=True)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
