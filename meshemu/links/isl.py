"""Inter-satellite links: when a laser link between two satellites is usable, and how long it is.

Which satellites pair up (the +Grid) belongs to the constellation's layout:
:mod:`meshemu.constellation.grid`.
"""

from __future__ import annotations

import math

import numpy as np

from meshemu.constants import EARTH_EQUATORIAL_RADIUS_M


def isl_lengths_m(positions_m: np.ndarray, pairs: np.ndarray, *, max_range_m: float | None = None,
                  min_grazing_altitude_m: float = 80e3, cross_plane: np.ndarray | None = None,
                  max_cross_plane_latitude_deg: float | None = None) -> np.ndarray:
    """Length of each ISL at each step, NaN where the link is down; (T, L) float64.

    A link is down when it is longer than ``max_range_m``, when its line of
    sight passes lower than ``min_grazing_altitude_m`` above the (spherical,
    equatorial-radius) Earth, or, for a cross-plane link, when either end is
    above ``max_cross_plane_latitude_deg`` (geocentric).
    """
    a = positions_m[:, pairs[:, 0]]  # (T, L, 3)
    b = positions_m[:, pairs[:, 1]]
    d = b - a
    length = np.linalg.norm(d, axis=-1)
    down = grazing_altitude_m(a, b) < min_grazing_altitude_m
    if max_range_m is not None:
        down |= length > max_range_m
    if max_cross_plane_latitude_deg is not None and cross_plane is not None and cross_plane.any():
        limit = math.sin(math.radians(max_cross_plane_latitude_deg))
        high = (np.abs(a[..., 2]) / np.linalg.norm(a, axis=-1) > limit) | (
            np.abs(b[..., 2]) / np.linalg.norm(b, axis=-1) > limit)
        down |= high & cross_plane[None, :]
    return np.where(down, np.nan, length)


def grazing_altitude_m(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Lowest height above the spherical Earth of the segment a-b (arrays (..., 3)).

    >>> r = 6_378_137.0 + 500e3
    >>> float(grazing_altitude_m(np.array([r, 0, 0]), np.array([0, r, 0]))).__round__()
    -1514560
    """
    d = b - a
    dd = np.einsum("...i,...i->...", d, d)
    s = np.clip(-np.einsum("...i,...i->...", a, d) / np.where(dd > 0, dd, 1.0), 0.0, 1.0)
    closest = a + s[..., None] * d
    return np.linalg.norm(closest, axis=-1) - EARTH_EQUATORIAL_RADIUS_M
