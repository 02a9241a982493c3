"""Temporary files that become results: created beside their target (so os.replace is atomic) with the permissions
an ordinary file of this user gets (0666 less the umask), not mkstemp's private 0600, so that colleagues on a shared
cluster can read the runs, bundles and datasets mmbench writes."""
from __future__ import annotations

import errno
import fcntl
import os
import re
import stat
import sys
import tempfile
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Tuple

from .errors import MMBenchError


def _umask() -> int:
    try:  # Linux >= 4.7 reports it without changing it
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def temp_beside(target: Path) -> Tuple[int, str]:
    """(fd, path) of a new empty file in `target`'s folder, named after it (`.<name>.<8 random characters>`), with the
    user's usual file mode, and held (hold_temp) while a descriptor of it is open: remove_abandoned_temps tells it
    from the temporary file of a writer killed outright. Keep one open until the file is renamed into place
    (atomic_write keeps a second descriptor for that)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{Path(target).name}.", dir=Path(target).parent)
    os.fchmod(fd, usual_mode())
    hold_temp(fd)
    return fd, tmp


_TEMP_NAME = r"\.[a-z0-9_]{8}$"  # after ".<target's name>": tempfile.mkstemp(prefix=".<name>.")'s 8 of [a-z0-9_]


def usual_mode() -> int:
    """The mode an ordinary new file of this user gets: 0666 less the umask."""
    return 0o666 & ~_umask()


def usual_dir_mode() -> int:
    """The mode an ordinary new folder of this user gets: 0777 less the umask (not mkdtemp's private 0700)."""
    return 0o777 & ~_umask()


def env_folder(name: str, default: str) -> Path:
    """The folder the environment variable `name` names (./`default` where unset). An empty or blank value (often
    `export MMBENCH_RUNS=$UNSET`) is refused, as `--runs-dir ""` is, where Path("") would silently be the current
    folder (runs or datasets written there) and Path(" ") a folder named by a space."""
    value = os.environ.get(name)
    if value is None:
        return Path(default)
    if not value.strip():
        raise MMBenchError(f"{name}={value!r}: an empty path would mean the current folder; give the path, or unset "
                           f"it to use ./{default} (is a shell variable unset?)")
    return Path(value)


def cache_folder_override() -> Optional[Path]:
    """$MMBENCH_CACHE: where the metrics' derived caches go (coherence classifiers, the authors' imported ones, FID's
    reference statistics) instead of the data root, e.g. a writable folder beside a read-only shared data root
    (the caches are keyed by the prepared data's digest, so one folder serves several data roots). None where unset;
    an empty or blank value is refused as MMBENCH_DATA's is."""
    value = os.environ.get("MMBENCH_CACHE")
    if value is None:
        return None
    if not value.strip():
        raise MMBenchError(f"MMBENCH_CACHE={value!r}: an empty path would mean the current folder; give the path, or "
                           f"unset it to keep the caches in the data root (is a shell variable unset?)")
    return Path(value)


def durable_writes() -> bool:
    """Whether atomic_write syncs each file to the disk before renaming it into place (the default). With
    MMBENCH_FSYNC=0 it does not: a crash of the machine (not of mmbench) may then lose the last writes, and
    nothing else changes. For scratch runs and the test suite (tests/conftest.py: 3–5 % faster on the
    files that write most, interleaved runs of 2026-12-04; more on a slow or network disk). Checked by the CLI
    before any work, so that a misspelt value does not stop a command at its first write, after the work."""
    value = os.environ.get("MMBENCH_FSYNC", "1")
    if value not in ("0", "1"):
        raise MMBenchError(f"MMBENCH_FSYNC={value!r}: use 1 (sync every write, the default) or 0 (do not)")
    return value == "1"


def check_environment() -> None:
    """The environment's folders and MMBENCH_FSYNC, checked (the CLI's entry point calls this first, with
    kernels.check_all)."""
    env_folder("MMBENCH_RUNS", "runs")
    env_folder("MMBENCH_DATA", "data")
    cache_folder_override()
    durable_writes()


def hold_temp(fd: int) -> None:
    """Take an flock on a temporary file being written (kept until its open file is closed, whichever descriptor of
    it): remove_abandoned_temps then tells it from one whose writer was killed. A clean-up that holds it for the
    instant it looks (a file this new it keeps) is waited for. A file system without locks: nothing held."""
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError:
        pass


def remove_abandoned_temps(folder: Path, target: Optional[str] = None, min_age_s: float = 2.0,
                           say: Optional[Callable[[str], None]] = None) -> List[str]:
    """Remove from `folder` the temporary files (temp_beside's) whose writer was killed outright (SIGKILL, a lost node:
    no `finally` ran), e.g. half a 169 MB last.pt or half a bundle: those no process holds an flock on (hold_temp)
    and not written to for `min_age_s` (a writer's first instant, before its flock; in a folder other machines
    write, their clocks' skew and a file system whose locks only this machine sees: SHARED_TEMP_AGE_S). Their names.
    `target`: only the temporary files of that file (a user's folder, where other hidden files are theirs); None: any
    temporary file's name, for a folder only mmbench writes (a run's, a cache's). A file system without locks: none
    removed (a writer's hold cannot be seen). `say`: given one line per file removed (a run's log, stderr_note)."""
    pattern = re.compile(r"^\." + (re.escape(target) if target is not None else ".+") + _TEMP_NAME)
    removed = []
    for p in sorted(folder.iterdir()) if folder.is_dir() else ():
        if not pattern.match(p.name) or not p.is_file() or p.is_symlink():
            continue
        try:
            fd = os.open(p, os.O_RDWR | os.O_NOFOLLOW)
        except OSError:
            continue  # another user's, or gone
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if time.time() - os.fstat(fd).st_mtime >= min_age_s:  # a file's age: the wall clock, as its mtime
                os.unlink(p)
                removed.append(p.name)
                if say:
                    say(f"removed {p}: a write that a process killed outright left unfinished")
        except OSError:  # held by its writer, or no locks here: kept
            pass
        finally:
            os.close(fd)
    return removed


def stderr_note(line: str) -> None:
    """`line` as a note on stderr (a cache's clean-up, which has no run log to write to)."""
    print(f"note: {line}", file=sys.stderr, flush=True)


# the age of a temporary file in a folder that other processes write without a lock the clean-up holds (a cache, which
# Slurm jobs on other nodes fill too; a run's folder, where `mmbench run --executor slurm` writes slurm.json) before
# it counts as abandoned where no writer holds it: a clock skewed by minutes, or locks that do not reach across nodes
# (NFS mounted with local_lock, Lustre's localflock), cost only a half file kept a while longer, never a live write
SHARED_TEMP_AGE_S = 600.0

LOCK_FILE = ".mmbench.lock"  # a folder's lock file (folder_lock); hidden, so no listing of runs or variants sees it


def can_lock(folder: Path, name: str = LOCK_FILE) -> bool:
    """Whether this process may take `folder`'s lock `name` (folder_lock): the folder is writable and its lock file,
    if any, too. A colleague's lock file (0644 under their umask) in a folder shared with a group is not; a cache
    there that needs no writing is then read without the lock."""
    path = folder / name
    return os.access(folder, os.W_OK) and (not os.path.lexists(path) or os.access(path, os.W_OK))


def cache_lock(folder: Path, waiting: str, name: str = LOCK_FILE):
    """A lock of a cache folder (the coherence classifiers' folder; one of FID's statistics files, by its own lock
    file `name`): folder_lock, not required (a cache filled twice is not wrong), and none where this process cannot
    lock it (can_lock: read as it is)."""
    return folder_lock(folder, waiting, required=False, name=name) if can_lock(folder, name) else nullcontext()


# flock's errors where the file system keeps no locks: NFS without lockd (ENOLCK), Lustre without -o flock (ENOSYS),
# some FUSE and SMB mounts (EOPNOTSUPP)
NO_LOCKS_ERRNOS = (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP)


@contextmanager
def folder_lock(folder: Path, waiting: Optional[str] = None, required: bool = True,
                name: str = LOCK_FILE) -> Iterator[None]:
    """One process at a time in `folder`: an flock on its lock file `name` (LOCK_FILE, or one per file in a folder of
    independent files), released when the process ends, however it ends.
    A file opened for writing, not the folder itself: NFS emulates flock with fcntl locks, and an exclusive one needs
    a file open for writing (flock(2), NOTES), which a folder cannot be. The file stays: removing it while another
    process, on another node, waits on it would leave that process a stale handle. It is made writable by whoever may
    write the folder (a group's shared data root); a colleague's that is not is locked read-only, which serves on a
    local disk. `waiting`: the line said on stderr when another process holds it. Where the file system keeps no locks,
    an error naming it, or, not `required` (a cache, filled twice at worst), a note and no lock."""
    path = folder / name
    fd, writable = _open_lock_file(folder, path)
    try:
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if waiting:
                    print(waiting, file=sys.stderr, flush=True)
                fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as e:
            if e.errno == errno.EBADF and not writable:  # NFS: an exclusive lock needs the file open for writing
                problem = (f"it is another user's and not writable by you; ask them to `chmod g+w {path}` (or remove "
                           f"it while no mmbench runs there)")
            elif e.errno in NO_LOCKS_ERRNOS:
                problem = ("its file system keeps no locks (NFS without lockd, Lustre without -o flock); mount it with "
                           "locks, or use a folder on another file system")
            else:
                raise
            if required:
                raise MMBenchError(f"cannot lock {path} ({e.strerror}): {problem}") from None
            print(f"note: cannot lock {path} ({e.strerror}), so another process could do this work at the same "
                  f"time (done twice, not wrong): {problem}", file=sys.stderr, flush=True)
        yield
    finally:
        os.close(fd)  # releases the lock


def _open_lock_file(folder: Path, path: Path) -> Tuple[int, bool]:
    """(descriptor, opened for writing) of `folder`'s lock file, created if missing."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
    except PermissionError as e:
        if not os.path.isfile(path) or os.path.islink(path):  # no lock file: the folder is not writable
            raise MMBenchError(f"cannot create the lock file {path} ({e.strerror}); make {folder} writable, and "
                               f"run again") from None
        try:  # a colleague's lock file, not writable by this user
            return os.open(path, os.O_RDONLY | os.O_NOFOLLOW), False
        except OSError as e2:
            raise MMBenchError(f"cannot open the lock file {path} ({e2.strerror}); ask its owner to `chmod g+rw "
                               f"{path}`") from None
    except OSError as e:  # a folder, a link, or a read-only file system
        fix = "move it away" if os.path.lexists(path) else f"make {folder} writable"
        raise MMBenchError(f"cannot open the lock file {path} ({e.strerror or type(e).__name__}); {fix}, "
                           f"and run again") from None
    try:
        st = os.fstat(fd)
        if st.st_uid == os.geteuid():  # writable by whoever may write the folder (its group, say), so they lock it too
            wanted = stat.S_IMODE(st.st_mode) | (stat.S_IMODE(os.stat(folder).st_mode) & (stat.S_IWGRP | stat.S_IWOTH))
            if wanted != stat.S_IMODE(st.st_mode):
                os.fchmod(fd, wanted)
    except OSError:
        pass  # the lock serves as it is
    return fd, True
