"""The link series: every link's state at every step, as compact arrays.

Node ids follow Hypatia's numbering: satellites ``0..N-1`` in constellation
order, then ground stations ``N..N+G-1``. A link is a row of ``links``
(``a < b``, so a ground-satellite link is ``(satellite, station)``);
``length_m[k, l]`` is its length at step k, NaN while it is down. The series
is what the emulator plays: :meth:`LinkSeries.changes` gives what changed
from one step to the next, :meth:`LinkSeries.snapshot` one instant as a graph.

>>> from meshemu.constellation import load_constellation, default_ground_stations, TimeGrid
>>> c = load_constellation("demo")
>>> grid = TimeGrid.from_window(c.epoch_utc, start_s=0, duration_s=2, step_s=1)
>>> s = compute_link_series(c, default_ground_stations()[:3], grid)
>>> s.n_steps, s.n_satellites, s.node_names[64]
(2, 64, 'Tokyo')
>>> g = s.snapshot(0)
>>> sorted(g.edges[0, 1])
['delay_s', 'kind', 'length_m']
"""

from __future__ import annotations

import difflib
import zipfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import networkx as nx
import numpy as np

from meshemu.constants import SPEED_OF_LIGHT_M_PER_S
from meshemu.constellation.ground import ground_positions_m
from meshemu.constellation.propagate import TimeGrid
from meshemu.errors import InputError
from meshemu.links.gsl import visible_links
from meshemu.links.isl import isl_lengths_m
from meshemu.links.names import find_short, short_names
from meshemu.resources import memory_problem

_FORMAT_VERSION = 1


@dataclass(frozen=True)
class LinkChanges:
    """What changed between two consecutive steps (link indices into ``LinkSeries.links``)."""

    went_up: np.ndarray
    went_down: np.ndarray
    delay_changed: np.ndarray  # links up at both steps whose delay moved
    delay_s: np.ndarray  # the new one-way delays of ``delay_changed``

    @property
    def count(self) -> int:
        return len(self.went_up) + len(self.went_down) + len(self.delay_changed)


