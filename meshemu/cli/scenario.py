"""Command-line options shared by every command that needs a constellation over a window.

``add_scenario_args`` declares them; ``load_scenario`` turns parsed arguments
into a constellation, its ground stations and a time grid.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from meshemu.constellation import (
    Constellation,
    GslRules,
    TimeGrid,
    default_ground_stations,
    from_tle_file,
    load_constellation,
    read_ground_stations,
)
from meshemu.cli.types import finite_float, float_in, positive_float, window_duration
from meshemu.errors import InputError
from meshemu.constellation.propagate import check_window
from meshemu.links.series import check_series_size, find_node


@dataclass(frozen=True)
class Scenario:
    constellation: Constellation
    stations: tuple
    grid: TimeGrid

    @property
    def node_names(self) -> tuple[str, ...]:
        """Satellites then ground stations, in the link series' numbering."""
        return tuple(self.constellation.satellite_names) + tuple(s.name for s in self.stations)

    def node(self, name) -> int:
        return find_node(self.node_names, name, self.constellation.name)


def add_scenario_args(parser, *, duration_s: float = 100.0, step_s: float = 1.0) -> None:
    src = parser.add_argument_group("constellation")
    src.add_argument("--constellation", "-c", metavar="NAME|YAML",
                     help="a name under topologies/ or a YAML path (default: demo, unless --tles)")
    src.add_argument("--tles", metavar="FILE", help="a TLE file (2-line, 3-line or Hypatia's tles.txt); t = 0 is its epoch")
    src.add_argument("--isls", metavar="FILE", help="ISLs as 'a b' satellite-id pairs per line (Hypatia's isls.txt)")
    src.add_argument("--grid", metavar="PxS", help="with --tles: the file lists P planes of S satellites, "
                                                   "plane by plane (otherwise inferred from the elements)")
    src.add_argument("--ground-stations", "-g", metavar="FILE",
                     help="CSV (name,latitude_deg,longitude_deg[,elevation_m]) or Hypatia's ground_stations.txt "
                          "(default: the 100 most populous cities)")
    src.add_argument("--gsl-max-range-m", type=positive_float, metavar="M",
                     help="ground-satellite links by maximum slant range in metres (as Hypatia does)")
    src.add_argument("--gsl-min-elevation-deg", type=float_in(-90, 90, "deg"), metavar="DEG",
                     help="minimum elevation (default: the constellation's gsl.min_elevation_deg, e.g. 10 for "
                          "demo; 25 where it sets none)")
    src.add_argument("--gsl-policy", choices=("all", "nearest"), help="usable satellites: all visible, or nearest")
    win = parser.add_argument_group("time window")
    win.add_argument("--epoch", metavar="UTC", help="t = 0 as ISO 8601 (default: the constellation's epoch)")
    win.add_argument("--start", type=finite_float, default=0.0, metavar="S",
                     help="first step, seconds after the epoch (default 0)")
    win.add_argument("--duration", type=window_duration, default=duration_s, metavar="S",
                     help=f"window length in seconds (default {duration_s:g})")
    win.add_argument("--step", type=positive_float, default=step_s, metavar="S",
                     help=f"time step in seconds (default {step_s:g})")
    win.add_argument("--ut1-equals-utc", action="store_true",
                     help="turn the Earth by UTC instead of UT1, as PyEphem (and so Hypatia) does")


def load_scenario(args) -> Scenario:
    for flag, value in (("--constellation", args.constellation), ("--tles", args.tles), ("--isls", args.isls),
                        ("--grid", args.grid), ("--ground-stations", args.ground_stations), ("--epoch", args.epoch)):
        if value is not None and not value.strip():
            # before: an empty value (an unset shell variable) read as no option, and the default was used
            raise InputError(f"{flag} is empty: give a value or leave the option out")
    if args.tles and args.constellation:
        raise InputError("give --constellation or --tles, not both")
    if (args.isls or args.grid) and not args.tles:
        raise InputError("--isls and --grid go with --tles")
    if args.tles:
        planes = per_plane = None
        if args.grid:
            try:
                planes, per_plane = (int(v) for v in args.grid.lower().split("x"))
            except ValueError:
                planes = 0
            if planes < 1 or per_plane < 1:
                raise InputError(f"--grid {args.grid!r}: write planes x satellites per plane, e.g. 72x22")
        constellation = from_tle_file(args.tles, isls_path=args.isls, n_planes=planes, sats_per_plane=per_plane)
    else:
        constellation = load_constellation(args.constellation or "demo")
    gsl = constellation.gsl
    if args.gsl_max_range_m is not None or args.gsl_min_elevation_deg is not None:
        try:
            gsl = GslRules(min_elevation_deg=args.gsl_min_elevation_deg,
                           max_range_km=None if args.gsl_max_range_m is None else args.gsl_max_range_m / 1e3,
                           policy=gsl.policy)
        except ValueError as err:  # a caller that bypassed the argument types
            raise InputError(f"--gsl-max-range-m / --gsl-min-elevation-deg: {err}") from None
    if args.gsl_policy:
        gsl = replace(gsl, policy=args.gsl_policy)
    constellation = constellation.with_rules(gsl=gsl)
    stations = read_ground_stations(args.ground_stations) if args.ground_stations else default_ground_stations()
    return scenario_of(constellation, stations, start_s=args.start, duration_s=args.duration, step_s=args.step,
                       epoch=args.epoch, ut1_equals_utc=args.ut1_equals_utc)


def scenario_of(constellation, stations=None, *, start_s: float = 0.0, duration_s: float, step_s: float,
                epoch=None, ut1_equals_utc: bool = False) -> Scenario:
    """A constellation over a window, checked before any work: the one place the CLI makes a time grid."""
    stations = tuple(default_ground_stations() if stations is None else stations)
    grid = TimeGrid.from_window(epoch or constellation.epoch_utc, start_s=start_s, duration_s=duration_s,
                                step_s=step_s, ut1_equals_utc=ut1_equals_utc)
    check_window(constellation.satrecs, grid)  # before any progress bar starts
    check_series_size(constellation.size, len(stations), len(grid), len(constellation.isl_pairs))
    return Scenario(constellation, stations, grid)
