"""A userspace delay line on NFQUEUE: link delay without sch_netem.

Many kernels (cloud, WSL, ARM, this one) have no ``sch_netem``. This module
delays packets in userspace instead, once per packet, for the whole path, at
the destination:

* each node namespace gets one iptables rule (:func:`iptables_rules`) that
  hands every packet addressed to the node's own address (its ``/32`` on
  ``lo``) to NFQUEUE queue ``Q``; transit packets are never queued;
* one daemon process (``python -m meshemu.emulation.delayline_daemon``, started by
  :class:`DelayLine`) opens a ``NETLINK_NETFILTER`` socket in every
  namespace (``setns`` for the moment of creation), binds queue ``Q`` there
  and multiplexes all the sockets with ``epoll``;
* a queued packet from node ``s`` (found from its IPv4 source address)
  arriving at node ``d`` (found from the queue it came through) is accepted
  at ``arrival + delay_s[s, d] - calibration``; unknown sources and
  ``s == d`` are accepted at once;
* the player replaces the whole ``(N, N)`` delay matrix at any time through a
  double-buffered shared-memory block (:class:`DelayMatrixWriter`), with no
  round trip to the daemon.

Only packet metadata and the first bytes of the IPv4 header travel to
userspace (``NFQNL_COPY_PACKET`` with a 20-byte range) and GSO super-packets
stay whole (``NFQA_CFG_F_GSO``), so a 64 KiB TCP burst costs one message.
All verdicts due at one wake-up go to the kernel in one ``send`` per socket
(``NFQNL_MSG_VERDICT_BATCH`` for a released prefix of a queue, single
verdicts for the rest).

Timing, measured on a 2-core VM that wakes late from sleeps: the arrival time
is the kernel's receive timestamp (``NFQA_TIMESTAMP``, forced on by a socket
with ``SO_TIMESTAMP``), so how late the daemon wakes to *read* a packet does
not count. The daemon sleeps on a ``timerfd`` until ``spin`` before the next
deadline, then busy-waits to it, and runs under ``SCHED_FIFO`` so that other
processes on the 2 cores do not delay a release. A governor looks at the
daemon's CPU use every 50 ms: it busy-waits only while otherwise mostly idle
(an idle vCPU wakes late, a busy one on time) and for at most a quarter of
the time, and it leaves ``SCHED_FIFO`` while its real work nears a whole CPU
(the kernel would otherwise stop every real-time task for 50 ms of each
second). Idle, the daemon costs no CPU (one wake-up a second) and ~30 MB.
Within one (source, destination) pair packets leave in order (a delay that
drops lets the queued packets drain first, as a FIFO link would).

Where an error comes from: the daemon keeps a lateness histogram (release
minus deadline, :meth:`DelayLine.stats`) and, on request, a per-packet trace
(:data:`TRACE_FIELDS`: arrival, read, deadline, release and verdict times,
source, destination and the first bytes of the transport header; off by
default, ``MESHEMU_DELAYLINE_TRACE=FILE.npz`` traces any run).
``experiments/delayline_breakdown.py`` joins it with a run's RTT probes.
Measured that way on the 2-core VM, the delay line releases the probes'
packets within ~0.1 ms of their deadlines (p99), also beside the model's
shards; what spread the probes' errors to milliseconds was the probe's own
wake-up at normal priority, which :mod:`meshemu.emulation.realtime` is for.

Pure Python + numpy, the standard library's ``socket``/``select``/``ctypes``:
no libnetfilter_queue.

This module is the controlling side (``DelayLine``, the shared-memory layout, the
iptables rules); :mod:`meshemu.emulation.delayline_daemon` is the process, and
:mod:`meshemu.emulation.delayline_testbed` holds the fidelity-check helpers.
"""

from __future__ import annotations

import ipaddress
import json
import mmap
import os
import select
import signal
import struct
import subprocess
import sys
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from meshemu.emulation.netlink import (
    _HDR,
    NETNS_RUN_DIR,
)
from meshemu.errors import CapabilityError, InputError, MeshemuError

