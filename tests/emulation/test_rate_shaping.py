"""Each link's rate, from the link series to the shaping: netem holds it, the delay line says it does not."""

from __future__ import annotations

import dataclasses
import re
import subprocess
from types import SimpleNamespace

import numpy as np
import pytest

from meshemu.deployment.deploy import link_rates
from meshemu.emulation import netlink as nl
from meshemu.emulation.shaping import DelayLineShaper, NetemShaper, NoShaper, ShapingConfig, queue_limit_packets

NAN = np.nan


class FakeMesh:
    """The parts of a Mesh a shaper touches: the plan's links and namespaces, interface indices, sockets."""

    def __init__(self, links):
        names = [f"ns{i}" for i in range(int(np.max(links)) + 1)]
        self.plan = SimpleNamespace(links=np.asarray(links), namespaces=names)
        self.ifindex = np.arange(2 * len(links)).reshape(-1, 2) + 10
        self.sent = {}
        self.sockets = {ns: SimpleNamespace(send_messages=self._sender(ns)) for ns in names}

    def _sender(self, ns):
        return lambda msgs, what: self.sent.setdefault(ns, []).extend(msgs)


def expected(mesh, link, end, delay_s, rate_bps):
    p = nl.NetemParams(delay_s=delay_s, limit_packets=queue_limit_packets(delay_s, rate_bps), rate_bps=rate_bps)
    return nl.netem_qdisc(int(mesh.ifindex[link, end]), p, create=True)


class TestNetemCarriesEachLinksRate:
    def test_each_link_gets_the_series_rate_on_both_ends(self):
        mesh = FakeMesh([[0, 1], [1, 2], [0, 2]])
        rates = np.array([1.6e12, 20e6, NAN])  # an optical ISL (past netem's 32-bit field), a slow link, none
        shaper = NetemShaper(mesh, ShapingConfig(), link_rate_bps=rates)
        delays = np.array([1e-6, 2e-3, 3e-3])
        shaper.start(delays, np.zeros((3, 3)))
        sent = [m for msgs in mesh.sent.values() for m in msgs]
        want = [expected(mesh, l, e, delays[l], None if np.isnan(rates[l]) else rates[l]) for l in range(3)
                for e in (0, 1)]
        assert sorted(sent) == sorted(want)
        assert [shaper.rate_bps(l) for l in range(3)] == [1.6e12, 20e6, None]
        assert "each link's rate from the series" in shaper.describe()

    def test_a_rate_past_32_bits_of_bytes_goes_as_rate64(self):
        p = nl.NetemParams(delay_s=1e-6, rate_bps=1.6e12)
        msg = nl.netem_qdisc(7, p, create=True)
        assert (200_000_000_000).to_bytes(8, "little") in msg  # 1.6 Tbit/s = 2e11 bytes/s in TCA_NETEM_RATE64

    def test_rate_mbps_replaces_the_series_rates_on_every_link(self):
        mesh = FakeMesh([[0, 1], [1, 2]])
        shaper = NetemShaper(mesh, ShapingConfig(rate_bps=1e9), link_rate_bps=np.array([1.6e12, NAN]))
        assert [shaper.rate_bps(l) for l in range(2)] == [1e9, 1e9]

    def test_no_series_rates_means_no_rate(self):
        shaper = NetemShaper(FakeMesh([[0, 1]]), ShapingConfig())
        assert shaper.rate_bps(0) is None


class TestDelayOnlyBackends:
    def test_the_delay_line_takes_a_series_with_rates_and_says_it_does_not_pace_them(self):
        line = DelayLineShaper(FakeMesh([[0, 1]]), ShapingConfig(), link_rate_bps=np.array([1.6e12]))
        assert "not paced" in line.describe()
        assert "not paced" not in DelayLineShaper(FakeMesh([[0, 1]]), ShapingConfig()).describe()
        NoShaper(FakeMesh([[0, 1]]), ShapingConfig(), link_rate_bps=np.array([1.6e12]))

    def test_run_json_says_which_rates_the_series_has_and_whether_they_were_paced(self):
        series = SimpleNamespace(link_rates_bps=lambda: np.array([1.6e12, 1.6e12, NAN]),
                                 is_gsl=np.array([False, False, True]))
        got = link_rates(series, "delayline", None)
        assert got == {"isl": {"min_bps": 1.6e12, "max_bps": 1.6e12, "links": 2}, "gsl": None, "paced": False}
        assert link_rates(series, "netem", None)["paced"] is True
        assert link_rates(series, "netem", 1e9)["paced"] is False  # --rate-mbps replaced them


@pytest.mark.root
@pytest.mark.netem
def test_netem_qdiscs_hold_each_links_rate(square, prefix, netem_caps):
    """On a kernel with sch_netem (tools/vm.sh test): the qdisc of each end shows its link's rate."""
    from meshemu.emulation.emulation import Emulation

    rates = np.full(len(square.links), NAN)
    rates[0], rates[1] = 40e9, 1e9  # 40 Gbit/s needs TCA_NETEM_RATE64
    with Emulation(dataclasses.replace(square, rate_bps=rates), shaper="netem", prefix=prefix,
                   log=lambda _: None) as emu:
        for link, want in ((0, 40e9), (1, 1e9), (2, None)):
            for end in (0, 1):
                ns = emu.plan.namespaces[emu.plan.links[link, end]]
                head = subprocess.run(["tc", "-n", ns, "qdisc", "show", "dev", emu.plan.ifname[link][end]],
                                      capture_output=True, text=True, check=True).stdout.splitlines()[0]
                got = re.search(r" rate ([0-9.]+)(Kbit|Mbit|Gbit)\b", head)
                if want is None:
                    assert got is None, head
                else:
                    assert float(got.group(1)) * {"Kbit": 1e3, "Mbit": 1e6, "Gbit": 1e9}[got.group(2)] == \
                        pytest.approx(want, rel=0.005), head
