"""ICMP echo probes sent from inside a node's namespace: RTT with microsecond timestamps, and TTL-limited probes.

Packets are built and dissected with scapy and go out and in through a raw
socket opened inside the source node's namespace (a socket stays in the
namespace it was made in; scapy's own interface and route tables know nothing
of namespaces, so none of its send/receive machinery is used).

Timestamps are user-space, ``time.perf_counter_ns()`` right before ``send``
and right after the answer is read: the delay line holds a packet at the
receiver's ingress, *after* the kernel's receive timestamp, so a kernel
timestamp (``SO_TIMESTAMP``, or ping without ``-U``) would hide that delay.
Nothing slow may run between an answer's arrival and its stamp: scapy needs
~1.2 ms to build and ~0.8 ms to dissect one packet on the 2-core development
machine, which would land in the next answer's RTT. So every request is built
before the first send, the receive loop matches answers to requests by reading
a few header bytes (:func:`probe_key`), and scapy dissects what came back
after the last answer (:func:`dissect`). The probe's own floor, measured
with no shaping over the demo shell's city pairs: a median of 0.09-0.12 ms,
0.04-0.06 ms above ``ping -U`` (CPython's cost around the send and the
wake-up); it is part of every error figure.

>>> from scapy.layers.inet import IP, ICMP
>>> request = build_request("10.200.0.1", "10.200.0.2", ident=7, seq=3, ttl=2)
>>> reply = bytes(IP(src="10.200.0.2", dst="10.200.0.1") / ICMP(type=0, id=7, seq=3) / PAYLOAD)
>>> probe_key(reply), dissect(reply)
((7, 3), Answer(ident=7, seq=3, answerer='10.200.0.2', kind='echo-reply'))
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import math
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from meshemu.emulation.netlink import enter_netns
from meshemu.emulation.realtime import realtime_thread
from meshemu.errors import CapabilityError, InputError

ECHO_REPLY, DEST_UNREACH, ECHO_REQUEST, TIME_EXCEEDED = 0, 3, 8, 11
KINDS = {ECHO_REPLY: "echo-reply", DEST_UNREACH: "unreachable", TIME_EXCEEDED: "time-exceeded"}
# ping's default: 56 bytes of data, a 64-byte ICMP message, so figures compare with ping's
PAYLOAD = b"meshemu probe ".ljust(56, b".")
SOL_RAW, ICMP_FILTER = 255, 1  # linux/icmp.h: a raw ICMP socket drops the types whose bit is set
_ANSWERS_MASK = sum(1 << t for t in KINDS)
# a process-wide sequence of ICMP identifiers, so concurrent exchanges in one namespace never take
# each other's answers (every raw ICMP socket of a namespace sees every ICMP packet of it)
_idents = itertools.count(os.getpid() * 7919)
_gc_lock = threading.Lock()
_gc_holders = 0
_gc_was_enabled = False


def next_ident() -> int:
    return next(_idents) & 0xFFFF


@contextlib.contextmanager
def _no_garbage_collection():
    """No collection while answers are stamped: a full one takes 10-20 ms here with scapy loaded, and would land
    in an RTT. Process-wide (a collection in another thread holds the GIL too), counted across threads."""
    global _gc_holders, _gc_was_enabled
    with _gc_lock:
        if _gc_holders == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_holders += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_holders -= 1
            if _gc_holders == 0 and _gc_was_enabled:
                gc.enable()


@dataclass(frozen=True)
class Request:
    """One echo request: from ``src`` (an address of namespace ``netns``) to ``dst``, with this IP TTL."""

    netns: str
    src: str
    dst: str
    ident: int
    seq: int
    ttl: int = 64
    timeout_s: float = 1.0
    expected_rtt_s: float | None = None  # when the answer is due: the probe busy-polls around then

    def __post_init__(self):
        if not (0 <= self.ident <= 0xFFFF and 0 <= self.seq <= 0xFFFF):
            raise InputError(f"ICMP identifier and sequence are 16-bit: got {self.ident}, {self.seq}")
        if not 1 <= self.ttl <= 255:
            raise InputError(f"IP TTL must be 1-255, got {self.ttl}")
        if not (self.timeout_s > 0 and math.isfinite(self.timeout_s)):
            raise InputError(f"probe timeout must be positive and finite, got {self.timeout_s} s")

    @property
    def key(self) -> tuple[int, int]:
        return self.ident, self.seq


@dataclass(frozen=True)
class Answer:
    """What came back for a request: who sent it (IPv4 source) and what it was."""

    ident: int
    seq: int
    answerer: str
    kind: str  # "echo-reply", "time-exceeded" or "unreachable"


@dataclass(frozen=True)
class Result:
    request: Request
    sent_ns: int | None  # perf_counter_ns right before send; None: the kernel refused to send it
    received_ns: int | None  # perf_counter_ns right after the answer was read; None: nothing came back
    answer: Answer | None
    error: str = ""  # why it was not sent (e.g. no route)

    @property
    def rtt_s(self) -> float | None:
        """Send to echo reply, in seconds; None unless the destination's echo reply came back."""
        if self.answer is None or self.answer.kind != "echo-reply":
            return None
        return (self.received_ns - self.sent_ns) * 1e-9


