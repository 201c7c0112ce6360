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
            raise InputError(f"SGP4 rejects this element set: {sgp4_error_text(sat)}",
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


# The columns of each line (1-based, inclusive), what they hold and the characters allowed there:
# d a digit, b a digit or blank, s a sign or blank, A a capital letter, digit or blank (Alpha-5 catalogue
# numbers), x any printable character, '.' and ' ' themselves. SGP4's C++ reader scans these fields with
# sscanf, which reads a stray letter as the end of a number: a wrong value, not an error, so we check here.
_LINE_FIELDS = {
    1: ((3, 7, "catalogue number", "Abbbd"), (8, 8, "classification", "x"), (9, 9, "separator", " "),
        (10, 17, "international designator", "xxxxxxxx"), (18, 18, "separator", " "),
        (19, 20, "epoch year", "dd"), (21, 32, "epoch day", "bbd.dddddddd"), (33, 33, "separator", " "),
        (34, 43, "first derivative of mean motion", "s.dddddddd"), (44, 44, "separator", " "),
        (45, 52, "second derivative of mean motion", "sdddddsd"), (53, 53, "separator", " "),
        (54, 61, "drag term (BSTAR)", "sdddddsd"), (62, 62, "separator", " "),
        (63, 63, "ephemeris type", "b"), (64, 64, "separator", " "), (65, 68, "element set number", "bbbb")),
    2: ((3, 7, "catalogue number", "Abbbd"), (8, 8, "separator", " "), (9, 16, "inclination (deg)", "bbd.dddd"),
        (17, 17, "separator", " "), (18, 25, "right ascension of the ascending node (deg)", "bbd.dddd"),
        (26, 26, "separator", " "), (27, 33, "eccentricity (leading '0.' implied)", "ddddddd"),
        (34, 34, "separator", " "), (35, 42, "argument of perigee (deg)", "bbd.dddd"),
        (43, 43, "separator", " "), (44, 51, "mean anomaly (deg)", "bbd.dddd"), (52, 52, "separator", " "),
        (53, 63, "mean motion (rev/day)", "bd.dddddddd"), (64, 68, "revolution number at epoch", "bbbbb")),
}
_ALLOWED = {"d": "0123456789", "b": "0123456789 ", "s": "+- ", ".": ".", " ": " ",
            "A": "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 "}
_SAYS = {"d": "a digit", "b": "a digit or blank", "s": "'+', '-' or blank", ".": "'.'", " ": "a blank",
         "A": "a digit, blank or capital letter"}
# Angles SGP4 takes, and where they must lie.
_ANGLE_RANGES = {(2, 9): (0.0, 180.0), (2, 18): (0.0, 360.0), (2, 35): (0.0, 360.0), (2, 44): (0.0, 360.0)}


def check_line(line: str, number: int, *, file, lineno) -> None:
    """Raise InputError unless ``line`` is a well-formed TLE line ``number`` (1 or 2).

    Every column is checked against the field it belongs to, so the error names the column and the field:

    >>> l1 = "1 00001U 00000ABC 26001.00000000  .00000000  00000-0  00000+0 0    02"
    >>> check_line(l1[:22] + "x" + l1[23:], 1, file="a.tle", lineno=2)
    Traceback (most recent call last):
    ...
    meshemu.errors.InputError: a.tle:2: TLE line 1: column 23 (epoch day, columns 21-32) is 'x', expected a digit
    """
    field = f"TLE line {number}"
    if len(line) != TLE_LINE_LENGTH:
        raise InputError(f"has {len(line)} characters, a TLE line has {TLE_LINE_LENGTH}",
                         file=file, line=lineno, field=field)
    if not line.startswith(f"{number} "):
        raise InputError(f"must start with '{number} '", file=file, line=lineno, field=field)
    for column, char in enumerate(line, 1):
        if not " " <= char <= "~":
            names = [f"{n}, columns {a}-{b}" for a, b, n, _ in _LINE_FIELDS[number] if a <= column <= b]
            where = f" ({names[0]})" if names else ""
            raise InputError(f"column {column}{where} is {char!r}, not a printable ASCII character",
                             file=file, line=lineno, field=field)
    for first, last, name, template in _LINE_FIELDS[number]:
        text = line[first - 1:last]
        for column, char, kind in zip(range(first, last + 1), text, template):
            if kind != "x" and char not in _ALLOWED[kind]:
                where = f"{name}, columns {first}-{last}" if first != last else name
                raise InputError(f"column {column} ({where}) is {char!r}, expected {_SAYS[kind]}",
                                 file=file, line=lineno, field=field)
        if "d" in template and "b" in template and not text.strip():
            raise InputError(f"columns {first}-{last} ({name}) are blank", file=file, line=lineno, field=field)
        if (number, first) in _ANGLE_RANGES:
            low, high = _ANGLE_RANGES[(number, first)]
            value = float(text)
            if not low <= value <= high:
                raise InputError(f"columns {first}-{last} ({name}) read {value:g}, outside [{low:g}, {high:g}]",
                                 file=file, line=lineno, field=field)
    if number == 1 and not 1.0 <= float(line[20:32]) < 367.0:
        raise InputError(f"columns 21-32 (epoch day) read {float(line[20:32]):g}, a day of the year is "
                         "1.0 to 366.99999999", file=file, line=lineno, field=field)
    if number == 2 and not float(line[52:63]) > 0:
        raise InputError("columns 53-63 (mean motion) read 0 revolutions per day: an orbit needs more",
                         file=file, line=lineno, field=field)
    if not line[68].isdigit():
        raise InputError(f"checksum column is {line[68]!r}, not a digit", file=file, line=lineno, field=field)
    expected = tle_checksum(line)
    if int(line[68]) != expected:
        raise InputError(f"bad checksum {line[68]}, the line sums to {expected}",
                         file=file, line=lineno, field=field)


# sgp4's error codes (Vallado's SGP4), as something the user can act on.
_SGP4_ERRORS = {
    1: "mean eccentricity {ecc:g} is outside [0, 1) or the semi-major axis ({a_earth_radii:.3f} Earth radii) is "
       "below 0.95: check the eccentricity and mean motion ({rev_per_day:g} rev/day)",
    2: "mean motion {rev_per_day:g} rev/day is negative",
    3: "the perturbed eccentricity left [0, 1]: the eccentricity ({ecc:g}) is too high for this orbit",
    4: "the semi-latus rectum is negative: eccentricity {ecc:g} with mean motion {rev_per_day:g} rev/day is no orbit",
    5: "the orbit at the epoch is below the Earth's surface (mean motion {rev_per_day:g} rev/day is too high)",
    6: "the satellite has decayed: its orbit reaches below the Earth's surface "
       "(mean motion {rev_per_day:g} rev/day, eccentricity {ecc:g})",
}


def sgp4_error_text(sat, code: int | None = None) -> str:
    """What SGP4's error ``code`` (default: ``sat.error``) means for ``sat``'s elements."""
    import math

    code = sat.error if code is None else int(code)
    rev_per_day = sat.no_kozai * 1440.0 / (2 * math.pi)
    a = getattr(sat, "a", float("nan"))
    text = _SGP4_ERRORS.get(code, "error {code} (unknown to meshemu)")
    return text.format(ecc=sat.ecco, rev_per_day=rev_per_day, a_earth_radii=a, code=code) + f" (SGP4 error {code})"


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
    elif lines and _looks_like_header(lines):
        raise InputError(f"{lines[0][1][:40]!r} is neither a TLE title followed by a TLE nor Hypatia's header "
                         "'<n_orbits> <n_sats_per_orbit>' (two whole numbers)", file=source, line=lines[0][0])
    tles, i, first_line = [], 0, {}
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
        number = l1[2:7].strip()
        if number in first_line:
            # the same satellite twice would be two nodes on one orbit, and defeats grid inference
            raise InputError(f"satellite {number} appears twice (first on line {first_line[number]}): "
                             "keep one element set per satellite", file=source, line=n1, field="TLE line 1")
        first_line[number] = n1
        tles.append(Tle(name or f"SAT-{number}", l1, l2, source, n1))
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
    return len(parts) == 2 and all(p.isascii() and p.isdigit() for p in parts)


def _looks_like_header(lines) -> bool:
    """A first line of a few number-like words with no TLE line 1 after it: a Hypatia header gone wrong."""
    parts = lines[0][1].split()
    next_is_tle = len(lines) > 1 and lines[1][1].startswith("1 ")
    return not next_is_tle and 1 <= len(parts) <= 3 and parts[0].lstrip("+-").replace(".", "").isdigit()


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
