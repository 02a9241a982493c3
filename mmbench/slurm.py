"""`mmbench run --executor slurm`: the runs of a suite as a Slurm job array, submitted through submitit.

Each array task executes one run, or a pack of runs of one experiment trained together as one stacked
model (`SlurmRun`, mmbench/pack.py; `--pack` / the `pack` option), in the same run directories a local
run uses (a shared filesystem); the run lock (results.py) still decides who writes a run, so two
submissions of one suite train every run once: a task whose run is locked leaves it out of its pack, waits
for the lock and then finds the run done (or resumes it).

Scheduler signals:
* the pre-timeout signal (USR2, `signal_delay_s` before the time limit, or on preemption where the cluster
  sends it) makes training save a checkpoint after its current step (train.request_stop); submitit's
  checkpoint/requeue then requeues the task, which resumes from that checkpoint (`SlurmRun.checkpoint`);
* SIGTERM (`scancel`, `scontrol requeue`, preemption by requeue) also saves such a checkpoint first; a
  requeued task resumes from it, a cancelled run is resumed by running the same command again.

Where the options come from, later ones winning: the site config (`$MMBENCH_SLURM_CONFIG`, else
~/.config/mmbench/slurm.yaml), the suite's `slurm:` block, an experiment's `slurm:` block, the command line.
Every run directory records its job in slurm.json (job id, stdout/stderr paths); submitit's files for the
job sit in <runs_dir>/.slurm/<job id>/ and are linked from the run directory as slurm.out / slurm.err.
"""
from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import re
import signal
import shlex
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from rich.markup import escape

from . import kernels, yamlio
from .config import RunConfig, from_dict
from .errors import ConfigError, MMBenchError
from .files import cache_folder_override
from .results import Run, atomic_json
from .runner import make_packs, unique_runs

# squeue states of a job that will still run (or is running) the run.
ALIVE = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING",
         "SUSPENDED", "STAGE_OUT", "SIGNALING"}


@dataclass
class SlurmOptions:
    partition: Optional[str] = None  # None: the cluster's default partition
    gpus_per_job: int = 0
    cpus_per_job: int = 1
    mem: Optional[str] = None  # per job, sbatch syntax: 4G, 500M (None: the partition's default)
    time: int = 60  # minutes per job; a run that needs longer is checkpointed and requeued
    array_parallelism: int = 256  # array tasks running at once
    signal_delay_s: int = 90  # the pre-timeout signal comes this long before the time limit
    max_requeues: int = 3  # requeues after time limits before a run is reported failed
    # runs trained together in one array task as one stacked model (mmbench/pack.py; runs differing only in
    # seed and β): None splits each group evenly over `array_parallelism` tasks (at most runner.DEFAULT_PACK_CAP a
    # pack), 1 trains every run alone
    pack: Optional[int] = None
    sbatch: Dict[str, Any] = field(default_factory=dict)  # any other sbatch option, e.g. {account: lab, qos: high}

    def describe(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(self).items() if v not in (None, {}, 0))


POSITIVE = ("cpus_per_job", "time", "array_parallelism", "signal_delay_s")
OPTION_NAMES = {f.name for f in dataclasses.fields(SlurmOptions)}
# The sbatch options submit() writes from SlurmOptions (the option to set instead) or for every job (why).
SBATCH_OWNED = {"time": "time", "t": "time", "partition": "partition", "p": "partition", "mem": "mem",
                "cpus_per_task": "cpus_per_job", "c": "cpus_per_job", "gpus_per_node": "gpus_per_job",
                "array": "array_parallelism", "signal": "signal_delay_s",
                "nodes": "one node per array task", "N": "one node per array task",
                "ntasks_per_node": "one task per array task", "job_name": "job name mmbench",
                "output": "submitit's log files", "o": "submitit's log files", "error": "submitit's log files",
                "e": "submitit's log files"}


