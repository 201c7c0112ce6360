"""The delay-line daemon: one process holding packets for every namespace's NFQUEUE.

Started by :class:`meshemu.emulation.delayline.DelayLine` as
``python -m meshemu.emulation.delayline_daemon``; its configuration arrives on stdin, the delay matrix
in shared memory. See :mod:`meshemu.emulation.delayline` for the design.
"""

from __future__ import annotations

import collections
import ctypes
import gc
import heapq
import json
import os
import select
import signal
import socket
import struct
import sys
import time

from meshemu.emulation.delayline_wire import (  # the wire layout and constants both sides share
    HIST_BINS,
    W_TRACE_CAP,
    W_TRACE_COUNT,
    NFGEN,
    NLA,
    NLHDR,
    STAT_WORD,
    W_ACTIVE,
    W_COLS,
    W_N,
    W_PID,
    W_SEEN_SEQ,
    W_SEQ,
    W_STATE,
    COPY_RANGE,
    DEFAULT_QUEUE_MAXLEN,
    NETLINK_NETFILTER,
    NF_ACCEPT,
    NFQA_CFG_CMD,
    NFQA_CFG_F_CONNTRACK,
    NFQA_CFG_F_FAIL_OPEN,
    NFQA_CFG_F_GSO,
    NFQA_CFG_FLAGS,
    NFQA_CFG_MASK,
    NFQA_CFG_PARAMS,
    NFQA_CFG_QUEUE_MAXLEN,
    NFQA_PACKET_HDR,
    NFQA_PAYLOAD,
    NFQA_TIMESTAMP,
    NFQA_VERDICT_HDR,
    NFQNL_CFG_CMD_BIND,
    NFQNL_COPY_PACKET,
    NFQNL_MSG_CONFIG,
    NFQNL_MSG_PACKET,
    NFQNL_MSG_VERDICT,
    NFQNL_MSG_VERDICT_BATCH,
    SO_RCVBUFFORCE,
    SO_SNDBUFFORCE,
    SO_TIMESTAMP,
    STATE_READY,
    STATE_STOPPED,
    TRACE_FIELDS,
    ShmBlock,
    hist_bin,
    layout,
    unlink_block,
)
from meshemu.emulation.netlink import (
    CLONE_NEWNET,
    NETNS_RUN_DIR,
    NLM_F_ACK,
    NLM_F_REQUEST,
    NLMSG_ERROR,
    attr,
)
from meshemu.emulation.realtime import DAEMON_PRIORITY


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
    body = NFGEN.pack(family, 0, socket.htons(res_id)) + attrs
    return NLHDR.pack(16 + len(body), mtype, flags, seq, 0) + body


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
                ln, mtype, _, _, _ = NLHDR.unpack_from(data, off)
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
        msgs = config_messages(cfg["queue_num"], copy_range=cfg["copy_range"], maxlen=cfg["queue_maxlen"])
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
            self.block = ShmBlock(cfg["shm"])
        except OSError as e:
            raise _DaemonError("CapabilityError", f"cannot open shared memory {cfg['shm']!r}: {e.strerror}") from None
        self.w = self.block.words
        self.n = n = len(cfg["addresses"])
        self.cols = cols = int(self.w[W_COLS]) or n
        if self.w[W_N] != n or len(cfg["destinations"]) > cols:
            raise _DaemonError("CapabilityError", "shared memory block does not match the namespaces")
        _, _, moff, _ = layout(n)
        self.mats = [memoryview(self.block.mm)[moff + k * n * cols * 8: moff + (k + 1) * n * cols * 8].cast("d")
                     for k in (0, 1)]
        h1, h2, _, _ = layout(0)
        self.hist_late = memoryview(self.block.mm)[h1:h1 + HIST_BINS * 8].cast("q")
        self.hist_lag = memoryview(self.block.mm)[h2:h2 + HIST_BINS * 8].cast("q")
        self.trace_cap = int(self.w[W_TRACE_CAP])
        if self.trace_cap != cfg["trace_records"] or self.block.size < layout(n, self.trace_cap, cols)[3]:
            raise _DaemonError("CapabilityError", "shared memory block does not match the trace size")
        self.trace_off = moff + 2 * n * cols * 8
        self.addr = {socket.inet_aton(a): i for i, a in enumerate(cfg["addresses"])}
        # keep kernel receive timestamps on: any socket with SO_TIMESTAMP turns them on host-wide
        self.ts_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.ts_sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMP, 1)
        import resource
        need = cols + 64
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and soft < need:
            if hard != resource.RLIM_INFINITY and hard < need:
                raise _DaemonError("CapabilityError", f"{cols} queues need {need} open files, the limit is {hard}: "
                                   f"raise it with 'ulimit -n {need}'")
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
        self.socks = []
        self.dest = []  # queue index -> its node id (the queue's column in the matrix is its index)
        try:
            self.open_queues(cfg["namespaces"], cfg["destinations"])
        except BaseException:
            for s in self.socks:
                s.close()
            raise
        self.timer = _Timer(lc)
        self.w[W_PID] = os.getpid()
        self.realtime = bool(cfg["realtime"]) and self.set_realtime(True)
        self.w[STAT_WORD["realtime"]] = int(self.realtime)
        self.w[W_STATE] = STATE_READY

    def open_queues(self, namespaces, nodes) -> list:
        """Bind a queue in each of ``namespaces`` (the destinations ``nodes``); the new sockets."""
        if len(self.dest) + len(nodes) > self.cols:
            raise _DaemonError("CapabilityError", f"{len(self.dest) + len(nodes)} destinations for "
                               f"{self.cols} columns")
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        new = []
        try:
            for ns in namespaces:
                new.append(_open_queue(self.lc, home, ns, self.cfg))
        except BaseException:
            for s in new:
                s.close()
            raise
        finally:
            os.close(home)
        self.socks.extend(new)
        self.dest.extend(int(v) for v in nodes)
        return new

    def set_realtime(self, on: bool) -> bool:
        """SCHED_FIFO (above any probe) or back to SCHED_OTHER; returns whether FIFO is now on."""
        try:
            if on:
                os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(DAEMON_PRIORITY))
            else:
                os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
            return on
        except (OSError, AttributeError):
            return False

    def run(self) -> int:
        cfg, w, n, cols = self.cfg, self.w, self.n, self.cols
        socks = self.socks
        dest = self.dest
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
        unpack_hdr = NLHDR.unpack_from
        unpack_nla = NLA.unpack_from
        be32 = struct.Struct("!I").unpack_from
        be64x2 = struct.Struct("!qq").unpack_from
        be32x2 = struct.Struct("!II").unpack_from
        S = STAT_WORD
        hbin = hist_bin

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
        commands = b""  # stdin after the configuration: {"add": [[node, namespace], ...]} lines
        sig_r, sig_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(sig_w, warn_on_full_buffer=False)
        stop = []
        signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
        signal.signal(signal.SIGINT, lambda *a: stop.append(1))
        signal.signal(signal.SIGHUP, lambda *a: stop.append(1))
        ep.register(sig_r, select.EPOLLIN)

        heap = []                      # (deadline_ns, queue, packet_id, trace record so far or None)
        books = [_VerdictBook(qnum) for _ in range(nq)]

        def command(line: bytes) -> None:
            """Add destinations: bind their queues, then say so on stdout (one line)."""
            try:
                add = json.loads(line)["add"]
                new = self.open_queues([ns for _, ns in add], [v for v, _ in add])
            except _DaemonError as e:
                reply = f"ERROR {e.kind} {e}\n"
            except (ValueError, KeyError, TypeError) as e:
                reply = f"ERROR InputError bad delay-line command: {e}\n"
            else:
                for s in new:
                    s.setblocking(False)
                    fd2q[s.fileno()] = len(books)
                    books.append(_VerdictBook(qnum))
                    ep.register(s.fileno(), select.EPOLLIN)
                reply = f"ADDED {len(new)}\n"
            sys.stdout.write(reply)
            sys.stdout.flush()
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
        trace_cap, trace_off, trace_mm = self.trace_cap, self.trace_off, self.block.mm
        tracing = trace_cap > 0
        traced = []                    # trace records of `release`, waiting for their send time
        trace_count = 0
        trace_size = len(TRACE_FIELDS) * 8
        pack_trace = struct.Struct(f"<{len(TRACE_FIELDS)}q").pack_into

        def flush_counters():
            for k, v in counters.items():
                w[S[k]] += v
            counters.clear()
            w[S["pending"]] = pending
            w[S["max_pending"]] = max(w[S["max_pending"]], max_pending)

        def send_verdicts():
            """Issue ACCEPT for every id in `release`, one send per socket."""
            nonlocal pending, trace_count
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
            if traced:
                t_sent = mono()
                for rec in traced:
                    pack_trace(trace_mm, trace_off + trace_count % trace_cap * trace_size, *rec, t_sent)
                    trace_count += 1
                w[W_TRACE_COUNT] = trace_count
                traced.clear()

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
                        proto = l4_0 = l4_4 = -1  # trace fields, where the payload has them
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
                                    if tracing:
                                        proto = rbuf[p + 13]
                                        l4 = p + 4 + (rbuf[p + 4] & 0x0F) * 4
                                        if l4 + 8 <= p + alen:
                                            l4_0, l4_4 = be32x2(rbuf, l4)
                                        else:
                                            l4_0 = l4_4 = -1
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
                            elif node == dest[q]:
                                dl = arr
                            else:
                                dl = arr + int(mat[node * cols + q] * 1e9) - calib
                                if keep_order:
                                    key = node * cols + q
                                    prev = last_dl.get(key, 0)
                                    if dl < prev:  # noqa: PLR1730 (hot path)
                                        dl = prev
                                    last_dl[key] = dl
                            if dl <= now:
                                release.setdefault(q, []).append(pid)
                                hist_late[hbin(now - dl)] += 1
                                if now - dl > 1_000_000:
                                    counters["late_1ms"] += 1
                                if tracing:
                                    traced.append((q, -1 if node is None else node, proto, l4_0, l4_4, arr, now,
                                                   dl, now))
                            else:
                                heappush(heap, (dl, q, pid, (q, -1 if node is None else node, proto, l4_0, l4_4,
                                                             arr, now, dl) if tracing else None))
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
                seq = w[W_SEQ]
                if seq != seq_seen:
                    mat = mats[w[W_ACTIVE]]
                    if seq_seen >= 0:
                        counters["delay_updates_seen"] += 1
                    seq_seen = seq
                    w[W_SEEN_SEQ] = seq
                for fd, ev in events:
                    q = fd2q.get(fd)
                    if q is not None:
                        read_queue(q, now)
                    elif fd == tfd:
                        timer.drain()
                    elif fd == stdin_fd:
                        chunk = os.read(stdin_fd, 65536)
                        if not chunk:
                            parent_dead = True
                            stop.append(1)
                        commands += chunk
                        while b"\n" in commands:
                            line, commands = commands.split(b"\n", 1)
                            if line.strip():
                                command(line)
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
                        dl, q, pid, info = heappop(heap)
                        release.setdefault(q, []).append(pid)
                        late = now - dl
                        hist_late[hbin(late)] += 1
                        if late > 1_000_000:
                            counters["late_1ms"] += 1
                        if info is not None:
                            traced.append((*info, now))
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
            w[W_STATE] = STATE_STOPPED
            for s in socks:
                s.close()
            if parent_dead:
                unlink_block(cfg["shm"])
        return 0


if __name__ == "__main__":
    try:
        sys.exit(_daemon_main())
    except KeyboardInterrupt:
        sys.exit(0)
