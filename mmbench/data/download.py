"""Fetching raw files: from the user's own copy (`--source DIR`) or from canonical URLs, verified.

Downloads resume from a partial ``<name>.part`` file with an HTTP Range request (and start over when the server
ignores the range or refuses it with 416), try each mirror in turn, and are checked against their published md5;
a file that does not match is deleted and the error names the file, the expected and the actual digest.
"""
from __future__ import annotations

import hashlib
import http.client
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

from ..errors import MMBenchError, brief

CHUNK = 1 << 16


@dataclass(frozen=True)
class Resource:
    filename: str
    md5: Optional[str]  # None: no published digest (the sha256 is recorded in the manifest instead)
    urls: Sequence[str]


def file_digest(path: Path, algo: str = "md5") -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def damaged(path: Path, problem: str, res: Optional[Resource], user_copy: bool) -> MMBenchError:
    """The error for a raw file that fails its checksum or cannot be read. The user's own copy (read in place from
    --source) is theirs to replace, from the canonical URL where there is one; a file mmbench downloaded is deleted
    and fetched again."""
    if user_copy:
        where = f" (download it from {res.urls[0]})" if res is not None and res.urls else ""
        return MMBenchError(f"{path} {problem}: your copy (from --source) is corrupt or not the published file; "
                            f"replace it with an intact copy{where}")
    return MMBenchError(f"{path} {problem}: the downloaded file is corrupt; delete it and prepare again to download "
                        f"it anew")


def _check(path: Path, res: Resource, delete: bool) -> None:
    """The published md5 of `res` against `path`: a downloaded file (`delete`) that fails it is deleted, the user's
    copy is left as it is."""
    if res.md5 is None:
        return
    actual = file_digest(path)
    if actual != res.md5:
        if delete:
            path.unlink()
            raise MMBenchError(f"{res.filename}: md5 {actual} does not match the published {res.md5}; the file was "
                               f"deleted, run the command again to re-download it")
        raise damaged(path, f"fails its checksum (md5 {actual}, published {res.md5})", res, user_copy=True)


class PartWriteError(MMBenchError):
    """The partial download could not be written here (a full disk, a quota): not the mirror's fault, so no other
    mirror is tried (each would fail the same way); what was written is kept for the resume."""

    def __init__(self, part: Path, done: int, e: OSError):
        super().__init__(f"writing the download {part} failed after {done:,} bytes ({brief(e)}); they are kept: free "
                         f"space in {part.parent} (a full disk or a quota?) and run the command again to resume")


def _open(url: str, have: int, timeout: float):
    req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    return urllib.request.urlopen(req, timeout=timeout)


def _download(url: str, part: Path, progress: Callable[[str, int, int], None], timeout: float) -> None:
    have = part.stat().st_size if part.exists() else 0
    try:
        resp = _open(url, have, timeout)
    except urllib.error.HTTPError as e:
        if not (have and e.code == 416):
            raise
        # 416 Range Not Satisfiable: the partial file is as long as the file or longer (killed between the last
        # write and the rename, or left by another file): asking for its tail again would fail every time
        have = 0
        resp = _open(url, have, timeout)
    with resp:
        if have and resp.status != 206:  # server ignored the range: start over
            have = 0
        total = resp.headers.get("Content-Length")
        total = int(total) + have if total is not None else 0
        done, failed = have, None
        try:
            f = open(part, "ab" if have else "wb")
        except OSError as e:
            raise PartWriteError(part, done, e) from None
        try:
            while failed is None:
                block = resp.read(CHUNK)  # a network error (an OSError too) propagates as the mirror's failure
                if not block:
                    break
                try:
                    f.write(block)
                except OSError as e:  # the disk's failure, not the mirror's
                    failed = e
                    break
                done += len(block)
                progress(f"download {part.name[:-5]}", done, max(total, done))
        finally:
            try:
                f.close()  # writes what is buffered: a full disk may first show here
            except OSError as e:
                failed = failed or e
        if failed is not None:
            raise PartWriteError(part, done, failed)
        if total and done < total:
            raise MMBenchError(f"download of {url} stopped at {done} of {total} bytes; run again to resume")


def fetch(res: Resource, raw_dir: Path, source: Optional[Path] = None,
          progress: Optional[Callable[[str, int, int], None]] = None, timeout: float = 60.0) -> Path:
    """The verified raw file `res`: the user's copy in `source`, or in `raw_dir` (already there or downloaded)."""
    progress = progress or (lambda *a: None)
    raw_dir = Path(raw_dir)
    try:
        raw_dir.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise MMBenchError(f"{raw_dir} cannot be made, a file is in the way (it or one of its parent folders); move "
                           f"that file away, downloads are kept in {raw_dir}") from None
    dest = raw_dir / res.filename
    if source is not None:
        src = Path(source) / res.filename
        if not src.exists():
            raise MMBenchError(f"{res.filename} is not in --source {source}; put it there or drop --source to download it")
        if not src.is_file():  # e.g. a folder the archive was unpacked into, named as the archive
            raise MMBenchError(f"{src} is {'a folder' if src.is_dir() else 'not a regular file'}, not the file "
                               f"{res.filename}; put the file itself in --source {source}")
        _check(src, res, delete=False)
        return src  # read in place: the user's copy is verified, not duplicated
    if dest.exists():
        if not dest.is_file():  # not ours to delete
            raise MMBenchError(f"{dest} is {'a folder' if dest.is_dir() else 'not a regular file'} where the downloaded "
                               f"{res.filename} belongs; remove it and run the command again to download the file")
        _check(dest, res, delete=True)
        return dest
    part = raw_dir / (res.filename + ".part")
    errors = []
    for url in res.urls:
        try:
            _download(url, part, progress, timeout)
        except PartWriteError:
            raise
        except (urllib.error.URLError, OSError, http.client.HTTPException, MMBenchError) as e:
            errors.append(f"{url}: {getattr(e, 'reason', e)}")
            continue
        part.rename(dest)
        _check(dest, res, delete=True)
        return dest
    if not res.urls:
        raise MMBenchError(f"{res.filename} has no download URL; download it yourself and pass --source DIR")
    raise MMBenchError(f"could not download {res.filename} ({'; '.join(errors)}); "
                       f"download it yourself and pass --source DIR")
