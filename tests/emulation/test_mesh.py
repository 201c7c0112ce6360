"""A small mesh in real namespaces: paths, route changes, links going down, cleanup (root)."""

import os
import subprocess

import pytest

from meshemu.emulation.emulation import Emulation
from meshemu.emulation.mesh import existing_namespaces
from meshemu.errors import MeshemuError
from meshemu.routing import shortest_route

pytestmark = pytest.mark.root


def traceroute(emu, src, dst):
    """Node addresses on the path, as the kernel forwards (traceroute from src's namespace)."""
    h, d = emu.host(src), emu.host(dst)
    out = h.popen(f"traceroute -n -q1 -w1 -m8 -s {h.IP()} {d.IP()}").communicate()[0].decode()
    return [line.split()[1] for line in out.splitlines()[1:] if len(line.split()) > 1]


def ping_ok(emu, src, dst, count=1):
    h = emu.host(src)
    return h.popen(f"ping -n -c{count} -W1 -i0.2 -I {h.IP()} {emu.host(dst).IP()}").wait() == 0


def expected_path(emu, k, src, dst):
    route = shortest_route(emu.series, k, emu.plan.node(src), emu.plan.node(dst))
    return [emu.plan.addresses[v] for v in route.nodes[1:]]


class TestSquare:
    def test_paths_follow_the_series_through_changes(self, square, prefix, test_shaper):
        with Emulation(square, shaper=test_shaper, prefix=prefix, log=lambda _: None) as emu:
            assert traceroute(emu, "Alpha", "Beta") == expected_path(emu, 0, "Alpha", "Beta")
            assert len(expected_path(emu, 0, "Alpha", "Beta")) == 3  # 0, 1, Beta
            emu.apply_step(1)  # link 0-1 down: the route goes round the square
            assert traceroute(emu, "Alpha", "Beta") == expected_path(emu, 1, "Alpha", "Beta")
            assert len(expected_path(emu, 1, "Alpha", "Beta")) == 5
            emu.apply_step(3)  # a jump: Beta now hangs off satellite 2
            assert traceroute(emu, "Alpha", "Beta") == expected_path(emu, 3, "Alpha", "Beta")

    def test_a_downed_link_carries_nothing(self, square, prefix, test_shaper):
        with Emulation(square, shaper=test_shaper, prefix=prefix, log=lambda _: None) as emu:
            assert ping_ok(emu, "Alpha", "Beta")
            emu.apply_step(1)
            emu.apply_step(2)  # Beta's only link is down
            assert not ping_ok(emu, "Alpha", "Beta")
            # and nothing crosses the downed ISL 0-1 even when sent straight at it
            h = emu.host("p00s00")
            peer = emu.plan.link_address(0)[1]
            assert h.popen(f"ping -n -c1 -W1 {peer}").wait() != 0
            emu.apply_step(3)
            assert ping_ok(emu, "Alpha", "Beta")

    def test_stations_never_forward(self, square, prefix, test_shaper):
        with Emulation(square, shaper=test_shaper, prefix=prefix, log=lambda _: None) as emu:
            out = emu.host("Alpha").cmd("sysctl -n net.ipv4.ip_forward").strip()
            assert out == "0"
            assert emu.host("p00s00").cmd("sysctl -n net.ipv4.ip_forward").strip() == "1"

    def test_mininet_hosts_answer_commands(self, square, prefix, test_shaper):
        with Emulation(square, shaper=test_shaper, prefix=prefix, log=lambda _: None) as emu:
            h = emu.host("p00s00")
            assert h.IP() == "10.100.0.1"
            assert "10.100.0.1/32" in h.cmd("ip -br addr show lo")
            routes = h.cmd("ip route show proto 44")
            assert "10.200.0.2 via 172.16.0.1 dev p00s01" in routes  # Beta via satellite 1
        assert not existing_namespaces(prefix)
        assert subprocess.run(["pgrep", "-f", "mininet:p00s00"], capture_output=True).returncode != 0


