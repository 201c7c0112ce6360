"""A constellation: its satellites (as SGP4 models), their +Grid places, and link rules.

Sources:

* a YAML file under ``topologies/`` (or any path) describing Walker shells
  and formations (:mod:`meshemu.constellation.formation`), or pointing at a TLE
  file (``tle_file:``);
* a TLE file directly (2-line, 3-line or Hypatia's ``tles.txt``), optionally
  with an explicit ISL list (Hypatia's ``isls.txt``).

>>> c = load_constellation("demo")
>>> c.size, c.isl_pairs.shape
(64, (128, 2))
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import numpy as np

from meshemu.config import check_name, from_mapping, load_yaml, read_text
from meshemu.constellation.formation import (Formation, PlacedFormation, grid_pairs, member_positions_m,
                                             reference_satrec)
from meshemu.constellation.grid import infer_grid, plus_grid_pairs
from meshemu.constellation.propagate import (TimeGrid, parse_utc, propagate_itrs_m, propagate_teme_m,
                                             teme_to_itrs_m)
from meshemu.constellation.shell import BYTES_PER_SATELLITE, Shell, walker_satellites
from meshemu.resources import memory_problem
from meshemu.constellation.tle import read_tles
from meshemu.errors import InputError


def _check_rate(what: str, rate_gbps) -> None:
    if rate_gbps is not None and not 1e-6 <= rate_gbps <= 1e4:
        # the shapers' range: netem counts whole bytes per second, and nothing here nears 10 Tbit/s
        raise ValueError(f"{what}.rate_gbps {rate_gbps:g} is outside [1e-6, 1e4] Gbit/s (1 kbit/s to 10 Tbit/s)")


@dataclass(frozen=True)
class IslRules:
    """Laser inter-satellite links: +Grid within each shell, and when a link is usable."""

    pattern: Literal["plus-grid", "none"] = "plus-grid"
    cross_seam: bool = True  # link the last plane to the first
    max_range_km: float | None = None
    min_grazing_altitude_km: float = 80.0  # the line of sight stays this far above the surface
    max_cross_plane_latitude_deg: float | None = None  # cross-plane links down above this latitude
    rate_gbps: float | None = None  # every ISL's rate, each direction; None: not modelled (as fast as the host)

    def __post_init__(self):
        _check_rate("isl", self.rate_gbps)
        if self.max_range_km is not None and not 0 < self.max_range_km < math.inf:
            raise ValueError(f"isl.max_range_km must be a positive number of km, got {self.max_range_km}")
        if not -1000 <= self.min_grazing_altitude_km <= 40_000:
            raise ValueError("isl.min_grazing_altitude_km must be within [-1000, 40000] km, "
                             f"got {self.min_grazing_altitude_km}")
        limit = self.max_cross_plane_latitude_deg
        if limit is not None and not 0 <= limit <= 90:
            raise ValueError(f"isl.max_cross_plane_latitude_deg must be within [0, 90], got {limit}")


@dataclass(frozen=True)
class GslRules:
    """Ground-satellite links: by elevation (default 25 deg) and/or slant range."""

    min_elevation_deg: float | None = None
    max_range_km: float | None = None
    policy: Literal["all", "nearest"] = "all"  # every visible satellite, or the nearest only
    rate_gbps: float | None = None  # every GSL's rate, each direction; None: not modelled

    def __post_init__(self):
        _check_rate("gsl", self.rate_gbps)
        if self.min_elevation_deg is not None and not -90 <= self.min_elevation_deg <= 90:
            raise ValueError(f"gsl.min_elevation_deg must be within [-90, 90], got {self.min_elevation_deg}")
        if self.max_range_km is not None and not 0 < self.max_range_km < math.inf:
            raise ValueError(f"gsl.max_range_km must be a positive number of km, got {self.max_range_km}")

    @property
    def elevation_limit_deg(self) -> float | None:
        """25 deg unless a range limit alone was asked for."""
        if self.min_elevation_deg is None and self.max_range_km is None:
            return 25.0
        return self.min_elevation_deg


@dataclass(frozen=True)
class ConstellationSpec:
    """What a constellation YAML file holds."""

    name: str
    description: str = ""
    epoch: str = "2026-01-01T00:00:00Z"
    shells: tuple[Shell, ...] = ()
    formations: tuple[Formation, ...] = ()
    tle_file: str | None = None
    isl: IslRules = IslRules()
    gsl: GslRules = GslRules()

    def __post_init__(self):
        check_name(self.name, "name")
        names = [s.name for s in self.shells + self.formations]
        dup = next((n for n in names if names.count(n) > 1), None)
        if dup is not None:
            # satellite names are '<shell>-pPP-sSS': two shells of one name would share node names
            raise ValueError(f"shells: two are named {dup!r}: give each shell its own name"
                             + (" (a formation counts as a shell)" if self.formations else ""))
        sizes = sum(s.size for s in self.shells + self.formations)
        problem = memory_problem(sizes * BYTES_PER_SATELLITE,
                                 f"{len(self.shells) + len(self.formations)} shells of {sizes:,} satellites",
                                 "give fewer or smaller shells")
        if problem:
            raise ValueError(problem)


@dataclass(frozen=True, eq=False)
class Constellation:
    """Satellites 0..N-1 with names, SGP4 models, +Grid places and link rules.

    ``plane``/``slot``/``shell`` are -1 where unknown (a TLE file whose
    planes could not be inferred); ``isl_pairs`` is (L, 2) satellite indices.
    """

    name: str
    epoch_utc: datetime
    satellite_names: tuple[str, ...]
    satrecs: tuple
    isl_pairs: np.ndarray
    isl: IslRules = IslRules()
    gsl: GslRules = GslRules()
    plane: np.ndarray = field(default=None, repr=False)
    slot: np.ndarray = field(default=None, repr=False)
    description: str = ""
    shell: np.ndarray = field(default=None, repr=False)  # which shell (0 for TLE files)
    formations: tuple[PlacedFormation, ...] = ()  # members fly CW offsets about their reference's SGP4 orbit

    @property
    def places(self) -> np.ndarray:
        """(N, 3) int: shell, plane and slot of every satellite, -1 where unknown."""
        n = self.size
        shell = np.zeros(n, int) if self.shell is None else self.shell
        plane = np.full(n, -1) if self.plane is None else self.plane
        slot = np.full(n, -1) if self.slot is None else self.slot
        return np.stack([shell, plane, slot], axis=1).astype(np.int32)

    @property
    def size(self) -> int:
        return len(self.satrecs)

    def positions_itrs_m(self, grid: TimeGrid) -> np.ndarray:
        """Every satellite's Earth-fixed position at every step of ``grid``, (time, satellite, 3) metres.

        Walker and TLE satellites are SGP4's; a formation's members are their
        reference's SGP4 position plus their CW offset (see :mod:`meshemu.constellation.formation`).
        """
        if not self.formations:
            return propagate_itrs_m(self.satrecs, grid, self.satellite_names)
        r_m, v_m_per_s = propagate_teme_m(self.satrecs, grid, self.satellite_names)
        for placed in self.formations:
            # every member carries the reference's element set: the first one's propagation is the reference's
            t_s = (grid.epoch_utc - placed.epoch_utc).total_seconds() + np.asarray(grid.offsets_s)
            r_m[:, placed.members] = member_positions_m(placed.formation, r_m[:, placed.first],
                                                        v_m_per_s[:, placed.first], t_s)
        return teme_to_itrs_m(r_m, grid)

    def with_rules(self, *, isl: IslRules | None = None, gsl: GslRules | None = None) -> "Constellation":
        return replace(self, isl=isl or self.isl, gsl=gsl or self.gsl)


def topologies_dir() -> Path:
    """Where named constellations live: ``$MESHEMU_TOPOLOGIES`` or the repository's ``topologies/``."""
    env = os.environ.get("MESHEMU_TOPOLOGIES")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "topologies"


