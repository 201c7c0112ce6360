"""Fidelity-check helpers for the delay line: a line of namespaces, and a probe with user-space timestamps."""

from __future__ import annotations

import select
import socket
import struct
import subprocess
import time
from dataclasses import dataclass

import numpy as np

from meshemu.emulation.delayline import _run_in_ns, install_rules
from meshemu.emulation.netlink import enter_netns
from meshemu.errors import CapabilityError, InputError


class LineTestbed:
    """``n`` namespaces in a line (node i -- node i+1), for tests and benchmarks.

    Node ``i`` is namespace ``f"{prefix}{i}"`` with address ``10.{net}.0.{i+1}``
    on ``lo``; link ``i`` is a veth pair ``r{i}`` (in node i) / ``l{i+1}`` (in node
    i+1) with ``10.{net}.1.{2i}/31`` and ``10.{net}.1.{2i+1}/31``; every node has a
    /32 route to every other node via its neighbour, ``src`` its own address, and
    forwards. ``tcp_buffers`` raises the namespaces' TCP buffer limits (32 MiB)
    so long-fat paths are not window-bound. :meth:`close` deletes exactly the
    namespaces it made.
    """

    def __init__(self, n: int, prefix: str, *, net: int = 9, tcp_buffers: bool = True):
        if n < 2 or not 0 < net < 255:
            raise InputError("a line testbed needs at least 2 nodes and net in 1-254")
        self.n, self.prefix = n, prefix
        self.namespaces = [f"{prefix}{i}" for i in range(n)]
        self.addresses = [f"10.{net}.0.{i + 1}" for i in range(n)]
        self._made = []
        try:
            for ns in self.namespaces:
                _ip(["netns", "add", ns])
                self._made.append(ns)
            for i in range(n - 1):
                _ip(["link", "add", f"r{i}", "netns", self.namespaces[i], "type", "veth",
                     "peer", "name", f"l{i + 1}", "netns", self.namespaces[i + 1]])
            for i, ns in enumerate(self.namespaces):
                cmds = ["link set lo up", f"addr add {self.addresses[i]}/32 dev lo"]
                if i > 0:
                    cmds += [f"addr add 10.{net}.1.{2 * i - 1}/31 dev l{i}", f"link set l{i} up"]
                if i < n - 1:
                    cmds += [f"addr add 10.{net}.1.{2 * i}/31 dev r{i}", f"link set r{i} up"]
                for j in range(n):
                    if j < i:
                        cmds.append(f"route add {self.addresses[j]}/32 via 10.{net}.1.{2 * i - 2} dev l{i} "
                                    f"src {self.addresses[i]}")
                    elif j > i:
                        cmds.append(f"route add {self.addresses[j]}/32 via 10.{net}.1.{2 * i + 1} dev r{i} "
                                    f"src {self.addresses[i]}")
                _ip(["-n", ns, "-batch", "-"], "\n".join(cmds) + "\n")
                sysctls = ["net.ipv4.ip_forward=1"]
                if tcp_buffers:
                    sysctls += ["net.ipv4.tcp_rmem=4096 131072 33554432",
                                "net.ipv4.tcp_wmem=4096 16384 33554432"]
                _run_in_ns(ns, ["sysctl", "-q", "-w", *sysctls])
        except BaseException:
            self.close()
            raise

    def install_rules(self, queue_num: int = 0) -> None:
        for ns, a in zip(self.namespaces, self.addresses):
            install_rules(ns, a, queue_num)

    def close(self) -> None:
        for ns in self._made:
            subprocess.run(["ip", "netns", "del", ns], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           check=False)
        self._made = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _ip(argv: list[str], stdin: str | None = None) -> None:
    r = subprocess.run(["ip", *argv], input=stdin, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise CapabilityError(f"ip {' '.join(argv[:4])}...: {(r.stderr or r.stdout).strip()}")


def _socket_in(ns: str, kind: int = socket.SOCK_DGRAM) -> socket.socket:
    with enter_netns(ns):  # a socket stays in the namespace it was made in
        return socket.socket(socket.AF_INET, kind | socket.SOCK_CLOEXEC)


@dataclass
class ProbeResult:
    """Per-probe times in seconds (NaN where the probe was lost)."""

    rtt: np.ndarray
    forward: np.ndarray   # client send -> echo server read
    backward: np.ndarray  # echo server read -> client read

    @property
    def lost(self) -> int:
        return int(np.isnan(self.rtt).sum())

    def summary(self, expected_rtt_s: float = 0.0) -> dict:
        """Median, p99 and max of (RTT - expected), in ms, and the loss count."""
        r = self.rtt[~np.isnan(self.rtt)]
        if r.size == 0:
            return {"n": 0, "lost": self.lost}
        e = (r - expected_rtt_s) * 1e3
        return {"n": int(r.size), "lost": self.lost, "median_ms": float(np.median(e)),
                "p99_ms": float(np.percentile(e, 99)), "max_ms": float(e.max()), "min_ms": float(e.min())}


def probe_rtt(ns_a: str, addr_a: str, ns_b: str, addr_b: str, *, count: int = 200, interval_s: float = 0.01,
              port: int = 47999, size: int = 64, spin: bool = False, timeout_s: float = 1.0) -> ProbeResult:
    """UDP echo probes from ``addr_a`` (in ``ns_a``) to ``addr_b`` (in ``ns_b``), timestamped in userspace.

    Kernel receive timestamps (``ping`` without ``-U``) are taken before
    PREROUTING and would hide a delay held at the receiver; these are taken
    when the process reads the datagram. Client and echo server run in this
    one process (one socket in each namespace, one epoll), so both ends share
    the monotonic clock and the one-way halves are measured too. ``spin``:
    poll without sleeping (no wake-up latency in the measurement, one core busy).
    """
    srv = _socket_in(ns_b)
    cli = _socket_in(ns_a)
    try:
        srv.bind((addr_b, port))
        cli.bind((addr_a, 0))
        cli.connect((addr_b, port))
        srv.setblocking(False)
        cli.setblocking(False)
        ep = select.epoll()
        ep.register(srv.fileno(), select.EPOLLIN)
        ep.register(cli.fileno(), select.EPOLLIN)
        sent = np.full(count, np.nan)
        t_srv = np.full(count, np.nan)
        t_back = np.full(count, np.nan)
        pad = b"\0" * max(0, size - 12)
        mono = time.monotonic_ns
        t0 = mono()
        k = 0
        got = 0
        end = None
        while True:
            now = mono()
            if k < count and now >= t0 + int(k * interval_s * 1e9):
                cli.send(struct.pack("!IQ", k, now) + pad)
                sent[k] = now
                k += 1
            if k == count and end is None:
                end = now + int(timeout_s * 1e9)
            if end is not None and (got == count or now >= end):
                break
            if spin:
                events = ep.poll(0)
            else:
                nxt = t0 + int(k * interval_s * 1e9) if k < count else end
                events = ep.poll(max(0.0, (nxt - now) / 1e9))
            for fd, _ in events:
                if fd == srv.fileno():
                    while True:
                        try:
                            data, peer = srv.recvfrom(2048)
                        except BlockingIOError:
                            break
                        tr = mono()
                        srv.sendto(data[:12] + struct.pack("!Q", tr), peer)
                else:
                    while True:
                        try:
                            data = cli.recv(2048)
                        except BlockingIOError:
                            break
                        tb = mono()
                        i, _ = struct.unpack_from("!IQ", data)
                        if i < count and np.isnan(t_back[i]):
                            t_srv[i] = struct.unpack_from("!Q", data, 12)[0]
                            t_back[i] = tb
                            got += 1
        ep.close()
    finally:
        srv.close()
        cli.close()
    return ProbeResult(rtt=(t_back - sent) / 1e9, forward=(t_srv - sent) / 1e9, backward=(t_back - t_srv) / 1e9)
