"""``meshemu rtt``, ``meshemu topology``, ``meshemu constellations`` and ``meshemu bench topology``."""

from __future__ import annotations

import multiprocessing
import os
import resource
import sys
import time

import numpy as np

from meshemu.cli.output import (add_output_args, check_rows_output, check_writable, progress_bar,
                                series_path, write_rows)
from meshemu.cli.scenario import add_scenario_args, load_scenario
from meshemu.cli.types import positive_int
from meshemu.constellation import available_constellations, load_constellation
from meshemu.links import compute_link_series
from meshemu.routing import shortest_route, split_graph
from meshemu.routing.paths import bounded_station_distances_m, search_limits_m

# Hypatia's generator, measured on a 2-core machine like ours for Starlink shell 1
# and 100 cities (shared/FIELD.md): about 25 s of wall time per 1 s step.
HYPATIA_S_PER_STEP = 25.0


def register(commands, benches):
    p = commands.add_parser("rtt", help="RTT, hops and path between two nodes over a time window")
    add_scenario_args(p)
    p.add_argument("--from", dest="src", required=True, metavar="NODE",
                   help="a ground station's exact name, a satellite's name, or a node id")
    p.add_argument("--to", dest="dst", required=True, metavar="NODE",
                   help="the other end: a ground station's exact name, a satellite's name, or a node id")
    add_output_args(p)
    p.set_defaults(run=run_rtt)

    p = commands.add_parser("topology", help="compute the link series of a window and save it (.npz)")
    add_scenario_args(p)
    p.add_argument("--out", "-o", required=True, metavar="FILE.npz", help="where to save the series")
    p.set_defaults(run=run_topology)

    p = commands.add_parser("constellations", help="list the constellations under topologies/")
    p.set_defaults(run=run_constellations)

    p = benches.add_parser("topology", help="link series + all ground-station shortest paths, timed")
    add_scenario_args(p, duration_s=200.0)
    p.add_argument("--jobs", "-j", type=positive_int, default=None, metavar="N",
                   help="processes for the shortest paths, each taking whole steps (default: the CPUs "
                        "this process may use)")
    p.set_defaults(run=run_bench_topology, constellation_default="starlink-shell1")


def compute_series(scenario, label="propagating"):
    bar, update = progress_bar(f"{label} {scenario.constellation.name}")
    with bar:
        return compute_link_series(scenario.constellation, scenario.stations, scenario.grid, progress=update)


def run_rtt(args) -> int:
    check_rows_output(args)
    scenario = load_scenario(args)
    src, dst = scenario.node(args.src), scenario.node(args.dst)
    series = compute_series(scenario)
    rows = []
    for k in range(series.n_steps):
        r = shortest_route(series, k, src, dst)
        t = round(float(series.times_s[k]), 6)
        if r.reachable:
            rows.append((t, round(r.rtt_s * 1e3, 6), r.hops, " ".join(map(str, r.nodes)), round(r.length_m, 1),
                         " > ".join(series.node_names[v] for v in r.nodes)))
        else:
            rows.append((t, None, None, "", None, ""))
    unreachable = sum(r[1] is None for r in rows)
    if unreachable:
        print(f"meshemu: no path at {unreachable} of {len(rows)} steps (rtt_ms left empty)", file=sys.stderr)
    columns = ("t_s", "rtt_ms", "hops", "path", "length_m", "path_names")
    if (args.format or "table") == "table" and not args.out:
        columns, rows = ("t_s", "rtt_ms", "hops", "path"), [(r[0], r[1], r[2], r[5]) for r in rows]
    write_rows(args, columns, rows, title=f"{series.node_names[src]} -> {series.node_names[dst]}")
    return 0


def run_topology(args) -> int:
    scenario = load_scenario(args)
    out = series_path(args.out)
    check_writable(out)
    series = compute_series(scenario)
    path = series.save(out)
    up = series.up
    print(f"{series.constellation}: {series.n_satellites} satellites, {series.n_ground_stations} ground stations, "
          f"{series.n_steps} steps of {args.step:g} s; {int((~series.is_gsl).sum())} ISLs, "
          f"{int(series.is_gsl.sum())} station-satellite pairs; {up.sum(axis=1).mean():.0f} links up per step; "
          f"saved to {path}", file=sys.stderr)
    return 0


