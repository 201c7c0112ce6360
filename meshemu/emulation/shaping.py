"""Link shaping backends: delay (and optional rate and loss) that follows the link series.

Two backends, one interface (``start``, ``update``, ``close``, ``describe``):

* ``netem`` (default where the kernel has ``sch_netem``): a root netem qdisc
  on both ends of every link, each holding that link's one-way delay. Every
  step changes only the links whose delay moved, *in place* over netlink,
  always with the whole parameter set (a partial change would reset the rest).
  The queue limit is sized to bandwidth x delay, so long fat links do not
  drop at netem's default 1,000 packets.
* ``delayline`` (kernels without netem, like this project's CI): packets
  addressed to a node are queued (iptables NFQUEUE) on arrival at that node
  and held, once, for the whole path's one-way delay, by a helper process
  that reads the current delay matrix from shared memory. One release point
  per packet, so timer lateness does not add up hop by hop. Transit
  packets and packets to link addresses are not delayed. Only destinations
  (the nodes routes lead to) get the rule and a queue, and the matrix is
  (N + G, D): sources by routed destinations, the whole (N + G)^2 only when
  every node is a destination.

Both take ``path_delay_s`` as (N + G, D) one-way delays towards ``destinations`` (node ids).
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from meshemu.emulation import netlink as nl
from meshemu.emulation.delayline import DelayLine, install_rules
from meshemu.errors import InputError

MTU_BYTES = 1500
ASSUMED_RATE_BPS = 10e9  # sizes queues when no rate is given
# netem counts a rate in whole bytes per second: below 1 kbit/s it rounds to a few bytes (0 means no limit at
# all), and past 10 Tbit/s no host link comes near it.
MIN_RATE_BPS, MAX_RATE_BPS = 1e3, 1e13
DELAY_ONLY = ("delayline", "none")
# Delay-line columns kept free for destinations reached at run time (at least as many as there are at start)
DESTINATION_HEADROOM = 256


@dataclass(frozen=True)
class ShapingConfig:
    """Rate and loss of every link.

    >>> ShapingConfig(rate_bps=1e-300)
    Traceback (most recent call last):
    ...
    meshemu.errors.InputError: a link rate of 1e-300 bit/s is outside [1 kbit/s, 10 Tbit/s]
    """

    rate_bps: float | None = None  # per link, each direction; None: as fast as the host goes
    loss: float = 0.0  # per link, probability (netem only)

    def __post_init__(self):
        if self.rate_bps is not None and not MIN_RATE_BPS <= self.rate_bps <= MAX_RATE_BPS:
            raise InputError(f"a link rate of {self.rate_bps:g} bit/s is outside [1 kbit/s, 10 Tbit/s]")
        if not 0 <= self.loss <= 1:
            raise InputError(f"a link loss is a probability within [0, 1], got {self.loss}")

    @property
    def shapes(self) -> bool:
        """Whether it asks for more than delay."""
        return bool(self.loss) or self.rate_bps is not None


def check_backend(backend: str, config: ShapingConfig) -> None:
    """InputError when ``backend`` cannot give what ``config`` asks (rate and loss need netem).

    Called before anything is built when the backend is named; ``auto`` is checked once it is resolved.
    """
    if backend in DELAY_ONLY and config.shapes:
        raise InputError(f"the {backend} shaper does delay only: drop --rate-mbps/--loss (rate_mbps, loss) "
                         "or use netem")


def queue_limit_packets(delay_s: float, rate_bps: float | None) -> int:
    """Enough packets for twice bandwidth x delay, never below netem's default of 1,000.

    >>> queue_limit_packets(0.02, 10e9)
    33334
    """
    bdp_packets = (rate_bps or ASSUMED_RATE_BPS) * max(delay_s, 0.0) / 8 / MTU_BYTES
    return int(min(max(1000, math.ceil(2 * bdp_packets)), 1 << 22))


class NetemShaper:
    name = "netem"

    def __init__(self, mesh, config: ShapingConfig = ShapingConfig(), link_rate_bps=None):
        self.mesh, self.config = mesh, config
        self.link_rate_bps = link_rate_bps  # (L,) the series' rate of every link, NaN: none; config.rate_bps wins

    def describe(self) -> str:
        return "netem: per-link one-way delay on both ends, changed in place" + (
            ", each link's rate from the series" if series_rates(self.link_rate_bps) and self.config.rate_bps is None
            else "")

    def rate_bps(self, link: int) -> float | None:
        """The rate link ``link`` is held to: ``--rate-mbps`` for every link, else the series' own, else none."""
        if self.config.rate_bps is not None or self.link_rate_bps is None:
            return self.config.rate_bps
        rate = float(self.link_rate_bps[link])
        return rate if math.isfinite(rate) else None

    def _params(self, delay_s: float, rate_bps: float | None = None) -> nl.NetemParams:
        return nl.NetemParams(delay_s=delay_s, limit_packets=queue_limit_packets(delay_s, rate_bps),
                              loss=self.config.loss, rate_bps=rate_bps)

    def _send(self, links, delay_s, create: bool) -> int:
        plan, per_ns = self.mesh.plan, {}
        for l, d in zip(links, delay_s):
            p = self._params(0.0 if not np.isfinite(d) else float(d), self.rate_bps(int(l)))
            for end in (0, 1):
                ns = plan.namespaces[plan.links[l, end]]
                per_ns.setdefault(ns, []).append(nl.netem_qdisc(int(self.mesh.ifindex[l, end]), p, create=create))
        for ns, msgs in per_ns.items():
            self.mesh.sockets[ns].send_messages(msgs, f"netem in {ns}")
        return 2 * len(links)

    def start(self, link_delay_s: np.ndarray, path_delay_s: np.ndarray, destinations=None) -> None:
        self._send(np.arange(len(link_delay_s)), link_delay_s, create=True)

    def update(self, links: np.ndarray, link_delay_s: np.ndarray, path_delay_s: np.ndarray,
               destinations=None) -> int:
        return self._send(links, link_delay_s, create=False)

    def stats(self) -> dict:
        return {}

    def close(self) -> None:
        pass  # the qdiscs go with the namespaces


