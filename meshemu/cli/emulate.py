"""``meshemu emulate``, ``meshemu probe``, ``meshemu clean`` and ``meshemu bench emulate``."""

from __future__ import annotations

import csv
import json
import sys
import threading
import time
from pathlib import Path

from meshemu.cli.output import (add_output_args, check_output_dir, check_rows_output, make_output_dir,
                                write_rows)
from meshemu.cli.types import float_in, int_in, namespace_prefix, tcp_port, time_scale
from meshemu.cli.scenario import add_scenario_args, load_scenario
from meshemu.cli.topology import compute_series
from meshemu.errors import InputError


# Probes per pair per step: each is an ICMP echo within the step, and a step lasts a second or so.
MAX_REPEAT = 1000


def register(commands, benches):
    p = commands.add_parser("emulate", help="play a constellation into network namespaces (root)")
    add_scenario_args(p, duration_s=60.0)
    _emulation_args(p)
    p.add_argument("--cli", action="store_true", help="open Mininet's CLI while the constellation moves")
    p.add_argument("--out", metavar="DIR", help="write per-step records (steps.csv) and run metadata (run.json); "
                                               "'meshemu view --attach DIR' follows it live")
    p.add_argument("--view", action="store_true", help="serve a live web view on 127.0.0.1 (--view-port)")
    p.add_argument("--view-port", type=tcp_port, default=8765, metavar="PORT", help="port of --view (8765)")
    p.add_argument("--fault", action="append", default=[], metavar="SPEC",
                   help="a fault in series time, repeatable: at=S,satellite=NAME|link=A-B|station=CITY,for=S "
                        "(e.g. at=20,satellite=p00s01,for=60): its links are down for the outage and routes go "
                        "around it")
    p.set_defaults(run=run_emulate)

    p = commands.add_parser("probe", help="measured RTT on the live mesh beside the link series' RTT (root)")
    add_scenario_args(p, duration_s=30.0)
    _emulation_args(p)
    p.add_argument("--pair", nargs=2, action="append", metavar=("SRC", "DST"),
                   help="a node pair to probe (repeatable; default: three city pairs with a path)")
    p.add_argument("--repeat", type=int_in(1, MAX_REPEAT), default=1,
                   help=f"probes per pair per step (1; at most {MAX_REPEAT})")
    add_output_args(p)
    p.set_defaults(run=run_probe)

    p = commands.add_parser("clean", help="remove namespaces, links, rules and processes a run left (root)")
    p.add_argument("--prefix", type=namespace_prefix, default="meshemu", help="namespace prefix (meshemu)")
    p.set_defaults(run=run_clean)

    p = benches.add_parser("emulate", help="build, step and tear down a full mesh, timed (root)")
    add_scenario_args(p, duration_s=11.0)
    _emulation_args(p)
    p.set_defaults(run=run_bench_emulate, constellation_default="starlink-shell1")


def _emulation_args(p):
    g = p.add_argument_group("emulation")
    g.add_argument("--shaper", default="auto", choices=("auto", "netem", "delayline", "none"),
                   help="link delay backend: netem where the kernel has it, else the NFQUEUE delay line (auto)")
    g.add_argument("--time-scale", type=time_scale, default=1.0, metavar="X",
                   help="play X times faster than real time (1)")
    g.add_argument("--catch-up", default="jump", choices=("jump", "replay"),
                   help="more than a step behind the clock: jump to the step due now, or replay every step (jump)")
    g.add_argument("--rate-mbps", type=float_in(1e-3, 1e7, "Mbit/s"), metavar="MBPS",
                   help="per-link rate limit (netem)")
    g.add_argument("--loss", type=float_in(0, 1), default=0.0, metavar="P",
                   help="per-link loss probability, 0 to 1 (netem; default 0)")
    g.add_argument("--prefix", type=namespace_prefix, default="meshemu", help="namespace prefix (meshemu)")
    g.add_argument("--routes", default="auto", choices=("auto", "all", "destinations"),
                   help="routes every node to every other (all), or only towards the ground stations, probed "
                        "nodes and --reach nodes (destinations; more are added when the Mininet CLI names "
                        "them); auto: all up to 400 nodes (auto)")
    g.add_argument("--reach", action="append", default=[], metavar="NODE",
                   help="also route towards NODE from the start (repeatable; with --routes destinations)")