# ---------------------------------------------------------------------------
# netlink / nfnetlink_queue constants (linux/netlink.h, linux/netfilter/nfnetlink_queue.h)

NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_NO_ENOBUFS = 5
SO_RCVBUFFORCE = 33
SO_SNDBUFFORCE = 32
SO_TIMESTAMP = 29
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET = (NFNL_SUBSYS_QUEUE << 8) | 0
NFQNL_MSG_VERDICT = (NFNL_SUBSYS_QUEUE << 8) | 1
NFQNL_MSG_CONFIG = (NFNL_SUBSYS_QUEUE << 8) | 2
NFQNL_MSG_VERDICT_BATCH = (NFNL_SUBSYS_QUEUE << 8) | 3

NFQA_PACKET_HDR, NFQA_VERDICT_HDR, NFQA_TIMESTAMP, NFQA_PAYLOAD = 1, 2, 4, 10
NFQA_CFG_CMD, NFQA_CFG_PARAMS, NFQA_CFG_QUEUE_MAXLEN, NFQA_CFG_MASK, NFQA_CFG_FLAGS = 1, 2, 3, 4, 5
NFQNL_CFG_CMD_BIND, NFQNL_CFG_CMD_UNBIND = 1, 2
NFQNL_COPY_PACKET = 2
NFQA_CFG_F_FAIL_OPEN, NFQA_CFG_F_CONNTRACK, NFQA_CFG_F_GSO = 0x1, 0x2, 0x4
NF_ACCEPT = 1

_NLHDR = _HDR  # nlmsghdr: len, type, flags, seq, pid
_NFGEN = struct.Struct("=BBH")  # nfgenmsg: family, version, res_id (big-endian, packed by hand)
_NLA = struct.Struct("=HH")

COPY_RANGE = 20  # bytes of the packet copied to userspace: the IPv4 header without options
TRACE_COPY_RANGE = 28  # with a trace: the first 8 bytes after it too (ICMP type, identifier, sequence; ports)
DEFAULT_TRACE_RECORDS = 1 << 18  # records kept when MESHEMU_DELAYLINE_TRACE asks for a trace (20 MiB)
TRACE_ENV = "MESHEMU_DELAYLINE_TRACE"  # FILE.npz: trace every run's delay line, saved there when it stops
DEFAULT_QUEUE_MAXLEN = 65536
DEFAULT_RCVBUF = 8 << 20
# Measured on a 2-core VM (experiments/bench_delayline.py): with no calibration the median RTT error is
# ~0.1-0.15 ms above the no-delay-line baseline of the same probe (release -> reinject -> receiver wake-up,
# per traversal ~50-75 us); 50 us per traversal brings the median to that baseline.
DEFAULT_CALIBRATION_S = 50e-6
# Timer wake-ups here are ~60 us late at p50 and 0.1-1 ms at p90-p99: wake this early, then busy-wait.
DEFAULT_SPIN_S = 300e-6
DEFAULT_SPIN_SHARE = 0.25  # at most this share of the time busy-waiting (of one CPU)

# ---------------------------------------------------------------------------
# shared-memory block layout (little-endian int64 / float64)

