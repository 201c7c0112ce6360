"""Two-line element sets: strict parsing, checksums, and writing.

Reads the standard 2-line and 3-line (name + 2 lines) formats that public
catalogues serve, and Hypatia's ``tles.txt`` whose first line is
``<n_orbits> <n_sats_per_orbit>``. Every problem is an
:class:`~meshemu.errors.InputError` naming the file, line and field.

>>> l1 = "1 00001U 00000ABC 00001.00000000  .00000000  00000-0  00000+0 0    04"
>>> tle_checksum(l1)
4
"""

from __future__ import annotations

from dataclasses import dataclass

from sgp4.api import Satrec

from meshemu.config import read_text
from meshemu.errors import InputError

TLE_LINE_LENGTH = 69


@dataclass(frozen=True)
class Tle:
    """One element set as text, with where it came from."""

    name: str
    line1: str
    line2: str
    source: str = "<memory>"
    lineno: int = 1  # file line of line1

    def satrec(self) -> Satrec:
        sat = Satrec.twoline2rv(self.line1, self.line2)
        if sat.error:
            raise InputError(f"SGP4 rejects this element set (error {sat.error})",
                             file=self.source, line=self.lineno, field=self.name)
        return sat


@dataclass(frozen=True)
class TleFile:
    """The element sets of a file, and the grid its header declares (Hypatia's format)."""

    tles: tuple[Tle, ...]
    n_planes: int | None = None
    sats_per_plane: int | None = None


def tle_checksum(line: str) -> int:
    """The modulo-10 checksum of the first 68 columns (digits count, '-' counts 1)."""
    return sum(int(c) if c.isdigit() else (1 if c == "-" else 0) for c in line[:68]) % 10


def check_line(line: str, number: int, *, file, lineno) -> None:
    """Raise InputError unless ``line`` is a well-formed TLE line ``number`` (1 or 2)."""
    field = f"TLE line {number}"
    if len(line) != TLE_LINE_LENGTH:
        raise InputError(f"has {len(line)} characters, a TLE line has {TLE_LINE_LENGTH}",
                         file=file, line=lineno, field=field)
    if not line.startswith(f"{number} "):
        raise InputError(f"must start with '{number} '", file=file, line=lineno, field=field)
    if not line[68].isdigit():
        raise InputError(f"checksum column is {line[68]!r}, not a digit", file=file, line=lineno, field=field)
    expected = tle_checksum(line)
    if int(line[68]) != expected:
        raise InputError(f"bad checksum {line[68]}, the line sums to {expected}",
                         file=file, line=lineno, field=field)


def parse_tles(text: str, source: str = "<memory>") -> TleFile:
    """Parse 2-line, 3-line or Hypatia TLE text.

    >>> l1 = "1 00001U 00000ABC 00001.00000000  .00000000  00000-0  00000+0 0    04"
    >>> l2 = "2 00001  53.0000   0.0000 0000001   0.0000   0.0000 15.19000000    08"
    >>> f = parse_tles(f"1 1\\nSat 0\\n{l1}\\n{l2}\\n")
    >>> (f.n_planes, f.sats_per_plane, f.tles[0].name)
    (1, 1, 'Sat 0')
    """
    lines = [(i + 1, raw.rstrip("\r\n").rstrip()) for i, raw in enumerate(text.splitlines())]
    lines = [(n, s) for n, s in lines if s]
    n_planes = per_plane = None
    if lines and _is_grid_header(lines[0][1]):
        n_planes, per_plane = (int(v) for v in lines[0][1].split())
        lines = lines[1:]
    tles, i = [], 0
    while i < len(lines):
        lineno, first = lines[i]
        if first.startswith("1 ") and len(first) == TLE_LINE_LENGTH:
            name, at = None, i  # 2-line format
        else:
            name, at = first.strip().removeprefix("0 "), i + 1  # 3-line format: a title line
        if at + 1 >= len(lines):
            raise InputError("incomplete element set: expected two more lines",
                             file=source, line=lines[-1][0], field=name or "TLE")
        (n1, l1), (n2, l2) = lines[at], lines[at + 1]
        check_line(l1, 1, file=source, lineno=n1)
        check_line(l2, 2, file=source, lineno=n2)
        if l1[2:7] != l2[2:7]:
            raise InputError(f"catalogue number {l2[2:7].strip()} differs from line 1's {l1[2:7].strip()}",
                             file=source, line=n2, field="TLE line 2")
        tles.append(Tle(name or f"SAT-{l1[2:7].strip()}", l1, l2, source, n1))
        i = at + 2
    if not tles:
        raise InputError("no element sets found", file=source)
    if n_planes is not None and n_planes * per_plane != len(tles):
        raise InputError(f"header declares {n_planes} x {per_plane} = {n_planes * per_plane} "
                         f"satellites but the file has {len(tles)}", file=source, line=1)
    return TleFile(tuple(tles), n_planes, per_plane)


def read_tles(path) -> TleFile:
    return parse_tles(read_text(path), str(path))


def _is_grid_header(line: str) -> bool:
    parts = line.split()
    return len(parts) == 2 and all(p.isdigit() for p in parts)


def format_tle(satnum: int, epoch_year: int, epoch_day: float, inclination_deg: float,
               raan_deg: float, eccentricity: float, arg_perigee_deg: float,
               mean_anomaly_deg: float, mean_motion_rev_per_day: float) -> tuple[str, str]:
    """Write a TLE pair with valid checksums (drag terms zero).

    >>> l1, l2 = format_tle(7, 2000, 1.0, 53, 0, 1e-7, 0, 0, 15.19)
    >>> parse_tles(f"{l1}\\n{l2}").tles[0].satrec().satnum
    7
    """
    ecc = f"{eccentricity:.7f}"[2:]
    l1 = (f"1 {satnum:05d}U 00000ABC {epoch_year % 100:02d}{epoch_day:012.8f} "
          f" .00000000  00000-0  00000+0 0    0")
    l2 = (f"2 {satnum:05d} {inclination_deg:8.4f} {raan_deg % 360:8.4f} {ecc} "
          f"{arg_perigee_deg % 360:8.4f} {mean_anomaly_deg % 360:8.4f} {mean_motion_rev_per_day:11.8f}    0")
    return l1 + str(tle_checksum(l1 + "0")), l2 + str(tle_checksum(l2 + "0"))
