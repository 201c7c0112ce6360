"""A formation: satellites flying in a tight grid about one reference orbit (Hill / Clohessy-Wiltshire).

A :class:`Formation` is pure data, what a ``formations:`` entry of a file under
``topologies/`` says: ``rows`` x ``columns`` satellites, ``spacing_m`` apart,
about a circular reference orbit at ``altitude_km``. The reference is an SGP4
element set made like a Walker shell's satellite, so the cluster's centre flies
(and sees the ground) as any satellite would. Each satellite's offset from it
is a drift-free solution of the Clohessy-Wiltshire (Hill) equations in the
reference's LVLH frame (x radial, y along-track, z along the orbit normal)::

    x = (u sin th + v cos th) / 2
    y =  u cos th - v sin th              th = n t + phase, n the reference's mean motion
    z = (sqrt(3) / 2) (u sin th + v cos th)

with (u, v) = ``spacing_m`` * (column - (columns - 1) / 2, row - (rows - 1) / 2):
a "general circular orbit". Each satellite circles the reference at the
constant distance sqrt(u^2 + v^2) once per orbit, passively (no thrust), and
since (u, v) -> (x, y, z) is an isometry at every instant the grid keeps its
shape: it turns once per orbit in a plane of the LVLH frame (normal
(sqrt(3)/2, 0, -1/2), 30 deg from the orbit normal), neighbours ``spacing_m``
apart. The offsets are turned into TEME with the reference's own position and
velocity from SGP4, then into the Earth-fixed frame like every satellite's.
n is the circular orbit's Kepler mean motion; SGP4's reference turns ~0.1 %
faster or slower (J2), which changes the grid's phase a little, not its shape.

What CW leaves out, and how much: the second-order terms (offset^2 / a, ~5 cm
at the corners of a 9 x 9 grid 110 m apart, 622 m from the centre) leave each
member's true semi-major axis a little off the reference's, a secular
along-track drift of ~1 m per orbit at the corners; the reference's
eccentricity (SGP4's mean elements give ~1e-3 osculating: under a millimetre
here); the differential J2 and drag between members (metres per orbit). Real
formations remove all of these by station keeping: the formation modelled is
the kept one. ``tests/constellation/test_formation.py`` integrates every
member's two-body motion from its CW state: after one orbit the offsets agree
within 0.99 m, and the integrated neighbours stay 109.2-110.8 m apart over three.

>>> f = Formation("cluster", rows=9, columns=9, spacing_m=110, altitude_km=650, inclination_deg=97.99)
>>> f.size, len(grid_pairs(9, 9)), round(f.period_s / 60, 1)
(81, 144, 97.7)
>>> offset, _ = relative_state_lvlh(f, np.array([0.0, 1234.5]))   # (time, satellite, 3), metres
>>> [round(float(np.linalg.norm(offset[k, 1] - offset[k, 0])), 6) for k in (0, 1)]   # row neighbours
[110.0, 110.0]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from sgp4.api import WGS72, Satrec

from meshemu.config import check_name
from meshemu.constants import WGS72_MU_M3_PER_S2
from meshemu.constellation.shell import check_orbit, check_size, semi_major_axis_m

# sgp4init counts epochs in days since 1949-12-31 00:00 UTC
_SGP4_EPOCH_JD = 2433281.5
# The grid's plane in LVLH: u and v, the grid's axes, at th = 0 (see the module docstring).
_SQRT3_2 = math.sqrt(3.0) / 2.0


@dataclass(frozen=True)
class Formation:
    """``rows`` x ``columns`` satellites on passive relative orbits about a circular reference orbit.

    The reference sits at argument of latitude ``argument_of_latitude_deg`` at the
    epoch, in the plane of ``inclination_deg`` and ``raan_deg``; ``phase_deg`` is
    where on their relative orbits the members start (th at t = 0).
    """

    name: str
    rows: int = 9
    columns: int = 9
    spacing_m: float = 110.0
    altitude_km: float = 650.0
    inclination_deg: float = 97.99
    raan_deg: float = 0.0
    argument_of_latitude_deg: float = 0.0
    phase_deg: float = 0.0
    description: str = ""

    def __post_init__(self):
        check_name(self.name, "formation name")
        if self.rows < 1 or self.columns < 1 or self.rows > 256 or self.columns > 255:
            # rows and columns become planes and slots: p<row>s<column>, 10.<shell>.<row>.<column + 1>
            raise ValueError(f"formation {self.name!r} needs 1-256 rows and 1-255 columns, "
                             f"got {self.rows} x {self.columns}")
        if not 1.0 <= self.spacing_m <= 100e3:
            raise ValueError(f"formation {self.name!r}: spacing_m {self.spacing_m:g} is outside 1 m-100 km "
                             "(Clohessy-Wiltshire holds for offsets small beside the orbit's radius)")
        check_orbit(f"formation {self.name!r}", self.altitude_km, self.inclination_deg)
        for name in ("raan_deg", "argument_of_latitude_deg", "phase_deg"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"formation {self.name!r}: {name} must be a finite number, got {getattr(self, name)}")
        check_size(f"formation {self.name!r} of {self.rows} x {self.columns} = {self.size:,} satellites",
                   self.size, "give fewer rows or columns")

    @property
    def size(self) -> int:
        return self.rows * self.columns

    @property
    def semi_major_axis_m(self) -> float:
        return semi_major_axis_m(self.altitude_km)

    @property
    def mean_motion_rad_per_s(self) -> float:
        """n of the circular reference orbit (Kepler), the rate of every relative orbit."""
        return math.sqrt(WGS72_MU_M3_PER_S2 / self.semi_major_axis_m ** 3)

    @property
    def period_s(self) -> float:
        return 2 * math.pi / self.mean_motion_rad_per_s

    def grid_uv_m(self) -> np.ndarray:
        """(S, 2): every member's (u, v) in the grid's plane, row-major, centred on the reference."""
        row, column = np.divmod(np.arange(self.size), self.columns)
        return self.spacing_m * np.stack([column - (self.columns - 1) / 2, row - (self.rows - 1) / 2], axis=1)


@dataclass(frozen=True)
class PlacedFormation:
    """A formation inside a constellation: its members are satellites ``first .. first + size - 1``;
    ``epoch_utc`` is when the reference has its elements (the relative orbits' t = 0)."""

    first: int
    formation: Formation
    epoch_utc: datetime

    @property
    def members(self) -> slice:
        return slice(self.first, self.first + self.formation.size)


def grid_pairs(rows: int, columns: int) -> np.ndarray:
    """Links between grid neighbours (left-right and up-down, no wrap-around), row-major ids.

    >>> grid_pairs(2, 3).tolist()
    [[0, 1], [0, 3], [1, 2], [1, 4], [2, 5], [3, 4], [4, 5]]
    """
    ids = np.arange(rows * columns).reshape(rows, columns)
    across = np.stack([ids[:, :-1].ravel(), ids[:, 1:].ravel()], axis=1)
    down = np.stack([ids[:-1, :].ravel(), ids[1:, :].ravel()], axis=1)
    pairs = np.concatenate([across, down]).reshape(-1, 2)
    return pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))].astype(np.int32)


