"""Carry out a :class:`~meshemu.deployment.plan.MeshRun`: the mesh up, shards in satellites, the client at a
ground station, the player stepping the links while requests run, probes on the live mesh, all down again.

The shards and the client are the same programs as on loopback; only where
they start differs. Each shard binds its satellite's own address (the one the
mesh routes), so every frame between ranks crosses the emulated links along
the routed path. The player starts once the model is loaded.

One routing pass per step: placement, the player, the probes, and later the
predictor and the report all read the same
:class:`~meshemu.routing.ForwardingStates`. One clock: the player's steps and
the client's tokens are stamped with ``time.monotonic()`` (one clock per host,
whatever the namespace), and the run records its offset to wall time once.
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from meshemu.deployment.failover import Failover
from meshemu.deployment.faults import FaultSchedule
from meshemu.deployment.plan import MeshRun
from meshemu.emulation.emulation import Emulation
from meshemu.emulation.kernel import require_root
from meshemu.emulation.player import PlayReport, Player
from meshemu.emulation.probe import check_paths, probe_pairs
from meshemu.errors import MeshemuError
from meshemu.routing import ForwardingStates
from meshemu.serving.launch import ShardProcesses, stderr_text
from meshemu.serving.placement import place


@dataclass
class Deployment:
    """What a run in the mesh did: where things ran, each step's time, the client's events, the probes."""

    run: MeshRun
    series: object
    routes: ForwardingStates
    rank_nodes: tuple[str, ...]
    client_node: str
    addresses: list = field(default_factory=list)
    backend: str = ""
    capabilities: dict | None = None
    clock_origin: dict = field(default_factory=dict)  # {"monotonic_s", "wall_time"} read together at start
    step_clock: list = field(default_factory=list)  # (step, time.monotonic() when applying it began)
    step_records: list = field(default_factory=list)  # the player's StepRecords
    events: list = field(default_factory=list)  # the client's, in arrival order
    probes: list = field(default_factory=list)  # Probe per probed pair and step
    path_checks: list = field(default_factory=list)  # PathCheck per probed pair and step
    schedule: FaultSchedule | None = None  # the faults, and what fired when
    recoveries: list = field(default_factory=list)  # the deployment's side of each recovery
    rank_history: list = field(default_factory=list)  # (clock_s, rank nodes) from each change on
    shard_start_s: float = 0.0  # starting the shards' processes, all at once
    single_shard_start_s: float = 0.0  # one shard process started alone (what a replacement's start costs)
    cpu_latency: str = ""  # whether the host's CPUs were kept from deep idle while the shards ran, and why not

    def node(self, name) -> int:
        return self.series.short_index(name)

    def step_at(self, clock_s: float) -> int:
        """The link-series step in force at ``clock_s`` (monotonic; the first step before the player started)."""
        step = self.step_clock[0][0] if self.step_clock else self.run.start_step
        for k, t in self.step_clock:
            if t > clock_s:
                break
            step = k
        return step

    def one_way_at(self, k: int):
        """``(a, b) -> one-way delay in s`` of the routed path at step ``k`` (0 where links carry no delay)."""
        if self.backend == "none":
            return lambda a, b: 0.0
        return lambda a, b: self.routes.one_way_s(k, self.node(a), self.node(b))

    def route_at(self, k: int, a, b) -> list[str]:
        """Short names along the routed path from ``a`` to ``b`` at step ``k`` (empty: no path)."""
        names = self.series.short_names
        return [names[v] for v in self.routes.route(k, self.node(a), self.node(b))]

    def player_summary(self) -> dict:
        out = PlayReport(self.step_records).summary() if self.step_records else {}
        if self.step_records:
            out.update(first_t_s=self.step_records[0].t_s, last_t_s=self.step_records[-1].t_s)
        return out

    def info(self) -> dict:
        """What run.json records about where and how the run ran."""
        return {"backend": self.backend, "capabilities": self.capabilities, "placement": self.run.placement,
                "rank_nodes": list(self.rank_nodes), "client": self.client_node, "addresses": self.addresses,
                "shaping": {"shaper": self.run.shaper, "rate_bps": self.run.shaping.rate_bps,
                            "loss": self.run.shaping.loss, "link_rates": link_rates(self.series, self.backend,
                                                                                     self.run.shaping.rate_bps)},
                "time_scale": self.run.time_scale, "clock": self.clock_origin, "player": self.player_summary(),
                "routing": self.routes.summary(), "load": self.load_replies(), "shard_start_s": self.shard_start_s,
                "single_shard_start_s": self.single_shard_start_s, "cpu_latency": self.cpu_latency,
                "recoveries": self.recoveries,
                "rank_history": [{"clock_s": t, "rank_nodes": list(n)} for t, n in self.rank_history]}

    def rank_nodes_at(self, clock_s: float) -> tuple[str, ...]:
        """Where the ranks were at ``clock_s`` (they move when a recovery replaces one)."""
        nodes = self.rank_nodes
        for t, n in self.rank_history:
            if t <= clock_s:
                nodes = n
        return nodes

    def load_replies(self) -> list:
        """Each shard's answer to Load (its layers, weight bytes and how long loading took)."""
        return next((e["replies"] for e in self.events if e["event"] == "loaded"), [])

    def connect_load_s(self) -> float:
        """What connecting to every shard and loading the plan took the client at the start."""
        return next((e["connect_load_s"] for e in self.events if e["event"] == "loaded"), 0.0)