_MAGIC = 0x314C44554D48534D  # b"MSHMUDL1" read as a little-endian int64
_HEADER_WORDS = 64  # 512 bytes of int64 words, then two histograms, then two matrices
# header word indices
_W_MAGIC, _W_N, _W_SEQ, _W_ACTIVE, _W_SEEN_SEQ, _W_STATE, _W_PID = 0, 1, 2, 3, 4, 5, 6
_W_TRACE_CAP, _W_TRACE_COUNT = 7, 8  # trace ring: capacity (records), records written so far
_STAT_FIELDS = (
    "packets",            # packets received from the kernel
    "released",           # verdicts issued (ACCEPT)
    "pending",            # packets held now
    "max_pending",        # most packets held at once
    "enobufs",            # ENOBUFS on a socket: the kernel dropped queued packets (receive buffer full)
    "netlink_errors",     # error replies to verdicts
    "unknown_source",     # packets whose source is no node address (accepted at once)
    "out_of_order",       # packets released before an older packet of their queue (single verdicts)
    "sends",              # verdict sends (one per socket per wake-up)
    "wakeups",            # main-loop iterations that released something
    "spins",              # iterations that busy-waited to a deadline
    "timestamp_fallback", # packets without a usable kernel timestamp (arrival = read time)
    "late_1ms",           # packets released more than 1 ms after their deadline
    "edt_timestamp",      # packets stamped with a TCP departure time (monotonic) instead of a receive time
    "delay_updates_seen",  # matrix versions the daemon has switched to
    "realtime",           # 1 when the daemon runs under SCHED_FIFO
    "spin_off_windows",   # 50 ms windows without busy-waiting (the daemon was busy, or spun its share)
    "rt_demotions",       # times the daemon left SCHED_FIFO because its work neared a whole CPU
    "non_rt_windows",     # 50 ms windows spent out of SCHED_FIFO for that reason
    "cpu_work_pct",       # the daemon's CPU use in the last window, busy-waiting excluded (percent)
)
_W_STATS = 16  # first stats word
_S = {name: _W_STATS + k for k, name in enumerate(_STAT_FIELDS)}
# histograms: 1 us bins from -1 ms to +9 ms, then 100 us bins to ~1 s, last bin = overflow
_H_FINE, _H_COARSE = 10000, 9999
_HIST_BINS = _H_FINE + _H_COARSE + 1
_H_OFFSET_US = 1000

STATE_STARTING, STATE_READY, STATE_STOPPED = 0, 1, 2


