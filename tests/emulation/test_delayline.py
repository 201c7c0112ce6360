"""The NFQUEUE delay line: message building and the shared block (anyone), and real namespaces (root).

Timing tolerances are loose on purpose: this runs on a shared 2-core VM whose
process wake-ups are ~0.1 ms late at the median and can be milliseconds late
in the tail; the precise figures come from experiments/bench/delayline.py. A
median over many probes is stable to a few tenths of a millisecond there, so
+-2 ms on a median (and +-3 ms on a one-way median) tells "delay applied
once, at the right value, in the right direction" from every plausible bug
(not applied: off by the whole delay; applied per hop or twice: off by it
again; wrong source/destination index: another matrix entry, chosen here to
differ by >= 4 ms).
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from meshemu.emulation import delayline as dl
from meshemu.emulation import delayline_daemon as daemon
from meshemu.emulation import delayline_wire as wire
from meshemu.emulation.delayline import DelayLine, DelayMatrixWriter, iptables_rules
from meshemu.emulation.delayline_testbed import LineTestbed, probe_rtt
from meshemu.errors import CapabilityError, InputError, MeshemuError

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="needs root: network namespaces, iptables and NFQUEUE")
_serial = itertools.count()


def _prefix() -> str:
    return f"dltest-{os.getpid()}-{next(_serial)}-"


def _our_shm() -> list[str]:
    return [f for f in os.listdir("/dev/shm") if f.startswith(f"meshemu-dl-{os.getpid()}-")]


def _gone(pid: int, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(") ", 1)[1].startswith("Z"):
                    return True  # a zombie: exited, waiting for its parent to reap it
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


# ---------------------------------------------------------------------------
# no root needed


def test_iptables_rules_format():
    text = iptables_rules("10.9.0.7", 5)
    assert text == "*raw\n-A PREROUTING -d 10.9.0.7/32 ! -i lo -j NFQUEUE --queue-num 5\nCOMMIT\n"
    assert "--queue-bypass" in iptables_rules("10.9.0.7", 5, bypass=True)


@pytest.mark.parametrize("address, queue", [("10.9.0.300", 0), ("fe80::1", 0), ("10.9.0.1", 70000),
                                            ("10.9.0.1", -1)])
def test_iptables_rules_bad_input(address, queue):
    with pytest.raises(InputError):
        iptables_rules(address, queue)


def test_constructor_checks_input():
    with pytest.raises(InputError, match="2 namespaces but 1 addresses"):
        DelayLine(["a", "b"], ["10.0.0.1"])
    with pytest.raises(InputError, match="distinct"):
        DelayLine(["a", "b"], ["10.0.0.1", "10.0.0.1"])
    with pytest.raises(InputError, match="IPv4"):
        DelayLine(["a"], ["not-an-address"])
    with pytest.raises(InputError):
        DelayLine([], [])
    with pytest.raises(InputError, match="namespace name"):
        DelayLine(["../etc"], ["10.0.0.1"])


def test_not_root_is_a_capability_error(monkeypatch):
    monkeypatch.setattr(dl.os, "geteuid", lambda: 1000)
    with pytest.raises(CapabilityError, match="root"):
        DelayLine(["x"], ["10.0.0.1"]).start()
    assert not _our_shm()


def test_verdict_book_batches_prefixes():
    book = daemon._VerdictBook(3)
    book.out.extend([10, 11, 12, 13, 14])
    msg, ooo = book.verdicts([10, 11, 12])  # a released prefix: one batch verdict for id 12
    assert (len(msg), ooo) == (32, 0)
    assert int.from_bytes(msg[-4:], "big") == 12
    assert int.from_bytes(msg[4:6], "little") == wire.NFQNL_MSG_VERDICT_BATCH
    assert int.from_bytes(msg[18:20], "big") == 3  # res_id = queue number
    msg, ooo = book.verdicts([14])  # ahead of 13: a single verdict
    assert (len(msg), ooo) == (32, 1)
    assert int.from_bytes(msg[4:6], "little") == wire.NFQNL_MSG_VERDICT
    msg, ooo = book.verdicts([13])  # the prefix passes 13 and the already-released 14
    assert (len(msg), ooo, list(book.out), book.done) == (32, 0, [], set())


def test_shared_block_double_buffers():
    name = f"meshemu-dl-{os.getpid()}-unit"
    _, _, _, size = wire.layout(3)
    block = wire.ShmBlock(name, size)
    try:
        block.words[wire.W_N] = 3
        block.words[wire.W_MAGIC] = wire.MAGIC
        w = DelayMatrixWriter(name)  # attach by name, as another process would
        a = np.arange(9, dtype=float).reshape(3, 3) / 1000
        assert w.write(a) == 1
        assert block.words[wire.W_ACTIVE] == 1
        np.testing.assert_array_equal(block.matrices(3)[1], a)
        assert w.write(2 * a) == 2
        assert block.words[wire.W_ACTIVE] == 0
        np.testing.assert_array_equal(w.current(), 2 * a)
        np.testing.assert_array_equal(block.matrices(3)[1], a)  # the other buffer is untouched
        with pytest.raises(InputError, match="shape"):
            w.write(np.zeros((2, 2)))
        with pytest.raises(InputError, match="non-negative"):
            w.write(np.full((3, 3), -1.0))
        with pytest.raises(InputError, match="finite"):
            w.write(np.full((3, 3), np.nan))
        with pytest.raises(InputError, match="numbers"):
            w.write(np.full((3, 3), "x"))
        assert block.words[wire.W_SEQ] == 2  # failed writes change nothing the daemon reads
        np.testing.assert_array_equal(w.current(), 2 * a)
        w.write(np.ones((3, 3)), zero_diagonal=True)
        np.testing.assert_array_equal(w.current(), 1 - np.eye(3))
        w.close()
    finally:
        block.close()
        wire.unlink_block(name)
    assert not os.path.exists(f"/dev/shm/{name}")


def test_trace_ring_reads_oldest_first():
    name = f"meshemu-dl-{os.getpid()}-trace"
    _, _, _, size = wire.layout(2, trace_records=4)
    assert size == wire.layout(2)[3] + 4 * len(wire.TRACE_FIELDS) * 8
    block = wire.ShmBlock(name, size)
    try:
        w = block.words
        w[wire.W_N], w[wire.W_TRACE_CAP] = 2, 4
        assert len(block.trace(2)) == 0
        _, _, off, _ = wire.layout(2)
        ring = np.ndarray((4,), dtype=wire.TRACE_DTYPE, buffer=block.mm, offset=off + 2 * 2 * 2 * 8)
        for k in range(6):  # as the daemon writes: record k into slot k % capacity, then the count
            ring[k % 4]["arrival_ns"] = k
            w[wire.W_TRACE_COUNT] = k + 1
            if k == 2:
                assert list(block.trace(2)["arrival_ns"]) == [0, 1, 2]
        assert list(block.trace(2)["arrival_ns"]) == [2, 3, 4, 5]  # wrapped: the last four, oldest first
        del ring
    finally:
        block.close()
        wire.unlink_block(name)


def test_trace_records_must_be_a_count():
    with pytest.raises(InputError, match="trace_records"):
        DelayLine(["a"], ["10.0.0.1"], trace_records=-1)


def test_histogram_percentiles():
    h = np.zeros(wire.HIST_BINS, dtype=np.int64)
    h[wire.hist_bin(0)] = 90
    h[wire.hist_bin(5_000)] = 9          # 5 us late
    h[wire.hist_bin(20_000_000)] = 1     # 20 ms late: a coarse bin
    p = dl._percentiles(h)
    assert p["count"] == 100 and p["p50"] == 0.0 and p["p99"] == 5.0 and p["max"] == 20000.0
    assert wire.hist_bin(-5_000_000) == 0  # far too early: clamped into the first bin


# ---------------------------------------------------------------------------
# root: real namespaces


@pytest.fixture
def line2():
    tb = None
    try:
        tb = LineTestbed(2, _prefix())
        tb.install_rules()
        yield tb
    finally:
        if tb is not None:
            tb.close()
            assert not [n for n in tb.namespaces if os.path.exists(f"/run/netns/{n}")]


@pytest.fixture
def line3():
    tb = None
    try:
        tb = LineTestbed(3, _prefix(), net=8)
        tb.install_rules()
        yield tb
    finally:
        if tb is not None:
            tb.close()


@pytest.fixture
def started():
    """Yields a function that starts a DelayLine and always stops it afterwards."""
    lines = []

    def start(tb, **kw):
        line = DelayLine(tb.namespaces, tb.addresses, 0, **kw)
        lines.append(line)
        return line.start()

    try:
        yield start
    finally:
        for line in lines:
            line.stop()


def _settled_stats(line, timeout_s=1.0):
    """stats() once the daemon has published its counters for the last release (it does so just after
    the verdicts, so a probe can see its reply a few microseconds before the counters catch up)."""
    deadline = time.monotonic() + timeout_s
    while True:
        st = line.stats()
        if (st["released"] == st["packets"] and st["pending"] == 0) or time.monotonic() > deadline:
            return st
        time.sleep(0.01)


def _probe(tb, a, b, count=60, interval_s=0.005, **kw):
    return probe_rtt(tb.namespaces[a], tb.addresses[a], tb.namespaces[b], tb.addresses[b], count=count,
                     interval_s=interval_s, **kw)


@pytest.mark.root
@needs_root
def test_two_nodes_5ms(line2, started):
    line = started(line2)
    line.set_delays(np.full((2, 2), 0.005))
    r = _probe(line2, 0, 1)
    assert r.lost == 0
    assert abs(np.median(r.rtt) - 0.010) < 0.002, r.summary(0.010)
    st = _settled_stats(line)
    assert st["alive"] and st["packets"] >= 120 and st["released"] == st["packets"] and st["pending"] == 0
    assert st["enobufs"] == 0 and st["unknown_source"] == 0
    assert st["lateness_us"]["count"] >= 120 and "p99" in st["lateness_us"]


@pytest.mark.root
@needs_root
def test_trace_records_every_packet_with_its_hold(line3, started, tmp_path, monkeypatch):
    monkeypatch.setenv(dl.TRACE_ENV, str(tmp_path / "trace.npz"))  # traced by the environment, saved at stop
    line = started(line3)
    d = np.zeros((3, 3))
    d[0, 2], d[2, 0] = 0.004, 0.010
    line.set_delays(d)
    r = _probe(line3, 0, 2, count=20)
    assert r.lost == 0
    t = line.trace()
    udp = t[t["protocol"] == 17]
    assert len(udp) == 40  # every probe and every echo, each once (transit at node 1 is not queued)
    req, rep = udp[udp["dst"] == 2], udp[udp["dst"] == 0]
    assert (req["src"] == 0).all() and (rep["src"] == 2).all()
    assert ((req["l4_0"] & 0xFFFF) == 47999).all()  # the copied UDP header: destination port
    calibration_ns = round(line.calibration_s * 1e9)
    np.testing.assert_array_equal(req["deadline_ns"] - req["arrival_ns"], 4_000_000 - calibration_ns)
    np.testing.assert_array_equal(rep["deadline_ns"] - rep["arrival_ns"], 10_000_000 - calibration_ns)
    for rec in (req, rep):
        assert (rec["read_ns"] >= rec["arrival_ns"]).all() and (rec["release_ns"] >= rec["deadline_ns"]).all()
        assert (rec["sent_ns"] >= rec["release_ns"]).all()
    line.stop()
    saved = np.load(tmp_path / "trace.npz")
    assert len(saved["trace"]) == len(t) and list(saved["namespaces"]) == line3.namespaces


@pytest.mark.root
@needs_root
def test_three_node_line_path_delay_is_per_direction(line3, started):
    line = started(line3)
    d = np.zeros((3, 3))
    d[0, 1] = d[1, 0] = 0.002
    d[1, 2] = d[2, 1] = 0.002
    d[0, 2], d[2, 0] = 0.004, 0.010  # the path 0 -> 2 crosses node 1 but is held once, at node 2
    line.set_delays(d)
    r = _probe(line3, 0, 2)
    assert r.lost == 0
    assert abs(np.median(r.rtt) - 0.014) < 0.002, r.summary(0.014)
    assert abs(np.median(r.forward) - 0.004) < 0.003
    assert abs(np.median(r.backward) - 0.010) < 0.003
    r = _probe(line3, 1, 2, count=40)
    assert abs(np.median(r.rtt) - 0.004) < 0.002, r.summary(0.004)


@pytest.mark.root
@needs_root
def test_two_sources_with_different_delays_share_a_queue(line3, started):
    # packets from node 0 (held 10 ms at node 2) and node 1 (held 1 ms) interleave in node 2's queue:
    # the short ones leave ahead of older long ones (single verdicts), neither waits for the other
    line = started(line3)
    d = np.zeros((3, 3))
    d[0, 2], d[1, 2] = 0.010, 0.001
    line.set_delays(d)
    results = {}

    def run(a, port):
        results[a] = _probe(line3, a, 2, count=80, interval_s=0.003, port=port)

    threads = [threading.Thread(target=run, args=(0, 47901)), threading.Thread(target=run, args=(1, 47902))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results[0].lost == 0 and results[1].lost == 0
    assert abs(np.median(results[0].rtt) - 0.010) < 0.002, results[0].summary(0.010)
    assert abs(np.median(results[1].rtt) - 0.001) < 0.002, results[1].summary(0.001)
    st = _settled_stats(line)
    assert st["out_of_order"] > 0 and st["netlink_errors"] == 0 and st["pending"] == 0
    assert st["released"] == st["packets"]


@pytest.mark.root
@needs_root
def test_set_delays_takes_effect_on_the_next_packets(line2, started):
    line = started(line2)
    line.set_delays(np.full((2, 2), 0.001))
    before = _probe(line2, 0, 1, count=40)
    seq = line.set_delays(np.full((2, 2), 0.008))
    after = _probe(line2, 0, 1, count=40)
    assert abs(np.median(before.rtt) - 0.002) < 0.002
    assert abs(np.median(after.rtt) - 0.016) < 0.002
    assert after.rtt.min() > 0.014  # not one probe went out with the old delay
    st = line.stats()
    assert st["delay_seq_seen"] == seq and st["delay_updates_seen"] >= 1


@pytest.mark.root
@needs_root
def test_unknown_source_is_not_delayed(line2, started):
    line = started(line2)
    line.set_delays(np.full((2, 2), 0.020))
    # node 0's link address (10.9.1.0) is no node address: its packets to node 1 pass at once; the
    # replies go to the link address, which no rule queues
    r = probe_rtt(line2.namespaces[0], "10.9.1.0", line2.namespaces[1], line2.addresses[1], count=20,
                  interval_s=0.005)
    assert r.lost == 0 and np.median(r.rtt) < 0.010
    assert _settled_stats(line)["unknown_source"] >= 20


@pytest.mark.root
@needs_root
def test_stop_releases_held_packets_and_leaves_nothing(line2):
    # node 0 is known to this line by its link address 10.9.1.0: probes from there to node 1 are held
    # at node 1, and the replies (to 10.9.1.0, which no rule queues) come straight back even after stop
    line = DelayLine(line2.namespaces, ["10.9.1.0", line2.addresses[1]], 0)
    try:
        line.start()
        pid, shm = line.pid, line.shm_name
        assert os.path.exists(f"/dev/shm/{shm}")
        line.set_delays(np.full((2, 2), 0.5))
        timer = threading.Timer(0.15, line.stop)  # stop while the probe is held: it must be accepted
        timer.start()
        r = probe_rtt(line2.namespaces[0], "10.9.1.0", line2.namespaces[1], line2.addresses[1], count=1,
                      timeout_s=2.0)
        timer.join()
        assert r.lost == 0 and 0.1 < r.rtt[0] < 0.45, r.rtt
    finally:
        line.stop()
    line.stop()  # idempotent
    assert _gone(pid), "the delay-line process is still running"
    assert not os.path.exists(f"/dev/shm/{shm}")
    assert not _our_shm()
    with pytest.raises(MeshemuError):
        line.set_delays(np.zeros((2, 2)))


@pytest.mark.root
@needs_root
def test_missing_namespace_is_one_clear_error():
    name = f"dltest-{os.getpid()}-absent"
    with pytest.raises(InputError, match=f"'{name}' does not exist"):
        DelayLine([name], ["10.9.0.1"]).start()
    assert not _our_shm()


@pytest.mark.root
@needs_root
def test_queue_already_bound_is_a_capability_error(line2, started):
    started(line2)
    with pytest.raises(CapabilityError, match="already bound"):
        started(line2)
    assert len(_our_shm()) == 1  # only the first line's block


@pytest.mark.root
@needs_root
def test_daemon_exits_when_its_parent_dies(line2, tmp_path):
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))!r})
        from meshemu.emulation.delayline import DelayLine
        line = DelayLine({line2.namespaces!r}, {line2.addresses!r}, 0).start()
        print(line.pid, line.shm_name, flush=True)
        time.sleep(60)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        pid, shm = parent.stdout.readline().split()
        pid = int(pid)
        assert os.path.exists(f"/dev/shm/{shm}")
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    assert _gone(pid), "the delay-line process outlived its parent"
    deadline = time.monotonic() + 3
    while os.path.exists(f"/dev/shm/{shm}") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not os.path.exists(f"/dev/shm/{shm}")


def test_shared_block_holds_sources_by_destinations():
    """A block of (N, capacity) columns: a write fills the first D, zeroes each destination's own row."""
    name = f"meshemu-dl-{os.getpid()}-cols"
    _, _, _, size = wire.layout(3, cols=2)
    assert size == wire.layout(3)[3] - 2 * 3 * 1 * 8  # two matrices one column narrower
    block = wire.ShmBlock(name, size)
    try:
        block.words[wire.W_N], block.words[wire.W_COLS], block.words[wire.W_MAGIC] = 3, 2, wire.MAGIC
        w = DelayMatrixWriter(name)
        one = np.full((3, 1), 0.004)
        w.write(one, zero_rows=[2])  # destination node 2 only
        np.testing.assert_array_equal(w.current(), [[0.004], [0.004], [0.0]])
        w.write(np.full((3, 2), 0.004), zero_rows=[2, 0])  # node 0 added as the second column
        np.testing.assert_array_equal(w.current(), [[0.004, 0.0], [0.004, 0.004], [0.0, 0.004]])
        with pytest.raises(InputError, match=r"expected \(3, 1\.\.2\)"):
            w.write(np.zeros((3, 3)))
        w.close()
    finally:
        block.close()
        wire.unlink_block(name)