def _shaping(args):
    """The links' rate and loss, checked against a named backend before anything is computed."""
    from meshemu.emulation.shaping import ShapingConfig, check_backend

    shaping = ShapingConfig(rate_bps=args.rate_mbps * 1e6 if args.rate_mbps else None, loss=args.loss)
    check_backend(args.shaper, shaping)  # auto: once the kernel has said which it is
    return shaping


def _emulation(args, series, watch=()):
    """The emulation the arguments ask for; ``watch``: node ids that exchange traffic (probed pairs)."""
    from meshemu.emulation.emulation import Emulation
    from meshemu.routing import ForwardingStates

    if args.time_scale <= 0:
        raise InputError(f"--time-scale must be positive, got {args.time_scale}")
    routes = ForwardingStates(series, watch=watch, mode=args.routes)
    routes.route_to([_node_id(series, name) for name in args.reach])
    return Emulation(series, shaper=args.shaper, prefix=args.prefix, shaping=_shaping(args), routes=routes)


def _node_id(series, name) -> int:
    """A node's id from its short name (``p03s12``, ``NewYork``), its full name or its id."""
    try:
        return series.short_index(name)
    except InputError:
        return series.node_index(name)


def _fault(text: str):
    from meshemu.deployment.faults import parse_fault

    fault = parse_fault(text)
    if fault.rank is not None:
        raise InputError(f"--fault {text!r}: rank:N needs a serving layout; name the satellite, or use meshemu run")
    if fault.kind == "reboot":
        raise InputError(f"--fault {text!r}: a bare mesh has no shard to reset; use for=S (the satellite goes dark)")
    return fault


def _with_faults(series, faults):
    """The series with the faults' outages: what the player applies (routes go around them)."""
    from meshemu.deployment.faults import FaultSchedule

    schedule = FaultSchedule(series, faults)
    schedule.check(0)
    for f in faults:
        print(f"meshemu: fault: {f.kind} of {f.target} at {f.at_s:g} s"
              + (f" for {f.end_after_s:g} s" if f.for_s else ""), file=sys.stderr)
    return schedule.series


def _check_root():
    from meshemu.emulation.kernel import require_root

    require_root()


