"""Typed configuration: YAML mappings into frozen dataclasses, strictly.

Every config in meshemu (a constellation file, an experiment) is a frozen
dataclass. :func:`from_mapping` builds one from a parsed YAML mapping and
refuses unknown keys and wrong types with an :class:`~meshemu.errors.InputError`
that names the file and the key, so a typo never passes silently.

>>> from dataclasses import dataclass
>>> @dataclass(frozen=True)
... class Shell:
...     planes: int
...     altitude_km: float = 550.0
>>> from_mapping(Shell, {"planes": 6}, file="demo.yaml")
Shell(planes=6, altitude_km=550.0)
>>> from_mapping(Shell, {"planes": 6, "altitude": 1}, file="demo.yaml")
Traceback (most recent call last):
...
meshemu.errors.InputError: demo.yaml: altitude: unknown key (known: planes, altitude_km)
"""

from __future__ import annotations

import dataclasses
import datetime
import types
import typing
from pathlib import Path

import yaml

from meshemu.errors import InputError


def read_text(path) -> str:
    """A user's input file as text; an unreadable one is an InputError naming it."""
    try:
        return Path(path).read_text()
    except OSError as err:
        raise InputError(f"cannot read: {err.strerror}", file=path) from None


def load_yaml(path) -> dict:
    """Read a YAML file whose top level is a mapping; errors name the file and line."""
    path = Path(path)
    text = read_text(path)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise InputError(f"not valid YAML: {problem}", file=path, line=line) from None
    if not isinstance(data, dict):
        raise InputError("the top level must be a mapping of keys to values", file=path)
    return data


def from_mapping(cls, data, *, file=None, prefix=""):
    """Build dataclass ``cls`` from ``data``, checking keys and types recursively."""
    if not isinstance(data, dict):
        raise InputError(f"expected a mapping, got {_kind(data)}", file=file, field=prefix or None)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    for key in data:
        if key not in fields:
            known = ", ".join(fields)
            raise InputError(f"unknown key (known: {known})", file=file, field=f"{prefix}{key}")
    values = {}
    for name, field in fields.items():
        if name in data:
            values[name] = _coerce(hints[name], data[name], file, f"{prefix}{name}")
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise InputError("missing required key", file=file, field=f"{prefix}{name}")
    try:
        return cls(**values)
    except (ValueError, TypeError) as err:
        raise InputError(str(err), file=file, field=prefix.rstrip(".") or None) from None


def _coerce(hint, value, file, field):
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, file, field)
            except InputError as err:
                errors.append(err)
        raise errors[0]
    if origin is typing.Literal:
        if value not in args:
            raise InputError(f"{value!r} is not one of {', '.join(map(repr, args))}", file=file, field=field)
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            value = [value]
        inner = args[0] if args else typing.Any
        items = [_coerce(inner, v, file, f"{field}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if dataclasses.is_dataclass(hint):
        return from_mapping(hint, value, file=file, prefix=f"{field}.")
    if hint is typing.Any:
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(f"expected a number, got {_kind(value)}", file=file, field=field)
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputError(f"expected an integer, got {_kind(value)}", file=file, field=field)
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise InputError(f"expected true or false, got {_kind(value)}", file=file, field=field)
        return value
    if hint is str:
        if isinstance(value, (datetime.date, datetime.datetime)):
            return value.isoformat()  # YAML reads an unquoted timestamp as a datetime
        if not isinstance(value, str):
            raise InputError(f"expected text, got {_kind(value)}", file=file, field=field)
        return value
    return value


def _kind(value) -> str:
    return f"{type(value).__name__} {value!r}" if not isinstance(value, (dict, list)) else type(value).__name__