@pytest.mark.root
@needs_root
def test_destinations_only_and_one_added_at_run_time(line3, started):
    """Queues and rules only at destinations; the (N, D) matrix delays what reaches them; a destination
    added while the line runs is delayed from then on, by its own column."""
    for ns in line3.namespaces:  # the fixture queued every node: start from node 2 alone
        dl.remove_rules(ns, line3.addresses[line3.namespaces.index(ns)])
    dl.install_rules(line3.namespaces[2], line3.addresses[2])
    line = started(line3, destinations=[2], capacity=2)
    d = np.zeros((3, 1))
    d[0, 0], d[1, 0] = 0.004, 0.020  # towards node 2: from 0 (crossing 1, held once at 2), from 1
    line.set_delays(d)
    r = _probe(line3, 0, 2)
    assert r.lost == 0
    assert abs(np.median(r.rtt) - 0.004) < 0.002, r.summary(0.004)  # the reply to 0 is not held: no queue there
    with pytest.raises(InputError, match="columns"):
        line.set_delays(np.zeros((3, 2)))  # node 0 is no destination yet
    line.add_destinations([0])
    d2 = np.zeros((3, 2))
    d2[:, 0], d2[2, 1] = d[:, 0], 0.010  # node 0's column: 10 ms from node 2
    line.set_delays(d2)
    dl.install_rules(line3.namespaces[0], line3.addresses[0])
    r = _probe(line3, 0, 2)
    assert r.lost == 0
    assert abs(np.median(r.rtt) - 0.014) < 0.002, r.summary(0.014)
    np.testing.assert_array_equal(line.delays(), d2)
    assert line.destinations == [2, 0]
    with pytest.raises(CapabilityError, match="holds 2 destinations"):
        line.add_destinations([1])
    st = _settled_stats(line)
    assert st["alive"] and st["unknown_source"] == 0 and st["released"] == st["packets"]
