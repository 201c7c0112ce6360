"""Each step's forwarding state, computed once and shared by everyone who needs it.

The player installs a step's routes, placement anchors the ranks on them, the
probes check packets against them, the predictor reads path delays off them
and the report writes them out. They all ask one :class:`ForwardingStates`,
which runs the routing pass of a step at most once and counts the passes, so a
run can show it (``passes``).

A whole table is (N + G)^2 entries (34 MB a step at Starlink shell 1), so only
the last few are kept. For the nodes a run *watches* (the client, the ranks,
probe endpoints) the columns towards them are kept for every step computed:
the next hop of every node towards each watched node and the path length to
it, enough for any route or delay between watched nodes, long after the
whole table is gone. A step nobody needs whole (after the player stopped, or
passed over to catch up) is computed for the watched destinations only.

Routes toward everyone, or toward the destinations a run uses: ``mode``
``all`` computes whole tables (every node a destination), ``destinations``
only the columns toward :attr:`ForwardingStates.destinations` (every ground
station, the watched nodes, and whatever :meth:`ForwardingStates.route_to`
added since), one Dijkstra tree per destination, the same trees a whole
table holds. ``auto`` is ``all`` up to :data:`ALL_ROUTES_MAX_NODES` nodes
(the demo and compute-12 meshes, 164 and 112 nodes with 100 cities), else
``destinations``: at Starlink scale a whole table is (N + G)^2 routes.

>>> from meshemu.constellation import load_constellation, default_ground_stations, TimeGrid
>>> from meshemu.links import compute_link_series
>>> c = load_constellation("demo")
>>> s = compute_link_series(c, default_ground_stations()[:5], TimeGrid.from_window(c.epoch_utc, start_s=0, duration_s=3, step_s=1))
>>> states = ForwardingStates(s, watch=[s.node_index("Tokyo"), 3])
>>> states.route(2, s.node_index("Tokyo"), 3)[0] == s.node_index("Tokyo")
True
>>> _ = states.state(0); _ = states.state(0); states.passes, states.max_passes_per_step
(2, 1)
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from meshemu.constants import SPEED_OF_LIGHT_M_PER_S
from meshemu.errors import InputError
from meshemu.routing.forwarding import forwarding_state, walk
from meshemu.routing.paths import shortest_paths_from, sink_id

ROUTE_MODES = ("auto", "all", "destinations")
# Up to this many nodes, "auto" routes every node to every other (a whole table: 160,000 routes at most, built
# in well under a second); above it, only towards the destinations a run uses.
ALL_ROUTES_MAX_NODES = 400


def check_route_mode(mode: str) -> None:
    """InputError unless ``mode`` is one of :data:`ROUTE_MODES`."""
    if mode not in ROUTE_MODES:
        raise InputError(f"routes must be one of {', '.join(ROUTE_MODES)}, got {mode!r}", field="routes")


def resolve_route_mode(mode: str, n_nodes: int) -> str:
    """``all`` or ``destinations`` for ``mode`` (``auto``: by size, see :data:`ALL_ROUTES_MAX_NODES`).

    >>> resolve_route_mode("auto", 164), resolve_route_mode("auto", 1684), resolve_route_mode("all", 4508)
    ('all', 'destinations', 'all')
    """
    check_route_mode(mode)
    if mode == "auto":
        return "all" if n_nodes <= ALL_ROUTES_MAX_NODES else "destinations"
    return mode


@dataclass(frozen=True, eq=False)
class WatchedColumns:
    """One step's routes towards the watched nodes: ``next_hop[u, j]``, ``length_m[u, j]`` for watched node j."""

    next_hop: np.ndarray  # (N + G, W) int32
    length_m: np.ndarray  # (N + G, W) float64, inf where no path


@dataclass(frozen=True, eq=False)
class DestinationColumns:
    """One step's routes towards ``destinations``: ``next_hop[u, j]``, ``length_m[u, j]`` for ``destinations[j]``."""

    destinations: np.ndarray  # (D,) int64 node ids, in the order they were added
    next_hop: np.ndarray  # (N + G, D) int32, -1 at the destination itself and where no path
    length_m: np.ndarray  # (N + G, D) float64, inf where no path


