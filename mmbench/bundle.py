"""Result bundles: move finished runs between machines (`mmbench export` / `mmbench import`).

A bundle is a gzipped tar holding ``bundle.json`` (format, version, who made it, and the sha256 and size
of every file) and ``runs/<run id>/...`` for each finished run: config.yaml, metrics.json,
provenance.json, log.txt, history.json (the report's training curves) and the small artifacts the report draws;
checkpoints only when asked.

Export leaves out, and lists, a run whose config.yaml, metrics.json or provenance.json cannot be read, whose config
no longer validates or hashes to its directory name (results.read_run). Import verifies every digest, checks the
same of every run, and then adds the runs this machine does not have. It never overwrites: a run that exists here with different
results, or unfinished, stops the whole import before anything is written (the message names it and the
fix); a run that exists here with the same results is skipped. Each new run is unpacked into a temporary
folder inside the runs directory and renamed into place, so an interrupted import leaves no half run. Files are
hashed, packed, verified and unpacked in pieces (CHUNK), so neither command holds a bundle of checkpoints in memory.
"""
from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
import time
import zlib
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

from . import __version__
from .errors import DISK_FULL_ERRNOS, MMBenchError, naming
from .files import folder_lock, remove_abandoned_temps, temp_beside, usual_dir_mode
from .results import (RecordError, Run, git_commit, left_out_because, parse_config, parse_metrics,
                      parse_provenance, read_run)

FORMAT, VERSION = "mmbench-bundle", 1
MANIFEST = "bundle.json"
RUN_FILES = ("config.yaml", "metrics.json", "provenance.json", "log.txt", "history.json")  # where present
ARTIFACT_MAX_BYTES = 20 * 2 ** 20  # larger artifacts stay behind (the report's arrays are far smaller)


CHUNK = 2 ** 20  # files are hashed, written and read in pieces: a bundle of checkpoints never sits in memory whole
KEPT = {MANIFEST, "config.yaml", "metrics.json", "provenance.json"}  # the only members import reads into memory
KEPT_MAX_BYTES = 64 * 2 ** 20


def _file_digest(path: Path) -> Tuple[str, int]:
    """(sha256, size) of a file, read in pieces."""
    h, n = hashlib.sha256(), 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
            n += len(chunk)
    return h.hexdigest(), n


class _Hashing:
    """A file object that hashes what is read through it (what a tar member's writer or reader copies)."""

    def __init__(self, f):
        self.f, self.h, self.n = f, hashlib.sha256(), 0

    def read(self, size: int = -1) -> bytes:
        data = self.f.read(size)
        self.h.update(data)
        self.n += len(data)
        return data


def _run_files(run_dir: Path, checkpoints: bool) -> List[Path]:
    """The files of a run that travel; a hidden one (".last.pt.x1y2z3": atomic_write's temporary file, left half
    written by a process killed while it wrote) is not the run's and stays behind."""
    files = [run_dir / f for f in RUN_FILES if (run_dir / f).is_file()]
    art = run_dir / "artifacts"
    if art.is_dir():
        files += sorted(p for p in art.rglob("*") if p.is_file() and not _hidden(p, art)
                        and p.stat().st_size <= ARTIFACT_MAX_BYTES)
    if checkpoints and (run_dir / "checkpoints").is_dir():
        files += sorted(p for p in (run_dir / "checkpoints").rglob("*") if p.is_file()
                        and not _hidden(p, run_dir / "checkpoints"))
    return files


def _hidden(path: Path, under: Path) -> bool:
    """Whether a part of `path` below `under` starts with a dot (a temporary file or folder, never a result)."""
    return any(part.startswith(".") for part in path.relative_to(under).parts)


def finished_runs(runs_dir: Path, ids: Optional[Iterable[str]] = None) -> List[Path]:
    """Run directories with metrics.json (optionally only these ids)."""
    if not runs_dir.is_dir():
        return []
    wanted = set(ids) if ids is not None else None
    return [d for d in sorted(runs_dir.iterdir())
            if d.is_dir() and not d.name.startswith(".")  # an import's temporary folder (.import-*), not a run
            and ((d / "metrics.json").exists() or (d / "metrics.json").is_symlink())  # not a file:
            and (wanted is None or d.name in wanted)]  # listed by export_runs (read_run), not passed over


