"""``meshemu view`` (export, replay, attach) and ``meshemu bench view`` (frame time at full scale)."""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from meshemu.cli.output import check_writable
from meshemu.cli.types import float_in
from meshemu.errors import InputError


def register(commands, benches):
    p = commands.add_parser("view", help="a web view of the moving mesh: --export one HTML file, or serve it on 127.0.0.1")
    p.add_argument("source", metavar="RESULTS_DIR|SERIES.npz",
                   help="a results folder of 'meshemu run', a link series of 'meshemu topology --out', "
                        "or with --attach the --out folder of a running 'meshemu emulate'")
    p.add_argument("--export", metavar="FILE.html", help="write one self-contained page (no server, no network)")
    p.add_argument("--port", type=int, default=8765, help="serve on 127.0.0.1:PORT (8765; 0 picks a free one)")
    p.add_argument("--pair", nargs=2, action="append", metavar=("SRC", "DST"),
                   help="a node pair whose route to follow (repeatable; default: the results' pairs, or Paris-Moscow)")
    p.add_argument("--attach", action="store_true",
                   help="follow a running 'meshemu emulate --out DIR' (live), instead of a finished run")
    p.set_defaults(run=run_view)

    p = benches.add_parser("view", help="frame time of the page in headless Chromium at full scale")
    p.add_argument("--constellation", "-c", default="starlink-shell1", help="(starlink-shell1)")
    p.add_argument("--duration", type=float, default=600.0, metavar="S", help="window in seconds (600)")
    p.add_argument("--step", type=float, default=10.0, metavar="S", help="step in seconds (10)")
    p.add_argument("--seconds", type=float_in(0.5, 600, "s"), default=5.0, help="how long to measure each view (5)")
    p.set_defaults(run=run_bench_view)


def run_view(args) -> int:
    from meshemu.view import open_source, render_page
    from meshemu.view.page import export_page

    if args.attach:
        return _attach(args)
    if args.export is not None:
        if not args.export.strip():
            raise InputError("--export is empty: give the page's file name, e.g. view.html")
        check_writable(args.export)  # before the scene is built
    src = open_source(args.source)
    scene = src.scene(extra_pairs=tuple(tuple(p) for p in args.pair or ()))
    if args.export is not None:
        path = export_page(scene, args.export)
        print(f"meshemu: wrote {path} ({path.stat().st_size / 1e6:.1f} MB): open it in a browser, no server needed",
              file=sys.stderr)
        return 0
    from meshemu.view.server import ViewServer

    server = ViewServer(render_page(scene, "replay"), port=args.port).start()
    print(f"meshemu: replaying {args.source} at {server.url} (Ctrl-C stops)", file=sys.stderr)
    try:
        server.wait()
    except KeyboardInterrupt:
        pass
    return 0


def _attach(args) -> int:
    from meshemu.view.live import STEP_LOG
    from meshemu.view.page import render_page
    from meshemu.view.scene import build_scene
    from meshemu.view.server import LiveFeed, StepFileFollower, ViewServer
    from meshemu.view.sources import SERIES_FILE, open_source

    folder = Path(args.source)
    if not (folder / SERIES_FILE).exists():
        raise InputError(f"nothing to attach to: no {SERIES_FILE} (start 'meshemu emulate --out {folder}' first)",
                         file=folder)
    if args.export:
        raise InputError("--attach follows a running emulation; --export writes a finished one: choose one")
    series = open_source(folder / SERIES_FILE).series
    scene = build_scene(series, pairs=tuple(tuple(p) for p in args.pair or ()), title=f"{series.constellation} (live)")
    feed = LiveFeed()
    follower = StepFileFollower(folder / STEP_LOG, feed).start()
    server = ViewServer(render_page(scene, "live", events_url="events"), port=args.port, feed=feed).start()
    print(f"meshemu: following {folder / STEP_LOG} at {server.url} (Ctrl-C stops)", file=sys.stderr)
    try:
        server.wait()
    except KeyboardInterrupt:
        pass
    finally:
        follower.stop()
    return 0


def run_bench_view(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from meshemu.cli.scenario import scenario_of
    from meshemu.cli.topology import compute_series
    from meshemu.constellation import load_constellation
    from meshemu.view.browser import Browser
    from meshemu.view.page import export_page
    from meshemu.view.scene import build_scene

    scenario = scenario_of(load_constellation(args.constellation), duration_s=args.duration, step_s=args.step)
    t0 = time.perf_counter()
    series = compute_series(scenario)
    t1 = time.perf_counter()
    scene = build_scene(series)
    t2 = time.perf_counter()
    table = Table(title=f"bench view: {series.n_satellites} satellites, {series.n_ground_stations} stations, "
                        f"{series.n_steps} steps, headless Chromium (WebGL in software: SwiftShader)")
    for col in ("what", "figure"):
        table.add_column(col)
    table.add_row("link series / scene in Python", f"{t1 - t0:.1f} s / {t2 - t1:.1f} s")
    with tempfile.TemporaryDirectory() as tmp:
        page = export_page(scene, Path(tmp) / "bench.html")
        table.add_row("exported page", f"{page.stat().st_size / 1e6:.1f} MB")
        with Browser(1280, 800) as b:
            for view, finish in (("globe", "0"), ("globe", "1"), ("map", "0")):
                b.open("about:blank")  # a new document each time: a changed hash alone would not reload
                b.wait_for("document.URL === 'about:blank'")
                b.open(f"{page.as_uri()}#speed=30&view={view}&finish={finish}")
                b.wait_ready(60)
                time.sleep(args.seconds)  # the page keeps a rolling mean over its last 120 frames
                d = b.dataset()
                what = {("globe", "0"): "3-D globe, script work per frame (update + draw calls)",
                        ("globe", "1"): "3-D globe, with gl.finish() (GPU work included)",
                        ("map", "0"): "2-D map (canvas), work per frame"}[(view, finish)]
                table.add_row(what, f"{float(d['frameMs']):.2f} ms; {1e3 / float(d['frameIntervalMs']):.0f} frames/s")
            if b.exceptions:
                raise InputError(f"the page raised: {b.exceptions[0]}")
    Console().print(table)
    return 0
