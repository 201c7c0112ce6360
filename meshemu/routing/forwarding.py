"""Forwarding tables: the next hop every node uses towards every destination.

``next_hop[u, d]`` is the node that ``u`` hands a packet for ``d`` to at one
step (-1 for ``u == d`` or no path). Ground stations appear as sources and
destinations but never as a next hop other than the destination itself.
It comes from one Dijkstra per destination on the reversed split graph
(see :mod:`meshemu.routing.paths`): the predecessor of ``u`` in the tree
rooted at ``d`` is ``u``'s next hop towards ``d``.

>>> from meshemu.constellation import load_constellation, default_ground_stations, TimeGrid
>>> from meshemu.links import compute_link_series
>>> c = load_constellation("demo")
>>> s = compute_link_series(c, default_ground_stations()[:5], TimeGrid.from_window(c.epoch_utc, start_s=0, duration_s=2, step_s=1))
>>> table = next_hops(s, 0)
>>> table.shape, int(table[3, 3])
((69, 69), -1)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.sparse.csgraph import dijkstra

from meshemu.routing.paths import NO_PATH, from_split, sink_id, split_graph


def next_hops(series, k: int, graph=None) -> np.ndarray:
    """The forwarding table of step ``k``: (N + G, N + G) int32, ``[node, destination]``."""
    return forwarding_state(series, k, graph)[0]


def forwarding_state(series, k: int, graph=None, destinations=None) -> tuple[np.ndarray, np.ndarray]:
    """The forwarding table and the path length between every pair of nodes at step ``k``.

    Returns ``(next_hop, length_m)``, both (N + G, D) and indexed
    ``[node, destination]``; ``length_m`` is inf where there is no path. D is
    every node, or only ``destinations`` (node ids) when given: each column is
    its own Dijkstra tree, so a column is the same either way.
    """
    graph = split_graph(series, k) if graph is None else graph
    dest = np.arange(series.n_nodes) if destinations is None else np.asarray(destinations, dtype=np.int64)
    roots = np.array([sink_id(series, int(d)) for d in dest], dtype=np.int64)
    dist, pred = dijkstra(graph.T.tocsr(), directed=True, indices=roots, return_predecessors=True)
    hop = pred[:, : series.n_nodes]  # (destination, node): split id of the next hop
    table = np.where(hop == NO_PATH, -1, from_split(series, np.where(hop == NO_PATH, 0, hop)))
    length = dist[:, : series.n_nodes]
    rows = np.arange(len(dest))
    table[rows, dest] = -1  # a station's own uplink-downlink loop is no route to itself
    length[rows, dest] = 0.0
    return np.ascontiguousarray(table.T, dtype=np.int32), np.ascontiguousarray(length.T)


def walk(towards: np.ndarray, src: int, dst: int) -> tuple[int, ...]:
    """The nodes a packet from ``src`` to ``dst`` visits, given every node's next hop ``towards`` ``dst``.

    Both ends included; empty when a node on the way has no route, or the hops loop.

    >>> walk(np.array([1, 2, 3, -1]), 0, 3), walk(np.array([1, 2, 1, -1]), 0, 3), walk(np.array([-1, 2]), 1, 1)
    ((0, 1, 2, 3), (), (1,))
    """
    out, u = [src], src
    while u != dst:
        u = int(towards[u])
        if u < 0 or len(out) > len(towards):
            return ()
        out.append(u)
    return tuple(out)


@dataclass(frozen=True)
class RouteChanges:
    """Entries of the forwarding table that differ between two steps."""

    node: np.ndarray
    destination: np.ndarray
    next_hop: np.ndarray  # the new next hop, -1 where the route went away

    @property
    def count(self) -> int:
        return len(self.node)


def table_changes(before: np.ndarray | None, after: np.ndarray) -> RouteChanges:
    """What to install to go from table ``before`` to ``after`` (everything, when ``before`` is None).

    >>> a = np.array([[-1, 1], [0, -1]]); b = np.array([[-1, 1], [-1, -1]])
    >>> c = table_changes(a, b); (c.node.tolist(), c.destination.tolist(), c.next_hop.tolist())
    ([1], [0], [-1])
    """
    changed = after != -1 if before is None else before != after
    node, dest = np.nonzero(changed)
    return RouteChanges(node.astype(np.int32), dest.astype(np.int32), after[node, dest])


def column_changes(before: np.ndarray | None, after: np.ndarray, destinations: np.ndarray) -> RouteChanges:
    """:func:`table_changes` for tables of columns towards ``destinations`` ((N + G, D) each).

    ``before`` may have fewer columns than ``after`` (destinations added since):
    the routes of the new ones are all installed. ``RouteChanges.destination``
    holds node ids. With every node a destination this is :func:`table_changes`.

    >>> a = np.array([[-1], [0], [0]]); b = np.array([[-1, 2], [0, 2], [1, -1]])
    >>> c = column_changes(a, b, np.array([0, 2])); (c.node.tolist(), c.destination.tolist(), c.next_hop.tolist())
    ([0, 1, 2], [2, 2, 0], [2, 2, 1])
    """
    if before is not None and before.shape[1] < after.shape[1]:
        pad = np.full((before.shape[0], after.shape[1] - before.shape[1]), -1, dtype=before.dtype)
        before = np.hstack([before, pad])
    ch = table_changes(before, after)
    return RouteChanges(ch.node, np.asarray(destinations, dtype=np.int32)[ch.destination], ch.next_hop)
