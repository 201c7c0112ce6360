"""Links the network loses: outages of nodes and links, and optical terminals that need time to acquire.

A fault does not change the orbits, only which links carry traffic, so the
series is the same arrays with more NaN: every link of a dark node, or a cut
link, is down for the outage's steps, and routing (which reads the series)
goes around it and comes back when it ends. Pure functions over a
:class:`~meshemu.links.series.LinkSeries`; the deployment decides when.

>>> import numpy as np
>>> from meshemu.links.series import LinkSeries
>>> s = LinkSeries("x", "2026-01-01T00:00:00Z", np.arange(5.0), ("a", "b", "c"), 3,
...                np.array([[0, 1], [1, 2]]), np.full((5, 2), 1e6, np.float32), np.zeros((5, 3, 3), np.float32))
>>> dark = mask_outages(s.length_m, s.times_s, s.links, [Outage(start_s=1, end_s=3, nodes=(1,))])
>>> np.isnan(dark).astype(int).tolist()
[[0, 0], [1, 1], [1, 1], [0, 0], [0, 0]]
>>> np.isnan(with_acquisition(dark, s.times_s, acquisition_s=1.0)).astype(int).tolist()
[[0, 0], [1, 1], [1, 1], [1, 1], [0, 0]]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Outage:
    """Nodes and links down from ``start_s`` (series time) until ``end_s`` (exclusive; inf: for good)."""

    start_s: float
    end_s: float = float("inf")
    nodes: tuple[int, ...] = ()  # every link of these nodes
    links: tuple[int, ...] = ()  # these links (rows of the series' links)

    def steps(self, times_s: np.ndarray) -> np.ndarray:
        """Which steps it covers (a step is down when its time lies in [start, end))."""
        return (times_s >= self.start_s) & (times_s < self.end_s)


def mask_outages(length_m: np.ndarray, times_s: np.ndarray, links: np.ndarray, outages) -> np.ndarray:
    """``length_m`` (T, L) with every link an outage takes down set to NaN at the steps it covers (a copy)."""
    out = np.array(length_m, copy=True)
    for o in outages:
        steps = o.steps(times_s)
        if not steps.any():
            continue
        hit = np.isin(links[:, 0], o.nodes) | np.isin(links[:, 1], o.nodes)
        hit[list(o.links)] = True
        out[np.ix_(steps, hit)] = np.nan
    return out


def with_acquisition(length_m: np.ndarray, times_s: np.ndarray, acquisition_s: float) -> np.ndarray:
    """Each link unusable for ``acquisition_s`` after it comes into range (or back from an outage) (a copy).

    A link up at the first step counts as acquired already (the window starts in mid-orbit).
    """
    out = np.array(length_m, copy=True)
    if acquisition_s <= 0 or len(times_s) < 2:
        return out
    up = ~np.isnan(length_m)
    rose = up[1:] & ~up[:-1]  # (T-1, L): link up at step k+1, down at step k
    for k, l in zip(*np.nonzero(rose)):
        t_up = times_s[k + 1]
        steps = (times_s >= t_up) & (times_s < t_up + acquisition_s)
        out[steps, l] = np.nan
    return out
