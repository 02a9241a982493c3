"""The results store: one directory per run, named by the hash of its resolved config.

    runs/<run_id>/
        config.yaml        the resolved RunConfig (+ the tables it serves)
        provenance.json    mmbench version, git commit, torch version, device, dataset digest, wall time
        checkpoints/       last.pt (resume point), best.pt (lowest test loss)
        metrics.json       {"schema_version": 1, "metrics": {...}, ...}; its presence means "done"
        log.txt            the run's log
        progress.json      what the run is doing now (read by `mmbench run` for progress bars)

Every file is written atomically (temp file + rename); a lock file stops two processes from
writing the same run.
"""
from __future__ import annotations

import fcntl
import json
import os
import platform
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import yaml

from . import __version__
from .config import RunConfig, build_run_config
from .errors import MMBenchError

SCHEMA_VERSION = 1


class RunLockedError(MMBenchError):
    """Another process holds the run's lock (it is training or evaluating that run now)."""


def default_runs_dir() -> Path:
    return Path(os.environ.get("MMBENCH_RUNS", "runs"))


def atomic_write(path: Path, data: bytes | str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_json(path: Path, obj: Any) -> None:
    atomic_write(path, json.dumps(obj, indent=1, sort_keys=True, default=str))


def git_commit() -> Optional[str]:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if out.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


class Run:
    """Handle on one run directory."""

    def __init__(self, cfg: RunConfig, runs_dir: Optional[Path] = None):
        self.cfg = cfg
        self.id = cfg.run_id()
        self.dir = Path(runs_dir or default_runs_dir()) / self.id

    # paths
    @property
    def ckpt_dir(self) -> Path:
        return self.dir / "checkpoints"

    @property
    def metrics_path(self) -> Path:
        return self.dir / "metrics.json"

    @property
    def log_path(self) -> Path:
        return self.dir / "log.txt"

    def status(self) -> str:
        """done (metrics written), partial (some training checkpointed) or pending."""
        if self.metrics_path.exists():
            return "done"
        if (self.ckpt_dir / "last.pt").exists():
            return "partial"
        return "pending"

    def init(self) -> None:
        """Create the directory and write the resolved config (merging the tables it serves)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        cfg_path = self.dir / "config.yaml"
        d = self.cfg.to_dict()
        if cfg_path.exists():
            old = yaml.safe_load(cfg_path.read_text()) or {}
            d["tables"] = sorted(set(old.get("tables", [])) | set(d["tables"]))
        atomic_write(cfg_path, yaml.safe_dump(d, sort_keys=False))

    @contextmanager
    def lock(self) -> Iterator[None]:
        self.dir.mkdir(parents=True, exist_ok=True)
        f = open(self.dir / "run.lock", "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            raise RunLockedError(f"run {self.id} is being written by another process; wait for it or stop it "
                               f"(lock: {self.dir / 'run.lock'})") from None
        try:
            f.seek(0), f.truncate(), f.write(str(os.getpid())), f.flush()
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
            f.close()

    def log(self, message: str) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "a") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")

    def progress(self, phase: str, done: int, total: int) -> None:
        atomic_json(self.dir / "progress.json", {"phase": phase, "done": done, "total": total})

    def provenance(self, **extra: Any) -> Dict[str, Any]:
        import torch

        prov = {
            "mmbench_version": __version__, "git_commit": git_commit(), "torch_version": torch.__version__,
            "python": platform.python_version(), "host": platform.node(),
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({platform.processor() or platform.machine()})",
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        }
        prov.update(extra)
        return prov

    def write_metrics(self, metrics: Dict[str, float], **extra: Any) -> None:
        atomic_json(self.metrics_path, {"schema_version": SCHEMA_VERSION, "run_id": self.id, "metrics": metrics, **extra})

    def read_metrics(self) -> Optional[Dict[str, Any]]:
        if not self.metrics_path.exists():
            return None
        return json.loads(self.metrics_path.read_text())


def load_runs(runs_dir: Optional[Path] = None) -> List[Dict[str, Any]]:
    """Every finished run: {"id", "config", "tables", "metrics", "provenance"}."""
    out = []
    root = Path(runs_dir or default_runs_dir())
    if not root.exists():
        return out
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        m, c = d / "metrics.json", d / "config.yaml"
        if not (m.exists() and c.exists()):
            continue
        raw = yaml.safe_load(c.read_text()) or {}
        metrics = json.loads(m.read_text())
        if metrics.get("schema_version") != SCHEMA_VERSION:
            raise MMBenchError(f"{m} has schema version {metrics.get('schema_version')}, this mmbench reads "
                               f"{SCHEMA_VERSION}; re-evaluate the run with `mmbench evaluate`")
        prov_path = d / "provenance.json"
        out.append({"id": d.name, "config": build_run_config(raw, str(c)), "tables": raw.get("tables", []),
                    "metrics": metrics["metrics"], "extra": metrics,
                    "provenance": json.loads(prov_path.read_text()) if prov_path.exists() else {}})
    return out
