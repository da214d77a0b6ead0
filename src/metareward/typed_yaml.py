"""Typed YAML: read a YAML file into dataclasses, checking every value against its field's annotation.

Generic machinery under the run config (``metareward.config``) and the experiment config
(``metareward.experiment.settings``): it knows dataclasses and type hints, not the method. The supported
annotations are ``bool``, ``int``, ``float`` (ints widen to float), ``str``, ``None``, ``Literal[...]``,
``list[T]``, unions (``T | None``) and nested dataclasses; anything else is a programming error
(``TypeError``), never the user's. Every error is an ``InputError`` naming the field path
(``iterations[1].rho: ...``); ``errors_in`` puts the file (or another place) in front of it, so a user
reads ``configs/x.yaml: iterations[1].rho: ...``. Imports nothing of the package but its errors.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import yaml

from metareward.errors import InputError


def check_type(value: Any, tp: Any, path: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it (ints widen to float, mappings become
    dataclasses). ``path`` names the value in errors."""
    origin = typing.get_origin(tp)
    if origin is typing.Union or origin is types.UnionType:
        if value is None and type(None) in typing.get_args(tp):
            return None
        for arg in typing.get_args(tp):
            try:
                return check_type(value, arg, path)
            except InputError:
                pass
        names = " or ".join(_type_name(a) for a in typing.get_args(tp))
        raise InputError(f"{path}: expected {names}, got {value!r}")
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise InputError(f"{path}: must be one of {list(allowed)}, got {value!r}")
        return value
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise InputError(f"{path}: expected a list, got {value!r}")
        return [check_type(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value)]
    if tp is type(None):
        if value is not None:
            raise InputError(f"{path}: expected null, got {value!r}")
        return None
    if dataclasses.is_dataclass(tp):
        return build(tp, value, path)
    if tp is bool:
        if not isinstance(value, bool):
            raise InputError(f"{path}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputError(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise InputError(f"{path}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp} at {path}")


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def build(cls: type, data: Any, path: str) -> Any:
    """The dataclass ``cls`` from the mapping ``data`` (None: all defaults), every value type-checked;
    an unknown key is an error that lists the known ones. ``path`` is the section's name ("" at the top)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InputError(f"{path or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in known:
            where = f"{path}.{key}" if path else str(key)
            raise InputError(f"{where}: unknown field (known: {', '.join(sorted(known))})")
    kwargs = {k: check_type(v, hints[k], f"{path}.{k}" if path else k) for k, v in data.items()}
    return cls(**kwargs)


def read_yaml(path: Path) -> Any:
    """The parsed YAML of a config file ({} when empty); a missing file or a syntax error is an
    ``InputError`` naming the file (and the line, where YAML gives one)."""
    if not path.is_file():
        raise InputError(f"{path}: config file not found")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise InputError(f"{where}: invalid YAML ({getattr(e, 'problem', e)})") from None


@contextmanager
def errors_in(where: str | Path) -> Iterator[None]:
    """Put ``where`` (a file, ``command line``, an arm) in front of any ``InputError`` raised inside:
    ``iterations[1].rho: ...`` becomes ``configs/x.yaml: iterations[1].rho: ...``."""
    try:
        yield
    except InputError as e:
        raise InputError(f"{where}: {e}") from None


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """Set ``a.b.0.c``-style keys; integer parts index lists (``iterations.0.rho``)."""
    node: Any = data
    parts = key.split(".")
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise InputError(f"--set {key}: {'.'.join(parts[:depth]) or key} has no item {part}")
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
        else:
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})


def parse_override(text: str) -> tuple[str, Any]:
    """``key.sub=value`` from the command line; the value is parsed as YAML (numbers, bools, null)."""
    if "=" not in text:
        raise InputError(f"--set {text!r}: expected KEY=VALUE, e.g. engine.threads=2")
    key, raw = text.split("=", 1)
    return key.strip(), yaml.safe_load(raw)
