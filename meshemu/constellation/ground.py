"""Ground stations: the shipped city list, user files, Earth-fixed positions.

Files are CSV. Two layouts are read:

* ours, with a header: ``name,latitude_deg,longitude_deg[,elevation_m]``;
* Hypatia's ``ground_stations.txt``, no header: ``id,name,latitude,longitude,elevation``.

>>> gs = default_ground_stations()
>>> len(gs), gs[0].name
(100, 'Tokyo')
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from importlib import resources

import numpy as np

from meshemu.config import read_text
from meshemu.constants import EARTH_EQUATORIAL_RADIUS_M, WGS84_FLATTENING
from meshemu.errors import InputError


@dataclass(frozen=True)
class GroundStation:
    name: str
    latitude_deg: float
    longitude_deg: float
    elevation_m: float = 0.0


def default_ground_stations() -> tuple[GroundStation, ...]:
    """The ~100 most populous cities (metropolitan areas), largest first."""
    text = resources.files("meshemu.constellation").joinpath("data/cities.csv").read_text()
    return parse_ground_stations(text, "cities.csv")


def read_ground_stations(path) -> tuple[GroundStation, ...]:
    return parse_ground_stations(read_text(path), str(path))


def parse_ground_stations(text: str, source: str = "<memory>") -> tuple[GroundStation, ...]:
    """Parse either layout (see the module docstring); names must be unique.

    >>> parse_ground_stations("0,Paris,48.8566,2.3522,0\\n")[0].latitude_deg
    48.8566
    """
    reader = csv.reader(io.StringIO(text))
    rows = []
    try:
        for r in reader:
            if r and any(c.strip() for c in r):
                rows.append((reader.line_num, r))
    except csv.Error as err:
        raise InputError(f"not readable as CSV: {err}", file=source, line=reader.line_num) from None
    if not rows:
        raise InputError("no ground stations in the file", file=source)
    header = [c.strip() for c in rows[0][1]]
    if header[:3] == ["name", "latitude_deg", "longitude_deg"]:
        columns, rows = header, rows[1:]
        fields = (0, 1, 2, 3 if "elevation_m" in columns[3:4] else None)
    else:
        fields = (1, 2, 3, 4)  # Hypatia: id,name,latitude,longitude,elevation
        if any(_is_word(c) for c in header[2:4] + header[1:2] * (len(header) < 5)):
            raise InputError(f"line 1 reads like a header ({','.join(header)!r}) that meshemu does not know: "
                             f"start the file with 'name,latitude_deg,longitude_deg[,elevation_m]', or give "
                             "Hypatia's headerless 'id,name,latitude,longitude,elevation'", file=source, line=1)
    stations = []
    for lineno, row in rows:
        row = [c.strip() for c in row]
        need = max(f for f in fields if f is not None) + 1
        if len(row) < need:
            layout = ("name,latitude_deg,longitude_deg" if fields[0] == 0
                      else "Hypatia's id,name,latitude,longitude,elevation; a file of name,latitude,longitude "
                           "starts with the header 'name,latitude_deg,longitude_deg'")
            raise InputError(f"expected {need} comma-separated fields ({layout}), got {len(row)}",
                             file=source, line=lineno)
        name = row[fields[0]]
        if not name.isprintable():
            raise InputError(f"ground-station name {name!r} holds a control character",
                             file=source, line=lineno, field="name")
        if not name or name.isdigit():
            # a name of digits would be read as a node id by --from/--to and could never be named
            raise InputError(f"ground-station name {name!r} is empty or digits only, which --from/--to read as "
                             "a node id: give the station a name",
                             file=source, line=lineno, field="name")
        lat = _number(row[fields[1]], "latitude", -90, 90, source, lineno)
        lon = _number(row[fields[2]], "longitude", -180, 180, source, lineno)
        elev = _number(row[fields[3]], "elevation", -500, 9000, source, lineno) if fields[3] is not None else 0.0
        stations.append(GroundStation(name, lat, lon, elev))
    names = [s.name for s in stations]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise InputError(f"ground station name {dup!r} appears twice; names must be unique", file=source)
    return tuple(stations)


def _is_word(cell: str) -> bool:
    """Text that no number field would hold: a column title such as 'lat'."""
    try:
        float(cell)
    except ValueError:
        return bool(cell) and cell[0].isalpha()
    return False


def _number(text, field, low, high, source, lineno) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"{text!r} is not a number", file=source, line=lineno, field=field) from None
    if not low <= value <= high:
        raise InputError(f"{value} is outside [{low}, {high}]", file=source, line=lineno, field=field)
    return value


def geodetic_to_itrs_m(latitude_deg, longitude_deg, elevation_m) -> tuple[np.ndarray, np.ndarray]:
    """WGS84 geodetic coordinates to Earth-fixed positions and local up unit vectors, each (G, 3).

    >>> pos, up = geodetic_to_itrs_m([0.0], [0.0], [0.0])
    >>> pos.round(1).tolist(), up.round(6).tolist()
    ([[6378137.0, 0.0, 0.0]], [[1.0, 0.0, 0.0]])
    """
    lat = np.radians(np.asarray(latitude_deg, dtype=np.float64))
    lon = np.radians(np.asarray(longitude_deg, dtype=np.float64))
    h = np.asarray(elevation_m, dtype=np.float64)
    e2 = WGS84_FLATTENING * (2 - WGS84_FLATTENING)
    n = EARTH_EQUATORIAL_RADIUS_M / np.sqrt(1 - e2 * np.sin(lat) ** 2)
    up = np.stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)], axis=-1)
    pos = np.stack([(n + h) * np.cos(lat) * np.cos(lon),
                    (n + h) * np.cos(lat) * np.sin(lon),
                    (n * (1 - e2) + h) * np.sin(lat)], axis=-1)
    return pos, up


def ground_positions_m(stations) -> tuple[np.ndarray, np.ndarray]:
    """Positions and up vectors of ``stations``, each shaped (G, 3)."""
    if not stations:
        return np.zeros((0, 3)), np.zeros((0, 3))
    return geodetic_to_itrs_m([s.latitude_deg for s in stations], [s.longitude_deg for s in stations],
                              [s.elevation_m for s in stations])
