"""The scene: everything the page draws, worked out here from a link series, as one JSON-ready dict.

The browser only interpolates and draws: satellite positions come from the
series (our own SGP4 propagation), routes from :mod:`meshemu.routing`, so
the page can never disagree with what the emulator plays. Arrays travel as
base64 to keep an exported page small: satellite positions as int16 in units
of ``position_unit_m`` (about 0.25 km at Starlink altitude, far below a
pixel), link states as one bit per link per step.

>>> from meshemu.constellation import load_constellation, default_ground_stations, TimeGrid
>>> from meshemu.links import compute_link_series
>>> c = load_constellation("demo")
>>> s = compute_link_series(c, default_ground_stations()[:10], TimeGrid.from_window(c.epoch_utc, start_s=0, duration_s=20, step_s=10))
>>> scene = build_scene(s, pairs=[("Tokyo", "Delhi")])
>>> scene["n_satellites"], len(scene["times_s"]), scene["routes"][0]["src_name"]
(64, 2, 'Tokyo')
>>> round(scene["routes"][0]["fibre_rtt_s"] * 1e3, 1)  # about 5,850 km of great circle, there and back at 2/3 c
58.5
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

import numpy as np

from meshemu.constants import SPEED_OF_LIGHT_M_PER_S
from meshemu.errors import InputError
from meshemu.routing import shortest_route, split_graph

# Light in silica fibre: refractive index about 1.47, so about 2/3 c. Real fibre
# routes are also longer than the great circle; we leave that out and say so on the page.
FIBRE_SPEED_FRACTION = 2.0 / 3.0
MEAN_EARTH_RADIUS_M = 6_371_008.8  # IUGG mean radius, for great-circle distances
SCENE_VERSION = 1


@dataclass(frozen=True)
class Placement:
    """Which rank runs on which node (short names, as ``run.json`` writes them)."""

    rank_nodes: tuple[str, ...]
    tp: int = 1
    pp: int = 1
    client: str | None = None

    def labels(self) -> dict[str, list[str]]:
        """Node name -> what it runs, e.g. ``['rank 1: stage 1, tensor rank 0']``."""
        out: dict[str, list[str]] = {}
        for rank, node in enumerate(self.rank_nodes):
            stage, tensor = divmod(rank, max(self.tp, 1))
            out.setdefault(node, []).append(f"rank {rank}: stage {stage}" + (f", tensor rank {tensor}" if self.tp > 1 else ""))
        return out


def great_circle_m(a_m: np.ndarray, b_m: np.ndarray) -> float:
    """Distance over a sphere of the mean Earth radius between two Earth-fixed positions.

    >>> round(great_circle_m(np.array([1.0, 0, 0]), np.array([0, 1.0, 0])) / 1e3)  # a quarter of the way round
    10008
    """
    a, b = np.asarray(a_m, float), np.asarray(b_m, float)
    angle = np.arctan2(np.linalg.norm(np.cross(a, b)), np.dot(a, b))  # stable for tiny and near-pi angles
    return float(angle * MEAN_EARTH_RADIUS_M)


def _b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode("ascii")


def _node(series, names, name) -> int:
    """A node by its full name (``New York``), short name (``NewYork``) or id."""
    if name in names:
        return names.index(name)
    return series.node_index(name)


def route_track(series, names, src: int, dst: int, graphs) -> dict:
    """The routed path between two nodes at every step, with its RTT and where it changed."""
    steps, changes, before = [], [], None
    for k in range(series.n_steps):
        r = shortest_route(series, k, src, dst, graphs[k])
        nodes = list(r.nodes)
        steps.append({"rtt_s": r.rtt_s if r.reachable else None, "hops": r.hops if r.reachable else None,
                      "nodes": nodes})
        if k > 0 and nodes != before:
            changes.append(k)
        before = nodes
    track = {"src": src, "dst": dst, "src_name": series.node_names[src], "dst_name": series.node_names[dst],
             "label": f"{names[src]} - {names[dst]}", "steps": steps, "changes": changes,
             "fibre_rtt_s": None, "great_circle_m": None}
    n = series.n_satellites
    if src >= n and dst >= n:  # fibre only makes sense between two places on the ground
        d_m = great_circle_m(series.positions_m[0, src], series.positions_m[0, dst])
        track.update(great_circle_m=d_m, fibre_rtt_s=2.0 * d_m / (FIBRE_SPEED_FRACTION * SPEED_OF_LIGHT_M_PER_S))
    return track


def token_trip(series, names, placement: Placement, graphs, tokens_per_step=None) -> dict:
    """The way one token goes round the mesh at every step, and how many tokens went that way.

    Stage leaders (tensor rank 0 of each stage) pass activations stage to
    stage; the last stage sends the sampled token back to stage 0, which
    streams it to the client; with tensor parallelism each stage's ranks also
    pass all-reduce pieces round a ring. Each leg is routed by
    :mod:`meshemu.routing`, as the mesh routes it.
    """
    tp, pp = max(placement.tp, 1), max(placement.pp, 1)
    ranks = [names.index(n) for n in placement.rank_nodes]
    legs = []  # (label, from, to)
    leaders = [ranks[s * tp] for s in range(pp) if s * tp < len(ranks)]
    for s, a in enumerate(leaders):
        if len(leaders) > 1:
            nxt = (s + 1) % len(leaders)
            legs.append((f"stage {s} -> stage {nxt}" + (" (the token)" if nxt == 0 else ""), a, leaders[nxt]))
        group = ranks[s * tp:(s + 1) * tp]
        if len(group) > 1:
            legs += [(f"stage {s} all-reduce ring", u, group[(i + 1) % len(group)]) for i, u in enumerate(group)]
    client = names.index(placement.client) if placement.client in names else None
    if client is not None and leaders:
        legs.append(("stage 0 -> client", leaders[0], client))
    steps = []
    for k in range(series.n_steps):
        segments, length_m = [], 0.0
        for _, a, b in legs:
            r = shortest_route(series, k, a, b, graphs[k])
            segments.append(list(r.nodes))
            length_m += r.length_m if r.reachable else float("nan")
        steps.append({"segments": segments, "one_way_s": length_m / SPEED_OF_LIGHT_M_PER_S
                      if np.isfinite(length_m) else None})
    tokens = [int(tokens_per_step.get(k, 0)) for k in range(series.n_steps)] if tokens_per_step else None
    return {"legs": [label for label, _, _ in legs], "steps": steps, "tokens": tokens}


def default_pairs(series, names) -> list[tuple[int, int]]:
    """Two well-known cities when the series has them, else the first two stations."""
    n = series.n_satellites
    for a, b in (("Paris", "Moscow"), ("London", "New York"), ("Tokyo", "Delhi")):
        if a in series.node_names and b in series.node_names:
            return [(series.node_names.index(a), series.node_names.index(b))]
    return [(n, n + 1)] if series.n_ground_stations >= 2 else []


def build_scene(series, *, pairs=(), placement: Placement | None = None, title: str | None = None,
                source: str = "", tokens_per_step: dict | None = None) -> dict:
    """What the page needs to draw ``series``: positions, link states, routes of ``pairs``, placement.

    ``pairs`` are (source, destination) node names or ids; none means :func:`default_pairs`.
    ``tokens_per_step`` (step -> tokens generated then) comes from a results folder's ``requests.jsonl``.
    """
    if series.n_steps < 1:
        raise InputError("the link series has no steps")
    names = series.short_names
    ids = [(_node(series, names, a), _node(series, names, b)) for a, b in pairs] or default_pairs(series, names)
    n = series.n_satellites
    sat_m = series.positions_m[:, :n].astype(np.float64)  # (T, N, 3)
    unit_m = max(float(np.abs(sat_m).max()) / 32000.0, 1.0) if n else 1.0
    sat_q = np.round(sat_m / unit_m).astype("<i2")  # (T, N, 3)
    up = series.up  # (T, L)
    up_bits = np.packbits(up, axis=1, bitorder="little") if up.size else np.zeros((series.n_steps, 0), np.uint8)
    graphs = [split_graph(series, k) for k in range(series.n_steps)] if ids or placement else []
    place = placement.labels() if placement else {}
    unknown = [node for node in place if node not in names]
    if unknown:
        raise InputError(f"placement names node {unknown[0]!r}, which is not in the {series.constellation} series")
    return {
        "version": SCENE_VERSION,
        "title": title or series.constellation,
        "source": source,
        "constellation": series.constellation,
        "epoch_utc": series.epoch_utc,
        "times_s": [float(t) for t in series.times_s],
        "n_satellites": n,
        "node_names": list(series.node_names),
        "short_names": list(names),
        "planes": [int(p) for p in series.places()[:, 1]],
        "position_unit_m": unit_m,
        "satellite_positions_b64": _b64(sat_q),
        "station_positions_m": [[float(v) for v in p] for p in series.positions_m[0, n:]],
        "links": [int(v) for v in series.links.reshape(-1)],
        "link_up_bytes_per_step": int(up_bits.shape[1]),
        "link_up_b64": _b64(up_bits),
        "routes": [route_track(series, names, a, b, graphs) for a, b in ids],
        "placement": {names.index(node): labels for node, labels in place.items()},
        "client": placement.client if placement else None,
        "token_trip": token_trip(series, names, placement, graphs, tokens_per_step) if placement else None,
        "fibre_speed_fraction": FIBRE_SPEED_FRACTION,
    }
