"""Fidelity, measured by the tool itself: RTT and paths on the live mesh beside what the link series says.

RTT probes are ICMP echoes sent from a raw socket inside the source node's
namespace, from its node address to the destination's, timestamped in user
space with ``perf_counter_ns`` (see :mod:`meshemu.emulation.echo`): a kernel
receive timestamp is taken *before* the delay line holds a packet at the
receiver's ingress, and would hide that delay; ``ping -U`` had user-space
stamps too but prints whole milliseconds above 100 ms. A probe's expected RTT
is the series' path length there and back over c at the step in force.

Path checks send TTL-limited echoes, TTL 1 .. hops + 1, all at once, and
compare who answers with the emulation's forwarding state at that step: the
node ``t`` hops along the path sends "time exceeded" for TTL ``t`` (its routes
carry its node address as source, so the error does too), the destination
answers TTL >= hops with an echo reply. A check is *at a route change* when the
emulation applied another step while its probes were out (or before they left)
and this pair's path differs between those steps: the kernel then held a mix of
both steps' routes, so either path, or a blend, is right. Those checks are
reported but left out of the share on the expected path. The step is read
before the first send and after the last answer, and ``Emulation.step``
changes when an apply ends: an apply that lasts longer than a whole check
(Starlink scale: ~100 ms) and holds it inside goes unseen. Anything else
counts: a TTL nobody answered is off the path too (satellites answer every
time, ``icmp_ratelimit`` is 0), such as a link just set up that drops its
first few milliseconds of traffic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from meshemu.emulation.echo import Request, exchange, next_ident


@dataclass(frozen=True)
class Probe:
    """One RTT probe (milliseconds: what the CSV files and the report print)."""

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


@dataclass(frozen=True)
class PathCheck:
    """TTL-limited probes of one pair at one step: who answered at each TTL, against the expected path."""

    t_s: float
    step: int
    src: str
    dst: str
    expected: tuple[str, ...]  # node names of the path, source first; empty: no path
    answered: tuple[str | None, ...]  # per TTL 1 .. hops + 1, the answering node (None: no answer)
    on_path: bool | None  # None: no path to check
    at_route_change: bool = False

    @property
    def counted(self) -> bool:
        """Whether this check counts towards the share on the expected path."""
        return self.on_path is not None and not self.at_route_change

    def as_dict(self) -> dict:
        return {"t_s": self.t_s, "step": self.step, "src": self.src, "dst": self.dst,
                "expected_path": " ".join(self.expected),
                "answered_path": " ".join("*" if a is None else a for a in self.answered),
                "on_path": self.on_path, "at_route_change": self.at_route_change}


def echo_rtt_s(netns: str, src_addr: str, dst_addr: str, timeout_s: float = 2.0) -> float | None:
    """One echo from ``src_addr`` in namespace ``netns`` to ``dst_addr``: RTT in seconds, None if lost."""
    return exchange([Request(netns, src_addr, dst_addr, next_ident(), 0, timeout_s=timeout_s)])[0].rtt_s


def ping_once(netns: str, src_addr: str, dst_addr: str, timeout_s: float = 2.0) -> float | None:
    """:func:`echo_rtt_s` in milliseconds (the name and unit its callers had when it ran ``ping -U``)."""
    rtt_s = echo_rtt_s(netns, src_addr, dst_addr, timeout_s)
    return None if rtt_s is None else rtt_s * 1e3


def _timeout_s(expected_rtt_s: float) -> float:
    return max(1.0, 3 * expected_rtt_s) if np.isfinite(expected_rtt_s) else 1.0


def probe_pairs(emulation, pairs, step: int, t_s: float, repeat: int = 1) -> list[Probe]:
    """Probe every (src, dst) node-id pair ``repeat`` times at the current step: all pairs at once, round by round."""
    plan = emulation.plan
    expected_s = [emulation.expected_rtt_s(a, b, step) for a, b in pairs]
    rounds = []
    for _ in range(repeat):
        requests = [Request(plan.namespaces[a], plan.addresses[a], plan.addresses[b], next_ident(), 0,
                            timeout_s=_timeout_s(e), expected_rtt_s=e) for (a, b), e in zip(pairs, expected_s)]
        rounds.append(exchange(requests))
    return [Probe(t_s, step, plan.node_names[a], plan.node_names[b], e * 1e3,
                  None if r[i].rtt_s is None else r[i].rtt_s * 1e3)
            for i, ((a, b), e) in enumerate(zip(pairs, expected_s)) for r in rounds]


def expected_answers(path: Sequence[int]) -> list[tuple[int, str]]:
    """Who must answer a TTL-limited echo along ``path``, for TTL 1 .. hops + 1, and with what.

    >>> expected_answers((4, 0, 1, 5))
    [(0, 'time-exceeded'), (1, 'time-exceeded'), (5, 'echo-reply'), (5, 'echo-reply')]
    """
    hops = len(path) - 1
    return [(path[min(ttl, hops)], "time-exceeded" if ttl < hops else "echo-reply") for ttl in range(1, hops + 2)]


def check_paths(emulation, pairs, step: int, t_s: float) -> list[PathCheck]:
    """Send TTL-limited probes for every (src, dst) node-id pair at once and compare who answers with the path."""
    plan, routes = emulation.plan, emulation.routes
    paths = [routes.route(step, a, b) for a, b in pairs]
    node_of = {addr: v for v, addr in enumerate(plan.addresses)}
    requests, owner = [], []
    for i, ((a, b), path) in enumerate(zip(pairs, paths)):
        if not path:
            continue
        ident, timeout_s = next_ident(), _timeout_s(emulation.expected_rtt_s(a, b, step))
        for ttl in range(1, len(path) + 1):  # hops + 1 of them
            requests.append(Request(plan.namespaces[a], plan.addresses[a], plan.addresses[b], ident, ttl, ttl,
                                    timeout_s))
            owner.append(i)
    sent_at = emulation.step
    results = exchange(requests)
    done_at = emulation.step
    steps = {step, sent_at, done_at} - {step}
    moved = [{routes.route(k, a, b) for k in steps} - {path} if steps else set()
             for (a, b), path in zip(pairs, paths)]
    checks = []
    for i, ((a, b), path) in enumerate(zip(pairs, paths)):
        mine = [r for r, o in zip(results, owner) if o == i]
        # an address that is no node's (a /31 link address: a route without its src) is shown as it came
        answered = tuple(None if r.answer is None else
                         plan.node_names[node_of[r.answer.answerer]] if r.answer.answerer in node_of else
                         r.answer.answerer for r in mine)
        on_path = None
        if path:
            on_path = all(r.answer is not None and r.answer.answerer == plan.addresses[node] and r.answer.kind == kind
                          for r, (node, kind) in zip(mine, expected_answers(path)))
        checks.append(PathCheck(t_s, step, plan.node_names[a], plan.node_names[b],
                                tuple(plan.node_names[v] for v in path), answered, on_path, bool(moved[i])))
    return checks


def path_summary(checks) -> dict:
    """How many path checks found the expected path, over those that count (a path, no route change)."""
    counted = [c for c in checks if c.counted]
    out = {"checks": len(checks), "counted": len(counted), "on_path": sum(c.on_path for c in counted),
           "at_route_change": sum(c.at_route_change for c in checks),
           "no_path": sum(c.on_path is None for c in checks)}
    if counted:
        out["on_path_share"] = out["on_path"] / len(counted)
    return out


def describe_path_share(summary: dict) -> str:
    """:func:`path_summary` in one sentence.

    >>> describe_path_share({"checks": 4, "counted": 3, "on_path": 3, "at_route_change": 1, "no_path": 0,
    ...                      "on_path_share": 1.0})
    'on the expected path 100.0 % (3 of 3 path checks; 1 at a route change and 0 without a path left out)'
    """
    if not summary.get("counted"):
        return (f"no path check counted ({summary.get('checks', 0)} checks, "
                f"{summary.get('at_route_change', 0)} at a route change, {summary.get('no_path', 0)} without a path)")
    return (f"on the expected path {summary['on_path_share'] * 100:.1f} % ({summary['on_path']} of "
            f"{summary['counted']} path checks; {summary['at_route_change']} at a route change and "
            f"{summary['no_path']} without a path left out)")


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
    s, routes, k = emulation.series, emulation.routes, emulation.step
    nodes = list(range(s.n_satellites, s.n_nodes)) or list(range(s.n_satellites))
    pairs = []
    for i, a in enumerate(nodes):
        for b in nodes[i + 1:]:
            if np.isfinite(routes.length_m(k, a, b)) and not any(a in p or b in p for p in pairs):
                pairs.append((a, b))
                break
        if len(pairs) == count:
            break
    return pairs
