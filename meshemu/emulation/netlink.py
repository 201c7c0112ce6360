"""Raw rtnetlink, in bulk: the one narrow layer through which meshemu talks to the kernel.

Why not a shell command per change: a command costs milliseconds, and a
full Starlink shell needs millions of routes. Why not pyroute2's high-level
calls: ~600 us a route. Here messages are packed by numpy in bulk (a route is
a fixed 60-byte record), sent many to a ``send``, and only the last message of
a batch asks for an acknowledgement; the kernel reports failures of the others
on its own, in order, before that last ack.

A netlink socket stays bound to the network namespace it was created in, so
:class:`NamespaceSockets` opens one per namespace (entering each with
``setns`` for the moment of creation) and keeps them open.

The message builders are pure functions (tested without root); only
:class:`RtSocket` and :func:`enter_netns` touch the kernel.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import struct
from dataclasses import dataclass

import numpy as np

from meshemu.errors import CapabilityError, InputError, MeshemuError

NETLINK_ROUTE = 0
CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = "/run/netns"

# message types
NLMSG_ERROR, NLMSG_DONE = 2, 3
RTM_NEWLINK, RTM_GETLINK = 16, 18
RTM_NEWADDR = 20
RTM_NEWROUTE, RTM_DELROUTE = 24, 25
RTM_NEWNEIGH = 28
RTM_NEWQDISC, RTM_DELQDISC = 36, 37
# flags
NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4
NLM_F_DUMP = 0x300
NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE = 0x100, 0x200, 0x400
# attributes
IFLA_IFNAME, IFLA_OPERSTATE = 3, 16
IF_OPER_UP = 6
IFA_ADDRESS, IFA_LOCAL = 1, 2
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PREFSRC = 1, 4, 5, 7
TCA_KIND, TCA_OPTIONS = 1, 2
TCA_NETEM_RATE, TCA_NETEM_RATE64, TCA_NETEM_LATENCY64 = 6, 8, 10
NDA_DST, NDA_LLADDR = 1, 2
NUD_PERMANENT = 0x80
IFF_UP = 0x1
RT_TABLE_MAIN, RTN_UNICAST, RT_SCOPE_UNIVERSE = 254, 1, 0
RTPROT_MESHEMU = 44  # our own protocol number: "ip route show proto meshemu" (setup names it)
TC_H_ROOT, NETEM_HANDLE = 0xFFFFFFFF, 0x00010000
PSCHED_SHIFT = 6  # the kernel counts netem's legacy latency field in 64 ns ticks

_HDR = struct.Struct("=IHHII")  # nlmsghdr: len, type, flags, seq, pid
_IFINFO = struct.Struct("=BxHiII")  # family, type, index, flags, change
_IFADDR = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
_TCMSG = struct.Struct("=BxxxiIII")  # family, ifindex, handle, parent, info
_NETEM_QOPT = struct.Struct("=IIIIII")  # latency (ticks), limit, loss, gap, duplicate, jitter
_NETEM_RATE = struct.Struct("=IiIi")  # rate (bytes/s), packet overhead, cell size, cell overhead


def attr(kind: int, payload: bytes) -> bytes:
    """One rtattr, padded to 4 bytes."""
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def message(kind: int, flags: int, seq: int, body: bytes) -> bytes:
    return _HDR.pack(_HDR.size + len(body), kind, flags | NLM_F_REQUEST, seq, 0) + body


def link_updown(ifindex: int, up: bool, seq: int = 0, ack: bool = False) -> bytes:
    """Set an interface administratively up or down."""
    body = _IFINFO.pack(socket.AF_UNSPEC, 0, ifindex, IFF_UP if up else 0, IFF_UP)
    return message(RTM_NEWLINK, NLM_F_ACK if ack else 0, seq, body)


def address_add(ifindex: int, address_int: int, prefixlen: int, seq: int = 0, ack: bool = False) -> bytes:
    addr = struct.pack("!I", address_int)
    body = _IFADDR.pack(socket.AF_INET, prefixlen, 0, RT_SCOPE_UNIVERSE, ifindex) + attr(IFA_LOCAL, addr) + attr(IFA_ADDRESS, addr)
    return message(RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE | (NLM_F_ACK if ack else 0), seq, body)


def neighbour_add(ifindex: int, address_int: int, mac: bytes, seq: int = 0) -> bytes:
    """A permanent ARP entry: the peer of a point-to-point link never needs asking."""
    body = struct.pack("=BxxxiHBB", socket.AF_INET, ifindex, NUD_PERMANENT, 0, 0)
    body += attr(NDA_DST, struct.pack("!I", address_int)) + attr(NDA_LLADDR, mac)
    return message(RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_REPLACE, seq, body)


def get_links(seq: int = 0) -> bytes:
    return message(RTM_GETLINK, NLM_F_DUMP, seq, _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0))


_ROUTE = np.dtype([
    ("len", "<u4"), ("type", "<u2"), ("flags", "<u2"), ("seq", "<u4"), ("pid", "<u4"),
    ("family", "u1"), ("dst_len", "u1"), ("src_len", "u1"), ("tos", "u1"),
    ("table", "u1"), ("protocol", "u1"), ("scope", "u1"), ("rtype", "u1"), ("rtflags", "<u4"),
    ("dst_rta", "<u4"), ("dst", ">u4"),
    ("gw_rta", "<u4"), ("gw", ">u4"),
    ("oif_rta", "<u4"), ("oif", "<i4"),
    ("src_rta", "<u4"), ("src", ">u4"),
])
_DELROUTE = np.dtype(_ROUTE.descr[:16])  # through RTA_DST


def _rta_word(kind: int, payload_len: int = 4) -> int:
    return (4 + payload_len) | (kind << 16)


def routes_replace(dst: np.ndarray, gateway: np.ndarray, oif: np.ndarray, prefsrc: int, first_seq: int = 0) -> np.ndarray:
    """RTM_NEWROUTE (create or replace) records for /32 routes, one per row; returns (n,) records.

    ``dst`` and ``gateway`` are host-order uint32 IPv4 addresses, ``oif`` interface
    indices. ``prefsrc`` is the node's own address, so that traffic a node
    originates and the ICMP errors it sends (traceroute) carry its node address.
    """
    n = len(dst)
    rec = np.zeros(n, dtype=_ROUTE)
    rec["len"], rec["type"] = _ROUTE.itemsize, RTM_NEWROUTE
    rec["flags"] = NLM_F_REQUEST | NLM_F_CREATE | NLM_F_REPLACE
    rec["seq"] = first_seq + np.arange(n, dtype=np.uint32)
    rec["family"], rec["dst_len"], rec["table"] = socket.AF_INET, 32, RT_TABLE_MAIN
    rec["protocol"], rec["scope"], rec["rtype"] = RTPROT_MESHEMU, RT_SCOPE_UNIVERSE, RTN_UNICAST
    rec["dst_rta"], rec["dst"] = _rta_word(RTA_DST), dst
    rec["gw_rta"], rec["gw"] = _rta_word(RTA_GATEWAY), gateway
    rec["oif_rta"], rec["oif"] = _rta_word(RTA_OIF), oif
    rec["src_rta"], rec["src"] = _rta_word(RTA_PREFSRC), prefsrc
    return rec


def routes_delete(dst: np.ndarray, first_seq: int = 0) -> np.ndarray:
    n = len(dst)
    rec = np.zeros(n, dtype=_DELROUTE)
    rec["len"], rec["type"], rec["flags"] = _DELROUTE.itemsize, RTM_DELROUTE, NLM_F_REQUEST
    rec["seq"] = first_seq + np.arange(n, dtype=np.uint32)
    rec["family"], rec["dst_len"], rec["table"] = socket.AF_INET, 32, RT_TABLE_MAIN
    rec["protocol"], rec["scope"], rec["rtype"] = RTPROT_MESHEMU, RT_SCOPE_UNIVERSE, RTN_UNICAST
    rec["dst_rta"], rec["dst"] = _rta_word(RTA_DST), dst
    return rec


@dataclass(frozen=True)
class NetemParams:
    """A whole netem configuration: every change sends all of it, so nothing resets to a default."""

    delay_s: float
    limit_packets: int = 1000
    loss: float = 0.0  # probability, 0..1
    rate_bps: float | None = None  # bits per second; None: no rate limit

    def __post_init__(self):
        if not 0 <= self.delay_s < 4.0:
            raise ValueError(f"netem delay {self.delay_s} s is outside [0, 4) s")
        if not 0 <= self.loss <= 1:
            raise ValueError(f"loss {self.loss} is not a probability")


def netem_qdisc(ifindex: int, p: NetemParams, *, create: bool, seq: int = 0, ack: bool = False) -> bytes:
    """RTM_NEWQDISC for a root netem qdisc: ``create`` adds it, otherwise it is changed in place.

    A change (no NLM_F_CREATE) keeps the qdisc and its queued packets; the
    options carry the full parameter set (the legacy tick latency and the
    64-bit nanosecond one the kernel prefers), like ``tc qdisc change`` would.
    """
    delay_ns = int(round(p.delay_s * 1e9))
    loss = min(int(round(p.loss * 0xFFFFFFFF)), 0xFFFFFFFF)
    opts = _NETEM_QOPT.pack(min(delay_ns >> PSCHED_SHIFT, 0xFFFFFFFF), p.limit_packets, loss, 0, 0, 0)
    opts += attr(TCA_NETEM_LATENCY64, struct.pack("=q", delay_ns))
    if p.rate_bps:
        rate = int(p.rate_bps // 8)
        opts += attr(TCA_NETEM_RATE, _NETEM_RATE.pack(min(rate, 0xFFFFFFFF), 0, 0, 0))
        if rate >= 0xFFFFFFFF:
            opts += attr(TCA_NETEM_RATE64, struct.pack("=Q", rate))
    body = _TCMSG.pack(socket.AF_UNSPEC, ifindex, NETEM_HANDLE, TC_H_ROOT, 0)
    body += attr(TCA_KIND, b"netem\0") + attr(TCA_OPTIONS, opts)
    flags = (NLM_F_CREATE | NLM_F_EXCL) if create else 0
    return message(RTM_NEWQDISC, flags | (NLM_F_ACK if ack else 0), seq, body)


class NetlinkError(MeshemuError):
    def __init__(self, errors, what):
        self.errors = errors  # [(seq, errno)]
        seq, code = errors[0]
        super().__init__(f"{what}: the kernel refused {len(errors)} request(s), first "
                         f"(seq {seq}): {os.strerror(code)}")


_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise CapabilityError(f"cannot enter a network namespace: {os.strerror(code)} (run as root)")


def netns_argv(name: str) -> list[str]:
    """The command prefix that runs a program inside namespace ``name``.

    >>> netns_argv("meshemu.Paris")
    ['nsenter', '--net=/run/netns/meshemu.Paris']
    """
    return ["nsenter", f"--net={NETNS_RUN_DIR}/{name}"]


@contextlib.contextmanager
def enter_netns(name: str):
    """Run the block with this thread inside namespace ``name`` (``/run/netns/NAME``)."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        try:
            target = os.open(os.path.join(NETNS_RUN_DIR, name), os.O_RDONLY)
        except FileNotFoundError:
            raise InputError(f"network namespace {name!r} does not exist") from None
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(home)