class DelayLineShaper:
    name = "delayline"

    def __init__(self, mesh, config: ShapingConfig = ShapingConfig(), link_rate_bps=None):
        check_backend(self.name, config)
        self.mesh, self.config, self.line = mesh, config, None
        self.link_rate_bps = link_rate_bps  # the series' rates: recorded, not paced (see describe)

    def describe(self) -> str:
        return "delayline: NFQUEUE at each destination, one hold per packet for the whole path delay" + (
            "; the series' link rates are not paced (delay only)" if series_rates(self.link_rate_bps) else "")

    def start(self, link_delay_s: np.ndarray, path_delay_s: np.ndarray, destinations=None) -> None:
        plan = self.mesh.plan
        n = len(plan.namespaces)
        dest = np.arange(n) if destinations is None else np.asarray(destinations, dtype=np.int64)
        every = len(dest) == n
        # columns for destinations reached at run time: the shared block is sized once
        capacity = n if every else min(n, len(dest) + max(DESTINATION_HEADROOM, len(dest)))
        self.line = DelayLine(plan.namespaces, plan.addresses, queue_num=0, destinations=dest, capacity=capacity)
        self.line.start()
        self._install(dest)  # after the queues are bound: a rule without its queue would drop packets
        self._dest = dest
        self._last = _finite(path_delay_s)
        self.line.set_delays(self._last)

    def _install(self, nodes) -> None:
        plan = self.mesh.plan
        # one iptables-restore per namespace (~3 ms each), a few at a time
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(install_rules, [plan.namespaces[v] for v in nodes], [plan.addresses[v] for v in nodes]))

    def update(self, links: np.ndarray, link_delay_s: np.ndarray, path_delay_s: np.ndarray,
               destinations=None) -> int:
        now = _finite(path_delay_s)
        d_old = len(self._dest)
        added = np.asarray(destinations, dtype=np.int64)[d_old:] if now.shape[1] > d_old else ()
        if len(added):
            self.line.add_destinations(added)  # their queues bound; nothing is queued there before the rules
        self.line.set_delays(now)
        if len(added):
            self._install(added)  # after their columns are written: their first packet is held right
            self._dest = np.asarray(destinations, dtype=np.int64)
        changed = int(np.count_nonzero(now[:, :d_old] != self._last)) + now[:, d_old:].size
        self._last = now
        return changed

    def stats(self) -> dict:
        return self.line.stats() if self.line else {}

    def close(self) -> None:
        if self.line is not None:
            self.line.stop()
            self.line = None


def series_rates(link_rate_bps) -> bool:
    """Whether a series gives any link a rate (a delay-only backend says it does not pace them)."""
    return link_rate_bps is not None and bool(np.isfinite(link_rate_bps).any())


def _finite(delay_s: np.ndarray) -> np.ndarray:
    return np.where(np.isfinite(delay_s), delay_s, 0.0)


class NoShaper:
    """Routes and link states only, no delay: for debugging routing, or to see the host's own floor."""

    name = "none"

    def __init__(self, mesh, config: ShapingConfig = ShapingConfig(), link_rate_bps=None):
        check_backend(self.name, config)  # before: a rate or loss was dropped without a word
        self.mesh = mesh

    def describe(self) -> str:
        return "none: no delay is added"

    def start(self, link_delay_s, path_delay_s, destinations=None) -> None:
        pass

    def update(self, links, link_delay_s, path_delay_s, destinations=None) -> int:
        return 0

    def stats(self) -> dict:
        return {}

    def close(self) -> None:
        pass


SHAPERS = {"netem": NetemShaper, "delayline": DelayLineShaper, "none": NoShaper}
