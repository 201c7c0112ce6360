"""The delay line's wire: the nfnetlink_queue protocol numbers and the shared-memory block's layout.

The controller (:mod:`meshemu.emulation.delayline`) writes delay matrices and
reads statistics; the daemon (:mod:`meshemu.emulation.delayline_daemon`), a
process of its own, reads the matrices, talks nfnetlink_queue and writes the
statistics. Both read this one module, so the layout cannot drift between them.
"""

from __future__ import annotations

import mmap
import os
import struct

import numpy as np

from meshemu.emulation.netlink import _HDR

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

NLHDR = _HDR  # nlmsghdr: len, type, flags, seq, pid
NFGEN = struct.Struct("=BBH")  # nfgenmsg: family, version, res_id (big-endian, packed by hand)
NLA = struct.Struct("=HH")

COPY_RANGE = 20  # bytes of the packet copied to userspace: the IPv4 header without options
TRACE_COPY_RANGE = 28  # with a trace: the first 8 bytes after it too (ICMP type, identifier, sequence; ports)
DEFAULT_TRACE_RECORDS = 1 << 18  # records kept when MESHEMU_DELAYLINE_TRACE asks for a trace (20 MiB)
TRACE_ENV = "MESHEMU_DELAYLINE_TRACE"  # FILE.npz: trace every run's delay line, saved there when it stops
DEFAULT_QUEUE_MAXLEN = 65536
DEFAULT_RCVBUF = 8 << 20
# Measured on a 2-core VM (experiments/bench/delayline.py): with no calibration the median RTT error is
# ~0.1-0.15 ms above the no-delay-line baseline of the same probe (release -> reinject -> receiver wake-up,
# per traversal ~50-75 us); 50 us per traversal brings the median to that baseline.
DEFAULT_CALIBRATION_S = 50e-6
# Timer wake-ups here are ~60 us late at p50 and 0.1-1 ms at p90-p99: wake this early, then busy-wait.
DEFAULT_SPIN_S = 300e-6
DEFAULT_SPIN_SHARE = 0.25  # at most this share of the time busy-waiting (of one CPU)

# ---------------------------------------------------------------------------
# shared-memory block layout (little-endian int64 / float64)

MAGIC = 0x314C44554D48534D  # b"MSHMUDL1" read as a little-endian int64
HEADER_WORDS = 64  # 512 bytes of int64 words, then two histograms, then two matrices
# header word indices
W_MAGIC, W_N, W_SEQ, W_ACTIVE, W_SEEN_SEQ, W_STATE, W_PID = 0, 1, 2, 3, 4, 5, 6
W_TRACE_CAP, W_TRACE_COUNT = 7, 8  # trace ring: capacity (records), records written so far
# the matrices are (N, W_COLS): sources by destination queues (0: N, every node a destination); W_D columns in use
W_COLS, W_D = 9, 10
STAT_FIELDS = (
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
W_STATS = 16  # first stats word
STAT_WORD = {name: W_STATS + k for k, name in enumerate(STAT_FIELDS)}
# histograms: 1 us bins from -1 ms to +9 ms, then 100 us bins to ~1 s, last bin = overflow
H_FINE, H_COARSE = 10000, 9999
HIST_BINS = H_FINE + H_COARSE + 1
H_OFFSET_US = 1000

STATE_STARTING, STATE_READY, STATE_STOPPED = 0, 1, 2


def hist_bin(ns: int) -> int:
    us = ns // 1000 + H_OFFSET_US
    if us < 0:
        return 0
    if us < H_FINE:
        return us
    return min(H_FINE + (us - H_FINE) // 100, HIST_BINS - 1)


def bin_value_us(b: np.ndarray) -> np.ndarray:
    """The lower edge of each histogram bin, in microseconds from the deadline."""
    b = np.asarray(b, dtype=np.float64)
    return np.where(b < H_FINE, b, H_FINE + (b - H_FINE) * 100.0) - H_OFFSET_US


def layout(n: int, trace_records: int = 0, cols: int | None = None) -> tuple[int, int, int, int]:
    """Byte offsets: (lateness histogram, read-lag histogram, matrices, total size).

    Two (n, cols) float64 matrices (``cols`` defaults to n: every node a
    destination); the trace ring, ``trace_records`` x :data:`TRACE_FIELDS`, follows them.
    """
    cols = n if cols is None else cols
    h1 = HEADER_WORDS * 8
    h2 = h1 + HIST_BINS * 8
    mats = (h2 + HIST_BINS * 8 + 63) // 64 * 64
    return h1, h2, mats, mats + 2 * n * cols * 8 + trace_records * len(TRACE_FIELDS) * 8


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


def shm_path(name: str) -> str:
    return "/dev/shm/" + name.lstrip("/")


class ShmBlock:
    """A named POSIX shared-memory block (``/dev/shm/NAME``), mapped.

    The same thing ``multiprocessing.shared_memory`` makes, without its
    resource tracker: under Python 3.11 the tracker of any process that merely
    *attaches* to a block unlinks it when that process exits.
    """

    def __init__(self, name: str, size: int | None = None):
        self.name = name
        path = shm_path(name)
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
                unlink_block(name)
            raise
        os.close(fd)
        self.words = memoryview(self.mm).cast("q")

    def columns(self, n: int) -> int:
        """Columns of each matrix: the destination capacity (N where the word is unset)."""
        return int(self.words[W_COLS]) or n

    def matrices(self, n: int) -> np.ndarray:
        _, _, off, _ = layout(n)
        return np.ndarray((2, n, self.columns(n)), dtype=np.float64, buffer=self.mm, offset=off)

    def trace(self, n: int) -> np.ndarray:
        """The trace ring's records in the order written (the last ``capacity`` of them), copied."""
        cap, count = int(self.words[W_TRACE_CAP]), int(self.words[W_TRACE_COUNT])
        if cap == 0:
            return np.zeros(0, dtype=TRACE_DTYPE)
        _, _, off, _ = layout(n)
        ring = np.ndarray((cap,), dtype=TRACE_DTYPE, buffer=self.mm, offset=off + 2 * n * self.columns(n) * 8)
        if count <= cap:
            return ring[:count].copy()
        k = count % cap
        return np.concatenate([ring[k:], ring[:k]])

    def histograms(self) -> tuple[np.ndarray, np.ndarray]:
        h1, h2, _, _ = layout(0)
        return (np.ndarray((HIST_BINS,), dtype=np.int64, buffer=self.mm, offset=h1),
                np.ndarray((HIST_BINS,), dtype=np.int64, buffer=self.mm, offset=h2))

    def close(self) -> None:
        try:
            self.words.release()
            self.mm.close()
        except (BufferError, ValueError):
            pass  # a numpy view still holds the mapping; it goes with the process


def unlink_block(name: str) -> None:
    try:
        os.unlink(shm_path(name))
    except FileNotFoundError:
        pass