def export_runs(runs_dir: Path, out: Path, ids: Optional[Iterable[str]] = None, checkpoints: bool = False,
                left_out: Optional[List[Tuple[str, str]]] = None, force: bool = False, selection: Optional[str] = None) -> Dict:
    """Write a bundle of the finished runs (all, or those of `ids`); returns its manifest. A run that read_run
    refuses is left out with (directory, reason) appended to `left_out` (without `left_out`, it is an error). An
    existing `out` is replaced only with `force`."""
    out = Path(out)
    if out.is_dir():
        raise MMBenchError(f"{out} is a directory; name the bundle file to write, e.g. {out / 'results.tar.gz'}")
    if out.exists() and not force:
        raise MMBenchError(f"{out} already exists; name another file, or add --force to replace it")
    dirs = []
    for d in finished_runs(Path(runs_dir), ids):
        try:
            read_run(d)
        except MMBenchError as e:
            if left_out is None:
                raise MMBenchError(f"run {d}: {left_out_because(e)}") from None
            left_out.append((d.name, left_out_because(e)))
            continue
        dirs.append(d)
    if not dirs:
        raise MMBenchError(f"no finished runs to export in {runs_dir}" + (f" for {selection}" if selection else " for that suite" if ids is not None else "")
                           + (f" ({len(left_out)} left out as unreadable or foreign, e.g. {left_out[0][0]}: "
                              f"{left_out[0][1]})" if left_out else "; run them first (mmbench run) or point "
                                                                      "--runs-dir at them"))
    manifest = {"format": FORMAT, "version": VERSION, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "mmbench_version": __version__, "git_commit": git_commit(), "checkpoints": checkpoints, "runs": {}}
    if checkpoints:  # a checkpoint that cannot be read would be shipped as if it could: refused before writing
        from .train import read_checkpoint

        for d in dirs:
            for p in (d / "checkpoints").glob("*.pt") if (d / "checkpoints").is_dir() else ():
                try:
                    read_checkpoint(p, resumable=False, mmap=True)  # structure and records; the weights not read
                except MMBenchError as e:
                    raise MMBenchError(f"run {d.name}: {e}; put a good copy back, or export without --checkpoints "
                                       f"(nothing was written)") from None
    payload = []  # (member name, file): digests first (the manifest leads the tar), then the files copied in pieces
    for d in dirs:
        files = {}
        for p in _run_files(d, checkpoints):
            rel = p.relative_to(d).as_posix()
            digest, size = _file_digest(p)
            files[rel] = {"sha256": digest, "size": size}
            payload.append((f"runs/{d.name}/{rel}", p, files[rel]))
        manifest["runs"][d.name] = {"files": files}
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned_temps(out.parent, out.name)  # half a bundle an export killed outright left here
    fd, tmp = temp_beside(out)  # held until the bundle is whole: a later export tells it from a killed one's
    try:
        with tarfile.open(tmp, "w:gz") as tar:
            head = json.dumps(manifest, indent=1, sort_keys=True).encode()
            tar.addfile(_member(MANIFEST, len(head)), io.BytesIO(head))
            for name, p, meta in payload:
                with open(p, "rb") as f:
                    src = _Hashing(f)
                    try:
                        tar.addfile(_member(name, meta["size"]), src)
                    except OSError:
                        if os.fstat(f.fileno()).st_size == meta["size"]:
                            raise  # not the file (a full disk, say)
                        src.n = -1  # shorter than when it was hashed
                    if src.n != meta["size"] or f.read(1) or src.h.hexdigest() != meta["sha256"]:
                        raise MMBenchError(f"{p} changed while it was being exported; export again when no run is "
                                           f"writing to {p.parent} (nothing was written)")
        os.replace(tmp, out)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        named = naming(e, out)
        if named is not e:  # the bundle's short write (a full disk) names no file
            raise named from None
        raise
    finally:
        os.close(fd)
    return manifest


