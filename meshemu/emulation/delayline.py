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
* the player replaces the whole delay matrix at any time through a
  double-buffered shared-memory block (:class:`DelayMatrixWriter`), with no
  round trip to the daemon. The matrix is ``(N, D)``: every node as a source,
  and the ``D`` destinations (the nodes routes lead to; every node by
  default) as columns. Only destinations have a rule and a queue; more can
  be added while the line runs (:meth:`DelayLine.add_destinations`, one
  round trip), up to the capacity the block was made with.

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
``experiments/bench/delayline_breakdown.py`` joins it with a run's RTT probes.
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
import os
import select
import signal
import subprocess
import sys
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from meshemu.emulation.delayline_wire import (  # the layout and protocol numbers the daemon reads too
    COPY_RANGE,
    DEFAULT_CALIBRATION_S,
    DEFAULT_QUEUE_MAXLEN,
    DEFAULT_RCVBUF,
    DEFAULT_SPIN_S,
    DEFAULT_SPIN_SHARE,
    DEFAULT_TRACE_RECORDS,
    MAGIC,
    NETLINK_NETFILTER,
    NFQA_CFG_F_GSO,
    NFQA_TIMESTAMP,
    NFQNL_COPY_PACKET,
    NFQNL_MSG_VERDICT_BATCH,
    SO_TIMESTAMP,
    STAT_FIELDS,
    STAT_WORD,
    ShmBlock,
    TRACE_COPY_RANGE,
    TRACE_ENV,
    TRACE_FIELDS,
    W_ACTIVE,
    W_COLS,
    W_D,
    W_MAGIC,
    W_N,
    W_SEEN_SEQ,
    W_SEQ,
    W_TRACE_CAP,
    bin_value_us,
    layout,
    unlink_block,
)
from meshemu.emulation.netlink import NETNS_RUN_DIR, netns_argv
from meshemu.errors import CapabilityError, InputError, MeshemuError

