"""The netem backend on a real kernel (root, sch_netem): what the qdiscs hold, and what crosses them.

This machine's kernel has no sch_netem, so these skip here with the reason; ``tools/vm.sh test``
runs them in a Debian VM with the stock kernel (and fails them there if netem is missing).
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess

import numpy as np
import pytest

from meshemu.constants import SPEED_OF_LIGHT_M_PER_S
from meshemu.emulation.emulation import Emulation
from meshemu.emulation.probe import ping_once
from meshemu.emulation.shaping import ShapingConfig, queue_limit_packets

pytestmark = [pytest.mark.root, pytest.mark.netem]

_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}
_RATE_UNITS = {"bit": 1.0, "Kbit": 1e3, "Mbit": 1e6, "Gbit": 1e9}


@dataclasses.dataclass
class Qdisc:
    kind: str
    handle: str
    root: bool
    limit: int | None
    delay_s: float
    rate_bps: float | None
    loss: float
    sent_packets: int | None


def qdisc(emu, link: int, end: int) -> Qdisc:
    """The root qdisc of one link end, as ``tc -s qdisc show`` prints it in that node's namespace."""
    ns = emu.plan.namespaces[emu.plan.links[link, end]]
    out = subprocess.run(["tc", "-n", ns, "-s", "qdisc", "show", "dev", emu.plan.ifname[link][end]],
                         capture_output=True, text=True, check=True).stdout
    head = out.splitlines()[0]
    kind, handle = head.split()[1:3]
    delay = re.search(r" delay ([0-9.]+)(s|ms|us|ns)\b", head)
    rate = re.search(r" rate ([0-9.]+)(bit|Kbit|Mbit|Gbit)\b", head)
    loss = re.search(r" loss ([0-9.]+)%", head)
    limit = re.search(r" limit (\d+)", head)
    sent = re.search(r"Sent \d+ bytes (\d+) pkt", out)
    return Qdisc(kind, handle, " root " in head, int(limit.group(1)) if limit else None,
                 float(delay.group(1)) * _UNITS[delay.group(2)] if delay else 0.0,
                 float(rate.group(1)) * _RATE_UNITS[rate.group(2)] if rate else None,
                 float(loss.group(1)) / 100 if loss else 0.0, int(sent.group(1)) if sent else None)


def quiet():
    return lambda _: None


# tc prints times with three significant digits ("%.3g"): 0.5 % covers its rounding
TC_REL = 0.005


def test_every_link_end_has_a_root_netem_holding_its_delay(square, prefix, netem_caps):
    with Emulation(square, shaper="netem", prefix=prefix, log=quiet()) as emu:
        delay_s = np.nan_to_num(square.length_m[0].astype(float) / SPEED_OF_LIGHT_M_PER_S, nan=0.0)
        for link in range(len(square.links)):
            for end in (0, 1):
                q = qdisc(emu, link, end)
                assert (q.kind, q.handle, q.root) == ("netem", "1:", True)
                assert q.delay_s == pytest.approx(delay_s[link], rel=TC_REL, abs=1e-9)
                # the queue holds twice bandwidth x delay (10 Gbit/s assumed without a rate), >= 1,000
                assert q.limit == queue_limit_packets(delay_s[link], None)
                assert q.rate_bps is None and q.loss == 0.0


def stretched(series, link: int, step: int, length_m: float):
    """The same series with one link's length changed from ``step`` on."""
    length = series.length_m.copy()
    length[step:, link] = length_m
    return dataclasses.replace(series, length_m=length)


def ping_path(emu, src: str, dst: str, n: int) -> np.ndarray:
    a, b = emu.plan.node(src), emu.plan.node(dst)
    out = [ping_once(emu.plan.namespaces[a], emu.plan.addresses[a], emu.plan.addresses[b]) for _ in range(n)]
    assert None not in out, "probes were lost"
    return np.array(out)


def test_a_delay_change_keeps_the_qdisc_and_its_counters(square, prefix, netem_caps):
    alpha_link = 4  # satellite 0 - Alpha: 600 km at step 0, 900 km from step 1
    moving = stretched(square, alpha_link, 1, 900e3)
    with Emulation(moving, shaper="netem", prefix=prefix, log=quiet()) as emu:
        ping_path(emu, "Alpha", "Beta", 5)
        before = qdisc(emu, alpha_link, 1)  # Alpha's end
        assert before.sent_packets >= 5
        assert before.delay_s == pytest.approx(600e3 / SPEED_OF_LIGHT_M_PER_S, rel=TC_REL)
        changes = emu.apply_step(1)
        assert changes.delay_changes >= 2  # both ends of the stretched link
        after = qdisc(emu, alpha_link, 1)
        # a qdisc deleted and added again would have a fresh counter (and would have blipped the link)
        assert after.handle == before.handle and after.sent_packets >= before.sent_packets
        assert after.delay_s == pytest.approx(900e3 / SPEED_OF_LIGHT_M_PER_S, rel=TC_REL)
        # netem never delivers early: the fastest probe bounds the applied path delay from below
        rtt_ms = ping_path(emu, "Alpha", "Beta", 10)
        assert rtt_ms.min() >= emu.expected_rtt_s(emu.plan.node("Alpha"), emu.plan.node("Beta")) * 1e3 - 0.01


