"""Result bundles: move finished runs between machines (`mmbench export` / `mmbench import`).

A bundle is a gzipped tar holding ``bundle.json`` (format, version, who made it, and the sha256 and size
of every file) and ``runs/<run id>/...`` for each finished run: config.yaml, metrics.json,
provenance.json, log.txt and the small artifacts the report draws; checkpoints only when asked.

Export leaves out, and lists, a run whose config.yaml, metrics.json or provenance.json cannot be read, whose config
no longer validates or hashes to its directory name (results.read_run). Import verifies every digest, checks the
same of every run, and then adds the runs this machine does not have. It never overwrites: a run that exists here with different
results, or unfinished, stops the whole import before anything is written (the message names it and the
fix); a run that exists here with the same results is skipped. Each new run is unpacked into a temporary
folder inside the runs directory and renamed into place, so an interrupted import leaves no half run.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

from . import __version__
from .errors import MMBenchError
from .files import temp_beside, usual_dir_mode
from .results import (RecordError, Run, git_commit, left_out_because, parse_config, parse_metrics,
                      parse_provenance, read_run)

FORMAT, VERSION = "mmbench-bundle", 1
MANIFEST = "bundle.json"
RUN_FILES = ("config.yaml", "metrics.json", "provenance.json", "log.txt")
ARTIFACT_MAX_BYTES = 20 * 2 ** 20  # larger artifacts stay behind (the report's arrays are far smaller)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _run_files(run_dir: Path, checkpoints: bool) -> List[Path]:
    files = [run_dir / f for f in RUN_FILES if (run_dir / f).is_file()]
    art = run_dir / "artifacts"
    if art.is_dir():
        files += sorted(p for p in art.rglob("*") if p.is_file() and p.stat().st_size <= ARTIFACT_MAX_BYTES)
    if checkpoints and (run_dir / "checkpoints").is_dir():
        files += sorted(p for p in (run_dir / "checkpoints").rglob("*") if p.is_file())
    return files


def finished_runs(runs_dir: Path, ids: Optional[Iterable[str]] = None) -> List[Path]:
    """Run directories with metrics.json (optionally only these ids)."""
    if not runs_dir.is_dir():
        return []
    wanted = set(ids) if ids is not None else None
    return [d for d in sorted(runs_dir.iterdir())
            if d.is_dir() and (d / "metrics.json").is_file() and (wanted is None or d.name in wanted)]


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
    payload = []
    if checkpoints:  # a checkpoint that cannot be read would be shipped as if it could: refused before writing
        from .train import read_checkpoint

        for d in dirs:
            for p in (d / "checkpoints").glob("*.pt") if (d / "checkpoints").is_dir() else ():
                try:
                    read_checkpoint(p, resumable=False)
                except MMBenchError as e:
                    raise MMBenchError(f"run {d.name}: {e}; put a good copy back, or export without --checkpoints "
                                       f"(nothing was written)") from None
    for d in dirs:
        files = {}
        for p in _run_files(d, checkpoints):
            data = p.read_bytes()
            rel = p.relative_to(d).as_posix()
            files[rel] = {"sha256": _sha256(data), "size": len(data)}
            payload.append((f"runs/{d.name}/{rel}", data))
        manifest["runs"][d.name] = {"files": files}
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_beside(out)
    os.close(fd)
    try:
        with tarfile.open(tmp, "w:gz") as tar:
            for name, data in [(MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode())] + payload:
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
                tar.addfile(info, io.BytesIO(data))
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return manifest


def read_bundle(path: Path) -> tuple[Dict, Dict[str, bytes]]:
    """The manifest and every run file, verified against the manifest's digests (else a one-line error)."""
    path = Path(path)
    if path.is_dir():
        raise MMBenchError(f"bundle {path} is a directory; give the .tar.gz file that `mmbench export` wrote")
    if not path.is_file():
        raise MMBenchError(f"bundle {path} does not exist; make one with `mmbench export {path.name}`")
    try:
        with tarfile.open(path, "r:gz") as tar:
            members = {}
            for m in tar.getmembers():
                parts = Path(m.name).parts  # "./runs/x" -> ("runs", "x"): a bundle unpacked and packed again with tar
                if m.name.startswith("/") or ".." in parts or not (m.isfile() or m.isdir()):
                    raise MMBenchError(f"bundle {path} holds {m.name!r}, which is not a plain file inside the "
                                       f"bundle; refusing it (was it made by `mmbench export`?)")
                if m.isfile():
                    name = "/".join(parts)
                    if name in members:  # e.g. "runs/x" and "./runs/x": which one a reader takes would differ
                        raise MMBenchError(f"bundle {path} holds {name} twice (as {m.name!r} too); refusing it (was "
                                           f"it made by `mmbench export`?)")
                    members[name] = tar.extractfile(m).read()
    except (tarfile.TarError, EOFError, OSError) as e:
        raise MMBenchError(f"bundle {path} is not a readable .tar.gz ({e}); copy it again") from None
    tops = {name.split("/")[0] for name in members}
    if MANIFEST not in members and len(tops) == 1 and all("/" in name for name in members):
        (top,) = tops  # packed again from above its folder (tar czf b.tar.gz folder/): read inside it
        if f"{top}/{MANIFEST}" in members:
            members = {name[len(top) + 1:]: data for name, data in members.items()}
    try:
        manifest = json.loads(members.pop(MANIFEST))
    except (KeyError, ValueError):
        raise MMBenchError(f"bundle {path} has no valid {MANIFEST}; it was not made by `mmbench export`") from None
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise MMBenchError(f"bundle {path} is format {manifest.get('format')!r} v{manifest.get('version')}; this "
                           f"mmbench reads {FORMAT} v{VERSION}")
    listed = {f"runs/{rid}/{rel}": meta for rid, r in manifest["runs"].items() for rel, meta in r["files"].items()}
    for name in sorted(set(listed) | set(members)):
        if name not in members:
            raise MMBenchError(f"bundle {path} lacks {name}, which its manifest lists; the bundle is incomplete")
        if name not in listed:
            raise MMBenchError(f"bundle {path} holds {name}, which its manifest does not list; refusing it")
        if _sha256(members[name]) != listed[name]["sha256"] or len(members[name]) != listed[name]["size"]:
            raise MMBenchError(f"bundle {path}: {name} does not match its sha256 in {MANIFEST} (corrupted or "
                               f"edited); export it again")
    return manifest, members


def import_bundle(path: Path, runs_dir: Path) -> Dict[str, List[str]]:
    """Merge a bundle into `runs_dir`: {"added": [...], "present": [...]} (conflicts raise, nothing written)."""
    manifest, members = read_bundle(path)
    runs_dir = Path(runs_dir)
    added, present, problems = [], [], []
    for rid, entry in sorted(manifest["runs"].items()):
        files = {rel: members[f"runs/{rid}/{rel}"] for rel in entry["files"]}
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
        if not local.dir.exists():
            added.append(rid)
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
    for rid in added:
        tmp = Path(tempfile.mkdtemp(prefix=f".import-{rid}-", dir=runs_dir))
        os.chmod(tmp, usual_dir_mode())  # the run folder colleagues can read, as every folder mmbench makes
        try:
            for rel in manifest["runs"][rid]["files"]:
                target = tmp / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(members[f"runs/{rid}/{rel}"])
            os.rename(tmp, runs_dir / rid)  # fails rather than replace a run that appeared meanwhile
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return {"added": added, "present": present}
