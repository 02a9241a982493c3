"""User-facing errors: one line saying what is wrong and how to fix it."""
from __future__ import annotations

import errno
from typing import Any, Optional


class MMBenchError(Exception):
    """An error caused by the user's input or environment; the CLI prints it as one line."""


def brief(e: BaseException, width: int = 100) -> str:
    """An exception as one short line for a log or a table cell: its type and the first line of its message
    (which may be empty), shortened to about `width` characters (`shorten`)."""
    lines = str(e).splitlines()
    return f"{type(e).__name__}: {shorten(lines[0], width)}" if lines else type(e).__name__


def shorten(text: str, width: int) -> str:
    """`text` when it fits in `width` characters; else its first sentence when that fits; else the words that fit,
    with "…" marking the cut (never a cut inside a word)."""
    if len(text) <= width:
        return text
    end = text.find(". ")
    if 0 < end < width:
        return text[:end + 1]
    cut = text.rfind(" ", 0, width)
    return text[:cut if cut > 0 else width].rstrip(" ,;:") + "…"


class ConfigError(MMBenchError):
    """A config, suite or override is invalid. The message names the field and what is allowed."""

    def __init__(self, where: str, problem: str):
        self.where = where
        self.problem = problem
        super().__init__(f"{where}: {problem}" if where else problem)


def show_value(value: Any, width: int = 80) -> str:
    """repr(value), cut to about `width` characters: an error quoting a whole misplaced block, or a number of
    hundreds of digits, stays readable."""
    text = repr(value)
    return text if len(text) <= width else text[:width] + "…"


DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # no space, over quota, over a file-size limit
DISK_FULL = ("a full disk or a quota: free space and run the command again; files already written are kept, and "
             "unfinished runs resume from their last checkpoint")


def naming(e: BaseException, path) -> BaseException:
    """`e`, or where it is an OSError naming no file (a short write on a full disk, a failed flush) the same error
    naming `path`, the file being written: what `os_error_line` and the user can act on."""
    if isinstance(e, OSError) and e.filename is None:
        return OSError(e.errno, e.strerror or str(e), str(path))
    return e


def os_error_line(e: OSError) -> Optional[str]:
    """An OSError about a path as one line with its fix (a full disk: free space; else: the path and its
    permissions), as the CLI and a run's worker print it; None for one naming no path (a bug, shown in full)."""
    if e.filename is None:
        return None
    to = f" -> {e.filename2}" if e.filename2 else ""
    fix = DISK_FULL if e.errno in DISK_FULL_ERRNOS else "check the path and its permissions"
    return f"{e.filename}{to}: {e.strerror or e} ({fix})"
