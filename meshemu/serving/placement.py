"""Which satellite holds which rank, and the paths between them at any step.

Strategies (``--placement``), all anchored at the satellite nearest (by path)
to the client's ground station at the starting step:

- ``plane``: consecutive slots of that satellite's plane (in-plane neighbours,
  the links that never change), continuing into the next plane if needed;
- ``spread``: the same slot in consecutive planes (cross-plane neighbours);
- ``nearest``: the satellites with the shortest paths from the ground station;
- ``list:p00s01,p00s02,...``: exactly these, in rank order (global rank =
  stage x tp + tensor rank).

Names are the emulation's short names (``p03s05``; a multi-shell series
prefixes the shell letter).

>>> from meshemu.constellation import load_constellation, default_ground_stations, TimeGrid
>>> from meshemu.links import compute_link_series
>>> c = load_constellation("demo")
>>> s = compute_link_series(c, default_ground_stations()[:20], TimeGrid.from_window(c.epoch_utc, start_s=0, duration_s=1, step_s=1))
>>> paths = MeshPaths(s)
>>> place("plane", 3, paths, "Tokyo")
['p02s03', 'p02s04', 'p02s05']
>>> place("spread", 3, paths, "Tokyo")
['p02s03', 'p03s03', 'p04s03']
>>> paths.route(0, "Tokyo", "p02s05"), round(paths.one_way_s(0, "Tokyo", "p02s03") * 1e3, 2)
(['Tokyo', 'p02s03', 'p02s04', 'p02s05'], 5.22)
>>> place("list:p00s01,p07s07", 2, paths, "Tokyo")
['p00s01', 'p07s07']
"""

from __future__ import annotations

import numpy as np

from meshemu.constants import SPEED_OF_LIGHT_M_PER_S
from meshemu.emulation.naming import plan_mesh
from meshemu.errors import InputError
from meshemu.routing import forwarding_state

STRATEGIES = ("plane", "spread", "nearest", "list:NAMES")


class MeshPaths:
    """Short node names, and path delays and routes between nodes at any step of ``series`` (cached)."""

    def __init__(self, series):
        self.series = series
        plan = plan_mesh(series.node_names, series.n_satellites, series.links, series.places(), "x")
        self.names = plan.node_names
        self._plan = plan
        self._states: dict = {}

    def node(self, name) -> int:
        return self._plan.node(name)

    def state(self, k: int):
        if k not in self._states:
            if len(self._states) > 64:
                self._states.clear()
            self._states[k] = forwarding_state(self.series, k)
        return self._states[k]

    def one_way_s(self, k: int, a, b) -> float:
        """Propagation delay of the routed path from ``a`` to ``b`` at step ``k`` (inf: no path)."""
        _, length_m = self.state(k)
        return float(length_m[self.node(a), self.node(b)]) / SPEED_OF_LIGHT_M_PER_S

    def route(self, k: int, a, b) -> list[str]:
        """Node names along the routed path from ``a`` to ``b`` at step ``k`` (empty: no path)."""
        next_hop, _ = self.state(k)
        u, d = self.node(a), self.node(b)
        out = [self.names[u]]
        while u != d:
            u = int(next_hop[u, d])
            if u < 0 or len(out) > len(self.names):
                return []
            out.append(self.names[u])
        return out


def check_strategy(strategy) -> str:
    """``strategy`` if it is one of :data:`STRATEGIES` in form (a list: names, none twice), else InputError.

    >>> check_strategy("teleport")
    Traceback (most recent call last):
    ...
    meshemu.errors.InputError: unknown placement 'teleport': use plane, spread, nearest, list:NAMES
    """
    if not isinstance(strategy, str):
        raise InputError(f"a placement is text, got {strategy!r}: use {', '.join(STRATEGIES)}")
    if strategy.startswith("list:"):
        names = [x.strip() for x in strategy[5:].split(",")]
        if not all(names):
            raise InputError(f"placement {strategy!r} has an empty name: write list:p00s01,p00s02")
        twice = next((n for n in names if names.count(n) > 1), None)
        if twice:
            raise InputError(f"placement {strategy!r} names {twice} twice: one rank per satellite")
        return strategy
    if strategy not in ("plane", "spread", "nearest"):
        raise InputError(f"unknown placement {strategy!r}: use {', '.join(STRATEGIES)}")
    return strategy


def place(strategy: str, n_ranks: int, paths: MeshPaths, ground_station: str, *, step: int = 0) -> list[str]:
    """Satellite names for ``n_ranks`` ranks by ``strategy`` (see the module doc)."""
    check_strategy(strategy)
    s = paths.series
    n_sat = s.n_satellites
    if n_ranks < 1:
        raise InputError(f"need at least one rank, got {n_ranks}")
    sat_names = list(paths.names[:n_sat])
    if strategy.startswith("list:"):
        names = [x.strip() for x in strategy[5:].split(",") if x.strip()]
        unknown = [x for x in names if x not in sat_names]
        if unknown:
            raise InputError(f"unknown satellite {unknown[0]!r} in --placement (e.g. {sat_names[0]})")
        if len(names) != n_ranks:
            raise InputError(f"--placement lists {len(names)} satellites for {n_ranks} ranks")
        return names
    if n_ranks > n_sat:
        raise InputError(f"{n_ranks} ranks for {n_sat} satellites")
    gs = paths.node(ground_station)
    _, length_m = paths.state(step)
    dist = length_m[gs, :n_sat]
    if not np.isfinite(dist).any():
        raise InputError(f"{ground_station} reaches no satellite at step {step}")
    if strategy == "nearest":
        return [sat_names[i] for i in np.argsort(dist, kind="stable")[:n_ranks]]
    if strategy not in ("plane", "spread"):
        raise InputError(f"unknown placement {strategy!r}: use {', '.join(STRATEGIES)}")
    places = s.places()
    if (places[:, 1:] < 0).any():
        raise InputError(f"{s.constellation} has no plane/slot grid: use --placement nearest or list:")
    anchor = int(np.nanargmin(np.where(np.isfinite(dist), dist, np.inf)))
    shell = places[anchor, 0]
    grid = {(int(p), int(q)): i for i, (sh, p, q) in enumerate(places) if sh == shell}
    planes = 1 + max(p for p, _ in grid)
    slots = 1 + max(q for _, q in grid)
    p0, q0 = int(places[anchor, 1]), int(places[anchor, 2])
    out = []
    for k in range(n_ranks):
        if strategy == "plane":
            p, q = (p0 + k // slots) % planes, (q0 + k) % slots
        else:
            p, q = (p0 + k) % planes, (q0 + k // planes) % slots
        if (p, q) not in grid:
            raise InputError(f"no satellite at plane {p}, slot {q} for rank {k}")
        out.append(sat_names[grid[(p, q)]])
    return out
