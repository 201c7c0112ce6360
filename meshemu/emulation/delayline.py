"""A userspace delay line on NFQUEUE: link delay without sch_netem.

Many kernels (cloud, WSL, ARM, this one) have no ``sch_netem``. This module
delays packets in userspace instead, once per packet, for the whole path, at
the destination:

* each node namespace gets one iptables rule (:func:`iptables_rules`) that
  hands every packet addressed to the node's own address (its ``/32`` on
  ``lo``) to NFQUEUE queue ``Q``; transit packets are never queued;
* one daemon process (``python -m meshemu.emulation.delayline``, started by
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

Pure Python + numpy, the standard library's ``socket``/``select``/``ctypes``:
no libnetfilter_queue.
"""

from __future__ import annotations

import collections
import ctypes
import gc
import heapq
import ipaddress
import json
import mmap
import os
import select
import signal
import socket
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
    CLONE_NEWNET,
    NETNS_RUN_DIR,
    NLM_F_ACK,
    NLM_F_REQUEST,
    NLMSG_ERROR,
    attr,
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


def _layout(n: int) -> tuple[int, int, int, int]:
    """Byte offsets: (lateness histogram, read-lag histogram, matrices, total size)."""
    h1 = _HEADER_WORDS * 8
    h2 = h1 + _HIST_BINS * 8
    mats = (h2 + _HIST_BINS * 8 + 63) // 64 * 64
    return h1, h2, mats, mats + 2 * n * n * 8


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
    _run_in_ns(namespace, ["iptables-restore", "--noflush"], iptables_rules(address, queue_num, bypass=bypass))


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

    ``start()`` returns once every queue is bound; until :meth:`set_delays`
    is called all delays are 0.
    """

    def __init__(self, namespaces: Sequence[str], addresses: Sequence[str], queue_num: int = 0,
                 calibration_s: float = DEFAULT_CALIBRATION_S, *, spin_s: float = DEFAULT_SPIN_S,
                 spin_share: float = DEFAULT_SPIN_SHARE,
                 realtime: bool = True, keep_order: bool = True, rcvbuf: int = DEFAULT_RCVBUF,
                 queue_maxlen: int = DEFAULT_QUEUE_MAXLEN, use_kernel_timestamp: bool = True,
                 start_timeout_s: float | None = None):
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
        _, _, _, size = _layout(self.n)
        try:
            self._block = _Block(self.shm_name, size)
        except OSError as e:
            raise CapabilityError(f"cannot create shared memory /dev/shm/{self.shm_name} ({size} bytes): "
                                  f"{e.strerror}") from None
        w = self._block.words
        w[_W_N] = self.n
        w[_W_MAGIC] = _MAGIC
        self._writer = DelayMatrixWriter(self.shm_name, _block=self._block)
        cfg = _Config(self.namespaces, self.addresses, self.queue_num, self.shm_name,
                      round(self.calibration_s * 1e9), round(self.spin_s * 1e9), self.spin_share, self.realtime,
                      self.keep_order, self.rcvbuf, self.queue_maxlen, self.use_kernel_timestamp)
        env = dict(os.environ)
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        try:
            # the arguments are only labels for ps / `meshemu clean` (the config comes on stdin)
            tag = os.path.commonprefix(self.namespaces) or self.namespaces[0]
            self._proc = subprocess.Popen([sys.executable, "-m", "meshemu.emulation.delayline",
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


# ---------------------------------------------------------------------------
# the daemon


class _Libc:
    def __init__(self):
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.libc.timerfd_create.argtypes = [ctypes.c_int, ctypes.c_int]
        self.libc.timerfd_settime.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
        self.libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
        self.libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]

    def setns(self, fd: int) -> None:
        if self.libc.setns(fd, CLONE_NEWNET) != 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))

    def timerfd(self) -> int:
        fd = self.libc.timerfd_create(time.CLOCK_MONOTONIC, os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))
        return fd


class _Timer:
    """An absolute CLOCK_MONOTONIC timerfd, re-armed only when the target moves."""

    TFD_TIMER_ABSTIME = 1

    def __init__(self, lc: _Libc):
        self.fd = lc.timerfd()
        self._settime = lc.libc.timerfd_settime
        self._spec = (ctypes.c_long * 4)()  # itimerspec: interval {sec, nsec}, value {sec, nsec}
        self._ptr = ctypes.addressof(self._spec)
        self.armed = 0

    def arm(self, at_ns: int) -> None:
        if at_ns == self.armed:
            return
        self._spec[2], self._spec[3] = divmod(at_ns, 1_000_000_000)
        if self._spec[2] == 0 and self._spec[3] == 0:
            self._spec[3] = 1
        self._settime(self.fd, self.TFD_TIMER_ABSTIME, self._ptr, None)
        self.armed = at_ns

    def disarm(self) -> None:
        if self.armed:
            self._spec[2] = self._spec[3] = 0
            self._settime(self.fd, 0, self._ptr, None)
            self.armed = 0

    def drain(self) -> None:
        try:
            os.read(self.fd, 8)
        except BlockingIOError:
            pass


def _nl_msg(mtype: int, flags: int, seq: int, res_id: int, attrs: bytes, family: int = socket.AF_UNSPEC) -> bytes:
    body = _NFGEN.pack(family, 0, socket.htons(res_id)) + attrs
    return _NLHDR.pack(16 + len(body), mtype, flags, seq, 0) + body


_nla = attr  # one rtattr/nlattr, padded to 4 bytes


def config_messages(queue_num: int, *, copy_range: int = COPY_RANGE, maxlen: int = DEFAULT_QUEUE_MAXLEN,
                    seq: int = 1) -> list[bytes]:
    """The two config requests that bind ``queue_num`` for AF_INET and set it up (each asks for an ack).

    >>> [len(m) for m in config_messages(0)]
    [28, 56]
    """
    bind = _nl_msg(NFQNL_MSG_CONFIG, NLM_F_REQUEST | NLM_F_ACK, seq, queue_num,
                   _nla(NFQA_CFG_CMD, struct.pack("!BBH", NFQNL_CFG_CMD_BIND, 0, socket.AF_INET)))
    flags = NFQA_CFG_F_GSO  # GSO bursts stay whole; FAIL_OPEN off: a full queue drops, as a link would
    params = (_nla(NFQA_CFG_PARAMS, struct.pack("!IB", copy_range, NFQNL_COPY_PACKET))
              + _nla(NFQA_CFG_QUEUE_MAXLEN, struct.pack("!I", maxlen))
              + _nla(NFQA_CFG_FLAGS, struct.pack("!I", flags))
              + _nla(NFQA_CFG_MASK, struct.pack("!I", NFQA_CFG_F_GSO | NFQA_CFG_F_FAIL_OPEN | NFQA_CFG_F_CONNTRACK)))
    conf = _nl_msg(NFQNL_MSG_CONFIG, NLM_F_REQUEST | NLM_F_ACK, seq + 1, queue_num, params)
    return [bind, conf]


def verdict_message(queue_num: int, packet_id: int, *, batch: bool = False, seq: int = 0) -> bytes:
    """ACCEPT for one packet, or (``batch``) for every queued packet with id <= ``packet_id``.

    >>> len(verdict_message(0, 7))
    32
    """
    return _nl_msg(NFQNL_MSG_VERDICT_BATCH if batch else NFQNL_MSG_VERDICT, NLM_F_REQUEST, seq, queue_num,
                   _nla(NFQA_VERDICT_HDR, struct.pack("!II", NF_ACCEPT, packet_id)))


_READ_BUDGET = 256  # messages read from one socket per loop iteration, so that releases interleave
_WINDOW_NS = 50_000_000  # the CPU governor's window
_SPIN_MAX_WORK = 0.25    # no busy-waiting in a window after one with more work than this (a CPU share)
_RT_LEAVE, _RT_RETURN = 0.85, 0.5  # leave SCHED_FIFO above this much work, return below that


class _VerdictBook:
    """One queue's held packets in kernel order, and the verdicts that release some of them.

    The kernel's batch verdict accepts every queued packet with an id up to a
    given one, so a released *prefix* of the queue costs one message; packets
    released ahead of an older one (a shorter path to the same node) get single
    verdicts and are remembered until the prefix passes them.

    >>> b = _VerdictBook(0)
    >>> b.out.extend([1, 2, 3, 4])
    >>> msg, ooo = b.verdicts([1, 2, 4]); len(msg), ooo   # batch up to 2, single for 4
    (64, 1)
    >>> msg, ooo = b.verdicts([3]); len(msg), ooo, list(b.out)   # batch up to 3 (4 already gone)
    (32, 0, [])
    """

    __slots__ = ("_batch", "_single", "done", "out")
    _pack_id = struct.Struct("!I").pack

    def __init__(self, queue_num: int):
        self.out = collections.deque()  # ids still held by the kernel, in arrival order
        self.done = set()               # ids verdicted out of order, still in `out`
        self._batch = verdict_message(queue_num, 0, batch=True)[:-4]
        self._single = verdict_message(queue_num, 0)[:-4]

    def verdicts(self, ids: list) -> tuple[bytes, int]:
        """The verdict messages for ``ids`` (all held), and how many went out of order."""
        out, done = self.out, self.done
        rel = set(ids)
        last = None
        while out and (out[0] in rel or out[0] in done):
            pid = out.popleft()
            if pid in rel:
                rel.discard(pid)
                last = pid
            else:
                done.discard(pid)
        parts = [self._batch + self._pack_id(last)] if last is not None else []
        for pid in rel:
            parts.append(self._single + self._pack_id(pid))
            done.add(pid)
        return b"".join(parts), len(rel)

    def accept_all(self) -> bytes:
        """One batch verdict for everything held (on shutdown)."""
        msg = self._batch + self._pack_id(self.out[-1])
        self.out.clear()
        self.done.clear()
        return msg


class _DaemonError(Exception):
    def __init__(self, kind: str, msg: str):
        super().__init__(msg)
        self.kind = kind


def _ack_errors(sock: socket.socket, want: int, timeout_s: float = 5.0) -> list[int]:
    """Collect ``want`` acks; returns the errnos (0 = ok)."""
    out = []
    sock.settimeout(timeout_s)
    try:
        while len(out) < want:
            data = sock.recv(65536)
            off = 0
            while off + 16 <= len(data):
                ln, mtype, _, _, _ = _NLHDR.unpack_from(data, off)
                if ln < 16:
                    break
                if mtype == NLMSG_ERROR:
                    out.append(-struct.unpack_from("=i", data, off + 16)[0])
                off += (ln + 3) & ~3
    except TimeoutError:
        out += [110] * (want - len(out))  # ETIMEDOUT
    finally:
        sock.setblocking(False)
    return out


def _open_queue(lc: _Libc, home_fd: int, ns: str, cfg: dict) -> socket.socket:
    path = os.path.join(NETNS_RUN_DIR, ns)
    try:
        nsfd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise _DaemonError("InputError", f"network namespace {ns!r} does not exist (no {path})") from None
    try:
        try:
            lc.setns(nsfd)
        except OSError as e:
            raise _DaemonError("CapabilityError", f"cannot enter network namespace {ns!r}: {e.strerror} "
                               "(run as root)") from None
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_NETFILTER)
        finally:
            lc.setns(home_fd)
    finally:
        os.close(nsfd)
    try:
        sock.bind((0, 0))
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, cfg["rcvbuf"])
            sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, 1 << 20)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, cfg["rcvbuf"])
        msgs = config_messages(cfg["queue_num"], maxlen=cfg["queue_maxlen"])
        for m in msgs:
            sock.send(m)
        errs = _ack_errors(sock, len(msgs))
    except OSError as e:
        sock.close()
        raise _DaemonError("CapabilityError", f"nfnetlink_queue in {ns!r}: {e.strerror}") from None
    bad = [e for e in errs if e]
    if bad:
        sock.close()
        e = bad[0]
        q = cfg["queue_num"]
        if e == 16:  # EBUSY
            why = f"queue {q} is already bound by another process in {ns!r}"
        elif e == 1 and os.geteuid() == 0:  # EPERM, as root: another socket holds the queue
            why = f"queue {q} is already bound by another process in {ns!r} (another delay line?)"
        elif e == 1:
            why = "permission denied (needs CAP_NET_ADMIN: run as root)"
        elif e in (2, 95, 93, 22):  # ENOENT, EOPNOTSUPP, EPROTONOSUPPORT, EINVAL
            why = f"the kernel has no usable nfnetlink_queue ({os.strerror(e)}): modprobe nfnetlink_queue"
        else:
            why = os.strerror(e)
        raise _DaemonError("CapabilityError", f"cannot bind NFQUEUE {q} in namespace {ns!r}: {why}")
    return sock


def _daemon_main() -> int:
    line = sys.stdin.buffer.readline()
    if not line:
        return 1
    cfg = json.loads(line)
    out = sys.stdout
    try:
        d = _Daemon(cfg)
    except _DaemonError as e:
        out.write(f"ERROR {e.kind} {e}\n")
        out.flush()
        return 1
    except Exception as e:  # anything else is a bug, but the parent wants one line
        out.write(f"ERROR CapabilityError delay line failed to start: {type(e).__name__}: {e}\n")
        out.flush()
        raise
    out.write("READY\n")
    out.flush()
    gc.freeze()  # what exists now lives as long as the process: keep it out of every collection
    return d.run()


class _Daemon:
    def __init__(self, cfg: dict):
        self.cfg = cfg
        self.lc = lc = _Libc()
        lc.libc.prctl(29, 1, 0, 0, 0)  # PR_SET_TIMERSLACK: 1 ns
        # parent death: EOF on stdin (the parent holds the pipe), else a changed getppid() (checked each second).
        # Not PR_SET_PDEATHSIG: it fires when the *thread* that started us exits.
        self.ppid = os.getppid()
        try:
            self.block = _Block(cfg["shm"])
        except OSError as e:
            raise _DaemonError("CapabilityError", f"cannot open shared memory {cfg['shm']!r}: {e.strerror}") from None
        self.w = self.block.words
        self.n = n = len(cfg["namespaces"])
        if self.w[_W_N] != n:
            raise _DaemonError("CapabilityError", "shared memory block does not match the namespaces")
        _, _, moff, _ = _layout(n)
        self.mats = [memoryview(self.block.mm)[moff + k * n * n * 8: moff + (k + 1) * n * n * 8].cast("d")
                     for k in (0, 1)]
        h1, h2, _, _ = _layout(0)
        self.hist_late = memoryview(self.block.mm)[h1:h1 + _HIST_BINS * 8].cast("q")
        self.hist_lag = memoryview(self.block.mm)[h2:h2 + _HIST_BINS * 8].cast("q")
        self.addr = {socket.inet_aton(a): i for i, a in enumerate(cfg["addresses"])}
        # keep kernel receive timestamps on: any socket with SO_TIMESTAMP turns them on host-wide
        self.ts_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.ts_sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMP, 1)
        import resource
        need = n + 64
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and soft < need:
            if hard != resource.RLIM_INFINITY and hard < need:
                raise _DaemonError("CapabilityError", f"{n} queues need {need} open files, the limit is {hard}: "
                                   f"raise it with 'ulimit -n {need}'")
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        self.socks = []
        try:
            for ns in cfg["namespaces"]:
                self.socks.append(_open_queue(lc, home, ns, cfg))
        except BaseException:
            for s in self.socks:
                s.close()
            raise
        finally:
            os.close(home)
        self.timer = _Timer(lc)
        self.w[_W_PID] = os.getpid()
        self.realtime = bool(cfg["realtime"]) and self.set_realtime(True)
        self.w[_S["realtime"]] = int(self.realtime)
        self.w[_W_STATE] = STATE_READY

    def set_realtime(self, on: bool) -> bool:
        """SCHED_FIFO (priority 10) or back to SCHED_OTHER; returns whether FIFO is now on."""
        try:
            if on:
                os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
            else:
                os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
            return on
        except (OSError, AttributeError):
            return False

    def run(self) -> int:
        cfg, w, n = self.cfg, self.w, self.n
        socks = self.socks
        nq = len(socks)
        qnum = cfg["queue_num"]
        calib = cfg["calibration_ns"]
        spin = cfg["spin_ns"]
        keep_order = cfg["keep_order"]
        use_ts = cfg["use_kernel_timestamp"]
        addr = self.addr
        mats = self.mats
        hist_late, hist_lag = self.hist_late, self.hist_lag
        timer = self.timer
        mono = time.monotonic_ns
        real = time.time_ns
        heappush, heappop = heapq.heappush, heapq.heappop
        unpack_hdr = _NLHDR.unpack_from
        unpack_nla = _NLA.unpack_from
        be32 = struct.Struct("!I").unpack_from
        be64x2 = struct.Struct("!qq").unpack_from
        S = _S
        hbin = _hist_bin

        ep = select.epoll()
        fd2q = {}
        for q, s in enumerate(socks):
            s.setblocking(False)
            ep.register(s.fileno(), select.EPOLLIN)
            fd2q[s.fileno()] = q
        tfd = timer.fd
        ep.register(tfd, select.EPOLLIN)
        stdin_fd = sys.stdin.fileno()
        ep.register(stdin_fd, select.EPOLLIN | select.EPOLLHUP)
        sig_r, sig_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(sig_w, warn_on_full_buffer=False)
        stop = []
        signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
        signal.signal(signal.SIGINT, lambda *a: stop.append(1))
        signal.signal(signal.SIGHUP, lambda *a: stop.append(1))
        ep.register(sig_r, select.EPOLLIN)

        heap = []                      # (deadline_ns, queue, packet_id)
        books = [_VerdictBook(qnum) for _ in range(nq)]
        last_dl = {}                   # (src * n + dst) -> last deadline (keep order within a pair)
        rbuf = bytearray(65536)
        seq_seen = -1
        mat = mats[0]
        counters = collections.Counter()
        pending = 0
        max_pending = 0
        parent_dead = False
        next_check = 0
        thread_cpu = time.thread_time_ns
        fifo = self.realtime
        win_start = win_end = mono()
        cpu0 = thread_cpu()
        spun = 0
        spin_share = cfg["spin_share"]
        spin_budget = int(spin_share * _WINDOW_NS)
        offset_ns = real() - mono()
        release = {}                   # queue -> [ids] due now

        def flush_counters():
            for k, v in counters.items():
                w[S[k]] += v
            counters.clear()
            w[S["pending"]] = pending
            w[S["max_pending"]] = max(w[S["max_pending"]], max_pending)

        def send_verdicts():
            """Issue ACCEPT for every id in `release`, one send per socket."""
            nonlocal pending
            nrel = 0
            for q, ids in release.items():
                msg, ooo = books[q].verdicts(ids)
                if ooo:
                    counters["out_of_order"] += ooo
                nrel += len(ids)
                s = socks[q]
                for k in range(0, len(msg), 32768):  # netlink to the kernel never blocks; the chunking
                    try:                              # only keeps each datagram under the send buffer
                        s.send(msg[k:k + 32768])
                    except OSError:
                        counters["netlink_errors"] += 1
            pending -= nrel
            counters["released"] += nrel
            counters["sends"] += len(release)
            release.clear()

        def read_queue(q, now):
            """Read every message waiting on queue q's socket."""
            nonlocal pending, max_pending, mat
            s = socks[q]
            recv_into = s.recv_into
            out = books[q].out
            budget = _READ_BUDGET
            while budget:
                budget -= 1
                try:
                    nbytes = recv_into(rbuf)
                except BlockingIOError:
                    break
                except OSError as e:
                    if e.errno == 105:  # ENOBUFS: the kernel dropped packets for this queue
                        counters["enobufs"] += 1
                        continue
                    raise
                off = 0
                while off + 16 <= nbytes:
                    ln, mtype, _, _, _ = unpack_hdr(rbuf, off)
                    if ln < 16:
                        break
                    if mtype == NFQNL_MSG_PACKET:
                        p = off + 20
                        end = off + ln
                        pid = None
                        src = None
                        arr = 0
                        while p + 4 <= end:
                            alen, atype = unpack_nla(rbuf, p)
                            if alen < 4:
                                break
                            atype &= 0x7FFF
                            if atype == NFQA_PACKET_HDR:
                                pid = be32(rbuf, p + 4)[0]
                            elif atype == NFQA_PAYLOAD:
                                if alen >= 20:
                                    src = rbuf[p + 16:p + 20]
                            elif atype == NFQA_TIMESTAMP and use_ts:
                                sec, usec = be64x2(rbuf, p + 4)
                                arr = sec * 1_000_000_000 + usec * 1000
                            p += (alen + 3) & ~3
                        if pid is not None:
                            out.append(pid)
                            pending += 1
                            counters["packets"] += 1
                            if arr:
                                # a receive stamp (CLOCK_REALTIME), or a TCP departure time (EDT,
                                # CLOCK_MONOTONIC) that crossed the veth: both are the arrival here
                                if now - 1_000_000_000 < arr - offset_ns <= now + 1_000_000_000:
                                    arr -= offset_ns
                                elif now - 1_000_000_000 < arr <= now + 1_000_000_000:
                                    counters["edt_timestamp"] += 1
                                    if arr > now:  # noqa: PLR1730 (hot path)
                                        arr = now
                                else:
                                    counters["timestamp_fallback"] += 1
                                    arr = now
                            else:
                                if use_ts:
                                    counters["timestamp_fallback"] += 1
                                arr = now
                            hist_lag[hbin(now - arr)] += 1
                            node = addr.get(bytes(src)) if src is not None else None
                            if node is None:
                                counters["unknown_source"] += 1
                                dl = arr
                            elif node == q:
                                dl = arr
                            else:
                                dl = arr + int(mat[node * n + q] * 1e9) - calib
                                if keep_order:
                                    key = node * n + q
                                    prev = last_dl.get(key, 0)
                                    if dl < prev:  # noqa: PLR1730 (hot path)
                                        dl = prev
                                    last_dl[key] = dl
                            if dl <= now:
                                release.setdefault(q, []).append(pid)
                                hist_late[hbin(now - dl)] += 1
                                if now - dl > 1_000_000:
                                    counters["late_1ms"] += 1
                            else:
                                heappush(heap, (dl, q, pid))
                    elif mtype == NLMSG_ERROR and struct.unpack_from("=i", rbuf, off + 16)[0] != 0:
                        counters["netlink_errors"] += 1
                    off += (ln + 3) & ~3
            if pending > max_pending:  # noqa: PLR1730 (hot path: a comparison beats a call)
                max_pending = pending

        try:
            while not stop:
                now = mono()
                # 1. sleep until something arrives or until `spin` before the next deadline
                if heap:
                    wake = heap[0][0] - (spin if spin_budget > 0 else 0)
                    if wake > now:
                        timer.arm(wake)
                        events = ep.poll(1.0)
                    else:
                        events = ep.poll(0)
                else:
                    timer.disarm()
                    events = ep.poll(1.0)
                now = mono()
                if now >= win_end:
                    # CPU governor, every 50 ms: spin only while the daemon is mostly idle (an idle vCPU
                    # wakes late; a busy one wakes on time), at most SPIN_SHARE of the time; leave
                    # SCHED_FIFO while real work nears a whole CPU (the kernel would otherwise throttle
                    # all RT tasks for 50 ms of each second), return when it falls again
                    cpu = thread_cpu()
                    wall = now - win_start
                    work = (cpu - cpu0 - spun) / wall if wall > 0 else 0.0
                    spin_budget = int(spin_share * _WINDOW_NS) if work < _SPIN_MAX_WORK else 0
                    if not spin_budget:
                        counters["spin_off_windows"] += 1
                    if fifo and work > _RT_LEAVE:
                        fifo = self.set_realtime(False)
                        counters["rt_demotions"] += 1
                    elif not fifo and self.realtime and work < _RT_RETURN:
                        fifo = self.set_realtime(True)
                    if not fifo and self.realtime:
                        counters["non_rt_windows"] += 1
                    w[S["cpu_work_pct"]] = int(work * 100)
                    win_start, cpu0, spun = now, cpu, 0
                    win_end = now + _WINDOW_NS
                if now >= next_check:  # once a second: parent alive? clock offset
                    next_check = now + 1_000_000_000
                    offset_ns = real() - mono()
                    if os.getppid() != self.ppid:
                        parent_dead = True
                        break
                    flush_counters()
                seq = w[_W_SEQ]
                if seq != seq_seen:
                    mat = mats[w[_W_ACTIVE]]
                    if seq_seen >= 0:
                        counters["delay_updates_seen"] += 1
                    seq_seen = seq
                    w[_W_SEEN_SEQ] = seq
                for fd, ev in events:
                    q = fd2q.get(fd)
                    if q is not None:
                        read_queue(q, now)
                    elif fd == tfd:
                        timer.drain()
                    elif fd == stdin_fd:
                        if not os.read(stdin_fd, 4096):
                            parent_dead = True
                            stop.append(1)
                    elif fd == sig_r:
                        try:
                            os.read(sig_r, 64)
                        except BlockingIOError:
                            pass
                        if os.getppid() != self.ppid:
                            parent_dead = True
                # 2. release what is due, busy-waiting to a deadline closer than `spin`
                if heap:
                    now = mono()
                    first = heap[0][0]
                    if first > now and first - now <= spin and spin_budget > 0:
                        counters["spins"] += 1
                        t_spin = now
                        while now < first:
                            now = mono()
                        spun += now - t_spin
                        spin_budget -= now - t_spin
                    while heap and heap[0][0] <= now:
                        dl, q, pid = heappop(heap)
                        release.setdefault(q, []).append(pid)
                        late = now - dl
                        hist_late[hbin(late)] += 1
                        if late > 1_000_000:
                            counters["late_1ms"] += 1
                if release:
                    counters["wakeups"] += 1
                    send_verdicts()
                    flush_counters()
        finally:
            # accept everything still held, so stopping never loses packets
            for q, book in enumerate(books):
                if book.out:
                    try:
                        socks[q].send(book.accept_all())
                    except OSError:
                        pass
            pending = 0
            flush_counters()
            w[_W_STATE] = STATE_STOPPED
            for s in socks:
                s.close()
            if parent_dead:
                _unlink(cfg["shm"])
        return 0


if __name__ == "__main__":
    try:
        sys.exit(_daemon_main())
    except KeyboardInterrupt:
        sys.exit(0)


# ---------------------------------------------------------------------------
# fidelity-check helpers: a line of namespaces and a userspace-timestamped probe


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
    lc = _Libc()
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            fd = os.open(os.path.join(NETNS_RUN_DIR, ns), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise InputError(f"network namespace {ns!r} does not exist") from None
        try:
            try:
                lc.setns(fd)
            except OSError as e:
                raise CapabilityError(f"cannot enter network namespace {ns!r}: {e.strerror}") from None
            try:
                return socket.socket(socket.AF_INET, kind | socket.SOCK_CLOEXEC)
            finally:
                lc.setns(home)
        finally:
            os.close(fd)
    finally:
        os.close(home)


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