class ForwardingStates:
    """The forwarding state of every step of ``series``, each computed at most once (thread-safe).

    ``watch`` lists node ids whose routes are kept for every step computed;
    ``keep`` is how many whole tables (or destination columns) stay in memory
    (the one applied and the one prepared ahead, plus one for a probe that is
    a step behind). ``mode`` is the routes an emulation installs (see the
    module doc): ``auto``, ``all`` or ``destinations``.
    """

    def __init__(self, series, *, watch=(), keep: int = 3, mode: str = "auto"):
        self.series = series
        self.keep = keep
        self.mode = resolve_route_mode(mode, series.n_nodes)
        self._watch: list[int] = []
        self._column: dict[int, int] = {}
        self._tables: OrderedDict = OrderedDict()
        self._watched: dict[int, WatchedColumns] = {}
        self._dest: list[int] = []
        self._dest_index: dict[int, int] = {}
        self._columns: OrderedDict = OrderedDict()  # step -> DestinationColumns (mode destinations)
        self._passes = np.zeros(series.n_steps, dtype=np.int32)
        self._extensions = 0  # trees added to a step already computed (a destination reached at run time)
        self._lock = threading.RLock()
        if self.mode == "destinations":
            self.route_to(range(series.n_satellites, series.n_nodes))  # every ground station
        self.watch(watch)

    # -- what is computed, and how often -----------------------------------------------------
    @property
    def passes(self) -> int:
        """Routing passes run so far (whole tables and watched-only ones)."""
        return int(self._passes.sum())

    @property
    def max_passes_per_step(self) -> int:
        return int(self._passes.max()) if len(self._passes) else 0

    def summary(self) -> dict:
        return {"steps": int(len(self._passes)), "steps_computed": int((self._passes > 0).sum()),
                "passes": self.passes, "max_passes_per_step": self.max_passes_per_step,
                "watched_nodes": len(self._watch), "mode": self.mode,
                "destinations": len(self._dest) if self.mode == "destinations" else self.series.n_nodes,
                "column_extensions": self._extensions}

    def watch(self, nodes) -> None:
        """Keep the routes towards ``nodes`` from now on (steps computed before lack them).

        A watched node exchanges traffic, so it is a destination too (:meth:`route_to`).
        """
        with self._lock:
            nodes = [int(v) for v in nodes]
            for v in nodes:
                if v not in self._column:
                    self._column[v] = len(self._watch)
                    self._watch.append(v)
            self.route_to(nodes)
            for k, table in self._tables.items():  # the tables still here need no second pass
                self._keep_watched(k, *table)

    # -- destinations ---------------------------------------------------------------------------
    @property
    def destinations(self) -> np.ndarray:
        """The nodes routes lead to, in the order they were added (every node in mode ``all``)."""
        if self.mode == "all":
            return np.arange(self.series.n_nodes)
        with self._lock:
            return np.asarray(self._dest, dtype=np.int64)

    def route_to(self, nodes) -> list[int]:
        """Make ``nodes`` destinations from now on; returns those that were not yet (none in mode ``all``)."""
        if self.mode == "all":
            return []
        added = []
        with self._lock:
            for v in (int(v) for v in nodes):
                if not 0 <= v < self.series.n_nodes:
                    raise InputError(f"node {v} is not one of the {self.series.n_nodes} nodes")
                if v not in self._dest_index:
                    self._dest_index[v] = len(self._dest)
                    self._dest.append(v)
                    added.append(v)
        return added

    def columns(self, k: int) -> DestinationColumns:
        """Step ``k``'s routes towards every destination: one pass, or only the trees added since.

        In mode ``all`` that is the whole table (views of :meth:`state`).
        """
        if self.mode == "all":
            table, length_m = self.state(k)
            return DestinationColumns(np.arange(self.series.n_nodes), table, length_m)
        with self._lock:
            dest = np.asarray(self._dest, dtype=np.int64)
            have = self._columns.get(k)
            if have is not None and len(have.destinations) == len(dest):
                self._columns.move_to_end(k)
                return have
            if k in self._tables:
                table, length_m = self._tables[k]
                cols = DestinationColumns(dest, np.ascontiguousarray(table[:, dest]),
                                          np.ascontiguousarray(length_m[:, dest]))
            elif have is not None:  # destinations added since: their trees only
                self._extensions += 1
                more, more_m = forwarding_state(self.series, k, destinations=dest[len(have.destinations):])
                cols = DestinationColumns(dest, np.hstack([have.next_hop, more]), np.hstack([have.length_m, more_m]))
            else:
                self._passes[k] += 1
                next_hop, length_m = forwarding_state(self.series, k, destinations=dest)
                cols = DestinationColumns(dest, next_hop, length_m)
            self._columns[k] = cols
            self._columns.move_to_end(k)
            while len(self._columns) > self.keep:
                self._columns.popitem(last=False)
            if self._watch and all(v in self._dest_index for v in self._watch):  # the watched, from the same pass
                idx = [self._dest_index[v] for v in self._watch]
                self._watched[k] = WatchedColumns(np.ascontiguousarray(cols.next_hop[:, idx]),
                                                  np.ascontiguousarray(cols.length_m[:, idx]))
            return cols

    def distances_from(self, k: int, src: int) -> np.ndarray:
        """Length of the routed path from ``src`` to every node at step ``k``, (N + G,), inf where none.

        A row of the whole table in mode ``all`` (or while one is kept); else one
        Dijkstra from ``src`` (the same shortest lengths, summed from the other end).
        """
        with self._lock:
            if self.mode == "all" or k in self._tables:
                return self.state(k)[1][src]
        dist, _ = shortest_paths_from(self.series, k, [src])
        out = dist[0, [sink_id(self.series, v) for v in range(self.series.n_nodes)]]
        out[src] = 0.0
        return out

    def _keep_watched(self, k: int, table: np.ndarray, length_m: np.ndarray) -> None:
        cols = np.asarray(self._watch)
        self._watched[k] = WatchedColumns(np.ascontiguousarray(table[:, cols]), np.ascontiguousarray(length_m[:, cols]))

    def invalidate(self, from_step: int) -> None:
        """Forget steps ``from_step`` on: the series changed there (a fault moved with its rank)."""
        with self._lock:
            for k in [k for k in self._tables if k >= from_step]:
                del self._tables[k]
            for k in [k for k in self._watched if k >= from_step]:
                del self._watched[k]
            for k in [k for k in self._columns if k >= from_step]:
                del self._columns[k]

    # -- the states -----------------------------------------------------------------------------
    def state(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Step ``k``'s whole ``(next_hop, length_m)``, both (N + G, N + G) ``[node, destination]``."""
        with self._lock:
            if k in self._tables:
                self._tables.move_to_end(k)
                return self._tables[k]
            self._passes[k] += 1
            table, length_m = forwarding_state(self.series, k)
            self._tables[k] = (table, length_m)
            while len(self._tables) > self.keep:
                self._tables.popitem(last=False)
            if self._watch:
                self._keep_watched(k, table, length_m)
            return table, length_m

    def watched(self, k: int) -> WatchedColumns:
        """Step ``k``'s routes towards every watched node (a pass for those destinations only if needed)."""
        with self._lock:
            have = self._watched.get(k)
            if have is not None and have.next_hop.shape[1] == len(self._watch):
                return have
            if k in self._tables:
                self._keep_watched(k, *self._tables[k])
            elif k in self._columns and all(v in self._dest_index for v in self._watch):
                cols = self._columns[k]
                idx = [self._dest_index[v] for v in self._watch if self._dest_index[v] < len(cols.destinations)]
                if len(idx) < len(self._watch):
                    cols = self.columns(k)  # a watched node added since: its tree only
                    idx = [self._dest_index[v] for v in self._watch]
                self._watched[k] = WatchedColumns(np.ascontiguousarray(cols.next_hop[:, idx]),
                                                  np.ascontiguousarray(cols.length_m[:, idx]))
            else:
                self._passes[k] += 1
                self._watched[k] = WatchedColumns(*forwarding_state(self.series, k, destinations=self._watch))
            return self._watched[k]

    def _towards(self, k: int, dst: int) -> tuple[np.ndarray, np.ndarray]:
        """Next hops and path lengths of every node towards ``dst`` at step ``k``."""
        with self._lock:
            if k in self._tables:
                table, length_m = self._tables[k]
                return table[:, dst], length_m[:, dst]
            cols, j = self._columns.get(k), self._dest_index.get(dst)
            if cols is not None and j is not None and j < len(cols.destinations):
                return cols.next_hop[:, j], cols.length_m[:, j]
            if dst not in self._column:
                self.watch([dst])
            w = self.watched(k)
            j = self._column[dst]
            return w.next_hop[:, j], w.length_m[:, j]

    # -- what others read ------------------------------------------------------------------------
    def length_m(self, k: int, src: int, dst: int) -> float:
        """Length of the routed path from ``src`` to ``dst`` at step ``k`` (inf: no path)."""
        return float(self._towards(k, dst)[1][src])

    def one_way_s(self, k: int, src: int, dst: int) -> float:
        return self.length_m(k, src, dst) / SPEED_OF_LIGHT_M_PER_S

    def rtt_s(self, k: int, a: int, b: int) -> float:
        """There along the route to ``b``, back along the route to ``a`` (they may differ)."""
        return (self.length_m(k, a, b) + self.length_m(k, b, a)) / SPEED_OF_LIGHT_M_PER_S

    def route(self, k: int, src: int, dst: int) -> tuple[int, ...]:
        """The nodes a packet from ``src`` to ``dst`` visits at step ``k``, both ends included; () if none."""
        return walk(self._towards(k, dst)[0], src, dst)