def available_constellations() -> list[str]:
    return sorted(p.stem for p in topologies_dir().glob("*.yaml"))


def load_constellation(name_or_path) -> Constellation:
    """Load a constellation by name (``topologies/NAME.yaml``) or from a YAML path."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or "/" in str(name_or_path):
        if not path.is_file():
            raise InputError(("no such file" if not path.exists() else "is not a file")
                             + f" (the named constellations are {', '.join(available_constellations())})", file=path)
    else:
        candidate = topologies_dir() / f"{name_or_path}.yaml"
        if not candidate.exists():
            raise InputError(f"unknown constellation {str(name_or_path)!r}: give a YAML path or one of "
                             f"{', '.join(available_constellations())}")
        path = candidate
    spec = from_mapping(ConstellationSpec, load_yaml(path), file=path)
    epoch = _epoch(spec.epoch, path)
    if spec.tle_file and (spec.shells or spec.formations):
        raise InputError("give either shells and formations, or tle_file, not both", file=path)
    if spec.tle_file:
        c = from_tle_file((path.parent / spec.tle_file).resolve(), isl=spec.isl, gsl=spec.gsl)
        return replace(c, name=spec.name, description=spec.description)
    if not spec.shells and not spec.formations:
        raise InputError("the constellation is empty: give at least one shell or formation (or a tle_file)",
                         file=path, field="shells")
    return from_shells(spec.name, spec.shells, epoch, spec.isl, spec.gsl, spec.description, spec.formations)


def from_shells(name, shells, epoch_utc: datetime, isl: IslRules = IslRules(), gsl: GslRules = GslRules(),
                description: str = "", formations=()) -> Constellation:
    """Walker shells, then formations, to a constellation; satellites numbered shell by shell, plane-major.

    A formation counts as a shell whose planes are its rows and whose slots are
    its columns; its ISLs (``isl.pattern: plus-grid``) link grid neighbours, with no wrap-around, under the
    same ``isl`` rules (a ``max_cross_plane_latitude_deg`` would cut the links between its rows).
    """
    epoch_jd = _julian_date(epoch_utc)
    names, satrecs, planes, slots, pairs, offset = [], [], [], [], [], 0
    shell_of = []
    for index, shell in enumerate(shells):
        shell_of.append(np.full(shell.size, index))
        satrecs += walker_satellites(shell, epoch_jd, first_satnum=offset + 1)
        p, s = np.divmod(np.arange(shell.size), shell.sats_per_plane)
        planes.append(p)
        slots.append(s)
        names += [f"{shell.name}-p{i:02d}-s{j:02d}" for i, j in zip(p, s)]
        if isl.pattern == "plus-grid":
            seam_cross = isl.cross_seam and abs(shell.raan_spread_deg - 360.0) < 1e-9
            pairs.append(offset + plus_grid_pairs(shell.planes, shell.sats_per_plane,
                                                  cross_seam=seam_cross, seam_shift=shell.phasing))
        offset += shell.size
    placed = []
    for index, formation in enumerate(formations, start=len(shells)):
        shell_of.append(np.full(formation.size, index))
        reference = reference_satrec(formation, epoch_jd, satnum=offset + 1)
        satrecs += [reference] * formation.size  # one element set: the members' positions are offsets from it
        p, s = np.divmod(np.arange(formation.size), formation.columns)
        planes.append(p)
        slots.append(s)
        names += [f"{formation.name}-p{i:02d}-s{j:02d}" for i, j in zip(p, s)]
        if isl.pattern == "plus-grid":
            pairs.append(offset + grid_pairs(formation.rows, formation.columns))
        placed.append(PlacedFormation(offset, formation, epoch_utc))
        offset += formation.size
    isl_pairs = np.concatenate(pairs).astype(np.int32) if pairs else _no_pairs()
    return Constellation(name, epoch_utc, tuple(names), tuple(satrecs), isl_pairs, isl, gsl,
                         np.concatenate(planes), np.concatenate(slots), description, np.concatenate(shell_of),
                         tuple(placed))


def from_tle_file(path, *, isls_path=None, n_planes=None, sats_per_plane=None,
                  isl: IslRules = IslRules(), gsl: GslRules = GslRules()) -> Constellation:
    """A constellation from TLEs; t = 0 is the first element set's epoch (Hypatia's convention).

    The +Grid comes from, in order: an explicit ISL file (``a b`` per line); the
    grid the file declares (Hypatia's header) or that is given; planes inferred
    from the elements (equal-sized groups of inclination and RAAN). Otherwise
    the satellites get no ISLs and a note says why.
    """
    tle_file = read_tles(path)
    satrecs = tuple(t.satrec() for t in tle_file.tles)
    names = tuple(t.name for t in tle_file.tles)
    epoch = _satrec_epoch(satrecs[0])
    n = len(satrecs)
    plane = slot = np.full(n, -1)
    if n_planes is None and tle_file.n_planes is not None:
        n_planes, sats_per_plane = tle_file.n_planes, tle_file.sats_per_plane
    if n_planes is not None:
        if n_planes * sats_per_plane != n:
            raise InputError(f"grid {n_planes} x {sats_per_plane} does not match {n} satellites", file=path)
        plane, slot = np.divmod(np.arange(n), sats_per_plane)
        grid_pairs = plus_grid_pairs(n_planes, sats_per_plane, cross_seam=isl.cross_seam)
    else:
        plane, slot, grid_pairs = infer_grid(satrecs, cross_seam=isl.cross_seam)
    if isls_path is not None:
        pairs = read_isl_pairs(isls_path, n)
    elif isl.pattern == "plus-grid":
        pairs = grid_pairs
    else:
        pairs = _no_pairs()
    return Constellation(Path(path).stem, epoch, names, satrecs, pairs.astype(np.int32), isl, gsl, plane, slot)


def read_isl_pairs(path, n_satellites: int) -> np.ndarray:
    """Hypatia's ``isls.txt``: one ``a b`` pair of satellite ids per line."""
    lines = read_text(path).splitlines()
    pairs = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            raise InputError(f"expected two satellite ids 'a b', got {line.strip()!r}", file=path, line=lineno)
        a, b = int(parts[0]), int(parts[1])
        if max(a, b) >= n_satellites or a == b:
            raise InputError(f"link {a}-{b} names a satellite outside 0..{n_satellites - 1} or itself",
                             file=path, line=lineno)
        pairs.append((min(a, b), max(a, b)))
    return np.array(sorted(set(pairs)), dtype=np.int32).reshape(-1, 2)


def _no_pairs() -> np.ndarray:
    return np.zeros((0, 2), dtype=np.int32)


def _epoch(text, path) -> datetime:
    try:
        return parse_utc(text)
    except InputError as err:
        raise InputError(str(err).split(": ", 1)[-1], file=path, field="epoch") from None


def _julian_date(moment: datetime) -> float:
    return 2440587.5 + moment.timestamp() / 86400.0


def _satrec_epoch(satrec) -> datetime:
    jd = satrec.jdsatepoch + satrec.jdsatepochF
    return datetime.fromtimestamp(round((jd - 2440587.5) * 86400.0, 6), tz=timezone.utc)
