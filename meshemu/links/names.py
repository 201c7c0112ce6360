"""Short node names a person can read: ``p03s12`` for a satellite of a gridded shell, the city for a station.

* A satellite of a gridded shell is ``p<plane>s<slot>`` (with several shells
  ``a0p03s12``, ``b0p03s12``... by shell letter), else ``sat<id>``.
* A ground station is its city, letters and digits only (``NewYork``), at
  most 15 characters (the kernel's limit on interface names, which are named
  after the neighbour); a name taken twice gets ``_1``, ``_2``...

The emulation names hosts, namespaces and interfaces by them; placement,
routes and reports print them.

>>> import numpy as np
>>> short_names(("x-p00-s00", "x-p00-s01", "New York"), 2, np.array([[0, 0, 0], [0, 0, 1]]))
('p00s00', 'p00s01', 'NewYork')
>>> find_short(('p00s00', 'p00s01', 'NewYork'), 2, "New York")
2
"""

from __future__ import annotations

import re

import numpy as np

from meshemu.errors import InputError

IFNAMSIZ = 15  # the kernel's limit on interface names, without the NUL


def short_names(full_names, n_satellites: int, places: np.ndarray) -> tuple[str, ...]:
    """Short names of every node: satellites by their (shell, plane, slot) ``places``, then stations."""
    names = []
    shells = sorted(set(int(s) for s in places[:, 0])) if n_satellites else []
    for i in range(n_satellites):
        shell, plane, slot = (int(v) for v in places[i])
        if is_gridded(plane, slot):
            letter = f"{chr(ord('a') + shells.index(shell))}0" if len(shells) > 1 else ""
            names.append(f"{letter}p{plane:02d}s{slot:02d}")
        else:
            names.append(f"sat{i}")
    for g, full in enumerate(full_names[n_satellites:]):
        names.append(city_name(full) or f"gs{g}")
    return tuple(_unique(names))


def is_gridded(plane: int, slot: int) -> bool:
    """Whether a satellite's place fits the grid's names and addresses (256 planes, 255 slots)."""
    return 0 <= plane < 256 and 0 <= slot < 255


def find_short(names, n_satellites: int, name) -> int:
    """A node's id from its short name, its id as text, or (for cities) its full name."""
    if str(name).isdigit() and int(name) < len(names):
        return int(name)
    if name in names:
        return names.index(name)
    short = city_name(str(name))
    if short in names[n_satellites:]:
        return n_satellites + names[n_satellites:].index(short)
    raise InputError(f"unknown node {name!r}: use a host name such as {names[0]} or {names[-1]}")


def city_name(full: str) -> str:
    return re.sub(r"[^A-Za-z0-9]", "", full)[:IFNAMSIZ]


def _unique(names):
    seen, out = {}, []
    for n in names:
        k = seen.get(n, 0)
        seen[n] = k + 1
        out.append(n if k == 0 else f"{n[:IFNAMSIZ - 3]}_{k}")
    return out
