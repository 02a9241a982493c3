"""Temporary files that become results: created beside their target (so os.replace is atomic) with the permissions
an ordinary file of this user gets (0666 less the umask), not mkstemp's private 0600, so that colleagues on a shared
cluster can read the runs, bundles and datasets mmbench writes."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Tuple


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
    """(fd, path) of a new empty file in `target`'s folder, named after it, with the user's usual file mode."""
    fd, tmp = tempfile.mkstemp(prefix=f".{Path(target).name}.", dir=Path(target).parent)
    os.fchmod(fd, usual_mode())
    return fd, tmp


def usual_mode() -> int:
    """The mode an ordinary new file of this user gets: 0666 less the umask."""
    return 0o666 & ~_umask()


def usual_dir_mode() -> int:
    """The mode an ordinary new folder of this user gets: 0777 less the umask (not mkdtemp's private 0700)."""
    return 0o777 & ~_umask()