@dataclass(frozen=True, eq=False)
class LinkSeries:
    constellation: str
    epoch_utc: str  # ISO 8601; times_s count from here
    times_s: np.ndarray  # (T,)
    node_names: tuple[str, ...]  # (N + G,)
    n_satellites: int
    links: np.ndarray  # (L, 2) int32
    length_m: np.ndarray  # (T, L) float32, NaN while down (resolution < 1 m)
    positions_m: np.ndarray  # (T, N + G, 3) float32, Earth-fixed (ITRS)
    ut1_equals_utc: bool = False
    satellite_places: np.ndarray | None = None  # (N, 3) int32: shell, plane, slot; -1 unknown
    rate_bps: np.ndarray | None = None  # (L,) float64: each link's rate, each direction; NaN (or None): not modelled

    @property
    def n_steps(self) -> int:
        return len(self.times_s)

    @property
    def n_nodes(self) -> int:
        return len(self.node_names)

    @property
    def n_ground_stations(self) -> int:
        return self.n_nodes - self.n_satellites

    @property
    def is_gsl(self) -> np.ndarray:
        return self.links[:, 1] >= self.n_satellites

    @property
    def up(self) -> np.ndarray:
        return ~np.isnan(self.length_m)

    @property
    def delay_s(self) -> np.ndarray:
        """One-way propagation delay of every link at every step, (T, L), NaN while down."""
        return self.length_m.astype(np.float64) / SPEED_OF_LIGHT_M_PER_S

    def node_index(self, name) -> int:
        """A node's id from its name, or from its id as text."""
        return find_node(self.node_names, name, self.constellation)

    @cached_property
    def short_names(self) -> tuple[str, ...]:
        """Every node's short name (``p03s12``, ``NewYork``; see :mod:`meshemu.links.names`)."""
        return short_names(self.node_names, self.n_satellites, self.places())

    def short_index(self, name) -> int:
        """A node's id from its short name, its id as text, or a city's full name."""
        return find_short(self.short_names, self.n_satellites, name)

    def places(self) -> np.ndarray:
        """(N, 3) int32: shell, plane and slot of every satellite, -1 where unknown."""
        if self.satellite_places is None:
            places = np.full((self.n_satellites, 3), -1, dtype=np.int32)
            places[:, 0] = 0
            return places
        return self.satellite_places

    def link_rates_bps(self) -> np.ndarray:
        """(L,) float64: every link's rate in bit/s, each direction, NaN where the constellation gives none."""
        if self.rate_bps is None:
            return np.full(len(self.links), np.nan)
        return self.rate_bps

    def step_index(self, t_s: float) -> int:
        """The last step at or before ``t_s`` (clamped to the window)."""
        return int(np.clip(np.searchsorted(self.times_s, t_s, side="right") - 1, 0, self.n_steps - 1))

    def snapshot(self, k: int) -> nx.Graph:
        """Step ``k`` as an undirected graph of the links that are up.

        Nodes carry ``kind`` ('satellite' or 'ground_station'), ``name`` and
        ``position_m``; edges carry ``kind`` ('isl' or 'gsl'), ``length_m`` and
        ``delay_s``.
        """
        g = nx.Graph(constellation=self.constellation, t_s=float(self.times_s[k]))
        for i, name in enumerate(self.node_names):
            kind = "satellite" if i < self.n_satellites else "ground_station"
            g.add_node(i, kind=kind, name=name, position_m=tuple(map(float, self.positions_m[k, i])))
        length = self.length_m[k]
        for l in np.flatnonzero(~np.isnan(length)):
            a, b = map(int, self.links[l])
            g.add_edge(a, b, kind="gsl" if b >= self.n_satellites else "isl",
                       length_m=float(length[l]), delay_s=float(length[l]) / SPEED_OF_LIGHT_M_PER_S)
        return g

    def changes(self, k: int, *, min_delay_change_s: float = 0.0) -> LinkChanges:
        """From step ``k - 1`` to step ``k`` (from nothing, for k = 0)."""
        now = self.length_m[k]
        before = self.length_m[k - 1] if k > 0 else np.full_like(now, np.nan)
        up_now, up_before = ~np.isnan(now), ~np.isnan(before)
        both = up_now & up_before
        moved = both & (np.abs(now - before) / SPEED_OF_LIGHT_M_PER_S > min_delay_change_s)
        changed = np.flatnonzero(moved)
        return LinkChanges(np.flatnonzero(up_now & ~up_before), np.flatnonzero(up_before & ~up_now),
                           changed, now[changed].astype(np.float64) / SPEED_OF_LIGHT_M_PER_S)

    def save(self, path) -> Path:
        path = Path(path)
        try:
            np.savez_compressed(path, format_version=_FORMAT_VERSION, constellation=self.constellation,
                                epoch_utc=self.epoch_utc, times_s=self.times_s, node_names=np.array(self.node_names),
                                n_satellites=self.n_satellites, links=self.links, length_m=self.length_m,
                                positions_m=self.positions_m, ut1_equals_utc=self.ut1_equals_utc,
                                satellite_places=self.places(), rate_bps=self.link_rates_bps())
        except OSError as err:
            raise InputError(f"cannot write: {err.strerror or err}", file=path) from None
        return path if path.suffix == ".npz" else path.with_name(path.name + ".npz")

    @classmethod
    def load(cls, path) -> "LinkSeries":
        """A series :meth:`save` wrote; anything else (a foreign or damaged ``.npz``) is one InputError."""
        try:
            z = np.load(path, allow_pickle=False)
            if not hasattr(z, "zip"):
                raise ValueError("a single array (.npy), not an .npz archive")
            with z:
                unpacked = sum(i.file_size for i in z.zip.infolist())
                problem = memory_problem(unpacked, "the link series unpacked", "is it the right file?")
                if problem:
                    raise InputError(problem, file=path)
                version = z["format_version"]
                if version.shape != () or int(version) != _FORMAT_VERSION:
                    raise InputError(f"link series format {version.tolist()} is not {_FORMAT_VERSION}: "
                                     "recompute it with 'meshemu topology'", file=path)
                series = cls(str(z["constellation"]), str(z["epoch_utc"]), z["times_s"],
                             tuple(str(n) for n in z["node_names"]), int(z["n_satellites"]), z["links"],
                             z["length_m"], z["positions_m"], bool(z["ut1_equals_utc"]), z["satellite_places"],
                             z["rate_bps"] if "rate_bps" in z.files else None)  # series saved before rates: none
        except InputError:
            raise
        except (OSError, KeyError, ValueError, TypeError, EOFError, zipfile.BadZipFile) as err:
            why = str(err)
            if "pickled" in why:
                why = "it holds Python objects, which meshemu never loads"
            raise InputError(f"not a meshemu link series ({why})", file=path) from None
        problem = series.shape_problem()
        if problem:
            # before: a foreign series was drawn (times of another length, no nodes), or failed later in
            # scipy or the view with an IndexError
            raise InputError(f"not a meshemu link series: {problem}", file=path)
        return series

    def shape_problem(self) -> str:
        """What is inconsistent in the arrays ('' when nothing): shapes, ids, times and lengths."""
        t, n, links = self.times_s, self.n_nodes, self.links
        if t.ndim != 1 or len(t) == 0 or not np.isfinite(t).all() or (np.diff(t) <= 0).any():
            return "times_s must be a non-empty, finite, increasing list of seconds"
        if n == 0 or not 0 <= self.n_satellites <= n:
            return f"{self.n_satellites} satellites among {n} nodes"
        if links.ndim != 2 or links.shape[1:] != (2,) or links.dtype.kind not in "iu":
            return f"links must be (L, 2) node ids, got shape {links.shape} of {links.dtype}"
        if len(links) and not ((links[:, 0] >= 0) & (links[:, 0] < links[:, 1]) & (links[:, 1] < n)).all():
            return f"a link names a node outside 0..{n - 1} (or is not ordered a < b)"
        if self.length_m.shape != (len(t), len(links)):
            return f"length_m is {self.length_m.shape}, expected (steps, links) = {(len(t), len(links))}"
        if (self.length_m[~np.isnan(self.length_m)] < 0).any() or np.isinf(self.length_m).any():
            return "length_m must be metres >= 0, or NaN while a link is down"
        if self.positions_m.shape != (len(t), n, 3) or not np.isfinite(self.positions_m).all():
            return f"positions_m is {self.positions_m.shape}, expected finite (steps, nodes, 3) = {(len(t), n, 3)}"
        places = self.satellite_places
        if places is not None and (places.shape != (self.n_satellites, 3) or places.dtype.kind not in "iu"):
            return f"satellite_places is {places.shape}, expected (satellites, 3) = {(self.n_satellites, 3)}"
        rate = self.rate_bps
        if rate is not None and (rate.shape != (len(links),) or rate.dtype.kind != "f" or (rate <= 0).any()):
            return f"rate_bps is {rate.shape} of {rate.dtype}, expected (links,) = ({len(links)},) bit/s > 0 or NaN"
        return ""