class RtSocket:
    """A rtnetlink socket (in the namespace where it was made) that sends batches."""

    CHUNK_BYTES = 1 << 18

    def __init__(self):
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
        for opt, size in ((33, 1 << 22), (32, 1 << 22)):  # SO_RCVBUFFORCE, SO_SNDBUFFORCE
            with contextlib.suppress(OSError):
                self.sock.setsockopt(socket.SOL_SOCKET, opt, size)
        self.sock.bind((0, 0))
        self.seq = 1

    def close(self):
        self.sock.close()

    def send_records(self, records: np.ndarray, what: str) -> None:
        """Send fixed-size records (e.g. from :func:`routes_replace`); raise on any refusal."""
        if len(records) == 0:
            return
        per = max(1, self.CHUNK_BYTES // records.dtype.itemsize)
        errors = []
        for start in range(0, len(records), per):
            chunk = records[start:start + per].copy()
            chunk["seq"] = self.seq + np.arange(len(chunk), dtype=np.uint32)
            chunk["flags"][-1] |= NLM_F_ACK
            self.seq += len(chunk)
            self.sock.sendall(chunk.tobytes())
            errors += self._wait_ack(int(chunk["seq"][-1]))
        if errors:
            raise NetlinkError(errors, what)

    def send_messages(self, messages: list[bytes], what: str) -> None:
        """Send variable-size messages built by this module, acknowledging only the last."""
        if not messages:
            return
        buf, errors = bytearray(), []
        for i, m in enumerate(messages):
            m = bytearray(m)
            last = i == len(messages) - 1 or len(buf) + len(m) > self.CHUNK_BYTES
            struct.pack_into("=I", m, 8, self.seq)
            if last:
                struct.pack_into("=H", m, 6, struct.unpack_from("=H", m, 6)[0] | NLM_F_ACK)
            buf += m
            self.seq += 1
            if last:
                self.sock.sendall(buf)
                errors += self._wait_ack(self.seq - 1)
                buf = bytearray()
        if errors:
            raise NetlinkError(errors, what)

    def _wait_ack(self, last_seq: int) -> list:
        errors = []
        while True:
            data = self.sock.recv(1 << 20)
            for kind, seq, payload in _parse(data):
                if kind == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", payload)[0]
                    if code:
                        errors.append((seq, code))
                    if seq == last_seq:
                        return errors

    def dump_links(self) -> dict[str, int]:
        """Interface name -> index in this socket's namespace."""
        return {attrs[IFLA_IFNAME].rstrip(b"\0").decode(): index for index, attrs in self._links()}

    def operstates(self) -> dict[int, int]:
        """Interface index -> RFC 2863 operational state (IF_OPER_UP once the carrier is up)."""
        return {index: attrs[IFLA_OPERSTATE][0] for index, attrs in self._links() if IFLA_OPERSTATE in attrs}

    def _links(self):
        """(index, {attribute: payload}) of every interface in this socket's namespace."""
        self.sock.sendall(_with_seq(get_links(), self.seq))
        self.seq += 1
        out = []
        while True:
            for kind, _, payload in _parse(self.sock.recv(1 << 20)):
                if kind == NLMSG_DONE:
                    return out
                if kind == NLMSG_ERROR:
                    raise NetlinkError([(0, -struct.unpack_from("=i", payload)[0])], "listing interfaces")
                if kind == RTM_NEWLINK:
                    out.append((_IFINFO.unpack_from(payload)[2], dict(_attrs(payload[_IFINFO.size:]))))


def _with_seq(msg: bytes, seq: int) -> bytes:
    m = bytearray(msg)
    struct.pack_into("=I", m, 8, seq)
    return bytes(m)


def _parse(data: bytes):
    offset = 0
    while offset + _HDR.size <= len(data):
        length, kind, _, seq, _ = _HDR.unpack_from(data, offset)
        if length < _HDR.size:
            break
        yield kind, seq, data[offset + _HDR.size: offset + length]
        offset += (length + 3) & ~3


def _attrs(data: bytes):
    offset = 0
    while offset + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, offset)
        if length < 4:
            break
        yield kind & 0x3FFF, data[offset + 4: offset + length]
        offset += (length + 3) & ~3