def link_rates(series, backend: str, rate_bps: float | None) -> dict:
    """The series' link rates (ISLs and GSLs: fewest and most bit/s, links that have one) and whether the
    backend paces them: netem does (unless ``--rate-mbps`` replaced them); the delay line and none do not."""
    rates = series.link_rates_bps()
    out = {}
    for kind, mine in (("isl", ~series.is_gsl), ("gsl", series.is_gsl)):
        given = rates[mine & np.isfinite(rates)]
        out[kind] = ({"min_bps": float(given.min()), "max_bps": float(given.max()), "links": int(len(given))}
                     if len(given) else None)
    out["paced"] = bool(backend == "netem" and rate_bps is None and np.isfinite(rates).any())
    return out


def emulation_of(series, run: MeshRun, routes: ForwardingStates | None = None, log=None) -> Emulation:
    """The emulation a run plays: its backend, every link's rate and loss, its namespace prefix, its routes."""
    return Emulation(series, shaper=run.shaper, shaping=run.shaping, prefix=run.prefix, routes=routes, log=log)


def deploy(series, run: MeshRun, *, on_event=None, on_step=None, log=None) -> Deployment:
    """Place the ranks, build the mesh, serve ``run.job`` from ``run.ground_station``; everything stops on return.

    The mesh plays ``series`` with the run's faults and link acquisition applied
    (``Deployment.series``). ``on_event(event)`` sees each of the client's events
    as it arrives; ``on_step(emulation, record)`` runs in the player's thread after
    each step. Raises :class:`~meshemu.errors.MeshemuError` when the client reports an error.
    """
    require_root()
    log = log or (lambda line: print(f"meshemu: {line}", file=sys.stderr))
    schedule = FaultSchedule(series, run.faults, acquisition_s=run.acquisition_s)
    schedule.check(run.n_ranks)
    played = schedule.series
    routes = ForwardingStates(played, mode=run.routes)
    gs = played.short_index(run.ground_station)
    rank_nodes = tuple(place(run.placement, run.n_ranks, played, routes, gs, step=run.start_step))
    client = played.short_names[gs]
    log(f"placement {run.placement}: " + ", ".join(f"rank {r} {n}" for r, n in enumerate(rank_nodes))
        + f"; client at {client}")
    rank_faults = [schedule.step_of(f.at_s) for f in run.faults if f.rank is not None]
    if rank_faults:  # rank:N faults strike who holds rank N: known now
        schedule.remap(rank_nodes, min(rank_faults))
        routes.invalidate(min(rank_faults))
    pairs = [(played.short_index(a), played.short_index(b)) for a, b in run.probes]
    if run.probe_client:
        pairs.append((gs, played.short_index(rank_nodes[0])))
    routes.watch([gs, *(played.short_index(n) for n in rank_nodes), *(v for p in pairs for v in p)])
    dep = Deployment(run, played, routes, rank_nodes, client, schedule=schedule)
    if on_event is not None:  # who watches (a live view) learns where the ranks are before the mesh is up
        on_event({"event": "placed", "rank_nodes": list(rank_nodes), "client": client})
    with emulation_of(played, run, routes, log) as emu, ShardProcesses() as procs, _Prober(pairs, dep) as prober:
        dep.backend = emu.backend
        dep.capabilities = emu.capabilities.as_dict() if emu.capabilities else None
        failover = Failover(dep, schedule, emu, procs, log)
        dep.addresses = failover.start_ranks()
        dep.shard_start_s, dep.single_shard_start_s = failover.shard_start_s, failover.single_shard_start_s
        dep.cpu_latency = procs.cpu_latency.status  # the emulation's start said it too
        job = run.job.placed(dep.addresses, rank_nodes)
        player = Player(emu, time_scale=run.time_scale)

        def stepped(rec):
            clock_s = player.started_at + rec.applied_s
            dep.step_clock.append((rec.step, clock_s))
            dep.step_records.append(rec)
            failover.at_step(rec, clock_s)
            prober.step(emu, rec)
            if on_step is not None:
                on_step(emu, rec)

        def play():
            player.play(run.start_step, played.n_steps - run.start_step, on_step=stepped)

        player_thread = threading.Thread(target=play, name="player", daemon=True)
        dep.clock_origin = {"monotonic_s": time.monotonic(), "wall_time": time.time()}
        client_proc = procs.spawn([sys.executable, "-m", "meshemu.serving.client_process", "--job", "-"],
                                  prefix=emu.command_prefix(gs), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=tempfile.TemporaryFile("w+"), text=True)  # noqa: SIM115 - closed by procs
        try:
            client_proc.stdin.write(job.to_json() + "\n")  # then stdin stays open: recoveries are answered there
            client_proc.stdin.flush()
            for event in _lines(client_proc, failover):
                if event["event"] == "loaded" and not player_thread.is_alive():
                    player_thread.start()
                dep.events.append(event)
                if on_event is not None:
                    on_event(event)
                if event["event"] == "lost":
                    answer = failover.answer(event)
                    client_proc.stdin.write(json.dumps(answer) + "\n")
                    client_proc.stdin.flush()
                    if on_event is not None:
                        on_event({"event": "moved", "rank_nodes": answer["nodes"], "clock_s": time.monotonic()})
            client_proc.wait()
            client_err = stderr_text(client_proc)  # before the processes' files close
        finally:
            # The player returns after the step in hand, even when it is running late and never sleeps;
            # the mesh must outlive it.
            player.stop()
            if player_thread.is_alive():
                player_thread.join()
        dep.recoveries = failover.decisions
    if dep.backend == "none":
        log("shaper none: links carry no delay; predictions use zero path delays")
    errors = [e["message"] for e in dep.events if e["event"] == "error"]
    if errors:
        raise MeshemuError(errors[0])
    if client_proc.returncode != 0:
        tail = client_err.strip().splitlines()
        raise MeshemuError(f"the client at {client} exited with status {client_proc.returncode}"
                           + (f": {tail[-1]}" if tail else ""))
    return dep


def _lines(proc, failover):
    """The client's events as they come, doing the failover's work (restarting shards) in between."""
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    fd, buffer = proc.stdout.fileno(), b""
    try:
        while True:
            failover.work()
            if not sel.select(timeout=0.05):
                continue
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                if line.strip():
                    yield json.loads(line)
    finally:
        sel.close()


class _Prober:
    """RTT and path probes of ``pairs`` after each step, one round at a time, never holding up the player."""

    def __init__(self, pairs, dep: Deployment):
        self.pairs, self.dep = pairs, dep
        self.pool = ThreadPoolExecutor(1) if pairs else None
        self.busy = threading.Lock()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.pool is not None:
            self.pool.shutdown(wait=True)  # before the mesh goes: a probe's sockets live in its namespaces
        return False

    def step(self, emu, rec) -> None:
        if self.pool is None or not self.busy.acquire(blocking=False):
            return

        def one_round():
            try:
                self.dep.probes.extend(probe_pairs(emu, self.pairs, rec.step, rec.t_s))
                self.dep.path_checks.extend(check_paths(emu, self.pairs, rec.step, rec.t_s))
            finally:
                self.busy.release()
        self.pool.submit(one_round)
