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
import math
import re
import types
import typing
from pathlib import Path

import yaml

from meshemu.errors import InputError


# Input files are read whole; a cap keeps /dev/zero or a mistyped multi-GB path from eating memory.
# 64 MiB is ~400,000 three-line element sets, over ten times the public catalogue.
MAX_INPUT_BYTES = 64 << 20
# PyYAML parses ~0.6 MB/s in pure Python and holds ~15x the text: configs are small, so refuse big ones early.
MAX_YAML_BYTES = 4 << 20
# Aliases let a few lines of YAML stand for an exponentially large tree; validating it would walk every node.
MAX_YAML_NODES = 1_000_000

_NAME_FORBIDDEN = re.compile(r"[/\\\x00-\x1f\x7f]")


def read_text(path, max_bytes: int = MAX_INPUT_BYTES) -> str:
    """A user's input file as UTF-8 text; unreadable, binary or oversized input is an InputError naming it.

    >>> import tempfile, os
    >>> with tempfile.NamedTemporaryFile(delete=False) as f:
    ...     _ = f.write(b"ok\\n\\xff")
    >>> read_text(f.name)
    Traceback (most recent call last):
    ...
    meshemu.errors.InputError: ...:2: byte 0xff at offset 3 is not UTF-8: give a text file (is this a binary file?)
    >>> os.unlink(f.name)
    """
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as err:
        raise InputError(f"cannot read: {err.strerror}", file=path) from None
    if len(data) > max_bytes:
        raise InputError(f"is larger than the {max_bytes / 2**20:g} MiB meshemu reads from such a file: "
                         "is it the right file?", file=path)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise InputError(f"byte 0x{data[err.start]:02x} at offset {err.start} is not UTF-8: give a text file "
                         "(is this a binary file?)", file=path, line=line) from None


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys and reads 1e12 as a number (YAML 1.1 wants 1.0e+12)."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # '<<: *base' then a key of base is an override, not a duplicate
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise InputError(f"key {key!r} appears twice (first on line {seen[key]}): keep one",
                                     file=self.name, line=line)
                seen[key] = line
            except TypeError:
                raise InputError(f"a key must be text or a number, got {type(key).__name__}",
                                 file=self.name, line=line) from None
        return super().construct_mapping(node, deep)


def _construct_timestamp(loader, node):
    """YAML's timestamp, or an InputError naming the line (PyYAML raises a bare ValueError for 2026-02-30)."""
    try:
        return yaml.SafeLoader.construct_yaml_timestamp(loader, node)
    except (ValueError, OverflowError) as err:
        raise InputError(f"{node.value!r} is not a date and time: {err}", file=loader.name,
                         line=node.start_mark.line + 1) from None


_StrictLoader.add_constructor("tag:yaml.org,2002:timestamp", _construct_timestamp)
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"), list("-+0123456789."))


def _expanded_nodes(node, limit: int) -> int:
    """How many nodes the document has with every alias expanded (stops counting past ``limit``)."""
    sizes: dict[int, int] = {}

    def size(n) -> int:
        if id(n) in sizes:
            return sizes[id(n)]
        sizes[id(n)] = limit + 1  # a node reached again while being sized is a cycle: too big
        total = 1
        if isinstance(n, yaml.SequenceNode):
            for child in n.value:
                total += size(child)
                if total > limit:
                    break
        elif isinstance(n, yaml.MappingNode):
            for k, v in n.value:
                total += size(k) + size(v)
                if total > limit:
                    break
        sizes[id(n)] = total
        return total

    return size(node)


def parse_yaml(text: str, source="<memory>"):
    """YAML text to Python data, strictly (see :class:`_StrictLoader`); errors name the source and line."""
    try:
        loader = _StrictLoader(text)
    except yaml.reader.ReaderError as err:  # the reader refuses control characters before parsing starts
        line = text[:err.position].count("\n") + 1
        raise InputError(f"not valid YAML: character {chr(err.character)!r} (#x{err.character:04x}) is not "
                         "allowed in YAML text", file=source, line=line) from None
    loader.name = str(source)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_nodes(node, MAX_YAML_NODES) > MAX_YAML_NODES:
            raise InputError(f"expands to more than {MAX_YAML_NODES:,} values (through aliases?): "
                             "write it out plainly", file=source)
        return loader.construct_document(node)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise InputError(f"not valid YAML: {problem}", file=source, line=line) from None
    except RecursionError:
        raise InputError("is nested too deeply to be a config", file=source) from None
    finally:
        loader.dispose()


def load_yaml(path) -> dict:
    """Read a YAML file whose top level is a mapping; errors name the file and line."""
    path = Path(path)
    data = parse_yaml(read_text(path, MAX_YAML_BYTES), path)
    if not isinstance(data, dict):
        raise InputError("the top level must be a mapping of keys to values", file=path)
    return data


def check_name(value: str, what: str) -> None:
    """Raise ValueError unless ``value`` can name a folder and a node: not empty, no path separator,
    no control character, not hidden (a leading '.' also rules out '..').

    >>> check_name("../x", "name")
    Traceback (most recent call last):
    ...
    ValueError: name '../x' must not start with '.' nor hold '/', '\\' or control characters: it names a folder
    """
    if not value or not value.strip():
        raise ValueError(f"{what} is empty: give a name")
    if len(value) > 100:
        raise ValueError(f"{what} is {len(value)} characters long: keep it under 100")
    if value.startswith(".") or _NAME_FORBIDDEN.search(value):
        raise ValueError(f"{what} {value!r} must not start with '.' nor hold '/', '\\' or control characters: "
                         "it names a folder")


def from_mapping(cls, data, *, file=None, prefix="", strict: bool = False):
    """Build dataclass ``cls`` from ``data``, checking keys and types recursively.

    ``strict``: every key must be present, defaults or not (a wire format
    written by :func:`dataclasses.asdict`, where a missing key is a bug).
    """
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
            values[name] = _coerce(hints[name], data[name], file, f"{prefix}{name}", strict)
        elif strict or (field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING):
            raise InputError("missing required key", file=file, field=f"{prefix}{name}")
    try:
        return cls(**values)
    except InputError as err:
        if err.file is not None or file is None:
            raise
        # a dataclass's own check knows the value, not where it was written: name the file and the key
        raise InputError(err.detail, file=file, field=err.field or prefix.rstrip(".") or None) from None
    except (ValueError, TypeError) as err:
        raise InputError(str(err), file=file, field=prefix.rstrip(".") or None) from None


def _coerce(hint, value, file, field, strict=False):
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
                return _coerce(arg, value, file, field, strict)
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
        items = [_coerce(inner, v, file, f"{field}[{i}]", strict) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if dataclasses.is_dataclass(hint):
        return from_mapping(hint, value, file=file, prefix=f"{field}.", strict=strict)
    if hint is typing.Any:
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(f"expected a number, got {_kind(value)}", file=file, field=field)
        if not math.isfinite(value):
            raise InputError(f"expected a finite number, got {value}", file=file, field=field)
        return float(value)
    if hint is int:
        # 1e3 is a float to YAML; a whole one is the integer the user meant
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            value = int(value)
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
