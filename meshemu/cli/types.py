"""Argument types that refuse what no command can use (inf, nan, negative sizes) while parsing.

argparse turns an ``ArgumentTypeError`` into ``meshemu CMD: error: argument --x: ...``, one line,
before any work starts; the ranges a value must lie in are declared beside the option.

>>> positive_float("2.5"), finite_float("-1")
(2.5, -1.0)
>>> positive_float("inf")
Traceback (most recent call last):
...
argparse.ArgumentTypeError: 'inf' is not a finite number
>>> float_in(-90, 90, "deg")("200")
Traceback (most recent call last):
...
argparse.ArgumentTypeError: 200 deg is outside [-90, 90] deg
"""

from __future__ import annotations

import argparse
import math
from meshemu.errors import InputError
from meshemu.serving.placement import check_strategy


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def finite_float(text: str) -> float:
    return _float(text)


def positive_float(text: str) -> float:
    value = _float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} must be greater than 0")
    return value


def window_duration(text: str) -> float:
    value = _float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"a window of {text} s has no steps: give a duration greater than 0 s")
    return value


def nonnegative_float(text: str) -> float:
    value = _float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} must be 0 or more")
    return value


def float_in(low: float, high: float, unit: str = "", *, open_low: bool = False):
    """A type for a finite number within ``[low, high]`` (``(low, high]`` if ``open_low``)."""
    u = f" {unit}" if unit else ""
    bracket = "(" if open_low else "["

    def parse(text: str) -> float:
        value = _float(text)
        if not (low < value if open_low else low <= value) or not value <= high:
            raise argparse.ArgumentTypeError(f"{value:g}{u} is outside {bracket}{low:g}, {high:g}]{u}")
        return value

    parse.__name__ = f"number in {bracket}{low:g}, {high:g}]"
    return parse


def positive_int(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be 1 or more")
    return value


def nonnegative_int(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} must be 0 or more")
    return value


def placement_strategy(text: str) -> str:
    """A ``--placement`` whose form is right (the satellites it names are checked against the mesh later)."""

    try:
        return check_strategy(text)
    except InputError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def int_in(low: int, high: int):
    def parse(text: str) -> int:
        value = _int(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is outside [{low}, {high}]")
        return value

    parse.__name__ = f"whole number in [{low}, {high}]"
    return parse


def time_scale(text: str) -> float:
    """How much faster than real time a constellation plays: within [1e-6, 1e6] (1 is real time)."""
    value = _float(text)
    if not 1e-6 <= value <= 1e6:
        raise argparse.ArgumentTypeError(f"{text} must be greater than 0, within [1e-6, 1e6] (1 is real time)")
    return value


def tcp_port(text: str) -> int:
    """A TCP port, 0 (any free one) to 65535."""
    value = _int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a TCP port (0-65535)")
    return value


def namespace_prefix(text: str) -> str:
    """A namespace prefix (``meshemu clean --prefix ''`` would otherwise report 0 removed and mean nothing)."""
    from meshemu.emulation.naming import check_prefix  # here: the CLI imports its layers lazily

    try:
        return check_prefix(text)
    except InputError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def seed(text: str) -> int:
    """A random seed: a whole number in [0, 2^63) (the wire carries 64 bits; requests add their index)."""
    value = _int(text)
    if not 0 <= value < 1 << 63:
        raise argparse.ArgumentTypeError(f"{value} must be 0 or more and below 2^63")
    return value


class _Retired(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"{option_string} is now {self.default}: every command spells it the same way")


def retire(parser, old: str, new: str) -> None:
    """Refuse ``old``, a spelling this release dropped, with a hint to ``new`` (kept for one release)."""
    parser.add_argument(old, action=_Retired, default=new, nargs="?", help=argparse.SUPPRESS)
