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


def visible_links(sat_positions_m: np.ndarray, gs_positions_m: np.ndarray, gs_up: np.ndarray, *,
                  min_elevation_deg: float | None = 25.0, max_range_m: float | None = None,
                  policy: str = "all", chunk_elements: int = 4_000_000):
    """Every (step, ground station, satellite) link that is up, as flat arrays.

    A satellite is usable when its elevation is at least ``min_elevation_deg``
    (measured from the WGS84 local horizontal) and its slant range at most
    ``max_range_m``; either limit may be None. With ``policy="nearest"`` each
    station keeps only its nearest usable satellite per step.
    Returns ``(step, station, satellite, range_m)``. Work is done in chunks of
    steps so that memory stays near ``chunk_elements`` station-satellite pairs.
    """
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
