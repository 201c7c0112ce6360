"""Fidelity, measured by the tool itself: RTT on the live mesh beside the RTT the link series says.

Probes are ``ping -U`` from the source node's namespace to the destination's
node address. ``-U`` takes user-space timestamps: plain ping stamps a reply
on arrival in the kernel, *before* the delay line holds it at the receiver's
ingress, and would hide that delay. A probe's expected RTT is the series'
path length there and back over c at the step in force.
"""

from __future__ import annotations

import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

import numpy as np

from meshemu.emulation.netlink import NETNS_RUN_DIR

_TIME = re.compile(r"time=([0-9.]+) ms")


@dataclass(frozen=True)
class Probe:
    t_s: float
    step: int
    src: str
    dst: str
    expected_rtt_ms: float
    measured_rtt_ms: float | None  # None: lost (no reply within the timeout)

    @property
    def error_ms(self) -> float | None:
        return None if self.measured_rtt_ms is None else self.measured_rtt_ms - self.expected_rtt_ms

    def as_dict(self) -> dict:
        return asdict(self)


def ping_once(netns: str, src_addr: str, dst_addr: str, timeout_s: float = 2.0) -> float | None:
    """One user-space-timestamped echo, in milliseconds, or None if it was lost."""
    proc = subprocess.run(["nsenter", f"--net={NETNS_RUN_DIR}/{netns}", "ping", "-U", "-n", "-c", "1",
                           "-W", f"{timeout_s:g}", "-I", src_addr, dst_addr],
                          capture_output=True, text=True)
    m = _TIME.search(proc.stdout)
    return float(m.group(1)) if m else None


def probe_pairs(emulation, pairs, step: int, t_s: float, repeat: int = 1) -> list[Probe]:
    """Probe every (src, dst) node-id pair once (``repeat`` times) at the current step, in parallel."""
    plan = emulation.plan

    def one(pair):
        a, b = pair
        expected = emulation.expected_rtt_s(a, b, step) * 1e3
        timeout = max(1.0, 3 * expected / 1e3) if np.isfinite(expected) else 1.0
        return [Probe(t_s, step, plan.node_names[a], plan.node_names[b], expected,
                      ping_once(plan.namespaces[a], plan.addresses[a], plan.addresses[b], timeout))
                for _ in range(repeat)]

    with ThreadPoolExecutor(max(1, len(pairs))) as pool:
        return [p for batch in pool.map(one, pairs) for p in batch]


def error_summary(probes) -> dict:
    """Median, mean and p99 of measured minus expected RTT, in ms, over probes that came back."""
    errors = np.array([p.error_ms for p in probes if p.error_ms is not None and np.isfinite(p.expected_rtt_ms)])
    lost = sum(p.measured_rtt_ms is None for p in probes)
    if len(errors) == 0:
        return {"probes": len(probes), "lost": lost}
    return {"probes": len(probes), "lost": lost, "median_ms": float(np.median(errors)),
            "mean_ms": float(errors.mean()), "p99_ms": float(np.percentile(errors, 99)),
            "abs_p99_ms": float(np.percentile(np.abs(errors), 99))}


def default_pairs(emulation, count: int = 3) -> list[tuple[int, int]]:
    """Ground-station pairs with a path now, the most populous first (or satellites if no stations)."""
    s = emulation.series
    _, length = emulation.state(emulation.step)
    nodes = list(range(s.n_satellites, s.n_nodes)) or list(range(s.n_satellites))
    pairs = []
    for i, a in enumerate(nodes):
        for b in nodes[i + 1:]:
            if np.isfinite(length[a, b]) and not any(a in p or b in p for p in pairs):
                pairs.append((a, b))
                break
        if len(pairs) == count:
            break
    return pairs