def _member(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, int(time.time()), 0o644
    return info


class BundleFiles:
    """What `read_bundle` verified in a bundle: its member names (as in the tar) -> the names the manifest lists,
    the manifest's (sha256, size) of each, and the bytes of the few small records import reads (KEPT); the rest is
    copied out of the tar in pieces by `unpack`."""

    def __init__(self, path: Path, names: Dict[str, str], listed: Dict[str, Dict], kept: Dict[str, bytes]):
        self.path, self.names, self.listed, self.kept = path, names, listed, kept

    def unpack(self, targets: Dict[str, Path]) -> None:
        """Copy the members `targets` names (bundle names, as the manifest lists them) to those paths, each checked
        against its digest again as it is copied (the bundle may have changed since it was read)."""
        left = dict(targets)
        for member, f in _members(self.path):
            name = self.names.get(member)
            if name is None or name not in left or f is None:
                continue
            target = left.pop(name)
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                out = open(target, "wb")
            except OSError as e:  # a name over NAME_MAX or PATH_MAX: the bundle's fault, not a path the user gave
                if e.errno != errno.ENAMETOOLONG:
                    raise
                raise MMBenchError(f"bundle {self.path}: {name} has a name too long for the file system here; nothing "
                                   f"imported; shorten it where the run was made and export it again") from None
            src = _Hashing(f)
            try:
                with out, _reading(self.path):
                    shutil.copyfileobj(src, out, CHUNK)
            except OSError as e:  # a full disk names no file: the one being written (not the bundle, being read)
                if e.errno in DISK_FULL_ERRNOS:
                    raise naming(e, target) from None
                raise
            if (src.h.hexdigest(), src.n) != (self.listed[name]["sha256"], self.listed[name]["size"]):
                raise MMBenchError(f"bundle {self.path}: {name} changed since it was verified (is the bundle being "
                                   f"copied over?); nothing imported; import again once it is whole")
        if left:
            raise MMBenchError(f"bundle {self.path} lost {sorted(left)[0]} since it was verified (is it being copied "
                               f"over?); import again once it is whole")


@contextlib.contextmanager
def _reading(path: Path):
    """A bundle whose data end early or do not decompress (a download cut short) is a one-line error."""
    try:
        yield
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise MMBenchError(f"bundle {path} is not a readable .tar.gz ({e}); copy it again") from None


def _members(path: Path):
    """(normalised name, file object or None for a folder) of each member of a .tar.gz, read as a stream; a member
    that is not a plain file or folder inside the bundle is an error."""
    try:
        with tarfile.open(path, "r|gz") as tar:
            for m in tar:
                parts = Path(m.name).parts  # "./runs/x" -> ("runs", "x"): a bundle unpacked and packed again with tar
                if m.name.startswith("/") or ".." in parts or not (m.isfile() or m.isdir()):
                    raise MMBenchError(f"bundle {path} holds {m.name!r}, which is not a plain file inside the "
                                       f"bundle; refusing it (was it made by `mmbench export`?)")
                yield "/".join(parts), tar.extractfile(m) if m.isfile() else None
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise MMBenchError(f"bundle {path} is not a readable .tar.gz ({e}); copy it again") from None


def _listed(path: Path, manifest: Dict) -> Dict[str, Dict]:
    """The manifest's {bundle name: {"sha256", "size"}}, its shape checked (else a one-line error, not a traceback)."""
    def damaged(what: str) -> MMBenchError:
        return MMBenchError(f"bundle {path} has a {MANIFEST} whose {what} is not what `mmbench export` writes (damaged "
                            f"or edited); export it again")

    if not isinstance(manifest.get("runs"), dict):
        raise damaged("`runs`")
    listed = {}
    for rid, r in manifest["runs"].items():
        if not isinstance(r, dict) or not isinstance(r.get("files"), dict):
            raise damaged(f"entry for run {rid}")
        for rel, meta in r["files"].items():
            if (not isinstance(meta, dict) or not isinstance(meta.get("sha256"), str)
                    or type(meta.get("size")) is not int):
                raise damaged(f"entry for runs/{rid}/{rel}")
            listed[f"runs/{rid}/{rel}"] = meta
    return listed


def read_bundle(path: Path) -> Tuple[Dict, BundleFiles]:
    """The manifest and the bundle's files, every one verified against the manifest's digests (else a one-line
    error); read as a stream in pieces, so a bundle of checkpoints needs little memory."""
    path = Path(path)
    if path.is_dir():
        raise MMBenchError(f"bundle {path} is a directory; give the .tar.gz file that `mmbench export` wrote")
    if not path.is_file():
        raise MMBenchError(f"bundle {path} does not exist; make one with `mmbench export {path.name}`")
    found: Dict[str, Tuple[str, int]] = {}
    kept: Dict[str, bytes] = {}
    for name, f in _members(path):
        if f is None:
            continue
        if name in found:  # e.g. "runs/x" and "./runs/x": which one a reader takes would differ
            raise MMBenchError(f"bundle {path} holds {name} twice; refusing it (was it made by `mmbench export`?)")
        src, pieces = _Hashing(f), []
        keep = name.rsplit("/", 1)[-1] in KEPT
        while True:
            with _reading(path):
                piece = src.read(CHUNK)
            if not piece:
                break
            if keep and src.n <= KEPT_MAX_BYTES:
                pieces.append(piece)
        found[name] = (src.h.hexdigest(), src.n)
        if keep and src.n <= KEPT_MAX_BYTES:
            kept[name] = b"".join(pieces)
    tops = {name.split("/")[0] for name in found}
    prefix = ""
    if MANIFEST not in found and len(tops) == 1 and all("/" in name for name in found):
        (top,) = tops  # packed again from above its folder (tar czf b.tar.gz folder/): read inside it
        if f"{top}/{MANIFEST}" in found:
            prefix = f"{top}/"
    found = {name[len(prefix):]: v for name, v in found.items()}
    kept = {name[len(prefix):]: v for name, v in kept.items()}
    try:
        manifest = json.loads(kept.pop(MANIFEST))
        found.pop(MANIFEST)
    except (KeyError, ValueError, RecursionError):  # RecursionError: JSON nested thousands of levels deep
        raise MMBenchError(f"bundle {path} has no valid {MANIFEST}; it was not made by `mmbench export`") from None
    if not isinstance(manifest, dict):
        raise MMBenchError(f"bundle {path} has no valid {MANIFEST} (it holds a JSON {type(manifest).__name__}); it was "
                           f"not made by `mmbench export`")
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise MMBenchError(f"bundle {path} is format {manifest.get('format')!r} v{manifest.get('version')}; this "
                           f"mmbench reads {FORMAT} v{VERSION}")
    listed = _listed(path, manifest)
    for name in sorted(set(listed) | set(found)):
        if name not in found:
            raise MMBenchError(f"bundle {path} lacks {name}, which its manifest lists; the bundle is incomplete")
        if name not in listed:
            raise MMBenchError(f"bundle {path} holds {name}, which its manifest does not list; refusing it")
        if found[name] != (listed[name]["sha256"], listed[name]["size"]):
            raise MMBenchError(f"bundle {path}: {name} does not match its sha256 in {MANIFEST} (corrupted or "
                               f"edited); export it again")
    for name in listed:  # runs/x/artifacts and runs/x/artifacts/a.npz cannot both be unpacked
        parts = name.split("/")
        for i in range(3, len(parts)):
            if (folder := "/".join(parts[:i])) in listed:
                raise MMBenchError(f"bundle {path} holds {folder} both as a file and as a folder ({name}); refusing it "
                                   f"(was it made by `mmbench export`?)")
    return manifest, BundleFiles(path, {prefix + name: name for name in found}, listed, kept)


def import_bundle(path: Path, runs_dir: Path) -> Dict[str, List[str]]:
    """Merge a bundle into `runs_dir`: {"added": [...], "present": [...]} (conflicts raise, nothing written)."""
    runs_dir = Path(runs_dir)
    above = runs_dir  # the runs directory, or the nearest folder above it that exists (it is made if missing)
    while not above.exists() and above != above.parent:
        above = above.parent
    if not above.is_dir():  # else mkdir's bare FileExistsError / NotADirectoryError, after the bundle was read
        raise MMBenchError(f"runs directory {runs_dir}{'' if above == runs_dir else f': {above}'} is a file, not a "
                           f"directory; point --runs-dir at the folder the runs are kept in (made if missing)")
    manifest, bundle = read_bundle(path)
    added, present, problems = [], [], []
    for rid, entry in sorted(manifest["runs"].items()):
        files = {rel: bundle.kept[name] for rel in entry["files"] if (name := f"runs/{rid}/{rel}") in bundle.kept}
        for need in ("config.yaml", "metrics.json"):
            if need not in files:
                raise MMBenchError(f"bundle {path}: run {rid} has no {need}; it is not a finished run")
        try:  # as export checks them (results.read_run): a run the report could not read is not imported
            _, cfg = parse_config(files["config.yaml"], f"{path}:runs/{rid}/config.yaml")
            theirs = parse_metrics(files["metrics.json"], f"{path}:runs/{rid}/metrics.json")
            if "provenance.json" in files:
                parse_provenance(files["provenance.json"], f"{path}:runs/{rid}/provenance.json")
        except RecordError as e:
            raise MMBenchError(f"bundle {path}: run {rid}'s {Path(e.where).name} cannot be read ({e.problem}); nothing "
                               f"imported; export that run again from a good copy, or leave it out") from None
        if cfg.run_id() != rid:
            raise MMBenchError(f"bundle {path}: run {rid}'s config hashes to {cfg.run_id()} here; the bundle comes "
                               f"from an mmbench whose run ids differ (its version {manifest.get('mmbench_version')}, "
                               f"commit {manifest.get('git_commit')}); import it with that version")
        local = Run(cfg, runs_dir)
        if not os.path.lexists(local.dir):
            added.append(rid)
            continue
        if not local.dir.exists():  # a symlink to nothing: no run can be renamed onto it
            problems.append(f"run {rid} exists here as a link to nothing ({os.readlink(local.dir)}); remove "
                            f"{local.dir} or put back what it points to")
            continue
        try:
            mine = local.read_metrics()
        except RecordError as e:
            problems.append(f"run {rid} exists here with a metrics.json that cannot be read ({e.problem}); move "
                            f"{local.dir} away to take the bundle's")
            continue
        if mine is None:
            problems.append(f"run {rid} exists here unfinished ({local.status()}); finish it or move {local.dir} away")
        elif mine.get("metrics") != theirs.get("metrics"):
            problems.append(f"run {rid} exists here with different results; keep one (move {local.dir} away to "
                            f"take the bundle's)")
        else:
            present.append(rid)
    if problems:
        raise MMBenchError(f"bundle {path}: {len(problems)} conflicting run(s), nothing imported; first: {problems[0]}")
    runs_dir.mkdir(parents=True, exist_ok=True)
    # Every new run is unpacked into a temporary folder beside the runs (one pass over the bundle), then each is
    # renamed into place: an interrupted import leaves no half run.
    # one import at a time unpacks here; under the lock, any .import-* folder is one an import killed outright
    # (SIGKILL: its `finally` never ran) left behind, half unpacked or never renamed
    with folder_lock(runs_dir):
        for p in runs_dir.iterdir():
            if p.name.startswith(".import-") and p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
        tmps: Dict[str, Path] = {}
        try:
            for rid in added:
                tmps[rid] = Path(tempfile.mkdtemp(prefix=f".import-{rid}-", dir=runs_dir))
                os.chmod(tmps[rid], usual_dir_mode())  # readable by colleagues, as every folder mmbench makes
            bundle.unpack({f"runs/{rid}/{rel}": tmps[rid] / rel for rid in added
                           for rel in manifest["runs"][rid]["files"]})
            for rid in added:
                try:
                    os.rename(tmps[rid], runs_dir / rid)  # fails rather than replace a run that appeared meanwhile
                    del tmps[rid]
                except OSError:
                    raise MMBenchError(f"run {rid} appeared in {runs_dir} while the bundle was being imported; it was "
                                       f"left as it is; import again to add the runs still missing") from None
        finally:
            for tmp in tmps.values():
                shutil.rmtree(tmp, ignore_errors=True)
    return {"added": added, "present": present}
