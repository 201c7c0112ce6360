"""Echo probes without namespaces: packets built and dissected, answers matched, paths compared (no root)."""

import numpy as np
import pytest
from scapy.layers.inet import ICMP, IP, UDP, ICMPerror, IPerror, IPOption_RR

from meshemu.emulation import probe
from meshemu.emulation.echo import PAYLOAD, Answer, Request, Result, build_request, dissect, probe_key
from meshemu.errors import InputError
from meshemu.routing.forwarding import walk

SRC, DST, HOP = "10.200.0.1", "10.200.0.2", "10.100.0.1"


def time_exceeded(request: bytes, answerer=HOP, kind=11, quote=None) -> bytes:
    """What a router sends back: Linux quotes the IP header and as much of the datagram as fits in 576 bytes."""
    quoted = request if quote is None else request[:quote]
    return bytes(IP(src=answerer, dst=SRC) / ICMP(type=kind, code=0) / quoted)


class TestBuildRequest:
    def test_an_echo_request_with_our_source_ttl_and_key(self):
        packet = IP(build_request(SRC, DST, ident=4321, seq=7, ttl=3))
        assert (packet.src, packet.dst, packet.ttl, packet.proto) == (SRC, DST, 3, 1)
        icmp = packet[ICMP]
        assert (icmp.type, icmp.id, icmp.seq) == (8, 4321, 7)
        assert bytes(icmp.payload) == PAYLOAD and len(bytes(icmp)) == 64  # ping's default size

    def test_checksums_are_right(self):
        raw = build_request(SRC, DST, ident=1, seq=2, ttl=64)
        packet = IP(raw)
        recomputed = IP(raw)
        del recomputed.chksum, recomputed[ICMP].chksum
        recomputed = IP(bytes(recomputed))
        assert (packet.chksum, packet[ICMP].chksum) == (recomputed.chksum, recomputed[ICMP].chksum)

    def test_bad_fields_are_one_line_errors(self):
        for bad in ({"ttl": 0}, {"ttl": 256}, {"ident": 70000}, {"seq": -1}, {"timeout_s": 0.0},
                    {"timeout_s": float("inf")}):
            fields = dict(netns="x", src=SRC, dst=DST, ident=1, seq=1) | bad
            with pytest.raises(InputError):
                Request(**fields)


class TestMatchingAnswers:
    """probe_key reads a few header bytes inside the timed loop; scapy's dissection must agree with it."""

    def request(self, ttl=2, **kw):
        return build_request(SRC, DST, ident=kw.get("ident", 999), seq=kw.get("seq", ttl), ttl=ttl)

    def agree(self, packet, expected_key):
        assert probe_key(packet) == expected_key
        answer = dissect(packet)
        assert (None if answer is None else (answer.ident, answer.seq)) == expected_key
        return answer

    def test_echo_reply(self):
        reply = bytes(IP(src=DST, dst=SRC) / ICMP(type=0, id=999, seq=5) / PAYLOAD)
        assert self.agree(reply, (999, 5)) == Answer(999, 5, DST, "echo-reply")

    def test_time_exceeded_quoting_the_whole_request(self):
        answer = self.agree(time_exceeded(self.request(ttl=2)), (999, 2))
        assert (answer.answerer, answer.kind) == (HOP, "time-exceeded")

    def test_time_exceeded_quoting_only_what_rfc_792_asks(self):  # IP header + 8 bytes
        assert self.agree(time_exceeded(self.request(ttl=3), quote=28), (999, 3)).kind == "time-exceeded"

    def test_unreachable(self):
        assert self.agree(time_exceeded(self.request(ttl=9), kind=3), (999, 9)).kind == "unreachable"

    def test_ip_options_outside_and_inside(self):
        inner = bytes(IP(src=SRC, dst=DST, ttl=1, options=[IPOption_RR()]) / ICMP(type=8, id=12, seq=1) / PAYLOAD)
        outer = bytes(IP(src=HOP, dst=SRC, options=[IPOption_RR()]) / ICMP(type=11) / inner)
        assert IP(outer).ihl > 5 and IP(inner).ihl > 5
        assert self.agree(outer, (12, 1)).answerer == HOP

    def test_what_answers_no_probe(self):
        udp = bytes(IP(src=SRC, dst=DST, ttl=1) / UDP(sport=5000, dport=33434) / (b"x" * 12))
        for packet in (
            bytes(IP(src=DST, dst=SRC) / ICMP(type=8, id=999, seq=1) / PAYLOAD),  # a request, not an answer
            bytes(IP(src=HOP, dst=SRC) / ICMP(type=11) / udp),  # an error about a UDP datagram
            bytes(IP(src=HOP, dst=SRC) / ICMP(type=11) / self.request()[:24]),  # quote too short for the key
            bytes(IP(src=DST, dst=SRC) / UDP(sport=1, dport=2) / (b"y" * 20)),  # not ICMP at all
            bytes(IP(src=DST, dst=SRC) / ICMP(type=5) / self.request()),  # a redirect
        ):
            self.agree(packet, None)
        for truncated in (b"", b"\x45", self.request()[:27]):
            assert probe_key(truncated) is None

    def test_scapy_sees_the_quoted_request(self):
        packet = IP(time_exceeded(self.request(ttl=4)))
        assert packet[IPerror].dst == DST and packet[IPerror].ttl == 4 and packet[ICMPerror].id == 999