def build_request(src: str, dst: str, ident: int, seq: int, ttl: int = 64) -> bytes:
    """An IPv4 ICMP echo request, whole (the raw socket sends it with IP_HDRINCL, so the TTL and source are ours)."""
    from scapy.layers.inet import ICMP, IP

    return bytes(IP(src=src, dst=dst, ttl=ttl, id=seq) / ICMP(type=ECHO_REQUEST, id=ident, seq=seq) / PAYLOAD)


def probe_key(packet: bytes) -> tuple[int, int] | None:
    """``(ident, seq)`` of the echo request that this IPv4 packet answers, or None.

    An echo reply carries them itself; a time-exceeded or unreachable error
    quotes the request's IP header and first 8 bytes, which hold them. Read
    straight from the bytes: this runs between an answer's arrival and its
    timestamp, where scapy would cost ~0.8 ms.

    >>> probe_key(b"") is None
    True
    """
    if len(packet) < 28 or packet[0] >> 4 != 4 or packet[9] != socket.IPPROTO_ICMP:
        return None
    icmp = (packet[0] & 0x0F) * 4
    kind = packet[icmp]
    if kind == ECHO_REPLY:
        return struct.unpack_from("!HH", packet, icmp + 4)
    if kind not in (DEST_UNREACH, TIME_EXCEEDED):
        return None
    quoted = icmp + 8
    if len(packet) < quoted + 20 or packet[quoted + 9] != socket.IPPROTO_ICMP:
        return None
    inner = quoted + (packet[quoted] & 0x0F) * 4
    if len(packet) < inner + 8 or packet[inner] != ECHO_REQUEST:
        return None
    return struct.unpack_from("!HH", packet, inner + 4)


def dissect(packet: bytes) -> Answer | None:
    """The answer in an IPv4 packet (scapy's dissection), or None if it answers no echo request."""
    from scapy.layers.inet import ICMP, IP, ICMPerror, IPerror

    ip = IP(packet)
    if ICMP not in ip:
        return None
    icmp = ip[ICMP]
    if icmp.type == ECHO_REPLY:
        return Answer(int(icmp.id), int(icmp.seq), ip.src, KINDS[ECHO_REPLY])
    if icmp.type in (DEST_UNREACH, TIME_EXCEEDED) and IPerror in ip and ICMPerror in ip:
        quoted = ip[ICMPerror]
        if quoted.type == ECHO_REQUEST:
            return Answer(int(quoted.id), int(quoted.seq), ip.src, KINDS[int(icmp.type)])
    return None


