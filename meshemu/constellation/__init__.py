"""Constellations: shells and TLEs, propagation over a time grid, ground stations."""

from meshemu.constellation.constellation import (
    Constellation,
    ConstellationSpec,
    GslRules,
    IslRules,
    available_constellations,
    from_shells,
    from_tle_file,
    load_constellation,
    read_isl_pairs,
)
from meshemu.constellation.formation import Formation
from meshemu.constellation.ground import (
    GroundStation,
    default_ground_stations,
    ground_positions_m,
    read_ground_stations,
)
from meshemu.constellation.propagate import TimeGrid, propagate_itrs_m
from meshemu.constellation.shell import Shell
from meshemu.constellation.tle import Tle, parse_tles, read_tles

__all__ = [
    "Constellation", "ConstellationSpec", "Formation", "GroundStation", "GslRules", "IslRules", "Shell", "TimeGrid",
    "Tle",
    "available_constellations", "default_ground_stations", "from_shells", "from_tle_file", "ground_positions_m",
    "load_constellation", "parse_tles", "propagate_itrs_m", "read_ground_stations", "read_isl_pairs", "read_tles",
]
