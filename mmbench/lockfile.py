"""The pinned environment: ``requirements.lock`` against ``pyproject.toml``.

``make lock`` resolves pyproject.toml's dependencies (and the ``test`` extra) with ``uv pip compile
--generate-hashes`` into ``requirements.lock`` and stamps it with the digest of the dependency lists it
was made from; ``make install`` installs exactly the lock (``pip --require-hashes``) and then runs
``python -m mmbench.lockfile check``, so a pyproject.toml edited without ``make lock`` stops the install
(and CI) with a one-line message. Standard library only, except the version check, which uses
``packaging`` when it is importable (it always is inside the installed environment).

    python -m mmbench.lockfile stamp [LOCK]   append/refresh the digest line (make lock does this)
    python -m mmbench.lockfile check [LOCK]   exit 1 with a message when the lock is stale
"""
from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path
from typing import Dict, List, Optional

STAMP = "# pyproject-dependencies-sha256: "
EXTRAS = ("test",)  # the extras the lock covers (what `make test` installs)


def _load_toml(path: Path) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    return tomllib.loads(path.read_text(encoding="utf-8"))


def requirements(pyproject: Path) -> List[str]:
    """The dependency strings the lock must satisfy: [project.dependencies] + the locked extras."""
    project = _load_toml(pyproject)["project"]
    reqs = list(project.get("dependencies", []))
    for extra in EXTRAS:
        reqs += project.get("optional-dependencies", {}).get(extra, [])
    return reqs


def digest(pyproject: Path) -> str:
    return hashlib.sha256(json.dumps(sorted(requirements(pyproject))).encode()).hexdigest()


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(lock: Path) -> Dict[str, str]:
    """name -> pinned version, from `name==version` lines."""
    out = {}
    for line in lock.read_text(encoding="utf-8").splitlines():
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", line)
        if m:
            out[_norm(m.group(1))] = m.group(2)
    return out


def problems(pyproject: Path, lock: Path) -> List[str]:
    """Why the lock does not serve pyproject.toml (empty: it does)."""
    if not lock.exists():
        return [f"{lock} is missing; run `make lock`"]
    text = lock.read_text(encoding="utf-8")
    stamped = next((l[len(STAMP):].strip() for l in text.splitlines() if l.startswith(STAMP)), None)
    out = []
    if stamped is None:
        out.append(f"{lock} has no '{STAMP.strip()}' line; run `make lock`")
    elif stamped != digest(pyproject):
        out.append(f"pyproject.toml's dependencies changed since {lock.name} was made; run `make lock`")
    pinned = pins(lock)
    try:
        from packaging.requirements import Requirement
    except ModuleNotFoundError:  # outside the environment: the digest check above still holds
        return out
    for raw in requirements(pyproject):
        req = Requirement(raw)
        version = pinned.get(_norm(req.name))
        if version is None:
            out.append(f"{req.name} (pyproject.toml) is not pinned in {lock.name}; run `make lock`")
        elif not req.specifier.contains(version, prereleases=True):
            out.append(f"{req.name}=={version} in {lock.name} does not satisfy pyproject.toml's '{raw}'; "
                       f"run `make lock`")
    return out


def stamp(pyproject: Path, lock: Path) -> None:
    lines = [l for l in lock.read_text(encoding="utf-8").splitlines() if not l.startswith(STAMP)]
    lines.insert(0, STAMP + digest(pyproject))
    lock.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("check", "stamp"):
        print("usage: python -m mmbench.lockfile check|stamp [LOCK]", file=sys.stderr)
        return 2
    root = Path.cwd()
    lock = Path(argv[1]) if len(argv) > 1 else root / "requirements.lock"
    pyproject = root / "pyproject.toml"
    if argv[0] == "stamp":
        stamp(pyproject, lock)
        return 0
    found = problems(pyproject, lock)
    for p in found:
        print(f"error: {p}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