class NamespaceSockets:
    """One open :class:`RtSocket` per namespace, made on first use."""

    def __init__(self):
        self._socks: dict[str, RtSocket] = {}

    def __getitem__(self, netns: str) -> RtSocket:
        sock = self._socks.get(netns)
        if sock is None:
            with enter_netns(netns):
                sock = self._socks[netns] = RtSocket()
        return sock

    def close(self):
        for s in self._socks.values():
            s.close()
        self._socks.clear()


def raise_fd_limit(wanted: int) -> None:
    """Keep one socket per namespace open: raise RLIMIT_NOFILE if needed."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(wanted, soft), max(hard, wanted)), max(hard, wanted)))
        except (ValueError, OSError):
            raise CapabilityError(f"need {wanted} open files, the limit is {soft}: raise it with 'ulimit -n {wanted}'") from None


def write_sysctl(netns: str, key: str, value: str) -> None:
    """Set a per-namespace sysctl (e.g. ``net/ipv4/ip_forward``) without a process."""
    with enter_netns(netns):
        with open(f"/proc/sys/{key}", "w") as f:
            f.write(value)


__all__ = ["NetemParams", "NetlinkError", "NamespaceSockets", "RtSocket", "address_add", "enter_netns",
           "link_updown", "neighbour_add", "netem_qdisc", "raise_fd_limit", "routes_delete", "routes_replace",
           "write_sysctl"]