def site_config_path() -> Path:
    return Path(os.environ.get("MMBENCH_SLURM_CONFIG", Path.home() / ".config" / "mmbench" / "slurm.yaml"))


def _check(d: Dict[str, Any], where: str) -> Dict[str, Any]:
    """Validate a partial options mapping (field names and types) and return it."""
    opts = from_dict(SlurmOptions, d, where)
    for k in d:
        v = getattr(opts, k)
        if k in POSITIVE and v <= 0:
            raise ConfigError(f"{where}.{k}", f"must be > 0, got {v!r}")
        if k in ("gpus_per_job", "max_requeues") and v < 0:
            raise ConfigError(f"{where}.{k}", f"must be >= 0, got {v!r}")
        if k == "pack" and v is not None and v < 1:
            raise ConfigError(f"{where}.pack", f"must be >= 1 (1 trains every run alone) or null, got {v!r}")
        if k in ("partition", "mem") and v is not None and not v.strip():  # submit() would leave it out without a word
            raise ConfigError(f"{where}.{k}", f"must name a {'partition' if k == 'partition' else 'size, e.g. 4G'} or "
                                              f"be null (the cluster's default), got {v!r}")
        if k == "sbatch":  # submitit writes `#SBATCH --KEY=VALUE` (`--KEY` for true): None or a list is no value
            for key, value in v.items():
                if not isinstance(key, str) or not (value is True or isinstance(value, str)
                                                    or (isinstance(value, (int, float)) and not isinstance(value, bool))):
                    raise ConfigError(f"{where}.sbatch.{key}", f"must be a string or number (or true for a flag, e.g. "
                                      f"exclusive: true), got {value!r}")
                own = SBATCH_OWNED.get(key.replace("-", "_"))
                if own is not None:  # submit() writes that sbatch line itself: two lines, one of them ignored
                    raise ConfigError(f"{where}.sbatch.{key}", f"clashes with the `{own}` option; set {own}: instead"
                                      if own in OPTION_NAMES else f"mmbench sets --{key} itself ({own})")
    return dict(d)


def site_options() -> Dict[str, Any]:
    path = site_config_path()
    if not path.exists():
        if "MMBENCH_SLURM_CONFIG" in os.environ:  # named on purpose: a typo must not fall back to no site options
            raise MMBenchError(f"MMBENCH_SLURM_CONFIG={path}: no such file; fix the path, or unset it to use "
                               f"~/.config/mmbench/slurm.yaml (if any)")
        return {}
    try:
        text = path.read_bytes()  # bytes: yamlio names the line of a byte that is not UTF-8
    except OSError as e:  # e.g. a directory
        raise MMBenchError(f"{path}: cannot be read ({e.strerror or type(e).__name__}); the Slurm site config is a "
                           f"YAML file of options, e.g. {{partition: gpu, time: 120}}") from None
    raw = yamlio.load(text, str(path))
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(str(path), f"expected a mapping of Slurm options (optionally under `slurm:`), e.g. "
                                     f"{{partition: gpu, time: 120}}; got a {type(raw).__name__}")
    if "slurm" in raw and len(raw) > 1:  # the options beside the block would be ignored without a word
        other = next(k for k in sorted(map(str, raw)) if k != "slurm")
        raise ConfigError(f"{path}: {other}", "beside a `slurm:` block; put every option inside it (or drop the block)")
    return _check(raw.get("slurm", raw) or {}, str(path) + (".slurm" if "slurm" in raw else ""))


def resolve_options(layers: Sequence[Tuple[Dict[str, Any], str]]) -> SlurmOptions:
    """Merge option mappings in order (later wins; `sbatch` entries merge key by key)."""
    merged: Dict[str, Any] = {}
    for d, where in layers:
        d = _check(d or {}, where)
        for k, v in d.items():
            merged[k] = {**merged.get(k, {}), **v} if k == "sbatch" else v
    return from_dict(SlurmOptions, merged, "slurm")


