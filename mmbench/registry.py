"""Decorator registries for datasets, methods, architectures, likelihoods and metrics.

Anything that can be named in a suite or on the command line lives in one of these.
Registering is a decorator on the class or function; looking up an unknown name raises a
one-line error listing what exists.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Iterator, Tuple

from .errors import MMBenchError


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._items: Dict[str, Any] = {}

    def register(self, name: str) -> Callable[[Any], Any]:
        def deco(obj: Any) -> Any:
            if name in self._items and self._items[name] is not obj:
                raise RuntimeError(f"{self.kind} {name!r} registered twice")
            self._items[name] = obj
            obj.registry_name = name
            return obj

        return deco

    def get(self, name: str) -> Any:
        _load_builtins()
        try:
            return self._items[name]
        except KeyError:
            raise MMBenchError(
                f"unknown {self.kind} {name!r}; choose one of: {', '.join(sorted(self._items)) or '(none)'}"
            ) from None

    def __contains__(self, name: str) -> bool:
        _load_builtins()
        return name in self._items

    def names(self) -> list[str]:
        _load_builtins()
        return sorted(self._items)

    def items(self) -> Iterator[Tuple[str, Any]]:
        _load_builtins()
        return iter(sorted(self._items.items()))


DATASETS = Registry("dataset")
METHODS = Registry("method")
ARCHITECTURES = Registry("architecture")
LIKELIHOODS = Registry("likelihood")
METRICS = Registry("metric")

_loaded = False


def _load_builtins() -> None:
    """Import the modules whose decorators fill the registries (once, lazily)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    import importlib
    import pkgutil

    from . import likelihoods  # noqa: F401

    # Every module of these packages registers what it defines; a new file needs no list edited.
    for pkg in ("data", "methods", "metrics", "nets"):
        package = importlib.import_module(f"{__package__}.{pkg}")
        for info in pkgutil.iter_modules(package.__path__):
            importlib.import_module(f"{package.__name__}.{info.name}")


def describe(obj: Any) -> str:
    """The first paragraph of an object's docstring, on one line: the description shown by `mmbench list` (a
    docstring's first line alone may stop mid-sentence)."""
    doc = (obj.__doc__ or "").strip()
    return " ".join(line.strip() for line in doc.split("\n\n")[0].splitlines())