def run_emulate(args) -> int:
    from meshemu.emulation.player import Player

    _check_root()
    _shaping(args)
    if args.out:
        check_output_dir(args.out)  # before: a folder that could not be made was a traceback after the run
    scenario = load_scenario(args)
    faults = [_fault(text) for text in args.fault]
    series = compute_series(scenario)
    if faults:
        series = _with_faults(series, faults)
    from meshemu.view.live import StepSinks

    # before the mesh is built, so that a port in use stops us at once
    sinks = StepSinks(series, view_port=args.view_port if args.view else None, out=args.out, time_scale=args.time_scale)
    with sinks as follow, _emulation(args, series) as emu:
        player = Player(emu, time_scale=args.time_scale, catch_up=args.catch_up)

        def show(rec):
            print(f"meshemu: step {rec.step:4d} t={rec.t_s:8.1f}s  late {rec.late_s * 1e3:7.2f} ms  "
                  f"apply {rec.apply_s * 1e3:7.2f} ms  links +{rec.link_up}/-{rec.link_down}  "
                  f"delays {rec.delay_changes}  routes {rec.route_changes}"
                  + (f"  (jumped {rec.skipped} steps to catch up)" if rec.skipped else ""), file=sys.stderr)
            follow(rec)  # the live view's hook: every applied step, in the player's thread

        if args.cli:
            from meshemu.emulation.nodes import ReachingCLI, mininet_net

            report = {}
            thread = threading.Thread(target=lambda: report.setdefault("r", player.play(0, series.n_steps,
                                                                                          on_step=follow)),
                                      daemon=True)
            thread.start()
            print(f"meshemu: Mininet CLI; hosts are {emu.plan.node_names[0]} .. {emu.plan.node_names[-1]} "
                  "(e.g. 'Paris ping -U -c3 Tokyo'); the constellation moves meanwhile", file=sys.stderr)
            try:
                ReachingCLI(mininet_net(emu), emu)
            finally:
                player.stop()
                thread.join()
            records = report["r"].records if "r" in report else []
        else:
            records = player.play(0, series.n_steps, on_step=show).records
        from meshemu.emulation.player import PlayReport

        summary = PlayReport(records).summary() if records else {}
        if summary:
            print(f"meshemu: {summary['steps']} steps; apply p50 {summary['apply_p50_ms']:.1f} ms, "
                  f"p99 {summary['apply_p99_ms']:.1f} ms; late p50 {summary['late_p50_ms']:.1f} ms, "
                  f"p99 {summary['late_p99_ms']:.1f} ms, max {summary['late_max_ms']:.1f} ms; "
                  f"{summary['skipped_steps']} steps jumped over", file=sys.stderr)
        if args.out:
            _write_run(Path(args.out), args, emu, records, summary)
    return 0


def _write_run(out: Path, args, emu, records, summary) -> None:
    make_output_dir(out)
    try:
        with open(out / "steps.csv", "w", newline="") as f:
            w = csv.writer(f)
            if records:
                w.writerow(records[0].as_dict().keys())
                w.writerows(r.as_dict().values() for r in records)
    except OSError as err:
        raise InputError(f"cannot write: {err.strerror or err}", file=out / "steps.csv") from None
    meta = {"capabilities": emu.capabilities.as_dict() if emu.capabilities else None, "shaper": emu.backend,
            "constellation": emu.series.constellation, "nodes": len(emu.plan.node_names),
            "routes": {"mode": emu.routes.mode, "destinations": len(emu.destinations),
                       "installed": emu.routes_installed()},
            "links": len(emu.plan.links), "build_s": getattr(emu, "build_s", None), "summary": summary,
            "arguments": {k: v for k, v in vars(args).items() if k != "run"}}
    try:
        (out / "run.json").write_text(json.dumps(meta, indent=1, default=str))
    except OSError as err:
        raise InputError(f"cannot write: {err.strerror or err}", file=out / "run.json") from None
    print(f"meshemu: wrote {out / 'steps.csv'} and {out / 'run.json'}", file=sys.stderr)