def parse_sbatch(items: Sequence[str]) -> Dict[str, Any]:
    """`--slurm-opt account=lab --slurm-opt exclusive` -> {"account": "lab", "exclusive": True}."""
    out: Dict[str, Any] = {}
    for item in items:
        key, eq, value = item.partition("=")
        key = key.strip().lstrip("-").replace("-", "_")
        if not key:
            raise ConfigError(f"--slurm-opt {item}", "expected an sbatch option, e.g. account=mylab or exclusive")
        out[key] = value if eq else True
    return out


# ----- inside the job ----------------------------------------------------------------------------------
class SlurmRun:
    """The callable each array task executes: one run, or a pack of runs of one experiment trained together
    (mmbench/pack.py); resumable, and requeued on the pre-timeout signal."""

    def __init__(self, run_dirs, data_root: Optional[str] = None, gpus: int = 0):
        self.run_dirs = [run_dirs] if isinstance(run_dirs, str) else list(run_dirs)
        self.data_root = data_root
        self.gpus = gpus  # the job's gpus_per_job: a task that cannot see them fails, never trains on the CPU

    def __call__(self) -> Dict[str, Any]:
        from . import train as train_mod
        from .evaluate import execute_when_free
        from .hostmem import tune_host_allocator
        from .pack import execute_pack
        from .worker import load_run, progress_writer

        tune_host_allocator()
        runs = [load_run(rd) for rd in self.run_dirs]
        phase = [""]
        caught: List[int] = []
        submitit_usr2 = signal.getsignal(signal.SIGUSR2)

        def on_signal(signum, frame):
            caught.append(signum)
            if phase[0].startswith("train") and signum in (signal.SIGUSR2, signal.SIGTERM):
                train_mod.request_stop(f"Slurm sent {signal.Signals(signum).name}")
            elif signum == signal.SIGUSR2 and callable(submitit_usr2):
                submitit_usr2(signum, frame)  # not training: checkpoint()/requeue now, evaluation restarts

        signal.signal(signal.SIGUSR2, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        job = os.environ.get("SLURM_ARRAY_JOB_ID")
        job = f"{job}_{os.environ.get('SLURM_ARRAY_TASK_ID')}" if job else os.environ.get("SLURM_JOB_ID", "?")
        packed = f" (pack of {len(runs)})" if len(runs) > 1 else ""
        for run in runs:
            run.log(f"slurm job {job}{packed} on {os.uname().nodename} "
                    f"(restart {os.environ.get('SLURM_RESTART_COUNT', '0')})")
        if getattr(self, "gpus", 0):  # getattr: a task pickled by an mmbench before `gpus` (requeued) has none
            import torch

            if not torch.cuda.is_available():
                why = (f"slurm job {job} asked for {self.gpus} GPU(s) but torch sees none on {os.uname().nodename} "
                       f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}); check the partition's "
                       f"GPUs, or set gpus_per_job: 0 to train on CPUs")
                for run in runs:
                    run.log(why)
                raise MMBenchError(why)
        write = progress_writer(runs)

        def progress(ph: str, done: int, total: int) -> None:
            phase[0] = ph
            if train_mod.stop_requested() is not None and not ph.startswith("train"):
                # the signal came during the last epoch, which training finishes and saves: stop before evaluating
                # (a requeued task finds the training done and evaluates)
                why = train_mod.stop_requested()
                train_mod.clear_stop()
                for run in runs:
                    run.log(f"stopped ({why}) after training; evaluation runs on resume")
                raise train_mod.TrainingInterrupted(f"stopped ({why}) after training")
            write(ph, done, total)

        data_root = Path(self.data_root) if self.data_root else None
        try:
            if len(runs) == 1:
                # Another process writing this run (a second submission, a local `mmbench run`): wait for it.
                return execute_when_free(runs[0], data_root, progress, who=f"slurm job {job}")
            errors = execute_pack(runs, data_root, progress, who=f"slurm job {job}")
        except train_mod.TrainingInterrupted:
            for _ in range(20):  # preemption may send SIGTERM first and the requeue signal (USR2) next
                if signal.SIGUSR2 in caught:
                    break
                time.sleep(0.1)
            if signal.SIGUSR2 in caught and callable(submitit_usr2):
                for run in runs:
                    run.log(f"slurm job {job}: checkpointed; requeueing (submitit)")
                submitit_usr2(signal.SIGUSR2, None)  # checkpoint() + scontrol requeue + exit
            raise
        failed = {rid: e for rid, e in errors.items() if e}
        if failed:  # the other runs of the pack are done; the job fails so that Slurm and `--dry-run` show it
            raise MMBenchError(f"{len(failed)} of {len(runs)} runs of the pack failed: "
                               + "; ".join(f"{rid}: {e}" for rid, e in failed.items()))
        return {r.id: "done" for r in runs}

    def checkpoint(self, *args: Any, **kwargs: Any):
        """submitit's hook on the pre-timeout/preemption signal: the training state is already on disk
        (last.pt of every run, saved after the current step), so the requeued task is this task again and
        resumes."""
        import submitit

        return submitit.helpers.DelayedSubmission(self)  # itself, whole: a rebuilt copy had dropped `gpus` once


