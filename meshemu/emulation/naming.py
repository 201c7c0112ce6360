"""Names and addresses a person can read: which node is which, from its name and address alone.

* A satellite of a gridded shell is ``p<plane>s<slot>`` (``p03s12``; with several
  shells ``a0p03s12``, ``b0p03s12``... by shell letter), else ``sat<id>``; a ground
  station is its city, letters and digits only (``NewYork``).
* Each node has one stable address on its loopback: satellites
  ``10.<100 + shell>.<plane>.<slot + 1>`` (``10.99.<id // 250>.<id % 250 + 1>``
  without a grid), ground stations ``10.200.<id // 250>.<id % 250 + 1>``.
* Link ``l`` is the /31 ``172.16.0.0 + 2 l``: its lower node (``links[l, 0]``)
  takes the even address. Inside a node, the interface to a neighbour is
  named after that neighbour, so ``ip route`` reads ``... dev p04s12``.
* Every network namespace is ``<prefix>.<node name>`` (prefix ``meshemu``),
  which is how ``meshemu clean`` finds what it made.

>>> import numpy as np
>>> plan = plan_mesh(("x-p00-s00", "x-p00-s01", "Paris"), 2, np.array([[0, 1], [1, 2]]),
...                  np.array([[0, 0, 0], [0, 0, 1]]))
>>> plan.node_names, plan.addresses
(('p00s00', 'p00s01', 'Paris'), ('10.100.0.1', '10.100.0.2', '10.200.0.1'))
>>> plan.ifname[1], plan.link_address(1)
(('Paris', 'p00s01'), ('172.16.0.2', '172.16.0.3'))
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from meshemu.errors import InputError
from meshemu.links.names import IFNAMSIZ, find_short, is_gridded, short_names

DEFAULT_PREFIX = "meshemu"
_LINK_BASE = int(ipaddress.IPv4Address("172.16.0.0"))
_MAX_LINKS = (1 << 20) // 2  # 172.16.0.0/12 holds 2^20 addresses


@dataclass(frozen=True, eq=False)
class MeshPlan:
    """Everything the kernel will be told, decided before touching it."""

    prefix: str
    node_names: tuple[str, ...]  # short names: Mininet host names
    addresses: tuple[str, ...]  # each node's loopback address
    links: np.ndarray  # (L, 2) node ids
    ifname: tuple[tuple[str, str], ...]  # per link: (name inside links[l, 0], name inside links[l, 1])
    n_satellites: int

    @cached_property
    def namespaces(self) -> tuple[str, ...]:
        return tuple(f"{self.prefix}.{n}" for n in self.node_names)

    def link_address(self, link: int) -> tuple[str, str]:
        base = _LINK_BASE + 2 * int(link)
        return str(ipaddress.IPv4Address(base)), str(ipaddress.IPv4Address(base + 1))

    def link_address_int(self) -> np.ndarray:
        """(L, 2) uint32 host-order addresses of every link's two ends."""
        base = _LINK_BASE + 2 * np.arange(len(self.links), dtype=np.uint64)
        return np.stack([base, base + 1], axis=1).astype(np.uint32)

    def address_int(self) -> np.ndarray:
        return np.array([int(ipaddress.IPv4Address(a)) for a in self.addresses], dtype=np.uint32)

    def node(self, name) -> int:
        """A node's id from its short name, its id, or (for cities) its full name."""
        return find_short(self.node_names, self.n_satellites, name)


def check_prefix(prefix: str) -> str:
    """InputError unless ``prefix`` can start every namespace name (and ``meshemu clean`` can find them).

    >>> check_prefix("../x")
    Traceback (most recent call last):
    ...
    meshemu.errors.InputError: namespace prefix '../x' must be 1-20 letters, digits, '-' or '_'
    """
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,20}", prefix):
        raise InputError(f"namespace prefix {prefix!r} must be 1-20 letters, digits, '-' or '_'")
    return prefix


def plan_mesh(full_names, n_satellites: int, links: np.ndarray, places: np.ndarray,
              prefix: str = DEFAULT_PREFIX) -> MeshPlan:
    """Short names, addresses and interface names for a mesh (see the module docstring)."""
    if len(links) > _MAX_LINKS:
        raise InputError(f"{len(links)} links exceed the {_MAX_LINKS} /31s of 172.16.0.0/12")
    check_prefix(prefix)
    names = short_names(full_names, n_satellites, places)
    addresses = []
    for i in range(n_satellites):
        shell, plane, slot = (int(v) for v in places[i])
        addresses.append(f"10.{100 + shell}.{plane}.{slot + 1}" if is_gridded(plane, slot)
                         else f"10.99.{i // 250}.{i % 250 + 1}")
    for g in range(len(full_names) - n_satellites):
        addresses.append(f"10.200.{g // 250}.{g % 250 + 1}")
    _check_links(np.asarray(links), full_names)
    if len(set(addresses)) != len(addresses):
        raise InputError("two satellites share a plane and slot: the grid cannot address them")
    per_node: dict[int, set] = {}
    ifname = []
    for a, b in np.asarray(links):
        ifname.append((_ifname(names[b], per_node.setdefault(int(a), set())),
                       _ifname(names[a], per_node.setdefault(int(b), set()))))
    return MeshPlan(prefix, tuple(names), tuple(addresses), np.asarray(links, dtype=np.int32), tuple(ifname),
                    n_satellites)


def _check_links(links: np.ndarray, full_names) -> None:
    """One link per node pair, none from a node to itself: routes name a next hop, not a link.

    A second link between the same pair would leave the kernel to pick the
    interface a route leaves by, and a route through the one that is down is
    refused (this is how a series computed wrongly shows up, e.g. by a CPU
    emulator whose vector instructions mis-sort).
    """
    if len(links) == 0:
        return
    loops = np.flatnonzero(links[:, 0] == links[:, 1])
    if len(loops):
        raise InputError(f"link {int(loops[0])} joins {full_names[links[loops[0], 0]]} to itself: "
                         "the link series is malformed")
    key = np.minimum(links[:, 0], links[:, 1]).astype(np.int64) * len(full_names) + np.maximum(links[:, 0], links[:, 1])
    order = np.argsort(key, kind="stable")
    twice = np.flatnonzero(np.diff(key[order]) == 0)
    if len(twice):
        i, j = int(order[twice[0]]), int(order[twice[0] + 1])
        a, b = links[i]
        raise InputError(f"the link series lists {full_names[a]} - {full_names[b]} twice (links {i} and {j}; "
                         f"{len(twice)} pair(s) in all): each node pair may have one link, so the series is "
                         "malformed (recompute it; inside a VM, check that the emulated CPU computes correctly)")


def _ifname(peer: str, taken: set) -> str:
    name, k = peer[:IFNAMSIZ], 1
    while name in taken or name == "lo":
        name = f"{peer[:IFNAMSIZ - 3]}_{k}"
        k += 1
    taken.add(name)
    return name
