"""Shortest paths by propagation delay, with ground stations as endpoints only.

Bulk shortest paths use scipy's csgraph (compiled Dijkstra from many sources
at once); networkx stays for the one-instant graph API, and the tests check
one against the other.

Ground stations must never relay. Each station is split in two in the graph
the solver sees: a *source* copy with edges only to satellites (uplinks) and a
*sink* copy with edges only from satellites (downlinks). No path can pass
through a station, since nothing leads into a source copy and nothing leads
out of a sink copy. Split-graph ids: satellites ``0..N-1``, sources
``N..N+G-1`` (the stations' own ids), sinks ``N+G..N+2G-1``.

>>> from meshemu.constellation import load_constellation, default_ground_stations, TimeGrid
>>> from meshemu.links import compute_link_series
>>> c = load_constellation("demo")
>>> s = compute_link_series(c, default_ground_stations(), TimeGrid.from_window(c.epoch_utc, start_s=0, duration_s=1, step_s=1))
>>> r = shortest_route(s, 0, s.node_index("Paris"), s.node_index("Moscow"))
>>> r.nodes[0] == s.node_index("Paris") and r.nodes[-1] == s.node_index("Moscow")
True
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import dijkstra

from meshemu.constants import SPEED_OF_LIGHT_M_PER_S

NO_PATH = -9999  # scipy's predecessor value for "none"


@dataclass(frozen=True)
class Route:
    """One path at one step; ``nodes`` empty and length infinite when unreachable."""

    length_m: float
    nodes: tuple[int, ...]

    @property
    def reachable(self) -> bool:
        return bool(self.nodes)

    @property
    def hops(self) -> int:
        return max(len(self.nodes) - 1, 0)

    @property
    def rtt_s(self) -> float:
        """There and back along the same path."""
        return 2.0 * self.length_m / SPEED_OF_LIGHT_M_PER_S


def split_graph(series, k: int) -> csr_matrix:
    """The directed graph of step ``k`` with every ground station split (see module doc); weights in metres."""
    n, g = series.n_satellites, series.n_ground_stations
    length = series.length_m[k].astype(np.float64)
    up = ~np.isnan(length)
    a, b, w = series.links[up, 0], series.links[up, 1], length[up]
    gsl = b >= n
    isl_a, isl_b, isl_w = a[~gsl], b[~gsl], w[~gsl]
    sat, station, gw = a[gsl], b[gsl], w[gsl]
    rows = np.concatenate([isl_a, isl_b, station, sat])
    cols = np.concatenate([isl_b, isl_a, sat, station + g])  # source -> sat, sat -> sink
    weights = np.concatenate([isl_w, isl_w, gw, gw])
    # a zero-length link would vanish from a sparse matrix: keep it, a hair above zero
    weights = np.maximum(weights, 1e-9)
    size = n + 2 * g
    return csr_matrix((weights, (rows, cols)), shape=(size, size))


def sink_id(series, node: int) -> int:
    """Where a path *to* ``node`` ends in the split graph."""
    return node + series.n_ground_stations if node >= series.n_satellites else node


def from_split(series, split_ids: np.ndarray) -> np.ndarray:
    """Map split-graph ids back to node ids (sinks to their station)."""
    split_ids = np.asarray(split_ids)
    sinks = split_ids >= series.n_nodes
    return np.where(sinks, split_ids - series.n_ground_stations, split_ids)


def shortest_paths_from(series, k: int, sources, graph=None):
    """Dijkstra from ``sources`` (node ids) at step ``k``.

    Returns ``(length_m, predecessors)``, each (len(sources), N + 2G) over the
    split graph; use :func:`sink_id` to index a destination.
    """
    graph = split_graph(series, k) if graph is None else graph
    return dijkstra(graph, directed=True, indices=np.asarray(sources), return_predecessors=True)


def walk_back(predecessors: np.ndarray, source_split: int, target_split: int) -> list[int]:
    """The split-graph path from source to target, read off one row of predecessors."""
    if target_split == source_split:
        return [source_split]
    path = [target_split]
    while path[-1] != source_split:
        prev = predecessors[path[-1]]
        if prev == NO_PATH:
            return []
        path.append(int(prev))
    return path[::-1]


def shortest_route(series, k: int, src: int, dst: int, graph=None) -> Route:
    """The shortest path from node ``src`` to node ``dst`` at step ``k``."""
    dist, pred = shortest_paths_from(series, k, [src], graph)
    target = sink_id(series, dst)
    if not np.isfinite(dist[0, target]):
        return Route(float("inf"), ())
    path = walk_back(pred[0], src, target)
    return Route(float(dist[0, target]), tuple(int(v) for v in from_split(series, path)))


def ground_station_distances_m(series, k: int, graph=None) -> np.ndarray:
    """Shortest path length between every pair of ground stations at step ``k``, (G, G), inf if none."""
    n, g = series.n_satellites, series.n_ground_stations
    dist, _ = shortest_paths_from(series, k, np.arange(n, n + g), graph)
    out = dist[:, n + g:]
    np.fill_diagonal(out, 0.0)
    return out


# How much further than last step's farthest station a station's search goes: a step of 1 s moves
# satellites ~7.5 km, so paths rarely grow by more; when one does, that station's search is rerun whole.
LIMIT_MARGIN_M = 500e3


def bounded_station_distances_m(series, k: int, graph, limits_m: np.ndarray, *, groups: int = 4) -> np.ndarray:
    """:func:`ground_station_distances_m`, each station's Dijkstra stopped past ``limits_m`` (G,).

    Dijkstra settles nodes in order of distance, so every node within the
    limit gets the value an unbounded search gives, bit for bit. A station
    that leaves a reachable station (one with a downlink) unsettled is
    searched again without a limit, so the (G, G) result is the same as
    :func:`ground_station_distances_m`'s. Stations are searched in ``groups``
    calls of similar limits (~12 % less work than unbounded on Starlink shell 1).
    """
    n, g = series.n_satellites, series.n_ground_stations
    sources = np.arange(n, n + g)
    dist = np.empty((g, g))
    for group in np.array_split(np.argsort(limits_m, kind="stable"), groups):
        if len(group):
            dist[group] = dijkstra(graph, directed=True, indices=sources[group],
                                   limit=float(limits_m[group].max()))[:, n + g:]
    up = ~np.isnan(series.length_m[k])
    with_downlink = np.zeros(g, dtype=bool)
    with_downlink[series.links[up & series.is_gsl, 1] - n] = True
    again = np.flatnonzero(np.isfinite(limits_m) & np.isinf(dist[:, with_downlink]).any(axis=1))
    if len(again):
        dist[again] = dijkstra(graph, directed=True, indices=sources[again])[:, n + g:]
    np.fill_diagonal(dist, 0.0)
    return dist


def search_limits_m(dist_m: np.ndarray) -> np.ndarray:
    """Limits for the next step's :func:`bounded_station_distances_m`, from this step's (G, G) distances.

    >>> search_limits_m(np.array([[0.0, 1e6], [np.inf, 0.0]])).tolist()
    [1500000.0, inf]
    """
    farthest_m = np.where(np.isfinite(dist_m), dist_m, -np.inf).max(axis=1)
    return np.where(farthest_m > 0, farthest_m + LIMIT_MARGIN_M, np.inf)