# ----- the submitting side ---------------------------------------------------------------------------------
def available() -> Optional[str]:
    """None when Slurm answers (sinfo) and submitit imports, else the reason it cannot be used."""
    try:
        import submitit  # noqa: F401
    except ImportError:
        return "the submitit package is not installed (pip install submitit)"
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%P %t"], capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.SubprocessError) as e:
        return f"sinfo does not run ({e}); Slurm's client commands are not installed here"
    if out.returncode != 0:
        return f"sinfo failed: {out.stderr.strip() or out.stdout.strip()}"
    if not out.stdout.strip():
        return "sinfo lists no partition"
    return None


def _job_states() -> Dict[str, str]:
    """Array task / job id -> squeue state, for every job in the queue."""
    out = subprocess.run(["squeue", "-h", "-r", "-o", "%i %T"], capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        raise MMBenchError(f"squeue failed: {out.stderr.strip()}")
    return dict(line.split()[:2] for line in out.stdout.splitlines() if line.strip())


def _ended_state(job_id: str) -> str:
    """JobState (and reason) of a job no longer queued, from scontrol while Slurm remembers it."""
    out = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True, timeout=30)
    if out.returncode != 0 or "JobState=" not in out.stdout:
        return "ENDED"
    fields = dict(kv.split("=", 1) for kv in out.stdout.split() if "=" in kv)
    state, reason = fields.get("JobState", "ENDED"), fields.get("Reason", "None")
    return state + (f" ({reason})" if reason not in ("None", "") else "")