def _hist_bin(ns: int) -> int:
    us = ns // 1000 + _H_OFFSET_US
    if us < 0:
        return 0
    if us < _H_FINE:
        return us
    return min(_H_FINE + (us - _H_FINE) // 100, _HIST_BINS - 1)


def _bin_value_us(b: np.ndarray) -> np.ndarray:
    """The lower edge of each histogram bin, in microseconds from the deadline."""
    b = np.asarray(b, dtype=np.float64)
    return np.where(b < _H_FINE, b, _H_FINE + (b - _H_FINE) * 100.0) - _H_OFFSET_US


def _layout(n: int, trace_records: int = 0) -> tuple[int, int, int, int]:
    """Byte offsets: (lateness histogram, read-lag histogram, matrices, total size).

    The trace ring, ``trace_records`` x :data:`TRACE_FIELDS`, follows the matrices.
    """
    h1 = _HEADER_WORDS * 8
    h2 = h1 + _HIST_BINS * 8
    mats = (h2 + _HIST_BINS * 8 + 63) // 64 * 64
    return h1, h2, mats, mats + 2 * n * n * 8 + trace_records * len(TRACE_FIELDS) * 8


# One trace record per released packet, int64 each; times are CLOCK_MONOTONIC ns (time.monotonic_ns and
# time.perf_counter_ns read that clock on Linux, so a probe's own stamps line up with these).
TRACE_FIELDS = (
    "dst",          # node the packet was addressed to (its queue)
    "src",          # node it came from (-1: not a node address)
    "protocol",     # IPv4 protocol (1 ICMP, 6 TCP, 17 UDP)
    "l4_0",         # bytes 0-3 after the IPv4 header, big-endian (ICMP: type, code, checksum; TCP/UDP: ports)
    "l4_4",         # bytes 4-7 (ICMP echo: identifier, sequence); -1 where not copied (IP options)
    "arrival_ns",   # the kernel's receive stamp at the destination: when the hold starts
    "read_ns",      # when the daemon read it from the queue
    "deadline_ns",  # arrival + path delay - calibration
    "release_ns",   # when the daemon found it due (the verdict goes out in the same wake-up)
    "sent_ns",      # when that wake-up's verdict sends returned (the kernel reinjects inside the send)
)
TRACE_DTYPE = np.dtype([(f, "<i8") for f in TRACE_FIELDS])


def _shm_path(name: str) -> str:
    return "/dev/shm/" + name.lstrip("/")


class _Block:
    """A named POSIX shared-memory block (``/dev/shm/NAME``), mapped.

    The same thing ``multiprocessing.shared_memory`` makes, without its
    resource tracker: under Python 3.11 the tracker of any process that merely
    *attaches* to a block unlinks it when that process exits.
    """

    def __init__(self, name: str, size: int | None = None):
        self.name = name
        path = _shm_path(name)
        if size is None:
            fd = os.open(path, os.O_RDWR)
        else:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            if size is not None:
                os.ftruncate(fd, size)
            self.size = os.fstat(fd).st_size
            self.mm = mmap.mmap(fd, self.size)
        except BaseException:
            os.close(fd)
            if size is not None:
                _unlink(name)
            raise
        os.close(fd)
        self.words = memoryview(self.mm).cast("q")

    def matrices(self, n: int) -> np.ndarray:
        _, _, off, _ = _layout(n)
        return np.ndarray((2, n, n), dtype=np.float64, buffer=self.mm, offset=off)

    def trace(self, n: int) -> np.ndarray:
        """The trace ring's records in the order written (the last ``capacity`` of them), copied."""
        cap, count = int(self.words[_W_TRACE_CAP]), int(self.words[_W_TRACE_COUNT])
        if cap == 0:
            return np.zeros(0, dtype=TRACE_DTYPE)
        _, _, off, _ = _layout(n)
        ring = np.ndarray((cap,), dtype=TRACE_DTYPE, buffer=self.mm, offset=off + 2 * n * n * 8)
        if count <= cap:
            return ring[:count].copy()
        k = count % cap
        return np.concatenate([ring[k:], ring[:k]])

    def histograms(self) -> tuple[np.ndarray, np.ndarray]:
        h1, h2, _, _ = _layout(0)
        return (np.ndarray((_HIST_BINS,), dtype=np.int64, buffer=self.mm, offset=h1),
                np.ndarray((_HIST_BINS,), dtype=np.int64, buffer=self.mm, offset=h2))

    def close(self) -> None:
        try:
            self.words.release()
            self.mm.close()
        except (BufferError, ValueError):
            pass  # a numpy view still holds the mapping; it goes with the process


def _unlink(name: str) -> None:
    try:
        os.unlink(_shm_path(name))
    except FileNotFoundError:
        pass


class DelayMatrixWriter:
    """The writer side of the delay block: ``write(delay_s)`` replaces the whole matrix.

    Fills the inactive one of the two buffers, then flips the active index and
    bumps the sequence number; the daemon picks the new matrix up at its next
    loop iteration, without any round trip. Attach from any process with
    ``DelayMatrixWriter(name)``; only one process should write.
    """

    def __init__(self, name: str, *, _block: _Block | None = None):
        self._block = _block or _Block(name)
        w = self._block.words
        if w[_W_MAGIC] != _MAGIC:
            raise InputError(f"shared-memory block {name!r} is not a meshemu delay block")
        self.n = int(w[_W_N])
        self._mats = self._block.matrices(self.n)
        self.name = name

    def write(self, delay_s: np.ndarray, *, zero_diagonal: bool = False) -> int:
        """Install ``delay_s`` ((N, N) seconds, finite, >= 0); returns its sequence number.

        One copy straight into the inactive buffer and two reductions to check
        it (~6 ms for N = 1,600 here); nothing changes if the check fails.
        """
        d = np.asarray(delay_s)
        if d.shape != (self.n, self.n):
            raise InputError(f"delay matrix has shape {d.shape}, expected ({self.n}, {self.n})")
        w = self._block.words
        inactive = 1 - int(w[_W_ACTIVE])
        buf = self._mats[inactive]
        try:
            np.copyto(buf, d, casting="same_kind")
        except TypeError:
            raise InputError(f"delay matrix must hold numbers, not {d.dtype}") from None
        if zero_diagonal:
            np.fill_diagonal(buf, 0.0)
        lo, hi = buf.min(), buf.max()  # NaN fails both tests below
        if not (lo >= 0.0 and hi < np.inf):
            raise InputError("delay matrix must hold finite, non-negative seconds")
        w[_W_ACTIVE] = inactive  # x86-64 keeps stores in order: the buffer is complete before the flip
        seq = int(w[_W_SEQ]) + 1
        w[_W_SEQ] = seq
        return seq

    def current(self) -> np.ndarray:
        return self._mats[int(self._block.words[_W_ACTIVE])].copy()

    def close(self) -> None:
        self._mats = None
        self._block.close()


# ---------------------------------------------------------------------------
# iptables rules


def _check_address(address: str) -> str:
    try:
        return str(ipaddress.IPv4Address(address))
    except (ipaddress.AddressValueError, ValueError):
        raise InputError(f"not an IPv4 address: {address!r}", field="address") from None


def _check_queue(queue_num: int) -> int:
    if not isinstance(queue_num, (int, np.integer)) or not 0 <= int(queue_num) <= 65535:
        raise InputError(f"queue number must be 0-65535, got {queue_num!r}", field="queue_num")
    return int(queue_num)


def iptables_rule(address: str, queue_num: int = 0, *, bypass: bool = False) -> str:
    """The one raw-table rule (``-A PREROUTING ...``) that queues a node's own inbound packets.

    ``! -i lo`` keeps the node's traffic to itself out of the queue.
    ``bypass=True`` adds ``--queue-bypass``: with no delay line bound, packets
    pass undelayed instead of being dropped (default off: a missing delay line
    shows as lost traffic rather than as a silently wrong delay).

    >>> iptables_rule("10.9.0.1", 3)
    '-A PREROUTING -d 10.9.0.1/32 ! -i lo -j NFQUEUE --queue-num 3'
    """
    rule = f"-A PREROUTING -d {_check_address(address)}/32 ! -i lo -j NFQUEUE --queue-num {_check_queue(queue_num)}"
    return rule + (" --queue-bypass" if bypass else "")


def iptables_rules(address: str, queue_num: int = 0, *, bypass: bool = False) -> str:
    """The rules for one node in ``iptables-restore`` format (raw table), to load with ``--noflush``.

    >>> print(iptables_rules("10.9.0.1", 0), end="")
    *raw
    -A PREROUTING -d 10.9.0.1/32 ! -i lo -j NFQUEUE --queue-num 0
    COMMIT
    """
    return f"*raw\n{iptables_rule(address, queue_num, bypass=bypass)}\nCOMMIT\n"


def install_rules(namespace: str, address: str, queue_num: int = 0, *, bypass: bool = False) -> None:
    """Load :func:`iptables_rules` into ``namespace`` (one ``iptables-restore`` call, ~10 ms)."""
    _run_in_ns(namespace, ["iptables-restore", "-w", "--noflush"], iptables_rules(address, queue_num, bypass=bypass))


def remove_rules(namespace: str, address: str, queue_num: int = 0, *, bypass: bool = False) -> None:
    """Delete the rule :func:`install_rules` added (missing rule or namespace: no error)."""
    spec = iptables_rule(address, queue_num, bypass=bypass).split()[1:]  # drop "-A"
    subprocess.run(["ip", "netns", "exec", namespace, "iptables", "-t", "raw", "-D", *spec],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)


def _run_in_ns(namespace: str, argv: list[str], stdin: str | None = None) -> str:
    if not os.path.exists(os.path.join(NETNS_RUN_DIR, namespace)):
        raise InputError(f"network namespace {namespace!r} does not exist (no {NETNS_RUN_DIR}/{namespace})")
    try:
        r = subprocess.run(["nsenter", f"--net={NETNS_RUN_DIR}/{namespace}", *argv], input=stdin,
                           capture_output=True, text=True, check=False)
    except FileNotFoundError as e:
        raise CapabilityError(f"{e.filename} not found: install util-linux and iptables") from None
    if r.returncode != 0:
        raise CapabilityError(f"{' '.join(argv)} in {namespace}: {(r.stderr or r.stdout).strip()}")
    return r.stdout


# ---------------------------------------------------------------------------
# the parent side


@dataclass(frozen=True)
class _Config:
    namespaces: list
    addresses: list
    queue_num: int
    shm: str
    calibration_ns: int
    spin_ns: int
    spin_share: float
    realtime: bool
    keep_order: bool
    rcvbuf: int
    queue_maxlen: int
    use_kernel_timestamp: bool
    copy_range: int
    trace_records: int


class DelayLine:
    """Delay every packet addressed to node ``d`` by ``delay_s[s, d]`` (``s``: its source node).

    ``namespaces[i]`` is node ``i``'s netns name (``/run/netns/NAME``),
    ``addresses[i]`` its IPv4 address. The caller installs
    :func:`iptables_rules` ``(addresses[i], queue_num)`` in each namespace
    (before or after :meth:`start`). ``calibration_s`` releases every packet
    that much before its deadline (a measured constant overhead after the
    release). ``spin_s``: wake that long before a deadline and busy-wait to it,
    for at most ``spin_share`` of the time (and not while the daemon is busy
    anyway). ``realtime``: run the daemon under ``SCHED_FIFO`` if allowed.
    ``keep_order``: packets of one (source, destination) pair leave in
    arrival order even when the delay drops. ``use_kernel_timestamp``: take
    the arrival time from the kernel (off: from when the daemon reads it).
    ``trace_records``: keep a ring of that many per-packet records
    (:data:`TRACE_FIELDS`, read with :meth:`trace`) to break a probe's error
    down into its parts; default 0, or :data:`DEFAULT_TRACE_RECORDS` where
    the environment variable ``MESHEMU_DELAYLINE_TRACE`` names a file, which
    then receives the trace when the line stops (so any run can be traced).

    ``start()`` returns once every queue is bound; until :meth:`set_delays`
    is called all delays are 0.
    """

    def __init__(self, namespaces: Sequence[str], addresses: Sequence[str], queue_num: int = 0,
                 calibration_s: float = DEFAULT_CALIBRATION_S, *, spin_s: float = DEFAULT_SPIN_S,
                 spin_share: float = DEFAULT_SPIN_SHARE,
                 realtime: bool = True, keep_order: bool = True, rcvbuf: int = DEFAULT_RCVBUF,
                 queue_maxlen: int = DEFAULT_QUEUE_MAXLEN, use_kernel_timestamp: bool = True,
                 trace_records: int | None = None, start_timeout_s: float | None = None):
        namespaces, addresses = list(namespaces), list(addresses)
        if not namespaces:
            raise InputError("a delay line needs at least one namespace")
        if len(namespaces) != len(addresses):
            raise InputError(f"{len(namespaces)} namespaces but {len(addresses)} addresses")
        addresses = [_check_address(a) for a in addresses]
        if len(set(addresses)) != len(addresses):
            raise InputError("node addresses must be distinct")
        if len(set(namespaces)) != len(namespaces):
            raise InputError("namespace names must be distinct")
        for ns in namespaces:
            if not isinstance(ns, str) or not ns or "/" in ns or ns in (".", ".."):
                raise InputError(f"bad namespace name {ns!r}")
        if not (np.isfinite(calibration_s) and np.isfinite(spin_s) and spin_s >= 0):
            raise InputError("calibration_s and spin_s must be finite (spin_s >= 0)")
        if not 0.0 <= spin_share <= 0.9:
            raise InputError("spin_share must be within 0-0.9 (a real-time task spinning more is throttled)")
        self.spin_share = float(spin_share)
        self.namespaces, self.addresses = namespaces, addresses
        self.n = len(namespaces)
        self.queue_num = _check_queue(queue_num)
        self.calibration_s, self.spin_s = float(calibration_s), float(spin_s)
        self.realtime, self.keep_order = bool(realtime), bool(keep_order)
        self.rcvbuf, self.queue_maxlen = int(rcvbuf), int(queue_maxlen)
        self.use_kernel_timestamp = bool(use_kernel_timestamp)
        self.trace_file = os.environ.get(TRACE_ENV) or None
        if trace_records is None:
            trace_records = DEFAULT_TRACE_RECORDS if self.trace_file else 0
        if not isinstance(trace_records, (int, np.integer)) or trace_records < 0:
            raise InputError(f"trace_records must be a count >= 0, got {trace_records!r}")
        self.trace_records = int(trace_records)
        self.start_timeout_s = start_timeout_s if start_timeout_s is not None else 15.0 + 0.01 * self.n
        self.shm_name = None
        self._proc = None
        self._block = None
        self._writer = None
        self._finalizer = None

    # -- lifecycle --
    def start(self) -> DelayLine:
        if self._proc is not None:
            raise MeshemuError("delay line already started")
        if os.geteuid() != 0:
            raise CapabilityError("the NFQUEUE delay line needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN for setns)")
        for ns in self.namespaces:
            if not os.path.exists(os.path.join(NETNS_RUN_DIR, ns)):
                raise InputError(f"network namespace {ns!r} does not exist (no {NETNS_RUN_DIR}/{ns})")
        self.shm_name = f"meshemu-dl-{os.getpid()}-{os.urandom(4).hex()}"
        _, _, _, size = _layout(self.n, self.trace_records)
        try:
            self._block = _Block(self.shm_name, size)
        except OSError as e:
            raise CapabilityError(f"cannot create shared memory /dev/shm/{self.shm_name} ({size} bytes): "
                                  f"{e.strerror}") from None
        w = self._block.words
        w[_W_N] = self.n
        w[_W_TRACE_CAP] = self.trace_records
        w[_W_MAGIC] = _MAGIC
        self._writer = DelayMatrixWriter(self.shm_name, _block=self._block)
        cfg = _Config(self.namespaces, self.addresses, self.queue_num, self.shm_name,
                      round(self.calibration_s * 1e9), round(self.spin_s * 1e9), self.spin_share, self.realtime,
                      self.keep_order, self.rcvbuf, self.queue_maxlen, self.use_kernel_timestamp,
                      TRACE_COPY_RANGE if self.trace_records else COPY_RANGE, self.trace_records)
        env = dict(os.environ)
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        try:
            # the arguments are only labels for ps / `meshemu clean` (the config comes on stdin)
            tag = os.path.commonprefix(self.namespaces) or self.namespaces[0]
            self._proc = subprocess.Popen([sys.executable, "-m", "meshemu.emulation.delayline_daemon",
                                           "--shm", self.shm_name, "--namespaces", tag],
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
                                          cwd="/", start_new_session=True)
        except OSError as e:
            self._cleanup()
            raise CapabilityError(f"cannot start the delay-line process: {e}") from None
        self._finalizer = weakref.finalize(self, _terminate, self._proc, self.shm_name)
        try:
            self._proc.stdin.write((json.dumps(cfg.__dict__) + "\n").encode())
            self._proc.stdin.flush()
            line = _read_line(self._proc.stdout, self.start_timeout_s)
        except BrokenPipeError:
            line = ""
        except BaseException:
            self.stop()
            raise
        if line and line.startswith("READY"):
            return self
        self.stop()
        if line and line.startswith("ERROR "):
            _, kind, msg = line.rstrip("\n").split(" ", 2)
            raise (InputError if kind == "InputError" else CapabilityError)(msg)
        if line is None:
            raise CapabilityError(f"the delay-line process did not get ready in {self.start_timeout_s:.0f} s")
        if not line:
            raise CapabilityError("the delay-line process exited during start-up (its error output is above)")
        raise CapabilityError(f"the delay-line process failed: {line.strip()}")

    def stop(self) -> None:
        """Stop the daemon (it accepts every held packet first) and unlink the shared memory. Idempotent."""
        if self._finalizer is not None:
            self._finalizer()  # runs _terminate once (also at garbage collection and interpreter exit)
            self._finalizer = None
            if self.trace_file and self._block is not None:
                self.save_trace(self.trace_file)
        self._cleanup()
        self._proc = None

    def _cleanup(self):
        if self._writer is not None:
            self._writer._mats = None
            self._writer = None
        if self._block is not None:
            self._block.close()
            self._block = None
        if self.shm_name:
            _unlink(self.shm_name)

    def __enter__(self):
        return self.start() if self._proc is None else self

    def __exit__(self, *exc):
        self.stop()

    @property
    def pid(self) -> int | None:
        """The daemon's pid while started."""
        return self._proc.pid if self._proc is not None else None

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None and self._block is not None

    # -- the live part --
    def set_delays(self, delay_s: np.ndarray) -> int:
        """Replace the whole (N, N) one-way path delay matrix (seconds); returns its sequence number.

        The diagonal is taken as 0. Costs one copy of the matrix (0.25 ms at
        N = 500, ~6 ms at N = 1,600 here); packets arriving after the call get
        the new delays, held packets keep theirs.
        """
        if self._writer is None:
            raise MeshemuError("delay line not started")
        code = self._proc.poll()  # one waitpid: a dead daemon must not go unnoticed
        if code is not None:
            raise CapabilityError(f"the delay-line process (pid {self._proc.pid}) exited with status {code}")
        return self._writer.write(delay_s, zero_diagonal=True)

    def delays(self) -> np.ndarray:
        if self._writer is None:
            raise MeshemuError("delay line not started")
        return self._writer.current()

    def stats(self) -> dict:
        """Counters and percentiles the daemon keeps in the shared block.

        ``lateness_us``: actual release time minus deadline (the deadline
        already has the calibration subtracted); ``read_lag_us``: how long after
        the kernel's receive timestamp the daemon read each packet.
        """
        if self._block is None:
            raise MeshemuError("delay line not started")
        w = self._block.words
        out = {name: int(w[_S[name]]) for name in _STAT_FIELDS}
        out["realtime"] = bool(out["realtime"])
        out["delay_seq"] = int(w[_W_SEQ])
        out["delay_seq_seen"] = int(w[_W_SEEN_SEQ])
        late, lag = self._block.histograms()
        out["lateness_us"] = _percentiles(late.copy())
        out["read_lag_us"] = _percentiles(lag.copy())
        out["alive"] = self.running()
        return out

    def trace(self) -> np.ndarray:
        """The per-packet trace (a structured array of :data:`TRACE_FIELDS`), oldest first."""
        if self._block is None:
            raise MeshemuError("delay line not started")
        return self._block.trace(self.n)

    def save_trace(self, path: str) -> None:
        """Write the trace, the namespaces and the addresses to ``path`` (``.npz``)."""
        np.savez(path, trace=self.trace(), namespaces=np.array(self.namespaces),
                 addresses=np.array(self.addresses), calibration_ns=round(self.calibration_s * 1e9))

    def reset_stats(self) -> None:
        """Zero the histograms and the 1 ms-late counter (e.g. after a warm-up)."""
        if self._block is None:
            raise MeshemuError("delay line not started")
        late, lag = self._block.histograms()
        late[:] = 0
        lag[:] = 0
        self._block.words[_S["late_1ms"]] = 0


def _percentiles(hist: np.ndarray) -> dict:
    total = int(hist.sum())
    out = {"count": total}
    if total == 0:
        return out
    cum = np.cumsum(hist)
    for q, key in ((0.5, "p50"), (0.9, "p90"), (0.99, "p99"), (0.999, "p999")):
        b = int(np.searchsorted(cum, q * total, side="left"))
        out[key] = float(_bin_value_us(b))
    out["max"] = float(_bin_value_us(int(np.nonzero(hist)[0][-1])))
    return out


def _read_line(pipe, timeout_s: float) -> str | None:
    """One line from the child's stdout; '' at end of file, None on timeout."""
    deadline = time.monotonic() + timeout_s
    fd = pipe.fileno()
    poller = select.poll()  # not select(): the caller may hold more than 1,024 descriptors
    poller.register(fd, select.POLLIN | select.POLLHUP)
    buf = b""
    while not buf.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        if not poller.poll(left * 1e3):
            return None
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        buf += chunk
    return buf.decode(errors="replace")


def _terminate(proc: subprocess.Popen, shm_name: str) -> None:
    try:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(3.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(3.0)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    for f in (proc.stdin, proc.stdout):
        try:
            f.close()
        except (OSError, ValueError):
            pass
    _unlink(shm_name)