def run_constellations(args) -> int:
    for name in available_constellations():
        c = load_constellation(name)
        print(f"{name:18s} {c.size:6d} satellites  {c.description}")
    return 0


def run_bench_topology(args) -> int:
    if not args.constellation and not args.tles:
        args.constellation = args.constellation_default
    from rich.console import Console
    from rich.table import Table

    scenario = load_scenario(args)
    t0 = time.perf_counter()
    series = compute_series(scenario, "links")
    t1 = time.perf_counter()
    jobs = args.jobs or len(os.sched_getaffinity(0))
    reachable = station_pairs_with_a_path(series, jobs)
    t2 = time.perf_counter()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    worker_peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    n, g = series.n_steps, series.n_ground_stations
    table = Table(title=f"bench topology: {series.constellation}, {series.n_satellites} satellites, "
                        f"{g} ground stations, {n} steps of {args.step:g} s")
    for col in ("what", "figure"):
        table.add_column(col)
    table.add_row("propagation + ISLs + GSLs", f"{t1 - t0:.2f} s")
    table.add_row(f"shortest paths, all station pairs, every step ({jobs} process{'es' if jobs > 1 else ''})",
                  f"{t2 - t1:.2f} s ({(t2 - t1) / n * 1e3:.1f} ms/step)")
    table.add_row("total wall time", f"{t2 - t0:.2f} s ({(t2 - t0) / n * 1e3:.1f} ms per step)")
    table.add_row("peak memory (max RSS)", f"{peak_mb:.0f} MB" + (
        f" (each path worker at most {worker_peak_mb:.0f} MB, mostly the series' pages it shares)" if jobs > 1 else ""))
    table.add_row("links in the series", f"{len(series.links)} ({int(series.up.sum(1).mean())} up per step)")
    table.add_row("station pairs with a path", f"{reachable / n:.0f} per step of {g * (g - 1)}")
    table.add_row("vs Hypatia's generator (~25 s per step here)",
                  f"{HYPATIA_S_PER_STEP * n / (t2 - t0):.0f}x faster")
    Console().print(table)
    return 0


# The series the path workers read: set before they fork, so each shares the parent's pages.
_SERIES = None


def station_pairs_with_a_path(series, jobs: int = 1, *, steps_per_task: int = 50) -> int:
    """Station pairs with a path, summed over every step: Dijkstra from every station at every step.

    Each station's search stops a margin past where last step's farthest
    station lay (:func:`~meshemu.routing.paths.bounded_station_distances_m`:
    the same distances, bit for bit). With ``jobs`` > 1 whole steps are shared
    among forked processes, which read the parent's series without a copy.
    """
    global _SERIES
    bar, update = progress_bar("routes")
    tasks = [range(k, min(k + steps_per_task, series.n_steps)) for k in range(0, series.n_steps, steps_per_task)]
    done = reachable = 0
    if jobs == 1 or len(tasks) == 1:
        with bar:
            for steps in tasks:
                reachable += _reachable_in(steps, series)
                done += len(steps)
                update(done, series.n_steps)
        return reachable
    _SERIES = series
    try:
        # fork, and before the progress bar's thread starts: the workers inherit the series, not a pickled copy
        with multiprocessing.get_context("fork").Pool(min(jobs, len(tasks))) as pool, bar:
            for n_steps, count in pool.imap_unordered(_reachable_task, tasks):
                reachable += count
                done += n_steps
                update(done, series.n_steps)
    finally:
        _SERIES = None
    return reachable


def _reachable_task(steps) -> tuple[int, int]:
    return len(steps), _reachable_in(steps, _SERIES)


def _reachable_in(steps, series) -> int:
    reachable = 0
    limits_m = np.full(series.n_ground_stations, np.inf)
    for k in steps:
        dist = bounded_station_distances_m(series, k, split_graph(series, k), limits_m)
        reachable += int(np.isfinite(dist).sum() - len(dist))
        limits_m = search_limits_m(dist)
    return reachable
