"""YAML files read strictly: a key given twice in one mapping is an error, not "the last one wins".

PyYAML's safe_load keeps the last of two equal keys without a word, so a suite that wrote
`method_overrides:` twice silently lost the first entry. Every file mmbench reads (suites, reference
results, run configs, the Slurm site file) goes through ``load``.
"""
from __future__ import annotations

import copy
from collections import OrderedDict
from typing import Any, Tuple

import yaml

from .errors import ConfigError, brief


class _StrictLoader(yaml.SafeLoader):
    pass


def _mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen = {}
    for key_node, _ in node.value:  # the keys as written: a merge (<<) may be overridden by an explicit key
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            continue  # the base constructor reports an unhashable key
        if key in seen:
            raise yaml.constructor.ConstructorError(
                "while reading a mapping", node.start_mark,
                f"the key {key!r} is given twice (first at line {seen[key] + 1}); merge the two entries into one",
                key_node.start_mark)
        seen.setdefault(key, key_node.start_mark.line)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)

# libyaml's parser (in PyYAML's wheels) with the same constructor and resolver, for the files mmbench writes itself:
# 8 of the 13 s `mmbench report` took over 900 runs (profiled) went to PyYAML's pure-Python scanner reading their
# config.yaml files. Not for files people write: libyaml accepts a few documents PyYAML's parser refuses (a tab
# inside a flow list or before a value, a "?" inside a flow mapping's key, a byte-order mark inside the text). A
# config.yaml edited by hand or imported from a bundle is read the same way; what it says must still give its run id.
def _fast_loader() -> Any:
    """libyaml's safe loader with the strict mapping constructor; None where this PyYAML was built without libyaml."""
    if getattr(yaml, "CSafeLoader", None) is None:
        return None

    class _FastStrictLoader(yaml.CSafeLoader):
        pass

    _FastStrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)
    return _FastStrictLoader


_FastStrictLoader = _fast_loader()


# Documents read by PyYAML's own parser, by their text: the reference files, budgets and suites are read again for
# every report (~0.25 s each; most of `build_report`'s time in the tests), and a copy of a value costs a fraction.
_PARSED: "OrderedDict[Tuple[type, str | bytes], Any]" = OrderedDict()
_PARSED_MAX = 32


def load(text: str | bytes, where: str, written_by_mmbench: bool = False) -> Any:
    """The YAML document in `text`; a syntax error or a repeated key is a ConfigError naming `where` and the line.
    `written_by_mmbench` (a run's config.yaml): read by libyaml where PyYAML has it, and a document libyaml refuses
    is read again by PyYAML's own parser, whose error (or value) is the one given."""
    if written_by_mmbench and _FastStrictLoader is not None:
        try:
            return yaml.load(text, Loader=_FastStrictLoader)
        except Exception:  # noqa: BLE001 - the pure-Python reading below gives the value or the error
            pass
    key = (type(text), text)
    if key in _PARSED:  # the same text read before: a copy of its value (the caller's to change), as a fresh parse
        _PARSED.move_to_end(key)
        return copy.deepcopy(_PARSED[key])
    value = _parse(text, where)
    _PARSED[key] = copy.deepcopy(value)
    while len(_PARSED) > _PARSED_MAX:
        _PARSED.popitem(last=False)
    return value


def _parse(text: str | bytes, where: str) -> Any:
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except yaml.reader.ReaderError as e:  # a character YAML does not allow; its str() spans two lines
        line = text.count(b"\n" if isinstance(text, bytes) else "\n", 0, e.position) + 1  # bytes: a file read whole
        raise ConfigError(where, f"not valid YAML at line {line}: {e.reason} (#x{e.character:04x}); remove it") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = (getattr(e, "problem", None) or str(e)).splitlines()[0]
        raise ConfigError(where, f"not valid YAML{at}: {problem}") from None
    except (ValueError, TypeError) as e:  # a tagged value its tag cannot take: !!int x, !!timestamp 2020-13-45, !!map [1]
        raise ConfigError(where, f"not valid YAML: a value its tag cannot take ({brief(e)}); drop the "
                          f"tag (!!int, !!float, ...) or fix the value") from None
    except RecursionError:  # PyYAML's parser recurses once per level of nesting
        raise ConfigError(where, "not valid YAML: nested too deeply (lists or mappings inside one another "
                          "hundreds of levels deep)") from None
