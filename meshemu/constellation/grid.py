"""The +Grid: which satellites of a shell carry laser links to which (a property of the layout).

Each satellite links to its two in-plane neighbours and to the satellite of
the same slot in the next plane. Whether a pair's link is usable at an instant
is :mod:`meshemu.links.isl`'s question.

>>> plus_grid_pairs(3, 3, cross_seam=False).tolist()
[[0, 1], [0, 2], [0, 3], [1, 2], [1, 4], [2, 5], [3, 4], [3, 5], [3, 6], [4, 5], [4, 7], [5, 8], [6, 7], [6, 8], [7, 8]]
"""

from __future__ import annotations

import numpy as np


def plus_grid_pairs(planes: int, per_plane: int, *, cross_seam: bool = True, seam_shift: int = 0,
                    plane_shifts=None) -> np.ndarray:
    """+Grid links of a ``planes`` x ``per_plane`` shell, satellites numbered plane-major.

    Each satellite links to its two in-plane neighbours and to the satellite of
    the same slot in the next plane (slot + ``plane_shifts[i]`` when given).
    The seam (last plane to first) is linked when ``cross_seam``, shifted by
    ``seam_shift`` slots: a Walker delta shell of phasing F wraps round by F.
    Returns (L, 2) int32, each row ``a < b``, rows sorted, no duplicates.
    """
    sat = np.arange(planes * per_plane).reshape(planes, per_plane)
    pairs = []
    if per_plane > 1:
        pairs.append(np.stack([sat, np.roll(sat, -1, axis=1)], -1).reshape(-1, 2))
    shifts = np.zeros(planes, dtype=int) if plane_shifts is None else np.asarray(plane_shifts)
    n_cross = planes if (cross_seam and planes > 2) else planes - 1
    for i in range(n_cross):
        nxt = (i + 1) % planes
        shift = shifts[i] + (seam_shift if nxt == 0 and plane_shifts is None else 0)
        pairs.append(np.stack([sat[i], np.roll(sat[nxt], -shift)], -1))
    if not pairs:
        return np.zeros((0, 2), dtype=np.int32)
    both = np.sort(np.concatenate(pairs), axis=1)
    both = both[both[:, 0] != both[:, 1]]
    return np.unique(both, axis=0).astype(np.int32)


def infer_grid(satrecs, *, cross_seam: bool = True):
    """Planes and slots from orbital elements, for TLE files without a declared grid.

    Satellites group into planes by (inclination, RAAN) within 0.5 deg; when
    every plane has the same number of satellites, slots are ordered by
    argument of latitude and each plane links to the next by the slot shift
    that brings the satellites closest. Returns ``(plane, slot, pairs)``;
    plane and slot are -1 and pairs empty when no regular grid is found.
    """
    n = len(satrecs)
    none = (np.full(n, -1), np.full(n, -1), np.zeros((0, 2), dtype=np.int32))
    inc = np.degrees([s.inclo for s in satrecs])
    raan = np.degrees([s.nodeo for s in satrecs]) % 360
    lat_arg = np.degrees([s.argpo + s.mo for s in satrecs]) % 360
    keys = np.round(inc / 0.5).astype(int) * 1000 + np.round(raan / 0.5).astype(int) % 720
    groups = {}
    for i, k in enumerate(keys):
        groups.setdefault(k, []).append(i)
    sizes = {len(g) for g in groups.values()}
    if len(groups) < 1 or len(sizes) != 1 or sizes == {1}:
        return none
    per_plane = sizes.pop()
    ordered = sorted(groups.values(), key=lambda g: (round(inc[g[0]]), raan[g[0]]))
    plane, slot = np.full(n, -1), np.full(n, -1)
    members = []
    for p, g in enumerate(ordered):
        g = sorted(g, key=lambda i: lat_arg[i])
        plane[g], slot[g] = p, np.arange(per_plane)
        members.append(g)
    order = np.array(members)  # (P, S) satellite index by place
    shifts = [_best_shift(lat_arg[order[i]], lat_arg[order[(i + 1) % len(order)]]) for i in range(len(order))]
    grid = plus_grid_pairs(len(order), per_plane, cross_seam=cross_seam, plane_shifts=shifts)
    return plane, slot, np.sort(order.ravel()[grid], axis=1).astype(np.int32)


def _best_shift(u_this, u_next) -> int:
    per_plane = len(u_this)
    costs = [np.abs((np.roll(u_next, -k) - u_this + 180) % 360 - 180).mean() for k in range(per_plane)]
    return int(np.argmin(costs))
