"""An emulation: a link series made real, and kept in step with it.

>>> # as root:
>>> # with Emulation(series, shaper="auto") as emu:
>>> #     emu.host("Paris").cmd("ping -c1", emu.host("Tokyo").IP())
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from meshemu.constants import SPEED_OF_LIGHT_M_PER_S
from meshemu.cpu_latency import CpuLatency
from meshemu.emulation import kernel
from meshemu.emulation.mesh import Mesh
from meshemu.emulation.naming import DEFAULT_PREFIX, plan_mesh
from meshemu.emulation.netlink import netns_argv
from meshemu.emulation.shaping import SHAPERS, ShapingConfig
from meshemu.errors import InputError
from meshemu.routing import ForwardingStates, column_changes


@dataclass
class StepChanges:
    """What applying one step did, and how long it took."""

    step: int
    link_up: int = 0
    link_down: int = 0
    delay_changes: int = 0
    route_changes: int = 0
    apply_s: float = 0.0
    carrier_wait_s: float = 0.0  # of apply_s: links set up, until the kernel let them carry traffic

    @property
    def count(self) -> int:
        return self.link_up + self.link_down + self.delay_changes + self.route_changes


@dataclass
class Emulation:
    """Namespaces, links, shaping and routes for ``series``; use as a context manager.

    ``shaper`` is ``auto`` (netem where the kernel has it, else the delay line),
    ``netem``, ``delayline`` or ``none``; ``shaping`` the rate and loss every
    link gets (netem only). ``routes`` are the run's forwarding states, shared
    with whoever else reads them (one is made if none is given, in mode
    ``route_mode``: ``auto``, ``all`` or ``destinations``). Leaving the
    ``with`` block, an exception, Ctrl-C or SIGTERM removes everything this
    emulation made. While it is up, the host's CPUs are kept from deep idle
    (:mod:`meshemu.cpu_latency`), so that timers fire when they are due.

    Which routes the kernel holds is the forwarding states' mode: in ``all``
    every node has a /32 route to every other; in ``destinations`` only
    towards ``routes.destinations`` (every ground station and the nodes the
    run watches: its ranks, its probe pairs), each an exact column of the
    whole table. :meth:`reach` adds a destination while the mesh runs
    (its routes and its delay-line column, at once).
    """

    series: object
    shaper: str = "auto"
    prefix: str = DEFAULT_PREFIX
    shaping: ShapingConfig = ShapingConfig()
    log: object = None  # callable(str) for progress lines; stderr by default
    routes: ForwardingStates | None = None
    route_mode: str | None = None  # for the forwarding states made here (None: auto); given ones keep theirs
    capabilities: kernel.Capabilities | None = field(default=None, init=False)
    step: int = field(default=-1, init=False)

    def __post_init__(self):
        s = self.series
        self.plan = plan_mesh(s.node_names, s.n_satellites, s.links, s.places(), self.prefix)
        self.mesh = Mesh(self.plan)
        if self.routes is None:
            self.routes = ForwardingStates(s, mode=self.route_mode or "auto")
        elif self.route_mode not in (None, "auto") and self.route_mode != self.routes.mode:
            raise InputError(f"routes {self.route_mode!r} asked, but the run's forwarding states route "
                             f"{self.routes.mode!r}")
        self._backend = None
        self._table = None  # next hops installed: (N + G, D), towards self._dest
        self._dest = None
        self._lock = threading.RLock()  # the player's steps and reach() from another thread
        self.prepare_s: list[float] = []  # per prepared step: computing its routes (the routing pass)
        self._hosts = None
        self._old_sigterm = None
        # timers (the delay line's releases, netem's) fire late on a CPU waking from deep idle: held while up
        self.cpu_latency = CpuLatency()
        if self.log is None:
            self.log = lambda line: print(f"meshemu: {line}", file=sys.stderr)

    # -- lifecycle ------------------------------------------------------------------------
    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()
        return False

    def start(self, step: int = 0) -> None:
        self.capabilities = kernel.probe(self.prefix)
        chosen = self.capabilities.shaper(self.shaper)
        self.log(f"shaping backend: {chosen} (kernel {self.capabilities.kernel}, "
                 f"netem {'present' if self.capabilities.netem else 'absent'})")
        self.log(f"cpu idle: {self.cpu_latency.hold().status}")
        self._old_sigterm = signal.signal(signal.SIGTERM, _raise_interrupt)
        try:
            t0 = time.perf_counter()
            self.mesh.build(self.series.up[step])
            phases = self.mesh.phases_s
            t = time.perf_counter()
            self._backend = SHAPERS[chosen](self.mesh, self.shaping, link_rate_bps=self.series.link_rates_bps())
            cols = self.routes.columns(step)
            phases["routing pass"] = time.perf_counter() - t
            t = time.perf_counter()
            self._backend.start(self._link_delays(step), cols.length_m / SPEED_OF_LIGHT_M_PER_S, cols.destinations)
            phases["shaping"] = time.perf_counter() - t
            t = time.perf_counter()
            first = column_changes(None, cols.next_hop, cols.destinations)
            self.mesh.apply_routes(first.node, first.destination, first.next_hop)
            phases["routes"] = time.perf_counter() - t
            self._table, self._dest, self.step = cols.next_hop, cols.destinations, step
            self.build_s = time.perf_counter() - t0
            what = "every node" if self.routes.mode == "all" else f"{len(cols.destinations)} destinations"
            self.log(f"{len(self.plan.node_names)} nodes, {len(self.plan.links)} links, {first.count} routes "
                     f"(towards {what}) up in {self.build_s:.2f} s")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        t0 = time.perf_counter()
        if self._hosts is not None:
            for h in self._hosts.values():
                h.stop_shell()
            self._hosts = None
        if self._backend is not None:
            self._backend.close()
            self._backend = None
        self.mesh.destroy()
        self.cpu_latency.release()
        if self._old_sigterm is not None:
            signal.signal(signal.SIGTERM, self._old_sigterm)
            self._old_sigterm = None
        self.teardown_s = time.perf_counter() - t0

    @property
    def backend(self) -> str:
        return self._backend.name if self._backend else "none"

    def backend_stats(self) -> dict:
        return self._backend.stats() if self._backend else {}

    # -- stepping -----------------------------------------------------------------------------
    def state(self, k: int):
        """Forwarding table and path lengths of step ``k`` (computed once, ahead of time if asked)."""
        return self.routes.state(k)

    def prepare(self, k: int) -> None:
        """Compute step ``k``'s routes now, so applying it later costs only the kernel's time."""
        if 0 <= k < self.series.n_steps:
            t0 = time.perf_counter()
            self.routes.columns(k)
            self.prepare_s.append(time.perf_counter() - t0)  # ~0 where it was computed already

    @property
    def destinations(self) -> np.ndarray:
        """The nodes the kernel holds routes towards now (node ids)."""
        return self._dest if self._dest is not None else self.routes.destinations

    def routes_installed(self) -> int:
        """Routes in the kernel now: one per (node, destination) with a path."""
        with self._lock:
            return 0 if self._table is None else int(np.count_nonzero(self._table != -1))

    def reach(self, *nodes) -> int:
        """Make ``nodes`` (ids, short names or cities) destinations now: routes towards them in every node,
        and their delay-line columns, for the step applied. Returns the routes installed (0 for nodes that
        were destinations already, and always in mode ``all``)."""
        ids = [self.plan.node(v) for v in nodes]
        with self._lock:
            self.routes.route_to(ids)
            if self._table is None:
                return 0  # not started: start() installs them with the rest
            cols = self.routes.columns(self.step)
            if len(cols.destinations) == self._table.shape[1]:
                return 0  # nothing new (or mode all)
            new = slice(self._table.shape[1], None)
            self._backend.update(np.zeros(0, dtype=int), np.zeros(0), cols.length_m / SPEED_OF_LIGHT_M_PER_S,
                                 cols.destinations)
            ch = column_changes(None, cols.next_hop[:, new], cols.destinations[new])
            self.mesh.apply_routes(ch.node, ch.destination, ch.next_hop)
            self._table, self._dest = cols.next_hop, cols.destinations
            return ch.count

    def _link_delays(self, k: int) -> np.ndarray:
        return self.series.length_m[k].astype(np.float64) / SPEED_OF_LIGHT_M_PER_S

    def apply_step(self, k: int) -> StepChanges:
        """Bring the kernel from the current step to step ``k``."""
        with self._lock:
            return self._apply_step(k)

    def _apply_step(self, k: int) -> StepChanges:
        t0 = time.perf_counter()
        cols = self.routes.columns(k)
        s = self.series
        if k == self.step + 1:
            ch = s.changes(k)
            went_up, went_down, moved = ch.went_up, ch.went_down, ch.delay_changed
        else:  # a jump: compare the two steps directly
            before, after = s.up[self.step], s.up[k]
            went_up, went_down = np.flatnonzero(after & ~before), np.flatnonzero(before & ~after)
            moved = np.flatnonzero(after & before)
        out = StepChanges(k)
        out.link_up = self.mesh.set_links(went_up, np.zeros(0, dtype=int))
        out.carrier_wait_s = self.mesh.wait_carrier(went_up)
        delays = self._link_delays(k)
        changed_links = np.concatenate([went_up, moved])
        out.delay_changes = self._backend.update(changed_links, delays[changed_links],
                                                 cols.length_m / SPEED_OF_LIGHT_M_PER_S, cols.destinations)
        routes = column_changes(self._table, cols.next_hop, cols.destinations)
        out.route_changes = self.mesh.apply_routes(routes.node, routes.destination, routes.next_hop)
        out.link_down = self.mesh.set_links(np.zeros(0, dtype=int), went_down)
        self._table, self._dest, self.step = cols.next_hop, cols.destinations, k
        out.apply_s = time.perf_counter() - t0
        return out

    # -- Mininet's world ----------------------------------------------------------------------
    def hosts(self) -> dict:
        """Mininet host objects for every node, by short name (shells start on first use)."""
        if self._hosts is None:
            from meshemu.emulation.nodes import make_hosts  # Mininet's library: only host objects need it

            self._hosts = make_hosts(self)
        return self._hosts

    def host(self, name):
        return self.hosts()[self.plan.node_names[self.plan.node(name)]]

    def command_prefix(self, name) -> list[str]:
        """What runs a program inside node ``name`` (a short name, an id, or a city)."""
        return netns_argv(self.plan.namespaces[self.plan.node(name)])

    def expected_rtt_s(self, src: int, dst: int, k: int | None = None) -> float:
        """Propagation RTT of the routed paths there and back at step ``k`` (the one applied by default)."""
        return self.routes.rtt_s(self.step if k is None else k, src, dst)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")
