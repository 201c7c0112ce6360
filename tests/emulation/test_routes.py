"""Routes towards destinations only, and destinations added at run time (root): the demo mesh, routed
the way big meshes are (mode ``destinations``), forwards exactly as the whole table says."""

import subprocess

import numpy as np
import pytest

from meshemu.emulation.emulation import Emulation
from meshemu.emulation.probe import probe_pairs
from meshemu.routing import ForwardingStates, forwarding_state, shortest_route

pytestmark = pytest.mark.root


def traceroute(emu, src, dst):
    h, d = emu.host(src), emu.host(dst)
    out = h.popen(f"traceroute -n -q1 -w1 -m12 -s {h.IP()} {d.IP()}").communicate()[0].decode()
    return [line.split()[1] for line in out.splitlines()[1:] if len(line.split()) > 1]


def expected_path(emu, k, src, dst):
    route = shortest_route(emu.series, k, emu.plan.node(src), emu.plan.node(dst))
    return [emu.plan.addresses[v] for v in route.nodes[1:]]


def ping_ok(emu, src, dst):
    h = emu.host(src)
    return h.popen(f"ping -n -c1 -W1 -I {h.IP()} {emu.host(dst).IP()}").wait() == 0


def kernel_routes(emu, node) -> int:
    out = subprocess.run(["ip", "-n", emu.plan.namespaces[emu.plan.node(node)], "route", "show", "proto", "44"],
                         capture_output=True, text=True, check=True).stdout
    return len(out.splitlines())


def test_destination_routes_are_the_whole_tables_columns_and_reach_adds_one(demo_series, prefix, test_shaper):
    a, b = "p01s02", "p05s06"  # two satellites nobody routes to at first
    routes = ForwardingStates(demo_series, mode="destinations")
    with Emulation(demo_series, shaper=test_shaper, prefix=prefix, routes=routes, log=lambda _: None) as emu:
        stations = list(range(demo_series.n_satellites, demo_series.n_nodes))
        assert emu.destinations.tolist() == stations
        whole = forwarding_state(demo_series, 0)[0]
        np.testing.assert_array_equal(emu._table, whole[:, stations])
        assert emu.routes_installed() == int((whole[:, stations] != -1).sum())
        assert kernel_routes(emu, a) == int((whole[emu.plan.node(a), stations] != -1).sum())
        assert traceroute(emu, "Tokyo", "Paris") == expected_path(emu, 0, "Tokyo", "Paris")
        assert not ping_ok(emu, a, b)  # no route towards either satellite yet
        added = emu.reach(a, b)
        assert added == int((whole[:, [emu.plan.node(a), emu.plan.node(b)]] != -1).sum())
        assert emu.reach(a) == 0  # a destination already
        assert ping_ok(emu, a, b)
        assert traceroute(emu, a, b) == expected_path(emu, 0, a, b)
        emu.apply_step(30)  # a jump: the reached columns follow the series like every other
        np.testing.assert_array_equal(emu._table, forwarding_state(demo_series, 30)[0][:, emu.destinations])
        assert traceroute(emu, a, b) == expected_path(emu, 30, a, b)
        assert traceroute(emu, "Tokyo", a) == expected_path(emu, 30, "Tokyo", a)
        assert routes.max_passes_per_step == 1


def test_a_reached_node_gets_its_delay(demo_series, prefix):
    """Delay line: the (N, D) matrix holds the reached node's column, and an echo there and back takes the
    series' RTT (within 2 ms: a median of a few probes on a shared 2-core machine)."""
    a, b = "p02s03", "p06s01"
    routes = ForwardingStates(demo_series, mode="destinations")
    with Emulation(demo_series, shaper="delayline", prefix=prefix, routes=routes, log=lambda _: None) as emu:
        ia, ib = emu.plan.node(a), emu.plan.node(b)
        emu.reach(a, b)
        line = emu._backend.line
        assert line.destinations[-2:] == [ia, ib] and line.delays().shape == (demo_series.n_nodes, 102)
        probes = [p for _ in range(5) for p in probe_pairs(emu, [(ia, ib)], 0, 0.0)]
        measured = [p.measured_rtt_ms for p in probes if p.measured_rtt_ms is not None]
        expected_ms = emu.expected_rtt_s(ia, ib) * 1e3
        assert len(measured) >= 4 and expected_ms > 5
        assert abs(np.median(measured) - expected_ms) < 2.0, (measured, expected_ms)


def test_the_cli_reaches_every_node_a_command_line_names(monkeypatch, capsys):
    """Mininet's CLI: 'p01s02 ping p05s06' makes both destinations before the command runs."""
    from mininet.cli import CLI

    from meshemu.emulation.nodes import ReachingCLI

    reached, ran = [], []

    class FakeEmulation:
        def reach(self, *nodes):
            reached.append(nodes)
            return 7

    cli = object.__new__(ReachingCLI)  # Mininet's constructor runs the command loop
    cli.mn, cli.emulation = {"p01s02": 1, "p05s06": 2, "Paris": 3}, FakeEmulation()
    monkeypatch.setattr(CLI, "default", lambda self, line: ran.append(line))
    cli.default("p01s02 ping -c1 p05s06")
    cli.default("Paris ip route")  # names no other node: nothing to reach
    assert reached == [("p01s02", "p05s06")] and len(ran) == 2
    assert "routes towards p01s02, p05s06: 7 more" in capsys.readouterr().out