def read_job(run: Run) -> Optional[Dict[str, Any]]:
    """The run's slurm.json as submit writes it (a mapping with its job_id); None when there is none, or when it
    cannot be read or is not that (the run is then shown by its own status, as if never submitted)."""
    try:
        job = json.loads((run.dir / "slurm.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(job, dict) or not isinstance(job.get("job_id"), (str, int)) or isinstance(job["job_id"], bool):
        return None
    return {**job, "job_id": str(job["job_id"]), "stderr": job.get("stderr") if isinstance(job.get("stderr"), str)
            else None}


def run_states(runs: Sequence[Run], queue: Optional[Dict[str, str]] = None) -> Dict[str, Dict[str, Any]]:
    """Per run id: {"state": done | queued | running | failed | pending | partial, "job", "log", "detail"}."""
    out: Dict[str, Dict[str, Any]] = {}
    jobs = {r.id: read_job(r) for r in runs}
    if queue is None and any(jobs.values()) and available() is None:
        queue = _job_states()
    for r in runs:
        st, job = r.status(), jobs[r.id]
        info: Dict[str, Any] = {"state": st, "job": job and job["job_id"], "log": job and job["stderr"],
                                "detail": ""}
        if job and st != "done":
            q = (queue or {}).get(job["job_id"])
            if q in ALIVE:
                info["state"] = "running" if q in ("RUNNING", "COMPLETING", "CONFIGURING") else "queued"
                info["detail"] = q
            elif queue is not None:
                info["state"], info["detail"] = "failed", _ended_state(job["job_id"])
        out[r.id] = info
    return out


def _tail(path: Optional[str], n: int = 3) -> str:
    try:
        lines = [ln for ln in Path(path).read_text(errors="replace").splitlines() if ln.strip()]
        return " | ".join(lines[-n:])
    except (OSError, TypeError):
        return ""


def cache_export() -> List[str]:
    """The jobs' $MMBENCH_CACHE, where the submitting shell sets one (absolute: a job may start elsewhere), also
    where a site's sbatch exports no environment; none where unset (the data root's caches)."""
    folder = cache_folder_override()
    return [f"export MMBENCH_CACHE={shlex.quote(str(folder.expanduser().resolve()))}"] if folder else []


def submit(groups: List[Tuple[SlurmOptions, List[List[Run]]]], runs_dir: Path,
           data_root: Optional[Path]) -> Dict[str, str]:
    """Submit one job array per option set, one array task per pack of runs (runner.make_packs); record each
    run's job in its slurm.json (the runs of a pack share their task). Returns run id -> job id."""
    import submitit

    folder = Path(runs_dir).resolve() / ".slurm"
    submitted: Dict[str, str] = {}
    for opts, packs in groups:
        ex = submitit.SlurmExecutor(folder=folder / "%j", max_num_timeout=opts.max_requeues)
        params: Dict[str, Any] = dict(time=opts.time, cpus_per_task=opts.cpus_per_job, ntasks_per_node=1, nodes=1,
                                      array_parallelism=opts.array_parallelism, signal_delay_s=opts.signal_delay_s,
                                      job_name="mmbench", stderr_to_stdout=False,
                                      setup=[f"export OMP_NUM_THREADS={opts.cpus_per_job}",
                                             "export PYTHONIOENCODING=utf-8",  # its output, whatever the locale
                                             # the kernel choices, also where a site's sbatch exports no environment
                                             *(f"export {k}={shlex.quote(v)}" for k, v in kernels.chosen().items()),
                                             *cache_export()])
        if opts.partition:
            params["partition"] = opts.partition
        if opts.gpus_per_job:
            params["gpus_per_node"] = opts.gpus_per_job
        if opts.mem:
            params["mem"] = opts.mem
        if opts.sbatch:
            params["additional_parameters"] = dict(opts.sbatch)
        try:
            ex.update_parameters(**params)
        except ValueError as e:  # an sbatch option submitit does not know
            raise ConfigError("slurm.sbatch", str(e).splitlines()[0]) from None
        root = str(Path(data_root).resolve()) if data_root is not None else None
        try:
            with ex.batch():
                jobs = [ex.submit(SlurmRun([str(r.dir.resolve()) for r in pack], root, opts.gpus_per_job))
                        for pack in packs]
        except subprocess.CalledProcessError as e:
            msg = (e.output or b"").decode(errors="replace").strip().splitlines()
            raise MMBenchError(f"sbatch refused the job array ({opts.describe()}): {msg[-1] if msg else e}; "
                               f"fix the slurm options") from None
        except Exception as e:
            if type(e).__name__ == "FailedJobError":
                lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
                raise MMBenchError(f"sbatch refused the job array ({opts.describe()}): {lines[-1] if lines else e}; "
                                   f"fix the slurm options") from None
            raise
        for r, j, pack in ((r, j, pack) for pack, j in zip(packs, jobs) for r in pack):
            rec = {"job_id": j.job_id, "stdout": str(j.paths.stdout), "stderr": str(j.paths.stderr),
                   "folder": str(j.paths.folder), "submitted": time.time(), "options": dataclasses.asdict(opts),
                   "pack": [p.id for p in pack]}
            atomic_json(r.dir / "slurm.json", rec)
            for name, target in (("slurm.out", j.paths.stdout), ("slurm.err", j.paths.stderr)):
                link = r.dir / name
                if link.is_symlink() or link.exists():
                    link.unlink()
                link.symlink_to(target)
            submitted[r.id] = j.job_id
    return submitted


# Filesystems whose locks stay on one node, or need a mount option to reach the others: the run lock
# (results.Run.lock, fcntl.flock) must be seen by every node that runs a job of the suite.
LOCAL_FS = {"ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "overlay", "zfs", "f2fs", "vfat", "ramfs"}


def _mount_of(path: Path, mounts: str) -> Optional[Tuple[str, str, List[str]]]:
    """(mount point, fs type, options) of the mount holding `path`, from /proc/self/mounts text."""
    best = None
    target = str(path)
    for line in mounts.splitlines():
        parts = line.split()
        if len(parts) < 4:
            continue
        mp = re.sub(r"\\([0-7]{3})", lambda o: chr(int(o.group(1), 8)), parts[1])  # \040 = space, ...
        if target == mp or target.startswith(mp.rstrip("/") + "/") or mp == "/":
            if best is None or len(mp) >= len(best[0]):  # stacked on one mount point: the last one is seen
                best = (mp, parts[2], parts[3].split(","))
    return best


def lock_warning(path: Path, nodes: int, mounts: Optional[str] = None) -> Optional[str]:
    """Why the run lock may not hold across the cluster's nodes for a runs directory at `path` (None: no reason
    known). `nodes`: how many nodes the jobs may run on. Reads /proc/self/mounts unless `mounts` is given."""
    if mounts is None:
        try:
            mounts = Path("/proc/self/mounts").read_text()
        except OSError:
            return None
    m = _mount_of(Path(path).resolve(), mounts)
    if m is None:
        return None
    mp, fs, opts = m
    where = f"{path} is on {fs} ({mp})"
    local_lock = next((o.split("=", 1)[1] for o in opts if o.startswith("local_lock=")), "none")
    if fs in ("nfs", "nfs4") and ("nolock" in opts or local_lock in ("flock", "all")):
        return (f"{where} mounted with {'nolock' if 'nolock' in opts else 'local_lock=' + local_lock}: flock locks "
                f"stay on one node, so two submissions could train a run twice; mount without it (NFS maps flock "
                f"to POSIX locks across nodes)")
    if fs == "lustre" and "flock" not in opts:
        return (f"{where} without the flock mount option ({'localflock: node-local' if 'localflock' in opts else 'flock unsupported'}); "
                f"mount with -o flock")
    if fs == "beegfs":
        return (f"{where}: BeeGFS keeps flock locks on one node unless the clients set "
                f"tuneUseGlobalFileLocks=true (beegfs-client.conf); check that before running two submissions")
    if fs.startswith("fuse") and nodes > 1:
        return f"{where}: FUSE filesystems (sshfs, ...) keep flock locks on one node; use a cluster filesystem"
    if fs in LOCAL_FS and nodes > 1:
        return (f"{where}, a node-local filesystem, and the partition has {nodes} nodes: jobs on other nodes "
                f"would not see these run directories; put --runs-dir (and --data-root) on a shared filesystem")
    return None


def _partition_nodes(partition: Optional[str]) -> int:
    args = ["sinfo", "-h", "-o", "%D"] + (["-p", partition] if partition else [])
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=15).stdout
        return sum(int(v) for v in out.split() if v.isdigit())
    except (OSError, subprocess.SubprocessError):
        return 1


def run_slurm(configs: Sequence[RunConfig], runs_dir: Path, data_root: Optional[Path],
              options: Sequence[Tuple[RunConfig, SlurmOptions]], console, wait: bool = True,
              poll_s: float = 3.0, caps: Optional[Dict[str, int]] = None) -> List[Tuple[Run, bool, str]]:
    """Submit every unfinished run (skipping runs whose job is still queued or running, from this or another
    submission), then, with `wait`, follow the jobs until each run is done or its job ended without it.
    `caps`: each method's largest pack (`--step-times`, runner.make_packs).
    Returns (run, ok, message) per run."""
    reason = available()
    if reason:
        raise MMBenchError(f"--executor slurm: Slurm cannot be used here: {reason}")
    runs_dir = Path(runs_dir)
    (runs_dir / ".slurm").mkdir(parents=True, exist_ok=True)
    runs = unique_runs([Run(c, runs_dir) for c in configs])  # a run two experiments list: one task, both tables
    opts_of: Dict[str, SlurmOptions] = {}
    for c, o in options:  # the first experiment's options, as unique_runs keeps its first run
        opts_of.setdefault(Run(c, runs_dir).id, o)
    for part in sorted({o.partition or "" for _, o in options}):
        warning = lock_warning(runs_dir, _partition_nodes(part or None))
        if warning:
            console.print(f"[yellow]warning:[/yellow] {escape(warning)}")
    results: Dict[str, Tuple[bool, str]] = {}
    # One submitter at a time per runs directory: a second invocation sees the first one's jobs as queued.
    with open(runs_dir / ".slurm" / "submit.lock", "a+") as lockf:
        fcntl.flock(lockf, fcntl.LOCK_EX)
        states = run_states(runs, _job_states())
        groups: Dict[str, Tuple[SlurmOptions, List[Run]]] = {}
        for r in runs:
            st = states[r.id]
            if st["state"] == "done":
                results[r.id] = (True, "already done")
            elif st["state"] in ("queued", "running"):
                console.print(f"{r.id}: already {st['state']} as Slurm job {st['job']} (log: {st['log']})", markup=False)
            else:
                r.init()
                o = opts_of[r.id]
                groups.setdefault(json.dumps(dataclasses.asdict(o), sort_keys=True), (o, []))[1].append(r)
        packed = [(o, make_packs(rs, o.pack, o.array_parallelism, caps, note=Run.log)) for o, rs in groups.values()]
        submitted = submit(packed, runs_dir, data_root)
    for o, packs in packed:
        rs = [r for p in packs for r in p]
        ids = sorted({submitted[r.id].split("_")[0] for r in rs})
        sizes = f" in {len(packs)} array task(s) (packs of up to {max(len(p) for p in packs)})" \
            if len(packs) < len(rs) else ""
        console.print(f"submitted {len(rs)} run(s){sizes} as Slurm job array {', '.join(ids)} ({o.describe()}); "
                      f"logs under {(runs_dir / '.slurm').resolve()}", markup=False)
    if not wait:
        return [(r, True, "submitted") for r in runs]
    pending = [r for r in runs if r.id not in results]
    delay = min(poll_s, 0.5)  # short runs seen done soon; long ones polled every poll_s
    while pending:
        time.sleep(delay)
        delay = min(poll_s, delay * 1.5)
        states = run_states(pending, _job_states())
        still = []
        for r in pending:
            st = states[r.id]
            if st["state"] == "done":
                results[r.id] = (True, f"done (job {st['job']})")
                console.print(f"done {r.id} (Slurm job {st['job']})")
            elif st["state"] in ("queued", "running"):
                still.append(r)
            else:
                msg = f"Slurm job {st['job']} {st['detail']}: {_tail(st['log']) or 'no output'}"
                results[r.id] = (False, msg)
                console.print(f"[red]FAILED[/red] {r.id}: {escape(msg)} (log: {escape(str(st['log']))}; run log: {escape(str(r.log_path))}); "
                              f"run the same command again to resume it", soft_wrap=True, highlight=False)
        pending = still
    return [(r, *results[r.id]) for r in runs]
