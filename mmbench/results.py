"""The results store: one directory per run, named by the hash of its resolved config.

    runs/<run_id>/
        config.yaml        the resolved RunConfig (+ the tables it serves)
        provenance.json    what can change a number: mmbench version and git commit, the versions of the
                           numerical packages, CPU/GPU/CUDA/cuDNN, threads, determinism settings, the dataset
                           manifest digest, the coherence classifiers' set and digest, the FID weights' sha256
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
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import yaml

from . import __version__, yamlio
from .config import RunConfig, build_run_config
from .errors import ConfigError, MMBenchError, naming, show_value
from .files import durable_writes, env_folder, temp_beside

SCHEMA_VERSION = 1


class RunLockedError(MMBenchError):
    """Another process holds the run's lock (it is training or evaluating that run now)."""


class RecordError(MMBenchError):
    """A run's record file (config.yaml, metrics.json, provenance.json) that cannot be read: truncated, empty, or
    not what mmbench writes."""

    def __init__(self, where: str, problem: str):
        self.where, self.problem = str(where), problem
        super().__init__(f"{where}: {problem}")


class ForeignRunError(MMBenchError):
    """A run directory whose config hashes to another name with this mmbench (made by another version)."""


# What to do about each record file of a run that cannot be read (said where the run is left out).
RECORD_FIXES = {
    "config.yaml": "put a good copy back, or delete the run directory",
    "metrics.json": "re-evaluate it with `mmbench run` or `mmbench evaluate`, or delete the run directory",
    "provenance.json": "put a good copy back (e.g. from a bundle made by `mmbench export`), or delete the run "
                       "directory",
}


def default_runs_dir() -> Path:
    return env_folder("MMBENCH_RUNS", "runs")