def iperf3(emu, src: str, dst: str, *args: str) -> dict:
    """One iperf3 run from ``src`` to ``dst``'s node address; its JSON report."""
    server = emu.host(dst).popen(f"iperf3 -s -B {emu.host(dst).IP()}")
    try:
        for _ in range(50):  # until the server listens: a client that finds no server fails at once
            out = emu.host(src).popen(f"iperf3 -c {emu.host(dst).IP()} -B {emu.host(src).IP()} -J " + " ".join(args))
            report = json.loads(out.communicate(timeout=60)[0])
            if "unable to connect" not in report.get("error", ""):
                assert "error" not in report, report["error"]
                return report
        raise AssertionError("iperf3's server never listened")
    finally:
        server.kill()
        server.wait()


def test_a_rate_limit_holds_tcp_to_the_rate(square, prefix, netem_caps):
    rate_bps = 20e6
    with Emulation(square, shaper="netem", prefix=prefix, shaping=ShapingConfig(rate_bps=rate_bps),
                   log=quiet()) as emu:
        q = qdisc(emu, 4, 0)
        assert q.rate_bps == pytest.approx(rate_bps, rel=TC_REL)
        assert q.limit == queue_limit_packets(q.delay_s, rate_bps)
        report = iperf3(emu, "Alpha", "Beta", "-t", "4", "-O", "1")
        goodput_bps = report["end"]["sum_received"]["bits_per_second"]
        # netem counts whole Ethernet frames (1,514 bytes) and TCP carries 1,448 of them
        expected_bps = rate_bps * 1448 / 1514
        assert goodput_bps == pytest.approx(expected_bps, rel=0.10), report["end"]["sum_received"]


def test_loss_drops_the_share_it_should(square, prefix, netem_caps):
    loss = 0.05
    with Emulation(square, shaper="netem", prefix=prefix, shaping=ShapingConfig(loss=loss), log=quiet()) as emu:
        assert qdisc(emu, 4, 0).loss == pytest.approx(loss, rel=TC_REL)
        # echoes need no control connection (iperf3's own TCP one stalls at this much loss)
        sent = 2000
        alpha, beta = emu.host("Alpha"), emu.host("Beta")
        out = alpha.popen(f"ping -n -q -c {sent} -i 0.001 -W 2 -I {alpha.IP()} {beta.IP()}").communicate()[0].decode()
        received = int(re.search(r"(\d+) received", out).group(1))
        # Alpha - 0 - 1 - Beta and back: each echo crosses six netem qdiscs, each dropping `loss`
        expected = 1 - (1 - loss) ** 6
        tolerance = 4 * np.sqrt(expected * (1 - expected) / sent)  # four binomial standard deviations
        assert 1 - received / sent == pytest.approx(expected, abs=tolerance), out


EXPERIMENT = """
name: shaped
constellation: demo
ground_station: Alpha
shaping: {backend: netem, %s}
model: {source: "tiny:llama:0"}
"""


@pytest.mark.parametrize("shaping", ["rate_mbps: 20", "loss: 0.05"])
def test_an_experiment_s_shaping_reaches_every_link(square, prefix, netem_caps, tmp_path, shaping):
    """The experiment file's rate and loss, through the run plan, measured on the links the run builds."""
    from dataclasses import replace

    from meshemu.deployment.deploy import emulation_of
    from meshemu.experiments.plan import plan_run
    from meshemu.experiments.spec import load_experiment
    from meshemu.model.tiny import tiny_config

    (tmp_path / "e.yaml").write_text(EXPERIMENT % shaping)
    spec = load_experiment(tmp_path / "e.yaml")
    run = replace(plan_run(spec, "tiny:llama:0", tiny_config("llama"), None), prefix=prefix)
    with emulation_of(square, run, log=quiet()) as emu:
        q = qdisc(emu, 4, 0)
        if spec.shaping.rate_mbps:
            assert q.rate_bps == pytest.approx(20e6, rel=TC_REL)
            goodput_bps = iperf3(emu, "Alpha", "Beta", "-t", "4", "-O", "1")["end"]["sum_received"]["bits_per_second"]
            assert goodput_bps == pytest.approx(20e6 * 1448 / 1514, rel=0.10)  # TCP's share of a frame
        else:
            assert q.loss == pytest.approx(0.05, rel=TC_REL)
            sent = 2000
            alpha, beta = emu.host("Alpha"), emu.host("Beta")
            out = alpha.popen(f"ping -n -q -c {sent} -i 0.001 -W 2 -I {alpha.IP()} {beta.IP()}").communicate()[0].decode()
            lost = 1 - int(re.search(r"(\d+) received", out).group(1)) / sent
            expected = 1 - (1 - 0.05) ** 6  # six netem qdiscs there and back
            assert lost == pytest.approx(expected, abs=4 * np.sqrt(expected * (1 - expected) / sent)), out

