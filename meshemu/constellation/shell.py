"""Walker-delta shells and the satellites they hold.

A :class:`Shell` is pure data (what a YAML file under ``topologies/`` says);
:func:`walker_satellites` turns shells into SGP4 element sets, initialised
directly (no TLE text in between) at the constellation's epoch.

>>> s = Shell("demo", planes=6, sats_per_plane=6, altitude_km=550, inclination_deg=53, phasing=1)
>>> round(s.period_s / 60, 1)
95.6
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from sgp4.api import WGS72, Satrec

from meshemu.config import check_name
from meshemu.constants import WGS72_EARTH_RADIUS_M, WGS72_MU_M3_PER_S2
from meshemu.resources import memory_problem

# A satellite costs its SGP4 model, its name, grid place and +Grid links (measured ~2.8 KiB), before any
# time steps: what is refused up front is a shell whose satellites alone would not fit.
BYTES_PER_SATELLITE = 4096

# sgp4init counts epochs in days since 1949-12-31 00:00 UTC
_SGP4_EPOCH_JD = 2433281.5


def semi_major_axis_m(altitude_km: float) -> float:
    """The radius of a circular orbit ``altitude_km`` above WGS72's equatorial radius."""
    return WGS72_EARTH_RADIUS_M + altitude_km * 1e3


def check_orbit(what: str, altitude_km: float, inclination_deg: float) -> None:
    """Refuse a circular orbit no shell or formation flies (``what`` names it in the error)."""
    if not 100 <= altitude_km <= 40_000:
        raise ValueError(f"{what}: altitude_km {altitude_km} is outside 100-40000 km")
    if not 0 <= inclination_deg <= 180:
        raise ValueError(f"{what}: inclination_deg {inclination_deg} is outside 0-180")


def check_size(what: str, n_satellites: int, hint: str) -> None:
    """Refuse, before propagating anything, more satellites than this machine's memory holds."""
    problem = memory_problem(n_satellites * BYTES_PER_SATELLITE, what, hint)
    if problem:
        raise ValueError(problem)


@dataclass(frozen=True)
class Shell:
    """A Walker-delta shell: ``planes`` x ``sats_per_plane`` on circular orbits.

    ``phasing`` is Walker's F: satellite j of plane i sits at mean anomaly
    ``360 j / S + 360 F i / (P S)`` degrees; plane i's RAAN is
    ``raan_offset_deg + raan_spread_deg * i / P`` (360 for delta, 180 for star).
    """

    name: str
    planes: int
    sats_per_plane: int
    altitude_km: float
    inclination_deg: float
    phasing: int = 0
    raan_spread_deg: float = 360.0
    raan_offset_deg: float = 0.0
    eccentricity: float = 0.0
    description: str = ""

    def __post_init__(self):
        check_name(self.name, "shell name")
        for name in ("raan_spread_deg", "raan_offset_deg"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"shell {self.name!r}: {name} must be a finite number, got {getattr(self, name)}")
        if self.planes < 1 or self.sats_per_plane < 1:
            raise ValueError(f"shell {self.name!r} needs at least one plane and one satellite, "
                             f"got {self.planes} x {self.sats_per_plane}")
        if not 0 <= self.phasing < self.planes:
            # before: 1e30 was an OverflowError while linking the seam; -7 meant what 1 means
            raise ValueError(f"shell {self.name!r}: phasing (Walker's F) must be a whole number within "
                             f"[0, planes - 1] = [0, {self.planes - 1}], got {self.phasing:g}")
        if not 0 < self.raan_spread_deg <= 360:
            raise ValueError(f"shell {self.name!r}: raan_spread_deg must be within (0, 360] (360 for a Walker "
                             f"delta, 180 for a star), got {self.raan_spread_deg:g}")
        check_orbit(f"shell {self.name!r}", self.altitude_km, self.inclination_deg)
        if not 0 <= self.eccentricity < 0.1:
            raise ValueError(f"shell {self.name!r}: eccentricity {self.eccentricity} is outside [0, 0.1)")
        check_size(f"shell {self.name!r} of {self.planes} x {self.sats_per_plane} = {self.size:,} satellites",
                   self.size, "give fewer planes or satellites per plane")

    @property
    def size(self) -> int:
        return self.planes * self.sats_per_plane

    @property
    def semi_major_axis_m(self) -> float:
        return semi_major_axis_m(self.altitude_km)

    @property
    def period_s(self) -> float:
        """Keplerian period of the circular orbit."""
        return 2 * math.pi * math.sqrt(self.semi_major_axis_m ** 3 / WGS72_MU_M3_PER_S2)

    def elements_deg(self) -> tuple[np.ndarray, np.ndarray]:
        """RAAN and mean anomaly of every satellite, plane-major, in degrees."""
        p, s = np.meshgrid(np.arange(self.planes), np.arange(self.sats_per_plane), indexing="ij")
        raan = self.raan_offset_deg + self.raan_spread_deg * p / self.planes
        anomaly = 360.0 * s / self.sats_per_plane + 360.0 * self.phasing * p / (self.planes * self.sats_per_plane)
        return (raan % 360).ravel(), (anomaly % 360).ravel()


def walker_satellites(shell: Shell, epoch_jd: float, first_satnum: int = 1) -> list[Satrec]:
    """SGP4 models for every satellite of ``shell``, plane-major, at ``epoch_jd`` (UTC)."""
    raan, anomaly = shell.elements_deg()
    mean_motion_rad_per_min = 2 * math.pi / (shell.period_s / 60.0)
    sats = []
    for k, (node, mean_anomaly) in enumerate(zip(raan, anomaly)):
        sat = Satrec()
        sat.sgp4init(WGS72, "i", first_satnum + k, epoch_jd - _SGP4_EPOCH_JD,
                     0.0, 0.0, 0.0, shell.eccentricity, 0.0, math.radians(shell.inclination_deg),
                     math.radians(mean_anomaly), mean_motion_rad_per_min, math.radians(node))
        sats.append(sat)
    return sats