def atomic_write(path: Path, data: bytes | str) -> None:
    """Write a file whole or not at all: a temporary file beside it, synced (durable_writes), renamed over it. The
    temporary file is held (files.hold_temp) until renamed, so no clean-up of killed writes takes it for one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sync = durable_writes()
    fd, tmp = temp_beside(path)
    hold = None
    try:
        hold = os.dup(fd)  # the flock is the open file's: this descriptor keeps it through the rename
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            if sync:
                os.fsync(f.fileno())
        os.replace(tmp, path)  # after the close, whose error (NFS writes unsynced data back there) keeps the old file
    except BaseException as e:
        if hold is None:
            os.close(fd)
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        named = naming(e, path)
        if named is not e:  # a short write (a full disk) names no file: this one
            raise named from None
        raise
    finally:
        if hold is not None:
            os.close(hold)


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


# The installed packages whose version can change a produced number (solvers, kernels, metric code).
NUMERIC_PACKAGES = ("torch", "torchvision", "numpy", "scipy", "scikit-learn", "pytorch-fid", "pandas")


def package_versions(names=NUMERIC_PACKAGES) -> Dict[str, Optional[str]]:
    from importlib.metadata import PackageNotFoundError, version

    out: Dict[str, Optional[str]] = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_info() -> Optional[Dict[str, Any]]:
    """Name, driver, CUDA and cuDNN of the first visible GPU (None on the CPU)."""
    import torch

    if not torch.cuda.is_available():
        return None
    driver = None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader", "-i", "0"],
                             capture_output=True, text=True, timeout=10)
        driver = out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        pass
    props = torch.cuda.get_device_properties(0)
    return {"name": props.name, "capability": f"{props.major}.{props.minor}", "memory_bytes": props.total_memory,
            "count": torch.cuda.device_count(), "driver": driver, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version()}


def determinism_settings() -> Dict[str, Any]:
    import torch

    return {"deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
            "cudnn_deterministic": torch.backends.cudnn.deterministic,
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "cuda_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
            "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG")}


def thread_settings() -> Dict[str, Any]:
    import torch

    return {"torch_threads": torch.get_num_threads(), "torch_interop_threads": torch.get_num_interop_threads(),
            "cpu_count": os.cpu_count(),
            **{k.lower(): os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                       "MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_")}}


def environment() -> Dict[str, Any]:
    """Everything about the machine and the software stack that can change a produced number."""
    import torch

    gpu = gpu_info()
    return {"mmbench_version": __version__, "git_commit": git_commit(), "torch_version": torch.__version__,
            "python": platform.python_version(), "host": platform.node(), "platform": platform.platform(),
            "packages": package_versions(), "cpu": cpu_model(), "gpu": gpu,
            "device": gpu["name"] if gpu else f"cpu ({cpu_model()})",
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "threads": thread_settings(), "determinism": determinism_settings()}


def data_build(prov: Dict[str, Any], spec: Any = None, variant: Optional[str] = None) -> str:
    """How a run's data were built, where not by default: 'mnist_source=test-halves, multiplicity=12' (the `mmbench
    prepare` options), ', seed 3' after them for another build seed; '' for a default build or a run recorded before
    provenance said (`dataset_build`). With the dataset's `spec` (and `variant`), the options are those that make a
    build's identity (data.base.built_by: not at their default, not where files were, not unread by the variant), as
    `mmbench prepare` compares builds: a copy built before it left them out names them."""
    build = prov.get("dataset_build") or {}
    options = build.get("options") or {}
    if spec is not None:
        from .data.base import built_by

        options = built_by(spec, options, variant)
    parts = [f"{k}={v}" for k, v in sorted(options.items())]
    if build.get("seed") not in (None, 0):
        parts.append(f"seed {build['seed']}")
    return ", ".join(parts)


def trainer_label(code: Dict[str, Any]) -> str:
    """One `trained_with` entry as the report names it: its commit, and its kernel choices where any were made
    ('abc123 (MMBENCH_ADAM=fused, MMBENCH_MATMUL_TF32=1)')."""
    kernels = code.get("kernels") or {}
    return (code.get("git_commit") or "?") + (f" ({', '.join(f'{k}={v}' for k, v in sorted(kernels.items()))})"
                                             if kernels else "")


def number_provenance(prov: Dict[str, Any]) -> Dict[str, Any]:
    """The parts of a run's provenance that can change its numbers, flattened: the report flags a cell whose
    runs disagree on any of them (code, data, classifiers, evaluation precision, FID weights, numerical packages)."""
    clf = prov.get("classifiers") or {}
    trained = prov.get("trained_with")  # absent in runs recorded before it existed
    out = {"mmbench commit": prov.get("git_commit"),
           "trained by": " + ".join(trainer_label(c) for c in trained) if trained else None,
           "dataset digest": prov.get("dataset_digest"),
           "classifier set": f"{clf.get('set')}:{clf.get('digest')}" if clf else None,
           "eval precision": prov.get("eval_precision") or "fp32",  # absent before eval.precision: fp32
           "FID weights": prov.get("fid_weights_sha256")}
    packages = prov.get("packages") or {"torch": prov.get("torch_version")}
    out.update({name: v for name, v in packages.items()})
    return out


def _json_mapping(text: str | bytes, where: str) -> Dict[str, Any]:
    try:
        d = json.loads(text)
    except ValueError as e:  # also an empty file, and bytes that are not UTF-8
        raise RecordError(where, f"not valid JSON: {e}") from None
    except RecursionError:  # json's decoder recurses once per level of nesting
        raise RecordError(where, "not valid JSON: nested too deeply (lists or mappings inside one another thousands "
                                 "of levels deep)") from None
    if not isinstance(d, dict):
        raise RecordError(where, f"holds a JSON {type(d).__name__}, not the mapping mmbench writes")
    return d


def parse_metrics(text: str | bytes, where: str) -> Dict[str, Any]:
    """A metrics.json's contents, checked: a mapping of this schema version whose `metrics` map names to numbers."""
    m = _json_mapping(text, where)
    if type(m.get("schema_version")) is not int or m["schema_version"] != SCHEMA_VERSION:  # not true, not 1.0
        raise RecordError(where, f"schema version {m.get('schema_version')!r}, this mmbench reads {SCHEMA_VERSION}")
    values = m.get("metrics")
    if not isinstance(values, dict):
        raise RecordError(where, "has no `metrics` mapping")
    bad = [k for k, v in values.items() if not _is_float(v)]
    if bad:
        raise RecordError(where, f"metric {bad[0]!r} is {show_value(values[bad[0]], 40)}, not a number")
    for key in ("classifier_set", "classifier_dropout", "eval_precision"):  # how it was scored (_scoring_of)
        if key in m and not isinstance(m[key], str):
            raise RecordError(where, f"`{key}` is {m[key]!r}, not the name mmbench writes")
    return m


def _is_float(v: Any) -> bool:
    """A number the report can average: an int or float (NaN and infinity included: a diverged run, said as such),
    not a bool, and not an integer too large for a float."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    try:
        float(v)
    except OverflowError:
        return False
    return True


# The provenance.json entries the report reads (number_provenance, data_build, trainer_label) and the suite's cost
# estimate, with the types mmbench writes them as (null: not recorded); anything else is a damaged file.
PROVENANCE_TYPES = {"classifiers": (dict, "mapping"), "trained_with": (list, "list"), "packages": (dict, "mapping"),
                    "dataset_build": (dict, "mapping"), "train_seconds": ((int, float), "number"),
                    "train_tuples_per_second": ((int, float), "number")}


def parse_provenance(text: str | bytes, where: str) -> Dict[str, Any]:
    """A provenance.json's contents, checked where the report and the cost estimate read them."""
    p = _json_mapping(text, where)
    for key, (types, kind) in PROVENANCE_TYPES.items():
        v = p.get(key)
        if v is not None and (not isinstance(v, types) or isinstance(v, bool)):
            raise RecordError(where, f"`{key}` is {v!r}, not the {kind} mmbench writes")
    for i, code in enumerate(p.get("trained_with") or []):
        if not isinstance(code, dict) or not isinstance(code.get("kernels") or {}, dict):
            raise RecordError(where, f"`trained_with[{i}]` is {code!r}, not the mapping (git_commit, kernels) mmbench "
                                     f"writes")
    if not isinstance((p.get("dataset_build") or {}).get("options") or {}, dict):
        raise RecordError(where, f"`dataset_build.options` is {p['dataset_build']['options']!r}, not the mapping "
                                 f"mmbench writes")
    return p


def parse_config(text: str | bytes, where: str) -> Tuple[Dict[str, Any], RunConfig]:
    """A config.yaml's mapping and the RunConfig it builds (a ConfigError where it no longer validates)."""
    try:
        raw = yamlio.load(text, where, written_by_mmbench=True)  # libyaml: 900 runs' configs read in 2 s, not 8
    except ConfigError as e:
        raise RecordError(where, e.problem) from None
    if not isinstance(raw, dict):
        raise RecordError(where, "not a mapping of run settings")
    return raw, build_run_config(raw, where)


def read_run(d: Path) -> Dict[str, Any]:
    """A finished run directory's records, checked: {"id", "config", "tables", "metrics", "extra", "provenance"}.
    RecordError names a file that cannot be read, ConfigError a config that no longer validates (e.g. made by a
    version that allowed what this one refuses), ForeignRunError a config that hashes to another name."""
    c, m, p = d / "config.yaml", d / "metrics.json", d / "provenance.json"

    def read(path: Path) -> bytes:  # any file system refusal (a directory, no permission) is this run's, named
        if path.is_symlink() and not path.exists():
            raise RecordError(str(path), f"a link to {os.readlink(path)}, which does not exist")
        if not path.exists():
            raise RecordError(str(path), "missing")
        if not path.is_file():
            raise RecordError(str(path), "not a file")
        try:
            return path.read_bytes()
        except OSError as e:
            raise RecordError(str(path), e.strerror or type(e).__name__) from None

    config_bytes, metrics_bytes = read(c), read(m)
    raw, cfg = parse_config(config_bytes, str(c))
    if cfg.run_id() != d.name:
        raise ForeignRunError(f"its config hashes to {cfg.run_id()} with this mmbench (made by another version); "
                              f"run it again to report it")
    metrics = parse_metrics(metrics_bytes, str(m))
    if "run_id" in metrics and metrics["run_id"] != d.name:  # copied from another run's directory
        raise RecordError(str(m), f"names run {metrics['run_id']!r}, not {d.name}: another run's results")
    prov = parse_provenance(read(p), str(p)) if p.exists() or p.is_symlink() else {}  # a link to nowhere: named
    return {"id": d.name, "config": cfg, "tables": raw.get("tables", []), "metrics": metrics["metrics"],
            "extra": metrics, "provenance": prov}


def left_out_because(e: MMBenchError) -> str:
    """Why read_run refused a run directory, and the fix (as the report and export list it)."""
    if isinstance(e, RecordError):
        name = Path(e.where).name
        return f"{name} unreadable ({e.problem}): {RECORD_FIXES[name]}"
    if isinstance(e, ConfigError):  # e.where: the file's path, then the setting (e.g. ...config.yaml.train.select)
        setting = e.where.rsplit("config.yaml", 1)[-1].lstrip(".")
        return f"its config no longer validates ({setting + ': ' if setting else ''}{e.problem})"
    return str(e)


def _scoring_of(m: Dict[str, Any]) -> tuple:
    """(classifier set-dropout or None, eval precision) that scored a metrics.json."""
    clf = None
    if "classifier_set" in m:
        clf = f"{m['classifier_set']}-{m.get('classifier_dropout', 'off')}"
    elif "classifier_accuracy" in m or "classifier_ap" in m:  # written before eval.classifiers existed
        clf = "mmbench-off"
    return clf, m.get("eval_precision", "fp32")  # written before eval.precision existed: fp32


def _scoring_key(classifiers: Optional[str], precision: str) -> str:
    return "-".join(([classifiers] if classifiers else []) + ([precision] if precision != "fp32" else [])) or "fp32"


class Run:
    """Handle on one run directory."""

    def __init__(self, cfg: RunConfig, runs_dir: Optional[Path] = None):
        self.cfg = cfg
        self.id = cfg.run_id()
        self.dir = Path(runs_dir or default_runs_dir()) / self.id

    def trained_twin(self) -> Optional[Path]:
        """Another run directory beside this one with the same settings but for `eval` (which is part of the run id),
        and a checkpoint: the trained model a changed evaluation setting has left behind. None when there is none."""
        mine = {k: v for k, v in self.cfg.to_dict().items() if k not in ("eval", "tables")}
        prefix = self.id.rsplit("-", 1)[0] + "-"
        for d in sorted(self.dir.parent.glob(f"{prefix}*")):
            if d == self.dir or not (d / "checkpoints" / "last.pt").exists() or not (d / "config.yaml").is_file():
                continue
            try:
                _, cfg = parse_config((d / "config.yaml").read_bytes(), str(d / "config.yaml"))
            except (OSError, MMBenchError):
                continue
            if {k: v for k, v in cfg.to_dict().items() if k not in ("eval", "tables")} == mine:
                return d
        return None

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

    @property
    def config_before_rescore(self) -> Path:
        """config.yaml as it was when its metrics.json was current, kept by init while a re-scoring is pending."""
        return self.dir / "config.before-rescore.yaml"

    def status(self) -> str:
        """done (metrics written), rescore (metrics written, but scored otherwise than the config asks: coherence
        classifiers eval.classifiers / eval.classifier_dropout, or eval.precision; or only evaluations set aside
        by a re-scoring that did not finish; or a metrics.json that cannot be read), partial (some training
        checkpointed) or pending."""
        try:
            scored = self._scored()
        except RecordError:  # evaluated, but metrics.json cannot be read: evaluate again (scoring_aside keeps it)
            return "rescore"
        if scored is not None:
            return "done" if _scoring_key(*scored) == self._wanted(scored) else "rescore"
        if self._set_aside():  # trained and evaluated before: evaluate (or bring back), never retrain
            return "rescore"
        if (self.ckpt_dir / "last.pt").exists():
            return "partial"
        return "pending"

    def init(self) -> None:
        """Create the directory and write the resolved config (merging the tables it serves). Where this config
        asks to re-score metrics.json (status rescore), the config it replaces is kept as config_before_rescore
        (once), for scoring_aside to put back if the re-scoring fails."""
        self.dir.mkdir(parents=True, exist_ok=True)
        cfg_path = self.dir / "config.yaml"
        d = self.cfg.to_dict()
        text = None
        if cfg_path.exists():
            text = cfg_path.read_text(encoding="utf-8")
            old = yamlio.load(text, str(cfg_path)) or {}
            d["tables"] = sorted(set(old.get("tables", [])) | set(d["tables"]))
            if (yaml.safe_dump(d, sort_keys=False) != text and self.metrics_path.exists()
                    and not self.config_before_rescore.exists() and self.status() == "rescore"):
                atomic_write(self.config_before_rescore, text)
        if yaml.safe_dump(d, sort_keys=False) != text:  # the same text is not written again (a full disk: no need)
            atomic_write(cfg_path, yaml.safe_dump(d, sort_keys=False))

    @contextmanager
    def lock(self) -> Iterator[None]:
        self.dir.mkdir(parents=True, exist_ok=True)
        try:
            f = open(self.dir / "run.lock", "a+")
        except OSError as e:  # a folder or a link to nowhere in its place: said in one line (the worker's log too)
            raise MMBenchError(f"run {self.id}: its lock {self.dir / 'run.lock'} cannot be opened "
                               f"({e.strerror or type(e).__name__}); move it away (no process holds a lock there)") from None
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

    def held_here(self) -> bool:
        """Whether this process holds the run's lock (run.lock records the holder's pid), or nobody has yet."""
        try:
            holder = (self.dir / "run.lock").read_text(encoding="utf-8").strip()
        except OSError:
            return True
        return holder in ("", str(os.getpid()))

    def log(self, message: str) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        try:
            with open(self.log_path, "a", encoding="utf-8") as f:
                f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")
        except OSError as e:  # a full disk's failed write names no file
            raise naming(e, self.log_path) from None

    def progress(self, phase: str, done: int, total: int) -> None:
        atomic_json(self.dir / "progress.json", {"phase": phase, "done": done, "total": total})

    def provenance(self, **extra: Any) -> Dict[str, Any]:
        prov = environment()
        prov.update(extra)
        return prov

    def _set_aside(self) -> List[Path]:
        """metrics.<scoring>.json files: evaluations of this run scored otherwise, kept aside."""
        return sorted(self.dir.glob("metrics.*.json"))

    def _scored(self) -> Optional[tuple]:
        """(classifier set-dropout or None, eval precision) of metrics.json; None when there are no metrics."""
        m = self.read_metrics()
        return None if m is None else _scoring_of(m)

    def scored_with(self) -> Optional[str]:
        """How metrics.json was scored from the trained model, outside the run id: "<classifier set>-<dropout>"
        when a metric used coherence classifiers, then "-bf16" for eval.precision bf16 ("fp32" when neither);
        None when there are no metrics."""
        scored = self._scored()
        return None if scored is None else _scoring_key(*scored)

    def scoring_wanted(self) -> str:
        """The same key for the config's eval.classifiers / classifier_dropout / precision (the classifier part
        only where the evaluation uses classifiers, as its metrics.json, or else one set aside, shows: the
        metrics, part of the run id, do not change)."""
        try:
            scored = self._scored()
        except RecordError:
            scored = None  # as if metrics.json were absent: scoring_aside keeps it aside
        return self._wanted(scored)

    def _wanted(self, scored: Optional[tuple]) -> str:
        """scoring_wanted, given _scored() (read once by status)."""
        for kept in self._set_aside() if scored is None else []:
            try:
                scored = _scoring_of(parse_metrics(kept.read_bytes(), str(kept)))
                break
            except RecordError:
                continue  # unreadable: it says nothing of how this run's metrics are scored
        uses_classifiers = scored is None or scored[0] is not None
        e = self.cfg.eval
        return _scoring_key(f"{e.classifiers}-{e.classifier_dropout}" if uses_classifiers else None, e.precision)

    def bring_back(self, want: str) -> bool:
        """Make the evaluation kept as metrics.<want>.json current again (no evaluation needed); False if none."""
        kept = self.dir / f"metrics.{want}.json"
        if not kept.exists():
            return False
        try:
            parse_metrics(kept.read_bytes(), str(kept))
        except RecordError as e:  # left where it is (a later setting-aside of that scoring replaces it)
            self.log(f"{kept.name} cannot be read ({e.problem}); evaluating again instead of bringing it back")
            return False
        for name in ("provenance", "metrics"):  # metrics last: its presence means done
            if (self.dir / f"{name}.{want}.json").exists():
                os.replace(self.dir / f"{name}.{want}.json", self.dir / f"{name}.json")
        return True

    @contextmanager
    def scoring_aside(self) -> Iterator[Optional[str]]:
        """For an evaluation scored otherwise: metrics.json / provenance.json set aside as metrics.<scored_with>.json
        (nothing is lost; yields that key, None when there were none; a metrics.json that cannot be read is kept as
        metrics.json.unreadable-<time>) and config.yaml kept (as it was before init asked for the re-scoring:
        config_before_rescore); if the block fails or is interrupted before new metrics are written, all are put
        back as they were."""
        cfg_path = self.dir / "config.yaml"
        try:
            old, unreadable = self.scored_with(), None
        except RecordError as e:
            old, unreadable = None, self.dir / f"metrics.json.unreadable-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
            os.replace(self.metrics_path, unreadable)
            self.log(f"metrics.json cannot be read ({e.problem}); kept as {unreadable.name}, evaluating again")
        before = self.config_before_rescore
        source = before if before.exists() and (old is not None or unreadable is not None) else cfg_path
        cfg_text = source.read_text(encoding="utf-8") if source.exists() else None
        if old is not None:
            for name in ("metrics", "provenance"):  # metrics first: from here on the run is not done
                if (self.dir / f"{name}.json").exists():
                    os.replace(self.dir / f"{name}.json", self.dir / f"{name}.{old}.json")
        try:
            yield old
        except BaseException:
            if not self.metrics_path.exists():
                if old is not None:
                    self.bring_back(old)
                if unreadable is not None:
                    os.replace(unreadable, self.metrics_path)
                    self.log(f"evaluation did not finish; {unreadable.name} put back as metrics.json")
                if cfg_text is not None:
                    atomic_write(cfg_path, cfg_text)
            raise
        finally:
            before.unlink(missing_ok=True)

    def write_metrics(self, metrics: Dict[str, float], **extra: Any) -> None:
        atomic_json(self.metrics_path, {"schema_version": SCHEMA_VERSION, "run_id": self.id, "metrics": metrics, **extra})

    def read_metrics(self) -> Optional[Dict[str, Any]]:
        """metrics.json's contents (None when there is none); RecordError when it cannot be read."""
        if not self.metrics_path.exists():
            return None
        return parse_metrics(self.metrics_path.read_bytes(), str(self.metrics_path))


def load_runs(runs_dir: Optional[Path] = None, skipped: Optional[List[Tuple[str, str]]] = None) -> List[Dict[str, Any]]:
    """Every finished run: {"id", "config", "tables", "metrics", "extra", "provenance"}. Left out, with (directory,
    reason) appended to `skipped`: a directory with metrics.json that read_run refuses (a record file missing or that
    cannot be read, a config that
    no longer validates or no longer hashes to its name: not the run this mmbench would make) and a run whose
    metrics were scored otherwise than its config now asks (status rescore: its numbers would be reported under
    settings they were not made with)."""
    out = []
    root = Path(runs_dir or default_runs_dir())
    if not root.exists():
        return out
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):  # not a temporary
        # folder (.import-*: an import killed before it renamed the run into place; run ids never start with a dot)
        if not (d / "metrics.json").exists() and not (d / "metrics.json").is_symlink():  # unfinished; metrics.json
            # without config.yaml (or a link to nowhere) is listed (read_run)
            continue
        try:
            run = read_run(d)
        except MMBenchError as e:
            if skipped is not None:
                skipped.append((d.name, left_out_because(e)))
            continue
        scored = _scoring_of(run["extra"])  # Run.status's test, on the metrics read above
        wanted = Run(run["config"], root)._wanted(scored)
        if _scoring_key(*scored) != wanted:
            if skipped is not None:
                skipped.append((d.name, f"scored as {_scoring_key(*scored)}, its config asks for {wanted}; "
                                        f"`mmbench run` re-scores it"))
            continue
        out.append(run)
    return out