def run_probe(args) -> int:
    from meshemu.emulation.player import Player
    from meshemu.emulation.probe import (check_paths, default_pairs, describe_path_share, error_summary,
                                        path_summary, probe_pairs)

    _check_root()
    _shaping(args)
    check_rows_output(args)
    scenario = load_scenario(args)
    pairs_named = args.pair or []
    for a, b in pairs_named:
        scenario.node(a), scenario.node(b)  # unknown names fail before anything is built
    series = compute_series(scenario)
    probes, checks = [], []
    named = [(series.node_index(a), series.node_index(b)) for a, b in pairs_named]
    with _emulation(args, series, watch=[v for p in named for v in p]) as emu:
        pairs = named or default_pairs(emu)
        emu.routes.watch(v for p in pairs for v in p)  # the default pairs are stations: destinations already
        if not pairs:
            raise InputError("no node pair has a path at the first step: name one with --pair SRC DST")
        names = ", ".join(f"{emu.plan.node_names[a]}-{emu.plan.node_names[b]}" for a, b in pairs)
        print(f"meshemu: probing {names} at every step: ICMP echo (microsecond user-space timestamps), "
              "then TTL-limited echoes along the path", file=sys.stderr)

        def at_step(rec):
            probes.extend(probe_pairs(emu, pairs, rec.step, rec.t_s, args.repeat))
            checks.extend(check_paths(emu, pairs, rec.step, rec.t_s))

        Player(emu, time_scale=args.time_scale, catch_up=args.catch_up).play(0, series.n_steps, on_step=at_step)
        summary, paths = error_summary(probes), path_summary(checks)
        backend = emu.backend
    on_path = {(c.step, c.src, c.dst): c for c in checks}
    columns = ("t_s", "src", "dst", "expected_rtt_ms", "measured_rtt_ms", "error_ms", "step", "on_path")
    rows = [(p.t_s, p.src, p.dst, round(p.expected_rtt_ms, 3),
             None if p.measured_rtt_ms is None else round(p.measured_rtt_ms, 3),
             None if p.error_ms is None else round(p.error_ms, 3), p.step,
             _on_path_text(on_path.get((p.step, p.src, p.dst)))) for p in probes]
    write_rows(args, columns, rows, title=f"RTT on the live mesh ({backend})")
    if "median_ms" in summary:
        print(f"meshemu: {backend}: RTT error median {summary['median_ms']:+.3f} ms, mean {summary['mean_ms']:+.3f} ms, "
              f"p99 {summary['p99_ms']:+.3f} ms over {summary['probes']} probes, {summary['lost']} lost",
              file=sys.stderr)
    else:
        print(f"meshemu: {backend}: every probe was lost", file=sys.stderr)
    print(f"meshemu: {backend}: {describe_path_share(paths)}", file=sys.stderr)
    return 0


def _on_path_text(check) -> str | None:
    if check is None or check.on_path is None:
        return None
    return ("yes" if check.on_path else "no") + (" (route change)" if check.at_route_change else "")


def run_clean(args) -> int:
    from meshemu.emulation.clean import clean

    _check_root()
    done = clean(args.prefix)
    print(f"meshemu: removed {done['namespaces']} namespaces and stopped {done['processes']} processes",
          file=sys.stderr)
    return 0


