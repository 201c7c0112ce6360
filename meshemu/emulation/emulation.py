"""An emulation: a link series made real, and kept in step with it.

>>> # as root:
>>> # with Emulation(series, shaper="auto") as emu:
>>> #     emu.host("Paris").cmd("ping -c1", emu.host("Tokyo").IP())
"""

from __future__ import annotations

import signal
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from meshemu.constants import SPEED_OF_LIGHT_M_PER_S
from meshemu.emulation import kernel
from meshemu.emulation.mesh import Mesh
from meshemu.emulation.naming import DEFAULT_PREFIX, plan_mesh
from meshemu.emulation.netlink import netns_argv
from meshemu.emulation.shaping import SHAPERS, ShapingConfig
from meshemu.routing import ForwardingStates, table_changes


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
    with whoever else reads them (one is made if none is given). Leaving the
    ``with`` block, an exception, Ctrl-C or SIGTERM removes everything this
    emulation made.
    """

    series: object
    shaper: str = "auto"
    prefix: str = DEFAULT_PREFIX
    shaping: ShapingConfig = ShapingConfig()
    log: object = None  # callable(str) for progress lines; stderr by default
    routes: ForwardingStates | None = None
    capabilities: kernel.Capabilities | None = field(default=None, init=False)
    step: int = field(default=-1, init=False)

    def __post_init__(self):
        s = self.series
        self.plan = plan_mesh(s.node_names, s.n_satellites, s.links, s.places(), self.prefix)
        self.mesh = Mesh(self.plan)
        if self.routes is None:
            self.routes = ForwardingStates(s)
        self._backend = None
        self._table = None
        self._hosts = None
        self._old_sigterm = None
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
        self._old_sigterm = signal.signal(signal.SIGTERM, _raise_interrupt)
        try:
            t0 = time.perf_counter()
            self.mesh.build(self.series.up[step])
            self._backend = SHAPERS[chosen](self.mesh, self.shaping)
            table, length_m = self.state(step)
            self._backend.start(self._link_delays(step), length_m / SPEED_OF_LIGHT_M_PER_S)
            first = table_changes(None, table)
            self.mesh.apply_routes(first.node, first.destination, first.next_hop)
            self._table, self.step = table, step
            self.build_s = time.perf_counter() - t0
            self.log(f"{len(self.plan.node_names)} nodes, {len(self.plan.links)} links, {first.count} routes "
                     f"up in {self.build_s:.2f} s")
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
            self.state(k)

    def _link_delays(self, k: int) -> np.ndarray:
        return self.series.length_m[k].astype(np.float64) / SPEED_OF_LIGHT_M_PER_S

    def apply_step(self, k: int) -> StepChanges:
        """Bring the kernel from the current step to step ``k``."""
        t0 = time.perf_counter()
        table, length_m = self.state(k)
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
                                                 length_m / SPEED_OF_LIGHT_M_PER_S)
        routes = table_changes(self._table, table)
        out.route_changes = self.mesh.apply_routes(routes.node, routes.destination, routes.next_hop)
        out.link_down = self.mesh.set_links(np.zeros(0, dtype=int), went_down)
        self._table, self.step = table, k
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