def find_node(node_names, name, where: str = "") -> int:
    """The id of node ``name`` (an exact name, or an id as text) among ``node_names``.

    >>> find_node(("a", "Paris"), "Paris"), find_node(("a", "Paris"), "0")
    (1, 0)
    """
    if isinstance(name, (int, np.integer)) or str(name).isdigit():
        i = int(name)
        if 0 <= i < len(node_names):
            return i
        raise InputError(f"node id {i} is outside 0..{len(node_names) - 1}")
    try:
        i = node_names.index(name)
    except ValueError:
        close = difflib.get_close_matches(str(name), node_names, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; names are matched exactly"
        raise InputError(f"unknown node {name!r}{' in ' + where if where else ''}{hint}") from None
    if name in node_names[i + 1:]:
        ids = [str(k) for k, n in enumerate(node_names) if n == name]
        raise InputError(f"{name!r} names {len(ids)} nodes{' in ' + where if where else ''} "
                         f"(ids {', '.join(ids[:5])}): give the node id instead")
    return i


def compute_link_series(constellation, stations, grid: TimeGrid, *, progress=None,
                        chunk_steps: int = 50) -> LinkSeries:
    """Propagate ``constellation`` over ``grid`` and work out every ISL and GSL.

    Steps are propagated ``chunk_steps`` at a time (float64 for one chunk only)
    and written straight into the series' float32 arrays; ground links are kept
    as (pair, range) lists of compact dtypes until every pair is known, then
    laid out once. ``progress(done_steps, total_steps)`` is called after each chunk.
    """
    c = constellation
    n_sat, n_g, n_t = c.size, len(stations), len(grid)
    check_series_size(n_sat, n_g, n_t, len(c.isl_pairs))
    gs_pos, gs_up = ground_positions_m(stations)
    pairs = c.isl_pairs
    cross_plane = (c.plane[pairs[:, 0]] != c.plane[pairs[:, 1]]) if len(pairs) else np.zeros(0, bool)
    isl_len = np.empty((n_t, len(pairs)), dtype=np.float32)
    positions = np.empty((n_t, n_sat + n_g, 3), dtype=np.float32)  # satellites, then stations
    positions[:, n_sat:] = gs_pos.astype(np.float32)
    key_dtype = np.int32 if n_g * n_sat < 2**31 else np.int64
    gsl_steps, gsl_keys, gsl_range = [], [], []  # per chunk: step (int32), station * N + satellite, m (float32)
    for t0 in range(0, n_t, chunk_steps):
        sub = TimeGrid(grid.epoch_utc, grid.offsets_s[t0:t0 + chunk_steps], grid.ut1_equals_utc)
        pos = c.positions_itrs_m(sub)  # (t, S, 3) float64, this chunk only
        positions[t0:t0 + len(sub), :n_sat] = pos
        isl_len[t0:t0 + len(sub)] = isl_lengths_m(
            pos, pairs, max_range_m=_m(c.isl.max_range_km), min_grazing_altitude_m=c.isl.min_grazing_altitude_km * 1e3,
            cross_plane=cross_plane, max_cross_plane_latitude_deg=c.isl.max_cross_plane_latitude_deg)
        t, g, s, rng = visible_links(pos, gs_pos, gs_up, min_elevation_deg=c.gsl.elevation_limit_deg,
                                     max_range_m=_m(c.gsl.max_range_km), policy=c.gsl.policy)
        gsl_steps.append((t + t0).astype(np.int32))
        gsl_keys.append((g * n_sat + s).astype(key_dtype))
        gsl_range.append(rng.astype(np.float32))
        del pos
        if progress is not None:
            progress(min(t0 + chunk_steps, n_t), n_t)
    t, key, rng = np.concatenate(gsl_steps), np.concatenate(gsl_keys), np.concatenate(gsl_range)
    del gsl_steps, gsl_keys, gsl_range
    gsl_key, column = np.unique(key, return_inverse=True)  # each station-satellite pair seen
    del key
    n_isl = len(pairs)
    length_m = np.empty((n_t, n_isl + len(gsl_key)), dtype=np.float32)  # the one (T, L) array
    length_m[:, :n_isl] = isl_len
    del isl_len
    length_m[:, n_isl:] = np.nan
    length_m[t, n_isl + column] = rng
    del t, column, rng
    gsl_links = np.stack([gsl_key % n_sat, n_sat + gsl_key // n_sat], axis=1)
    rate_bps = np.concatenate([np.full(n_isl, _bps(c.isl.rate_gbps)), np.full(len(gsl_key), _bps(c.gsl.rate_gbps))])
    return LinkSeries(
        constellation=c.name, epoch_utc=grid.epoch_utc.isoformat().replace("+00:00", "Z"),
        times_s=np.asarray(grid.offsets_s, dtype=np.float64),
        node_names=tuple(c.satellite_names) + tuple(st.name for st in stations), n_satellites=n_sat,
        links=np.concatenate([pairs, gsl_links]).astype(np.int32).reshape(-1, 2),
        length_m=length_m, positions_m=positions, ut1_equals_utc=grid.ut1_equals_utc,
        satellite_places=c.places, rate_bps=rate_bps)


def series_bytes(n_satellites: int, n_stations: int, n_steps: int, n_isls: int) -> int:
    """A floor on the memory a link series takes while it is computed.

    Positions are held once, ISL lengths twice (alone, then in the series), and
    each station sees at least a few satellites at every step.
    """
    positions = n_steps * (n_satellites + n_stations) * 3 * 4
    lengths = n_steps * (n_isls * 2 + 4 * n_stations) * 4
    return positions + lengths


def check_series_size(n_satellites: int, n_stations: int, n_steps: int, n_isls: int) -> None:
    """InputError when the series would not fit in memory: before a single array is made."""
    problem = memory_problem(series_bytes(n_satellites, n_stations, n_steps, n_isls),
                             f"the link series of {n_satellites:,} satellites and {n_stations:,} ground stations "
                             f"over {n_steps:,} steps",
                             "give a shorter window, a longer step or a smaller constellation")
    if problem:
        raise InputError(problem)


def _bps(gbps) -> float:
    return np.nan if gbps is None else gbps * 1e9


def _m(km):
    return None if km is None else km * 1e3