def run_bench_emulate(args) -> int:
    from rich.console import Console
    from rich.table import Table

    import numpy as np

    from meshemu.emulation.player import Player

    _check_root()
    _shaping(args)
    if not args.constellation and not args.tles:
        args.constellation = args.constellation_default
    scenario = load_scenario(args)
    series = compute_series(scenario)
    before = _meminfo_kb()
    emu = _emulation(args, series)
    cgroup = _MemoryCgroup.enter()  # what the mesh costs, charged to a cgroup of its own
    t0 = time.perf_counter()
    try:
        emu.start()
        backend = emu.backend
        t1 = time.perf_counter()
        up = _meminfo_kb()
        rss_kb = _rss_kb("self") + (_rss_kb(emu._backend.line.pid) if backend == "delayline" else 0)
        routes = emu.routes_installed()
        # as fast as it goes, every step: the apply time alone
        report = Player(emu, time_scale=1e9, catch_up="replay").play(0, series.n_steps)
        routes_after = emu.routes_installed()
    finally:
        t2 = time.perf_counter()
        emu.stop()
        t3 = time.perf_counter()
        peak_kb = cgroup.leave() if cgroup else None
    s = report.summary()
    nodes = len(emu.plan.node_names)
    used_kb = before["MemAvailable"] - up["MemAvailable"]
    kernel_kb = sum(up[k] - before[k] for k in ("SUnreclaim", "Percpu", "KernelStack", "PageTables"))
    pass_ms = np.array(emu.prepare_s or [np.nan]) * 1e3
    what = "every node" if emu.routes.mode == "all" else f"{len(emu.destinations)} destinations"
    table = Table(title=f"bench emulate: {series.constellation}, {nodes} nodes, "
                        f"{len(emu.plan.links)} links, shaper {backend}, routes {emu.routes.mode}")
    table.add_column("what")
    table.add_column("figure")
    table.add_row("up: namespaces, links, addresses, shaping, routes", f"{t1 - t0:.1f} s")
    table.add_row("  of which", ", ".join(f"{k} {v:.1f} s" for k, v in emu.mesh.phases_s.items()))
    table.add_row("down", f"{t3 - t2:.1f} s")
    table.add_row(f"routes installed (towards {what})",
                  f"{routes:,} at the start, {routes_after:,} at the end ({routes / nodes:,.0f} per node)")
    if peak_kb is not None:
        user_kb, kmem_kb = peak_kb
        table.add_row("memory: peak of this run's own memory cgroup (processes + kernel memory charged to it)",
                      f"{user_kb / 1024:.0f} MB, {user_kb / nodes:.0f} kB per node (kernel: {kmem_kb / 1024:.0f} MB, "
                      f"{kmem_kb / nodes:.0f} kB per node)")
    table.add_row("memory (MemAvailable drop while up; moved by anything else running)",
                  f"{used_kb / 1024:.0f} MB, {used_kb / nodes:.0f} kB per node")
    table.add_row("of it kernel, unreclaimable (SUnreclaim + Percpu + KernelStack + PageTables)",
                  f"{kernel_kb / 1024:.0f} MB, {kernel_kb / nodes:.0f} kB per node")
    table.add_row("of it meshemu's processes (resident: this one" + (" + the delay line)" if backend == "delayline"
                                                                     else ")"),
                  f"{rss_kb / 1024:.0f} MB, {rss_kb / nodes:.0f} kB per node")
    table.add_row(f"apply per step ({s['steps'] - 1} steps of {args.step:g} s)",
                  f"p50 {s['apply_p50_ms']:.1f} ms, p99 {s['apply_p99_ms']:.1f} ms, max {s['apply_max_ms']:.1f} ms")
    table.add_row("routing pass per step (ahead of the apply)",
                  f"p50 {np.nanpercentile(pass_ms, 50):.0f} ms, max {np.nanmax(pass_ms):.0f} ms")
    table.add_row("changes applied", f"{s['link_changes']} link states, {s['route_changes']} routes, "
                                      f"{s['delay_changes']} delays "
                                      f"({'matrix entries' if backend == 'delayline' else 'qdiscs'})")
    Console().print(table)
    return 0


class _MemoryCgroup:
    """A memory cgroup (v1) of this process's own, made at the start of the bench and removed at the end.

    Kernel memory a process's namespaces, devices and routes take is charged to its cgroup, so the peak
    counts the mesh whatever else the host runs (MemAvailable moves with every other job).
    """

    def __init__(self, path: Path, home: Path):
        self.path, self.home = path, home

    @classmethod
    def enter(cls):
        import os

        try:
            rel = next(line.split(":", 2)[2].strip() for line in open("/proc/self/cgroup")
                       if line.split(":", 2)[1] == "memory")
            home = Path("/sys/fs/cgroup/memory") / rel.lstrip("/")
            path = home / f"meshemu-bench-{os.getpid()}"
            path.mkdir()
            (path / "cgroup.procs").write_text(str(os.getpid()))
            return cls(path, home)
        except (OSError, StopIteration, IndexError):
            return None  # no cgroup v1 memory controller here: the MemAvailable figure stands alone

    def leave(self) -> tuple[int, int] | None:
        import os

        try:
            peak = int((self.path / "memory.max_usage_in_bytes").read_text()) // 1024
            kmem = self.path / "memory.kmem.max_usage_in_bytes"
            kmem_kb = int(kmem.read_text()) // 1024 if kmem.exists() else 0
            (self.home / "cgroup.procs").write_text(str(os.getpid()))
            self.path.rmdir()  # its charges move to the parent
            return peak, kmem_kb
        except OSError:
            return None


def _meminfo_kb() -> dict:
    out = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, value = line.split(":", 1)
            out[key] = int(value.split()[0])
    return out


def _rss_kb(pid) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return 0