class DelayMatrixWriter:
    """The writer side of the delay block: ``write(delay_s)`` replaces the whole matrix.

    Fills the inactive one of the two buffers, then flips the active index and
    bumps the sequence number; the daemon picks the new matrix up at its next
    loop iteration, without any round trip. Attach from any process with
    ``DelayMatrixWriter(name)``; only one process should write.
    """

    def __init__(self, name: str, *, _block: ShmBlock | None = None):
        self._block = _block or ShmBlock(name)
        w = self._block.words
        if w[W_MAGIC] != MAGIC:
            raise InputError(f"shared-memory block {name!r} is not a meshemu delay block")
        self.n = int(w[W_N])
        self.cols = self._block.columns(self.n)
        self._mats = self._block.matrices(self.n)
        self.name = name

    def write(self, delay_s: np.ndarray, *, zero_diagonal: bool = False, zero_rows=None) -> int:
        """Install ``delay_s`` ((N, D) seconds, finite, >= 0, D up to the block's columns); returns its
        sequence number.

        ``zero_diagonal`` zeroes entry (i, i); ``zero_rows[j]`` names the row
        zeroed in column j (a destination's own node). One copy straight into
        the inactive buffer and two reductions to check it (~6 ms for
        1,600 x 1,600 here, ~1 ms for 4,508 x 100); nothing changes if the check fails.
        """
        d = np.asarray(delay_s)
        if d.ndim != 2 or d.shape[0] != self.n or not 0 < d.shape[1] <= self.cols:
            want = f"({self.n}, {self.n})" if self.cols == self.n else f"({self.n}, 1..{self.cols})"
            raise InputError(f"delay matrix has shape {d.shape}, expected {want}")
        w = self._block.words
        inactive = 1 - int(w[W_ACTIVE])
        buf = self._mats[inactive][:, :d.shape[1]]
        try:
            np.copyto(buf, d, casting="same_kind")
        except TypeError:
            raise InputError(f"delay matrix must hold numbers, not {d.dtype}") from None
        if zero_diagonal:
            np.fill_diagonal(buf, 0.0)
        if zero_rows is not None:
            buf[np.asarray(zero_rows, dtype=np.int64), np.arange(d.shape[1])] = 0.0
        lo, hi = buf.min(), buf.max()  # NaN fails both tests below
        if not (lo >= 0.0 and hi < np.inf):
            raise InputError("delay matrix must hold finite, non-negative seconds")
        w[W_ACTIVE] = inactive  # x86-64 keeps stores in order: the buffer is complete before the flip
        w[W_D] = d.shape[1]
        seq = int(w[W_SEQ]) + 1
        w[W_SEQ] = seq
        return seq

    def current(self) -> np.ndarray:
        w = self._block.words
        return self._mats[int(w[W_ACTIVE])][:, :int(w[W_D]) or self.cols].copy()

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
        r = subprocess.run([*netns_argv(namespace), *argv], input=stdin,
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
    namespaces: list  # the destinations' (one queue each)
    destinations: list  # their node ids (rows of the matrix)
    addresses: list  # every node's, by node id
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
    ``destinations``: the node ids that get a queue (the caller installs the
    rules there only); by default every node. The delay matrix is then
    (N, len(destinations)); ``capacity`` columns are allocated (default: as
    many as there are destinations), so :meth:`add_destinations` can add up
    to that many in all.

    ``start()`` returns once every queue is bound; until :meth:`set_delays`
    is called all delays are 0.
    """

    def __init__(self, namespaces: Sequence[str], addresses: Sequence[str], queue_num: int = 0,
                 calibration_s: float = DEFAULT_CALIBRATION_S, *, spin_s: float = DEFAULT_SPIN_S,
                 spin_share: float = DEFAULT_SPIN_SHARE,
                 realtime: bool = True, keep_order: bool = True, rcvbuf: int = DEFAULT_RCVBUF,
                 queue_maxlen: int = DEFAULT_QUEUE_MAXLEN, use_kernel_timestamp: bool = True,
                 trace_records: int | None = None, start_timeout_s: float | None = None,
                 destinations: Sequence[int] | None = None, capacity: int | None = None):
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
        self.destinations = self._check_destinations(range(self.n) if destinations is None else destinations, [])
        self.capacity = len(self.destinations) if capacity is None else int(capacity)
        if not len(self.destinations) <= self.capacity <= self.n:
            raise InputError(f"capacity {capacity} must be within [{len(self.destinations)}, {self.n}] destinations")
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
        _, _, _, size = layout(self.n, self.trace_records, self.capacity)
        try:
            self._block = ShmBlock(self.shm_name, size)
        except OSError as e:
            raise CapabilityError(f"cannot create shared memory /dev/shm/{self.shm_name} ({size} bytes): "
                                  f"{e.strerror}") from None
        w = self._block.words
        w[W_N] = self.n
        w[W_COLS] = self.capacity
        w[W_TRACE_CAP] = self.trace_records
        w[W_MAGIC] = MAGIC
        self._writer = DelayMatrixWriter(self.shm_name, _block=self._block)
        cfg = _Config([self.namespaces[v] for v in self.destinations], list(self.destinations), self.addresses,
                      self.queue_num, self.shm_name,
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
            unlink_block(self.shm_name)

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

    def _check_destinations(self, nodes, have) -> list[int]:
        out = list(have)
        for v in nodes:
            if not isinstance(v, (int, np.integer)) or not 0 <= int(v) < self.n:
                raise InputError(f"destination {v!r} is not a node id in [0, {self.n})")
            if int(v) in out:
                raise InputError(f"destination {int(v)} is listed twice")
            out.append(int(v))
        if not out:
            raise InputError("a delay line needs at least one destination")
        return out

    # -- the live part --
    def set_delays(self, delay_s: np.ndarray) -> int:
        """Replace the whole (N, D) one-way path delay matrix (seconds; column j towards
        ``destinations[j]``); returns its sequence number.

        A destination's own row is taken as 0. Costs one copy of the matrix
        (0.25 ms for 500 x 500, ~6 ms for 1,600 x 1,600 here); packets arriving
        after the call get the new delays, held packets keep theirs.
        """
        if self._writer is None:
            raise MeshemuError("delay line not started")
        self._check_alive()
        d = np.asarray(delay_s)
        if d.ndim == 2 and d.shape[1] != len(self.destinations):
            raise InputError(f"delay matrix has {d.shape[1]} columns for {len(self.destinations)} destinations")
        return self._writer.write(d, zero_rows=self.destinations)

    def _check_alive(self) -> None:
        code = self._proc.poll()  # one waitpid: a dead daemon must not go unnoticed
        if code is not None:
            raise CapabilityError(f"the delay-line process (pid {self._proc.pid}) exited with status {code}")

    def add_destinations(self, nodes: Sequence[int], timeout_s: float = 10.0) -> None:
        """Give ``nodes`` a queue each (the daemon binds them before this returns); then call
        :meth:`set_delays` with their columns and install their rules."""
        if self._proc is None:
            raise MeshemuError("delay line not started")
        nodes = [int(v) for v in nodes]
        if not nodes:
            return
        dest = self._check_destinations(nodes, self.destinations)
        if len(dest) > self.capacity:
            raise CapabilityError(f"the delay line holds {self.capacity} destinations and has "
                                  f"{len(self.destinations)}: {len(nodes)} more do not fit (a mesh with more "
                                  "destinations than that: route every node, routes 'all')")
        self._check_alive()
        try:
            self._proc.stdin.write((json.dumps({"add": [[v, self.namespaces[v]] for v in nodes]}) + "\n").encode())
            self._proc.stdin.flush()
        except BrokenPipeError:
            raise CapabilityError("the delay-line process is gone") from None
        line = _read_line(self._proc.stdout, timeout_s)
        if line and line.startswith("ADDED"):
            self.destinations = dest
            return
        if line and line.startswith("ERROR "):
            _, kind, msg = line.rstrip("\n").split(" ", 2)
            raise (InputError if kind == "InputError" else CapabilityError)(msg)
        raise CapabilityError(f"the delay-line process did not bind {len(nodes)} more queues in {timeout_s:g} s")

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
        out = {name: int(w[STAT_WORD[name]]) for name in STAT_FIELDS}
        out["realtime"] = bool(out["realtime"])
        out["delay_seq"] = int(w[W_SEQ])
        out["delay_seq_seen"] = int(w[W_SEEN_SEQ])
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
        self._block.words[STAT_WORD["late_1ms"]] = 0


def _percentiles(hist: np.ndarray) -> dict:
    total = int(hist.sum())
    out = {"count": total}
    if total == 0:
        return out
    cum = np.cumsum(hist)
    for q, key in ((0.5, "p50"), (0.9, "p90"), (0.99, "p99"), (0.999, "p999")):
        b = int(np.searchsorted(cum, q * total, side="left"))
        out[key] = float(bin_value_us(b))
    out["max"] = float(bin_value_us(int(np.nonzero(hist)[0][-1])))
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
    unlink_block(shm_name)
