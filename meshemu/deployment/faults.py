"""Faults on a schedule: satellites that go dark or reset, links that are cut, stations that lose their sky.

A :class:`Fault` is declared in series time (seconds after the window's start)
by names (``p03s07``, ``rank:1`` for the satellite holding rank 1 when the
fault fires, a link's two ends, a city). A :class:`FaultSchedule` turns the
declared faults into outages of the link series the run plays (so routing
goes around a dark satellite or a cut link and comes back after), keeps that
series right when a rank moves to a spare satellite, and says which faults
start and end at each step. What a fault does to a satellite's shard (killed,
restarted empty) is the deployment's to carry out.

>>> Fault(at_s=20, satellite="rank:1", for_s=60).kind, Fault(at_s=40, link=("p00s01", "p00s02"), for_s=10).kind
('dark', 'cut')
>>> parse_fault("at=80,satellite=p03s07,reboot=15")
Fault(at_s=80.0, satellite='p03s07', link=None, ground_station=None, for_s=None, reboot_s=15.0)
>>> Fault(at_s=5, satellite="p00s01")
Traceback (most recent call last):
...
meshemu.errors.InputError: a satellite fault needs for_s (dark this long) or reboot_s (its shard restarts after this long)
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, replace

import numpy as np

from meshemu.errors import InputError
from meshemu.links.faults import Outage, mask_outages, with_acquisition


@dataclass(frozen=True)
class Fault:
    at_s: float  # seconds after the window's start
    satellite: str | None = None  # a satellite's name, or rank:N
    link: tuple[str, ...] | None = None  # the two ends of one link
    ground_station: str | None = None  # every GSL of this station
    for_s: float | None = None  # how long it lasts (None with reboot_s; for a link or station: for good)
    reboot_s: float | None = None  # a satellite's computer resets: its shard restarts empty this much later

    def __post_init__(self):
        targets = [x is not None for x in (self.satellite, self.link, self.ground_station)]
        if sum(targets) != 1:
            raise InputError("a fault names exactly one of satellite, link, ground_station")
        if not (math.isfinite(self.at_s) and self.at_s >= 0):
            raise InputError(f"a fault's at_s is seconds after the window's start, 0 or more, got {self.at_s}")
        for name in ("for_s", "reboot_s"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v > 0):
                raise InputError(f"a fault's {name} must be greater than 0 s, got {v}")
        if self.satellite is not None:
            if (self.for_s is None) == (self.reboot_s is None):
                raise InputError("a satellite fault needs for_s (dark this long) or reboot_s "
                                 "(its shard restarts after this long)")
            rank = self.satellite.removeprefix("rank:")
            if self.satellite.startswith("rank:") and not rank.isdigit():
                raise InputError(f"satellite {self.satellite!r}: write rank:N, N a rank of the layout (0, 1, ...)")
        elif self.reboot_s is not None:
            raise InputError("reboot_s is for a satellite (its computer resets); a link or station takes for_s")
        if self.link is not None and (len(self.link) != 2 or self.link[0] == self.link[1]):
            raise InputError(f"a link fault names the link's two ends, got {list(self.link)}")

    @property
    def kind(self) -> str:
        if self.satellite is not None:
            return "dark" if self.for_s is not None else "reboot"
        return "cut" if self.link is not None else "station"

    @property
    def target(self) -> str:
        return self.satellite or (" - ".join(self.link) if self.link else self.ground_station)

    @property
    def end_after_s(self) -> float:
        """How long after ``at_s`` it ends (inf: never)."""
        return self.for_s if self.for_s is not None else (self.reboot_s or math.inf)

    @property
    def rank(self) -> int | None:
        return int(self.satellite[5:]) if self.satellite and self.satellite.startswith("rank:") else None


def parse_fault(text: str) -> Fault:
    """``--fault at=S,satellite=NAME|rank:N|link=A-B|station=CITY,for=S|reboot=S`` as a :class:`Fault`."""
    fields = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if not sep or not value.strip():
            raise InputError(f"--fault {text!r}: write KEY=VALUE pairs, e.g. at=20,satellite=p00s01,for=60")
        fields[key.strip()] = value.strip()
    known = {"at", "satellite", "link", "station", "for", "reboot"}
    if set(fields) - known:
        raise InputError(f"--fault {text!r}: unknown key {sorted(set(fields) - known)[0]!r} "
                         f"(known: {', '.join(sorted(known))})")

    def seconds(key):
        if key not in fields:
            return None
        try:
            return float(fields[key])
        except ValueError:
            raise InputError(f"--fault {text!r}: {key}={fields[key]!r} is not a number of seconds") from None
    if "at" not in fields:
        raise InputError(f"--fault {text!r}: say when, at=S (seconds after the window's start)")
    link = tuple(fields["link"].split("-")) if "link" in fields else None
    return Fault(at_s=seconds("at"), satellite=fields.get("satellite"), link=link,
                 ground_station=fields.get("station"), for_s=seconds("for"), reboot_s=seconds("reboot"))


class FaultSchedule:
    """The faults of a run over ``base`` (a link series), and the series with their outages that the run plays.

    ``series`` is a copy of ``base`` whose lengths carry the outages (and the
    optical terminals' ``acquisition_s``); its arrays change in place, from
    a step on, when :meth:`remap` moves a ``rank:N`` fault to another satellite.
    """

    def __init__(self, base, faults=(), *, acquisition_s: float = 0.0, rank_nodes=()):
        self.base, self.faults, self.acquisition_s = base, tuple(faults), acquisition_s
        self.t0 = float(base.times_s[0])
        self.rank_nodes = tuple(rank_nodes)
        self.check(n_ranks=1 << 30)  # names and times; the layout's ranks are checked by whoever knows it
        self.series = replace(base, length_m=self._lengths())
        self.fired: dict[int, dict] = {}  # fault index -> {"step", "clock_s", "node"}
        self.ended: dict[int, dict] = {}
        self._lock = threading.Lock()

    # -- names to nodes and links ------------------------------------------------------------------
    def check(self, n_ranks: int, window_s: float | None = None) -> None:
        """InputError for a fault that names nothing in this series or layout, or lies outside the window
        (``window_s``: its length, when the series holds only its first step)."""
        if window_s is None:  # the last step lasts one step too
            t = self.base.times_s
            window_s = float(t[-1] - self.t0 + (t[1] - t[0])) if len(t) > 1 else 0.0
        for i, f in enumerate(self.faults):
            where = f"faults[{i}] ({f.kind} of {f.target} at {f.at_s:g} s)"
            if f.at_s >= window_s and window_s > 0:
                raise InputError(f"{where}: the window is {window_s:g} s long")
            if f.rank is not None and f.rank >= n_ranks:
                raise InputError(f"{where}: the layout has ranks 0-{n_ranks - 1}")
            try:
                self._outage(f, (), probe=True)  # a rank fault's satellite is known once placed
            except InputError as err:
                raise InputError(f"{where}: {err.detail if hasattr(err, 'detail') else err}") from None
        named = [(i, f) for i, f in enumerate(self.faults) if f.rank is None]
        for a, (i, f) in enumerate(named):
            for j, g in named[a + 1:]:
                same = f.target == g.target or (f.link and g.link and set(f.link) == set(g.link))
                if same and f.at_s < g.at_s + g.end_after_s and g.at_s < f.at_s + f.end_after_s:
                    raise InputError(f"faults[{i}] and faults[{j}] strike {f.target} at once "
                                     f"({f.at_s:g} s and {g.at_s:g} s): one fault per element at a time")

    def node_of(self, fault: Fault, rank_nodes=None) -> int | None:
        """The node a satellite or station fault strikes (``rank:N``: who holds rank N in ``rank_nodes``)."""
        s, ranks = self.base, self.rank_nodes if rank_nodes is None else rank_nodes
        if fault.satellite is not None:
            name = ranks[fault.rank] if fault.rank is not None else fault.satellite
            v = s.short_index(name)
            if v >= s.n_satellites:
                raise InputError(f"{fault.satellite!r} is a ground station, not a satellite")
            return v
        if fault.ground_station is not None:
            v = s.short_index(fault.ground_station)
            if v < s.n_satellites:
                raise InputError(f"{fault.ground_station!r} is a satellite: use satellite:")
            return v
        return None

    def _outage(self, f: Fault, ranks, probe: bool = False) -> Outage | None:
        if f.kind == "reboot":
            if not (probe and f.rank is not None):
                self.node_of(f, ranks)
            return None  # the links stay: only the computer resets
        start = self.t0 + f.at_s
        end = start + f.end_after_s
        if f.link is not None:
            a, b = (self.base.short_index(n) for n in f.link)
            hit = np.flatnonzero(((self.base.links[:, 0] == a) & (self.base.links[:, 1] == b))
                                 | ((self.base.links[:, 0] == b) & (self.base.links[:, 1] == a)))
            if not len(hit):
                names = self.base.short_names
                raise InputError(f"no link joins {names[a]} and {names[b]} in this constellation")
            return Outage(start, end, links=(int(hit[0]),))
        if probe and f.rank is not None:
            return None  # who holds the rank is known once placed
        return Outage(start, end, nodes=(self.node_of(f, ranks),))

    def _lengths(self, rank_nodes=None) -> np.ndarray:
        ranks = self.rank_nodes if rank_nodes is None else rank_nodes
        outages = []
        for i, f in enumerate(self.faults):
            if f.rank is not None and i in getattr(self, "fired", {}):
                # a fault that fired stays with the satellite it struck, wherever its rank went since
                struck = self.base.short_names[self.fired[i]["node"]]
                f = replace(f, satellite=struck)
            elif f.rank is not None and f.rank >= len(ranks):
                continue  # not placed yet
            o = self._outage(f, ranks)
            if o is not None:
                outages.append(o)
        s = self.base
        return with_acquisition(mask_outages(s.length_m, s.times_s, s.links, outages), s.times_s, self.acquisition_s)

    def remap(self, rank_nodes, from_step: int) -> None:
        """Rank faults follow their ranks: outages from ``from_step`` on are those of the new placement."""
        with self._lock:
            self.rank_nodes = tuple(rank_nodes)
            if from_step < self.series.n_steps:
                self.series.length_m[from_step:] = self._lengths()[from_step:]

    # -- when -----------------------------------------------------------------------------------------
    def step_of(self, after_s: float) -> int:
        """The first step at or after ``after_s`` seconds into the window."""
        return int(np.searchsorted(self.base.times_s, self.t0 + after_s - 1e-9, side="left"))

    def starting(self, step: int) -> list[int]:
        """Faults due by ``step`` that have not fired (a player that jumps steps still fires them)."""
        return [i for i, f in enumerate(self.faults) if i not in self.fired and self.step_of(f.at_s) <= step]

    def ending(self, step: int) -> list[int]:
        return [i for i, f in enumerate(self.faults) if i in self.fired and i not in self.ended
                and math.isfinite(f.end_after_s) and self.step_of(f.at_s + f.end_after_s) <= step]

    def dark_nodes(self, step: int) -> set[int]:
        """Satellites and stations that are down at ``step`` (their faults fired, not ended)."""
        out = set()
        for i, rec in self.fired.items():
            if i not in self.ended and self.faults[i].kind in ("dark", "station") and rec.get("node") is not None:
                out.add(rec["node"])
        return out

    def end_time_s(self, node: int) -> float | None:
        """Series time (after the window's start) when the outage now striking ``node`` ends (None: never)."""
        for i, rec in self.fired.items():
            f = self.faults[i]
            if i not in self.ended and rec.get("node") == node and math.isfinite(f.end_after_s):
                return f.at_s + f.end_after_s
        return None

    def rows(self) -> list[dict]:
        """faults.csv: what fired, where, when (series time and the run's clock)."""
        names = self.base.short_names
        out = []
        for i, f in enumerate(self.faults):
            fired, ended = self.fired.get(i, {}), self.ended.get(i, {})
            out.append({"fault": i, "kind": f.kind, "target": f.target,
                        "node": names[fired["node"]] if fired.get("node") is not None else "",
                        "at_s": f.at_s, "for_s": f.for_s, "reboot_s": f.reboot_s,
                        "fired_step": fired.get("step"), "fired_clock_s": fired.get("clock_s"),
                        "ended_step": ended.get("step"), "ended_clock_s": ended.get("clock_s")})
        return out
