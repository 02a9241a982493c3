"""Cached derived data of the metrics (classifier scores and digests, FID reference statistics): read back with
their damage said, and set aside (never deleted) where they are rebuilt."""
from __future__ import annotations

import json
import math
import os
import shutil
import sys
from pathlib import Path
from typing import Optional, Tuple

from ..data.base import default_data_root
from ..errors import MMBenchError, brief
from ..files import cache_folder_override


def cache_root(data_root: Optional[Path]) -> Path:
    """Where the derived caches live: $MMBENCH_CACHE where set (e.g. beside a read-only shared data root), else the
    data root (`--data-root`, $MMBENCH_DATA or ./data)."""
    return cache_folder_override() or Path(data_root or default_data_root())


def writable_folder(folder: Path, what: str) -> Path:
    """`folder` (`cache_folder`), checked writable before the work whose result goes there (a classifier trained,
    an Inception pass): a read-only data root is said with its fix, not found at the first write, after the work."""
    cache_folder(folder, what)
    here = next(p for p in [folder, *folder.parents] if p.exists())
    if not os.access(here, os.W_OK):
        raise MMBenchError(f"{here} is not writable, and mmbench keeps {what} in {folder} (a read-only data root?); "
                           f"set MMBENCH_CACHE to a writable folder for mmbench's caches, or make it writable")
    return folder


def cache_folder(folder: Path, what: str) -> Path:
    """`folder`, where a cache is written, checked before the work that fills it: a file or a link to nowhere in its
    place or a folder's above it is an error naming it (not an OS error once the classifiers are trained)."""
    for p in [folder, *folder.parents]:
        if p.is_dir():
            break
        if os.path.lexists(p):
            kind = "a link to nowhere" if p.is_symlink() and not p.exists() else "a file"
            raise MMBenchError(f"{p} is {kind} where mmbench keeps {what} (in the folder {folder}); move it away, "
                               f"and run again")
    return folder


def set_aside(path: Path, problem: str, doing: str) -> None:
    """Move a corrupt cache file (derived data) out of the way as `<name>.corrupt`, kept for a look, saying so on
    stderr and what is done instead (`doing`)."""
    aside = path.with_name(path.name + ".corrupt")
    if not os.path.lexists(path):  # another process, reading the same damaged file at the same time, moved it first
        return
    if aside.is_dir() and not aside.is_symlink():  # an earlier set-aside folder: os.replace cannot replace it
        shutil.rmtree(aside)
    elif path.is_dir() and not path.is_symlink() and os.path.lexists(aside):  # a folder cannot replace a file
        os.unlink(aside)
    try:
        os.replace(path, aside)
    except FileNotFoundError:  # the same, between the check and the move
        return
    print(f"note: {path} {problem}; moved it to {aside.name}, {doing}", file=sys.stderr)


def read_cached_json(path: Path) -> Tuple[dict, Optional[str]]:
    """A cached JSON object and None ({} and None when there is none), or {} and what is wrong with the file."""
    if not path.exists():
        return {}, None
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:  # not JSON (JSONDecodeError), not text (UnicodeDecodeError)
        return {}, f"is not JSON ({e})"
    except OSError as e:  # a folder, an unreadable file
        return {}, f"cannot be read ({brief(e)})"
    if not isinstance(found, dict):
        return {}, f"holds a JSON {type(found).__name__}, not an object"
    return found, None


def valid_score(value) -> bool:
    """A test accuracy or mean AP as recorded in an accuracy.json: a finite number in [0, 1] (not a bool, which
    JSON's true would give). NaN would pass every `score < floor` check (eval.classifier_min_accuracy)."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            and 0.0 <= value <= 1.0)