def open_socket(netns: str) -> socket.socket:
    """A raw ICMP socket inside namespace ``netns`` that sends whole IP packets and sees only answers."""
    with enter_netns(netns):
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        except PermissionError:
            raise CapabilityError("ICMP probes need a raw socket: run as root (CAP_NET_RAW)") from None
    try:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
        # echo requests and everything else arriving at the node would only wake the loop
        sock.setsockopt(SOL_RAW, ICMP_FILTER, struct.pack("=I", ~_ANSWERS_MASK & 0xFFFFFFFF))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def exchange(requests: Sequence[Request]) -> list[Result]:
    """Send every request at once and collect the answers, each until its own timeout.

    One thread, one raw socket per source namespace, closed on return (an open
    socket would keep its namespace alive after the mesh is gone).
    """
    packets = [build_request(r.src, r.dst, r.ident, r.seq, r.ttl) for r in requests]
    n = len(requests)
    sent, received, raw, errors = [None] * n, [None] * n, [None] * n, [""] * n
    sockets: dict[str, socket.socket] = {}
    try:
        for r in requests:
            if r.netns not in sockets:
                sockets[r.netns] = open_socket(r.netns)
        # SCHED_FIFO below the delay line's daemon while answers are stamped: at normal priority the
        # wake-up for an answer waits behind whatever else runs (shards, builds), no part of the RTT
        with _no_garbage_collection(), realtime_thread():
            _send_and_collect(requests, packets, sockets, sent, received, raw, errors)
    finally:
        for sock in sockets.values():
            sock.close()
    results = []
    for i, r in enumerate(requests):
        answer = dissect(raw[i]) if raw[i] is not None else None
        if answer is not None and (answer.ident, answer.seq) != r.key:  # the byte reader and scapy disagree
            answer = None
        results.append(Result(r, sent[i], received[i] if answer else None, answer, errors[i]))
    return results


_SPIN_BEFORE_S, _SPIN_AFTER_S = 1e-3, 3e-3


def _send_and_collect(requests, packets, sockets, sent, received, raw, errors) -> None:
    """The timed part of :func:`exchange`: fills ``sent``, ``received``, ``raw`` and ``errors`` per request."""
    poller = select.poll()
    netns_of = {}
    for netns, sock in sockets.items():
        poller.register(sock.fileno(), select.POLLIN)
        netns_of[sock.fileno()] = netns
    pending, deadline_ns, due_ns = {}, {}, {}
    for i, (r, packet) in enumerate(zip(requests, packets)):
        sock = sockets[r.netns]
        t_ns = time.perf_counter_ns()
        try:
            sock.sendto(packet, (r.dst, 0))
        except OSError as err:  # e.g. no route: nothing to wait for
            errors[i] = err.strerror or str(err)
            continue
        sent[i] = t_ns
        pending[(r.netns, r.key)] = i
        deadline_ns[i] = t_ns + round(r.timeout_s * 1e9)
        if r.expected_rtt_s is not None and math.isfinite(r.expected_rtt_s):
            # A core that slept ~100 ms takes 0.1-0.4 ms to run a woken probe; spinning from 1 ms
            # before the answer is due to 3 ms after costs at most 4 ms of CPU a probe round.
            due_ns[i] = (t_ns + round((r.expected_rtt_s - _SPIN_BEFORE_S) * 1e9),
                         t_ns + round((r.expected_rtt_s + _SPIN_AFTER_S) * 1e9))
    while pending:
        # read whatever is there before giving up on anything: after a stall of this process (2 cores,
        # other work beside) an answer can be waiting although its deadline has passed
        now_ns = time.perf_counter_ns()
        wake_ns = min(deadline_ns[i] for i in pending.values())
        due = [due_ns[i] for i in pending.values() if i in due_ns]
        if any(start <= now_ns < stop for start, stop in due):
            wait_ms = 0  # an answer is due: spin, as the delay line's daemon spins on its deadlines
        else:
            spin_ns = min([start for start, _ in due if start > now_ns], default=None)
            if spin_ns is not None and spin_ns < wake_ns:  # wake no later than the spin is to start
                wait_ms = max(0, math.floor((spin_ns - now_ns) / 1e6))
            else:
                wait_ms = max(0, math.ceil((wake_ns - now_ns) / 1e6))
        for fd, _ in poller.poll(wait_ms):
            netns, sock = netns_of[fd], sockets[netns_of[fd]]
            while True:
                try:
                    data = sock.recv(4096)
                except BlockingIOError:
                    break
                t_ns = time.perf_counter_ns()
                i = pending.pop((netns, probe_key(data)), None)
                if i is not None:
                    received[i], raw[i] = t_ns, data
        now_ns = time.perf_counter_ns()
        for key in [k for k, i in pending.items() if deadline_ns[i] <= now_ns]:
            del pending[key]