class TestLinksCarryAtOnce:
    """A veth set up drops what is sent before the kernel's link watcher attaches its queue (a few
    ms later): the first packet after the mesh comes up, or after a link comes up at a step, must
    still arrive, because routes move onto a link only once it is operationally up."""

    def first_echo(self, emu, src, dst):
        from meshemu.emulation.probe import echo_rtt_s

        a, b = emu.plan.node(src), emu.plan.node(dst)
        return echo_rtt_s(emu.plan.namespaces[a], emu.plan.addresses[a], emu.plan.addresses[b], timeout_s=1.0)

    def test_right_after_start(self, square, prefix, test_shaper):
        lost = 0
        for _ in range(8):  # the race was lost in about half the meshes before
            with Emulation(square, shaper=test_shaper, prefix=prefix, log=lambda _: None) as emu:
                lost += self.first_echo(emu, "Alpha", "Beta") is None
        assert lost == 0

    def test_right_after_a_link_comes_up(self, square, prefix, test_shaper):
        with Emulation(square, shaper=test_shaper, prefix=prefix, log=lambda _: None) as emu:
            lost = 0
            for _ in range(6):
                emu.apply_step(2)  # Beta cut off
                changes = emu.apply_step(3)  # links 0-1 and 2-Beta come up; Alpha-0-1-2-Beta
                assert changes.link_up == 2 and changes.carrier_wait_s >= 0
                lost += self.first_echo(emu, "Alpha", "Beta") is None
            assert lost == 0


class TestCleanup:
    def test_an_exception_leaves_nothing(self, square, prefix, test_shaper):
        with pytest.raises(RuntimeError):
            with Emulation(square, shaper=test_shaper, prefix=prefix, log=lambda _: None) as emu:
                emu.host("Alpha").cmd("true")
                raise RuntimeError("boom")
        assert not existing_namespaces(prefix)

    def test_leftovers_are_reported_then_cleaned(self, square, prefix, test_shaper):
        from meshemu.emulation.clean import clean

        emu = Emulation(square, shaper=test_shaper, prefix=prefix, log=lambda _: None)
        emu.start()
        sleeper = subprocess.Popen(["nsenter", f"--net=/run/netns/{emu.plan.namespaces[0]}", "sleep", "60"])
        emu.mesh.sockets.close()  # as if the process had been killed: nothing torn down
        try:
            with pytest.raises(MeshemuError, match="meshemu clean"):
                Emulation(square, shaper=test_shaper, prefix=prefix, log=lambda _: None).start()
            done = clean(prefix)
            assert done["namespaces"] == 6 and done["processes"] >= 1
            assert sleeper.wait(timeout=5) is not None
            assert not existing_namespaces(prefix)
        finally:
            sleeper.kill()

    def test_clean_touches_only_its_prefix(self, prefix):
        from meshemu.emulation.clean import clean
        from meshemu.emulation.mesh import run_ip_batch

        other = f"other{os.getpid()}.x"
        run_ip_batch([f"netns add {other}"], "test")
        try:
            clean(prefix)
            assert os.path.exists(f"/run/netns/{other}")
        finally:
            run_ip_batch([f"netns del {other}"], "test")


def test_demo_mesh_matches_the_series(demo_series, prefix, test_shaper):
    with Emulation(demo_series, shaper=test_shaper, prefix=prefix, log=lambda _: None) as emu:
        for src, dst in (("Tokyo", "Paris"), ("NewYork", "London")):
            assert traceroute(emu, src, dst) == expected_path(emu, 0, src, dst)
        emu.apply_step(30)
        assert traceroute(emu, "Tokyo", "Paris") == expected_path(emu, 30, "Tokyo", "Paris")


def test_the_cpus_are_kept_from_deep_idle_while_the_mesh_is_up(square, prefix, test_shaper, monkeypatch):
    """Timers (the delay line's releases, netem's) fire late on a CPU waking from deep idle: an emulation holds
    the kernel's wake-latency request from start to stop, and says so."""
    from meshemu.cpu_latency import PM_QOS_PATH, enforced_us

    if enforced_us() is None or not os.access(PM_QOS_PATH, os.W_OK):
        pytest.skip(f"{PM_QOS_PATH} is absent or not writable here")
    monkeypatch.delenv("MESHEMU_CPU_LATENCY", raising=False)
    before, lines = enforced_us(), []
    with Emulation(square, shaper=test_shaper, prefix=prefix, log=lines.append) as emu:
        assert emu.cpu_latency.held and enforced_us() == 0
        assert f"cpu idle: held at 0 us (PM QoS request on {PM_QOS_PATH})" in lines
    assert not emu.cpu_latency.held and enforced_us() == before
