"""Ground-satellite links: which satellites each ground station can reach, step by step.

>>> import numpy as np
>>> gs, up = np.array([[6_378_137.0, 0, 0]]), np.array([[1.0, 0, 0]])
>>> sats = np.array([[[6_878_137.0, 0, 0], [0, 6_878_137.0, 0]]])  # overhead, and far below the horizon
>>> t, g, s, r = visible_links(sats, gs, up, min_elevation_deg=25)
>>> t.tolist(), s.tolist(), r.round().tolist()
([0], [0], [500000.0])
"""

from __future__ import annotations

import math

import numpy as np

# How far below a station's horizontal plane a satellite may seem to lie in the float32 pre-filter
# and still be tested exactly: float32 puts ~1 m of error on products of ~7,000 km.
HORIZON_MARGIN_M = 10e3


def visible_links(sat_positions_m: np.ndarray, gs_positions_m: np.ndarray, gs_up: np.ndarray, *,
                  min_elevation_deg: float | None = 25.0, max_range_m: float | None = None,
                  policy: str = "all", chunk_elements: int = 1_000_000):
    """Every (step, ground station, satellite) link that is up, as flat arrays.

    A satellite is usable when its elevation is at least ``min_elevation_deg``
    (measured from the WGS84 local horizontal) and its slant range at most
    ``max_range_m``; either limit may be None. With ``policy="nearest"`` each
    station keeps only its nearest usable satellite per step.
    Returns ``(step, station, satellite, range_m)`` in (step, station, satellite)
    order. Work is done in chunks of steps so that memory stays near
    ``chunk_elements`` station-satellite pairs.

    With a non-negative elevation limit only satellites above a station's
    horizontal plane can qualify: a float32 product finds those (~5 % of the
    pairs, with :data:`HORIZON_MARGIN_M` to spare), and the exact float64 test
    of :func:`dense_visible_links` runs on them alone, so the result is the same.
    """
    n_t, n_s, _ = sat_positions_m.shape
    n_g = len(gs_positions_m)
    if n_g == 0 or n_s == 0 or min_elevation_deg is None or min_elevation_deg < 0:
        return dense_visible_links(sat_positions_m, gs_positions_m, gs_up, min_elevation_deg=min_elevation_deg,
                                   max_range_m=max_range_m, policy=policy)
    sin_min = math.sin(math.radians(min_elevation_deg))
    up32 = gs_up.astype(np.float32)
    gs_height_m = np.einsum("gi,gi->g", gs_positions_m, gs_up).astype(np.float32)  # (G,) station . up
    step = max(1, chunk_elements // (n_g * n_s))
    out = ([], [], [], [])
    for t0 in range(0, n_t, step):
        pos = sat_positions_m[t0:t0 + step]
        height = np.matmul(up32, pos.astype(np.float32).transpose(0, 2, 1))  # (t, G, S) satellite . up
        t, g, s = np.nonzero(height >= (gs_height_m - HORIZON_MARGIN_M)[None, :, None])
        d = pos[t, s] - gs_positions_m[g]  # (n, 3)
        rng = np.linalg.norm(d, axis=-1)
        ok = np.einsum("ni,ni->n", d, gs_up[g]) >= sin_min * rng
        if max_range_m is not None:
            ok &= rng <= max_range_m
        t, g, s, rng = t[ok], g[ok], s[ok], rng[ok]
        if policy == "nearest" and len(t):
            order = np.lexsort((s, rng, g, t))  # per (step, station): nearest first, ties to the lower id
            first = np.ones(len(order), dtype=bool)
            first[1:] = (t[order][1:] != t[order][:-1]) | (g[order][1:] != g[order][:-1])
            keep = np.sort(order[first])
            t, g, s, rng = t[keep], g[keep], s[keep], rng[keep]
        for acc, v in zip(out, (t + t0, g, s, rng)):
            acc.append(v)
    return tuple(np.concatenate(v) for v in out)


def dense_visible_links(sat_positions_m: np.ndarray, gs_positions_m: np.ndarray, gs_up: np.ndarray, *,
                        min_elevation_deg: float | None = 25.0, max_range_m: float | None = None,
                        policy: str = "all", chunk_elements: int = 4_000_000):
    """:func:`visible_links` by testing every station-satellite pair in float64 (the reference)."""
    n_t, n_s, _ = sat_positions_m.shape
    n_g = len(gs_positions_m)
    out = ([], [], [], [])
    if n_g == 0 or n_s == 0:
        return tuple(np.zeros(0, dtype=d) for d in (np.int64, np.int64, np.int64, np.float64))
    sin_min = math.sin(math.radians(min_elevation_deg)) if min_elevation_deg is not None else None
    step = max(1, chunk_elements // (n_g * n_s))
    for t0 in range(0, n_t, step):
        d = sat_positions_m[t0:t0 + step, None, :, :] - gs_positions_m[None, :, None, :]  # (t, G, S, 3)
        rng = np.linalg.norm(d, axis=-1)  # (t, G, S)
        ok = np.ones(rng.shape, dtype=bool)
        if sin_min is not None:
            ok &= np.einsum("tgsi,gi->tgs", d, gs_up) >= sin_min * rng
        if max_range_m is not None:
            ok &= rng <= max_range_m
        if policy == "nearest":
            masked = np.where(ok, rng, np.inf)
            best = masked.argmin(axis=-1)  # (t, G)
            keep = np.zeros_like(ok)
            np.put_along_axis(keep, best[..., None], True, axis=-1)
            ok &= keep
        t, g, s = np.nonzero(ok)
        for acc, v in zip(out, (t + t0, g, s, rng[t, g, s])):
            acc.append(v)
    return tuple(np.concatenate(v) for v in out)


def elevation_deg(sat_positions_m: np.ndarray, gs_positions_m: np.ndarray, gs_up: np.ndarray) -> np.ndarray:
    """Elevation of every satellite above every station's local horizontal, (T, G, S) degrees.

    >>> gs, up = np.array([[6_378_137.0, 0, 0]]), np.array([[1.0, 0, 0]])
    >>> float(elevation_deg(np.array([[[7_000_000.0, 0, 0]]]), gs, up)[0, 0, 0])
    90.0
    """
    d = sat_positions_m[:, None, :, :] - gs_positions_m[None, :, None, :]  # (T, G, S, 3)
    sin_el = np.einsum("tgsi,gi->tgs", d, gs_up) / np.linalg.norm(d, axis=-1)
    return np.degrees(np.arcsin(np.clip(sin_el, -1.0, 1.0)))