def relative_state_lvlh(formation: Formation, t_s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every member's CW offset (m) and its rate (m/s) in the reference's LVLH frame, each (time, satellite, 3).

    The rate is the offset's time derivative as seen in the rotating LVLH frame
    (what the CW equations are written in), not an inertial velocity.
    """
    n = formation.mean_motion_rad_per_s
    th = n * np.asarray(t_s, dtype=np.float64)[:, None] + math.radians(formation.phase_deg)  # (T, 1)
    u, v = formation.grid_uv_m().T  # (S,), (S,)
    sin, cos = np.sin(th), np.cos(th)
    a = u * sin + v * cos  # (T, S)
    b = u * cos - v * sin
    offset = np.stack([a / 2, b, _SQRT3_2 * a], axis=-1)
    rate = n * np.stack([b / 2, -a, _SQRT3_2 * b], axis=-1)
    return offset, rate


def lvlh_axes(r_m: np.ndarray, v_m_per_s: np.ndarray) -> np.ndarray:
    """(..., 3, 3): the LVLH unit vectors (radial, along-track, orbit normal) as rows, in the frame of r and v."""
    x = r_m / np.linalg.norm(r_m, axis=-1, keepdims=True)
    h = np.cross(r_m, v_m_per_s)
    z = h / np.linalg.norm(h, axis=-1, keepdims=True)
    y = np.cross(z, x)
    return np.stack([x, y, z], axis=-2)


def member_positions_m(formation: Formation, reference_r_m: np.ndarray, reference_v_m_per_s: np.ndarray,
                       t_s: np.ndarray) -> np.ndarray:
    """Every member's position, (time, satellite, 3), in the frame of the reference's (time, 3) position and
    velocity (TEME from SGP4; any inertial frame): reference + the CW offset turned out of LVLH."""
    axes = lvlh_axes(reference_r_m, reference_v_m_per_s)  # (T, 3, 3)
    offset, _ = relative_state_lvlh(formation, t_s)  # (T, S, 3)
    return reference_r_m[:, None, :] + np.einsum("tsi,tij->tsj", offset, axes)


def reference_satrec(formation: Formation, epoch_jd: float, satnum: int = 1) -> Satrec:
    """The reference orbit's SGP4 model: circular, at ``epoch_jd`` (UTC), like a Walker shell's satellite."""
    sat = Satrec()
    mean_motion_rad_per_min = formation.mean_motion_rad_per_s * 60.0
    sat.sgp4init(WGS72, "i", satnum, epoch_jd - _SGP4_EPOCH_JD, 0.0, 0.0, 0.0, 0.0, 0.0,
                 math.radians(formation.inclination_deg), math.radians(formation.argument_of_latitude_deg % 360),
                 mean_motion_rad_per_min, math.radians(formation.raan_deg % 360))
    return sat
