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
from meshemu.routing.forwarding import forwarding_state, walk


@dataclass(frozen=True, eq=False)
class WatchedColumns:
    """One step's routes towards the watched nodes: ``next_hop[u, j]``, ``length_m[u, j]`` for watched node j."""

    next_hop: np.ndarray  # (N + G, W) int32
    length_m: np.ndarray  # (N + G, W) float64, inf where no path


class ForwardingStates:
    """The forwarding state of every step of ``series``, each computed at most once (thread-safe).

    ``watch`` lists node ids whose routes are kept for every step computed;
    ``keep`` is how many whole tables stay in memory (the one applied and the
    one prepared ahead, plus one for a probe that is a step behind).
    """

    def __init__(self, series, *, watch=(), keep: int = 3):
        self.series = series
        self.keep = keep
        self._watch: list[int] = []
        self._column: dict[int, int] = {}
        self._tables: OrderedDict = OrderedDict()
        self._watched: dict[int, WatchedColumns] = {}
        self._passes = np.zeros(series.n_steps, dtype=np.int32)
        self._lock = threading.RLock()
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
                "watched_nodes": len(self._watch)}

    def watch(self, nodes) -> None:
        """Keep the routes towards ``nodes`` from now on (steps computed before lack them)."""
        with self._lock:
            for v in (int(v) for v in nodes):
                if v not in self._column:
                    self._column[v] = len(self._watch)
                    self._watch.append(v)
            for k, table in self._tables.items():  # the tables still here need no second pass
                self._keep_watched(k, *table)

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