class TestRttOfAResult:
    def test_only_an_echo_reply_gives_an_rtt(self):
        r = Request("ns", SRC, DST, 1, 0)
        assert Result(r, 1_000, 15_677_000, Answer(1, 0, DST, "echo-reply")).rtt_s == pytest.approx(15.676e-3)
        assert Result(r, 1_000, 2_000, Answer(1, 0, HOP, "unreachable")).rtt_s is None
        assert Result(r, None, None, None, "Network is unreachable").rtt_s is None


class TestPaths:
    def test_expected_answers_one_hop(self):
        assert probe.expected_answers((4, 5)) == [(5, "echo-reply"), (5, "echo-reply")]


class FakePlan:
    node_names = ("s0", "s1", "s2", "s3", "A", "B")
    addresses = ("10.100.0.1", "10.100.0.2", "10.100.1.2", "10.100.1.1", SRC, DST)
    namespaces = tuple(f"t.{n}" for n in node_names)


class FakeEmulation:
    """The forwarding state of the square series (A-s0-s1-B at step 0, round the square at step 1)."""

    def __init__(self, step=0, moves_to=None):
        self.plan, self.step, self._moves_to = FakePlan(), step, moves_to
        self.tables = {}
        for k, path in ((0, (4, 0, 1, 5)), (1, (4, 0, 3, 2, 1, 5)), (2, (4, 0, 1, 5))):
            t = np.full((6, 6), -1)
            for u, v in zip(path, path[1:]):
                t[u, 5] = v
            self.tables[k] = t

    @property
    def routes(self):
        return self

    def route(self, k, src, dst):
        return walk(self.tables[k][:, dst], src, dst)

    def expected_rtt_s(self, a, b, k):
        return 0.015

    def moved(self):
        if self._moves_to is not None:
            self.step = self._moves_to


def fake_exchange(emulation, answerers):
    """An exchange where TTL t is answered by ``answerers[t - 1]`` (a node id, or None for silence)."""
    def exchange(requests):
        emulation.moved()
        out = []
        for r in requests:
            node = answerers[r.ttl - 1]
            if node is None:
                out.append(Result(r, 0, None, None))
                continue
            kind = "echo-reply" if node == 5 else "time-exceeded"
            out.append(Result(r, 0, 1, Answer(r.ident, r.seq, FakePlan.addresses[node], kind)))
        return out
    return exchange


class TestCheckPaths:
    def check(self, monkeypatch, answerers, step=0, moves_to=None):
        emu = FakeEmulation(step, moves_to)
        monkeypatch.setattr(probe, "exchange", fake_exchange(emu, answerers))
        (c,) = probe.check_paths(emu, [(4, 5)], step, 0.0)
        return c

    def test_the_expected_path(self, monkeypatch):
        c = self.check(monkeypatch, [0, 1, 5, 5])
        assert c.on_path is True and c.counted and c.expected == ("A", "s0", "s1", "B")
        assert c.answered == ("s0", "s1", "B", "B")

    def test_a_wrong_hop_fails(self, monkeypatch):
        c = self.check(monkeypatch, [0, 3, 2, 1])  # s0 sent it round the square
        assert c.on_path is False and c.counted and c.answered == ("s0", "s3", "s2", "s1")

    def test_a_silent_hop_fails(self, monkeypatch):
        c = self.check(monkeypatch, [0, None, 5, 5])
        assert c.on_path is False and c.as_dict()["answered_path"] == "s0 * B B"

    def test_a_shorter_path_fails(self, monkeypatch):
        assert self.check(monkeypatch, [0, 5, 5, 5]).on_path is False  # B answered TTL 2 already

    def test_a_route_change_during_the_check_is_left_out(self, monkeypatch):
        c = self.check(monkeypatch, [0, 3, 2, 1], step=0, moves_to=1)
        assert c.at_route_change and not c.counted
        # the player moved on, but this pair's path is the same at step 2: the check counts
        c = self.check(monkeypatch, [0, 1, 5, 5], step=0, moves_to=2)
        assert not c.at_route_change and c.counted and c.on_path

    def test_summary(self, monkeypatch):
        checks = [self.check(monkeypatch, [0, 1, 5, 5]), self.check(monkeypatch, [0, 3, 2, 1]),
                  self.check(monkeypatch, [0, 3, 2, 1], moves_to=1)]
        s = probe.path_summary(checks)
        assert (s["checks"], s["counted"], s["on_path"], s["at_route_change"]) == (3, 2, 1, 1)
        assert s["on_path_share"] == 0.5
        assert "50.0 %" in probe.describe_path_share(s)
        assert "no path check counted" in probe.describe_path_share(probe.path_summary([]))
