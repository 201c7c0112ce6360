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
    allreduce: str = "ring"  # how a stage's tensor ranks sum their partials: ring or direct
    layers: tuple[tuple[int, int], ...] = ()  # [start, stop) per rank, when the shards said (run.json's load)

    def labels(self) -> dict[str, list[str]]:
        """Node name -> what it runs, e.g. ``['rank 1: stage 1, tensor rank 0']``."""
        out: dict[str, list[str]] = {}
        for rank, node in enumerate(self.rank_nodes):
            stage, tensor = divmod(rank, max(self.tp, 1))
            layers = _layers_text(*self.layers[rank]) if rank < len(self.layers) else ""
            out.setdefault(node, []).append(f"rank {rank}: stage {stage}" + (f", tensor rank {tensor}" if self.tp > 1 else "")
                                            + layers)
        return out


def _layers_text(start: int, stop: int) -> str:
    return f", layer {start}" if stop - start == 1 else f", layers {start}-{stop - 1}"


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


def trip_legs(names, placement: Placement) -> list[tuple[str, int, int]]:
    """``(label, from node, to node)`` of every message one generated token costs, as ``serving.pipeline`` sends them.

    Tensor rank ``j`` of stage ``s`` hands its hidden state to tensor rank
    ``j`` of stage ``s + 1``; the last stage's rank 0 sends the sampled token
    to every rank of stage 0; within a stage of several tensor ranks each rank
    passes all-reduce pieces to the next round the ring (``ring``) or to every
    other rank (``direct``); stage 0's rank 0 streams the token to the client.
    A leg stands for all of a token's messages between its two ranks (an
    all-reduce sends several pieces per layer: they are one leg here).

    >>> [label for label, _, _ in trip_legs(["a", "b", "c"], Placement(("a", "b"), pp=2, client="c"))]
    ['stage 0 -> stage 1', 'stage 1 -> stage 0 (the token)', 'stage 0 -> client']
    """
    tp, pp = max(placement.tp, 1), max(placement.pp, 1)
    ranks = [names.index(n) for n in placement.rank_nodes]
    if len(ranks) < tp * pp:
        raise InputError(f"the placement names {len(ranks)} nodes for tp {tp} x pp {pp} ranks")
    legs = []
    for s in range(pp - 1):
        for j in range(tp):
            legs.append((f"stage {s} -> stage {s + 1}" + (f" (tensor rank {j})" if tp > 1 else ""),
                         ranks[s * tp + j], ranks[(s + 1) * tp + j]))
    last = (pp - 1) * tp
    for j in range(tp):
        if j != last:
            legs.append((f"stage {pp - 1} -> stage 0 (the token" + (f", to tensor rank {j})" if tp > 1 else ")"),
                         ranks[last], ranks[j]))
    if tp > 1:
        for s in range(pp):
            group = ranks[s * tp:(s + 1) * tp]
            if placement.allreduce == "direct":
                legs += [(f"stage {s} all-reduce direct", u, w) for u in group for w in group if u != w]
            else:
                legs += [(f"stage {s} all-reduce ring", u, group[(i + 1) % tp]) for i, u in enumerate(group)]
    client = names.index(placement.client) if placement.client in names else None
    if client is not None:
        legs.append(("stage 0 -> client", ranks[0], client))
    return legs


def token_trip(series, names, placement: Placement, graphs, tokens_per_step=None, prompts_per_step=None) -> dict:
    """The way one token goes round the mesh at every step, and how many tokens (and prompts) went that way.

    Each leg of :func:`trip_legs` is routed by :mod:`meshemu.routing`, as the
    mesh routes it; ``prompt`` is the route a request's prompt takes from the
    client to rank 0, once per request. ``tokens`` and ``prompts`` (step ->
    count, from a results folder) say how often each step's trip was taken.
    """
    legs = trip_legs(names, placement)
    client = names.index(placement.client) if placement.client in names else None
    head = names.index(placement.rank_nodes[0])
    steps = []
    for k in range(series.n_steps):
        segments, length_m = [], 0.0
        for _, a, b in legs:
            r = shortest_route(series, k, a, b, graphs[k])
            segments.append(list(r.nodes))
            length_m += r.length_m if r.reachable else float("nan")
        prompt = list(shortest_route(series, k, client, head, graphs[k]).nodes) if client is not None else []
        steps.append({"segments": segments, "prompt": prompt,
                      "one_way_s": length_m / SPEED_OF_LIGHT_M_PER_S if np.isfinite(length_m) else None})
    return {"legs": [label for label, _, _ in legs], "steps": steps,
            "tokens": _per_step(tokens_per_step, series.n_steps), "prompts": _per_step(prompts_per_step, series.n_steps)}


def _per_step(counts: dict | None, n_steps: int) -> list[int] | None:
    return [int(counts.get(k, 0)) for k in range(n_steps)] if counts else None


def default_pairs(series, names) -> list[tuple[int, int]]:
    """Two well-known cities when the series has them, else the first two stations."""
    n = series.n_satellites
    for a, b in (("Paris", "Moscow"), ("London", "New York"), ("Tokyo", "Delhi")):
        if a in series.node_names and b in series.node_names:
            return [(series.node_names.index(a), series.node_names.index(b))]
    return [(n, n + 1)] if series.n_ground_stations >= 2 else []


def build_scene(series, *, pairs=(), placement: Placement | None = None, title: str | None = None,
                source: str = "", tokens_per_step: dict | None = None, prompts_per_step: dict | None = None) -> dict:
    """What the page needs to draw ``series``: positions, link states, routes of ``pairs``, placement.

    ``pairs`` are (source, destination) node names or ids; none means :func:`default_pairs`.
    ``tokens_per_step`` (step -> tokens generated then) and ``prompts_per_step`` (step -> requests whose
    first token came then) come from a results folder's ``requests.jsonl``.
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
        "token_trip": token_trip(series, names, placement, graphs, tokens_per_step, prompts_per_step)
        if placement else None,
        "ranks": [{"node": names.index(node), "rank": r, "stage": r // max(placement.tp, 1),
                   "tensor_rank": r % max(placement.tp, 1),
                   "layers": list(placement.layers[r]) if r < len(placement.layers) else None}
                  for r, node in enumerate(placement.rank_nodes)] if placement else [],
        "fibre_speed_fraction": FIBRE_SPEED_FRACTION,
    }
