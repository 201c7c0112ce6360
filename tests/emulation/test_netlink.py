"""The bytes meshemu sends the kernel, decoded by an independent parser (pyroute2's), without root."""

import struct

import numpy as np
import pytest
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.ndmsg import ndmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg
from pyroute2.netlink.rtnl.tcmsg import tcmsg

from meshemu.emulation import netlink as nl
from meshemu.emulation.shaping import queue_limit_packets


def decode(cls, data):
    m = cls(data)
    m.decode()
    return m


class TestRoutes:
    def test_replace_records_decode_as_routes(self):
        rec = nl.routes_replace(np.array([0x0A640001, 0x0A640102], dtype=np.uint32),
                                np.array([0xAC100001, 0xAC100003], dtype=np.uint32), np.array([7, 9]), 0x0AC80001)
        data = rec.tobytes()
        assert len(data) == 2 * 60
        second = decode(rtmsg, data[60:])
        assert second["header"]["type"] == nl.RTM_NEWROUTE
        assert second["header"]["flags"] & (nl.NLM_F_CREATE | nl.NLM_F_REPLACE) == nl.NLM_F_CREATE | nl.NLM_F_REPLACE
        assert second.get_attr("RTA_DST") == "10.100.1.2" and second["dst_len"] == 32
        assert second.get_attr("RTA_GATEWAY") == "172.16.0.3" and second.get_attr("RTA_OIF") == 9
        assert second.get_attr("RTA_PREFSRC") == "10.200.0.1" and second["proto"] == nl.RTPROT_MESHEMU

    def test_delete_records(self):
        m = decode(rtmsg, nl.routes_delete(np.array([0x0A640001], dtype=np.uint32)).tobytes())
        assert m["header"]["type"] == nl.RTM_DELROUTE and m.get_attr("RTA_DST") == "10.100.0.1"


class TestNetem:
    def options(self, msg):
        m = decode(tcmsg, msg)
        return m, m.get_attr("TCA_OPTIONS")

    def test_create_and_change_flags(self):
        p = nl.NetemParams(delay_s=0.005)
        create, _ = self.options(nl.netem_qdisc(3, p, create=True))
        change, _ = self.options(nl.netem_qdisc(3, p, create=False))
        assert create["header"]["flags"] & nl.NLM_F_CREATE and create["header"]["flags"] & nl.NLM_F_EXCL
        # a change in place: no create, no replace, so the kernel keeps the qdisc and its queue
        assert change["header"]["flags"] & (nl.NLM_F_CREATE | nl.NLM_F_REPLACE | nl.NLM_F_EXCL) == 0
        assert change.get_attr("TCA_KIND") == "netem" and change["index"] == 3
        assert change["parent"] == nl.TC_H_ROOT and change["handle"] == nl.NETEM_HANDLE

    def test_every_message_carries_the_whole_parameter_set(self):
        p = nl.NetemParams(delay_s=0.0123456, limit_packets=4321, loss=0.01, rate_bps=1e9)
        _, opts = self.options(nl.netem_qdisc(3, p, create=False))
        assert opts["delay"] == int(0.0123456e9) >> 6  # legacy field: 64 ns ticks
        assert opts["limit"] == 4321 and opts["loss"] == round(0.01 * 0xFFFFFFFF)
        assert dict(opts["attrs"])["TCA_NETEM_RATE"]["rate"] == 125_000_000  # bytes/s

    def test_latency64_holds_nanoseconds(self):
        msg = nl.netem_qdisc(3, nl.NetemParams(delay_s=0.0123456), create=False)
        at = msg.find(struct.pack("=HH", 12, nl.TCA_NETEM_LATENCY64))
        assert at > 0 and struct.unpack_from("=q", msg, at + 4)[0] == 12_345_600

    def test_rates_above_32_bits_use_rate64(self):
        msg = nl.netem_qdisc(3, nl.NetemParams(delay_s=0.001, rate_bps=100e9), create=False)
        at = msg.find(struct.pack("=HH", 12, nl.TCA_NETEM_RATE64))
        assert at > 0 and struct.unpack_from("=Q", msg, at + 4)[0] == 12_500_000_000

    def test_queue_sized_to_bandwidth_delay(self):
        # 1 Gbit/s x 20 ms = 2.5 MB = 1,667 packets of 1,500 B; twice that, for headroom
        assert queue_limit_packets(0.020, 1e9) == 3334
        assert queue_limit_packets(0.0001, 1e6) == 1000  # never below netem's default

    def test_bad_parameters(self):
        with pytest.raises(ValueError, match="delay"):
            nl.NetemParams(delay_s=-1)
        with pytest.raises(ValueError, match="probability"):
            nl.NetemParams(delay_s=0.001, loss=2)


def test_link_address_and_neighbour_messages():
    up = decode(ifinfmsg, nl.link_updown(4, True))
    assert up["index"] == 4 and up["flags"] & 1 and up["change"] & 1
    down = decode(ifinfmsg, nl.link_updown(4, False))
    assert down["flags"] & 1 == 0 and down["change"] & 1
    addr = decode(ifaddrmsg, nl.address_add(4, 0xAC100001, 31))
    assert addr.get_attr("IFA_LOCAL") == "172.16.0.1" and addr["prefixlen"] == 31
    neigh = decode(ndmsg, nl.neighbour_add(4, 0xAC100001, bytes.fromhex("020000000701")))
    assert neigh.get_attr("NDA_DST") == "172.16.0.1" and neigh.get_attr("NDA_LLADDR") == "02:00:00:00:07:01"
    assert neigh["state"] == nl.NUD_PERMANENT
