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
>>> from meshemu.routing import ForwardingStates
>>> c = load_constellation("demo")
>>> s = compute_link_series(c, default_ground_stations()[:20], TimeGrid.from_window(c.epoch_utc, start_s=0, duration_s=1, step_s=1))
>>> routes = ForwardingStates(s)
>>> place("plane", 3, s, routes, "Tokyo")
['p02s03', 'p02s04', 'p02s05']
>>> place("spread", 3, s, routes, "Tokyo")
['p02s03', 'p03s03', 'p04s03']
>>> place("list:p00s01,p07s07", 2, s, routes, "Tokyo")
['p00s01', 'p07s07']
"""

from __future__ import annotations

import numpy as np

from meshemu.errors import InputError

STRATEGIES = ("plane", "spread", "nearest", "list:NAMES")


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


def place(strategy: str, n_ranks: int, series, routes, ground_station, *, step: int = 0) -> list[str]:
    """Satellite short names for ``n_ranks`` ranks by ``strategy`` (see the module doc).

    ``routes`` is the run's :class:`~meshemu.routing.ForwardingStates`: the
    anchor is the satellite nearest the ground station by routed path at ``step``.
    """
    check_strategy(strategy)
    n_sat = series.n_satellites
    if n_ranks < 1:
        raise InputError(f"need at least one rank, got {n_ranks}")
    sat_names = list(series.short_names[:n_sat])
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
    gs = series.short_index(ground_station)
    dist = routes.distances_from(step, gs)[:n_sat]
    if not np.isfinite(dist).any():
        raise InputError(f"{series.short_names[gs]} reaches no satellite at step {step}")
    if strategy == "nearest":
        return [sat_names[i] for i in np.argsort(dist, kind="stable")[:n_ranks]]
    places = series.places()
    if (places[:, 1:] < 0).any():
        raise InputError(f"{series.constellation} has no plane/slot grid: use --placement nearest or list:")
    anchor = int(np.argmin(np.where(np.isfinite(dist), dist, np.inf)))
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
