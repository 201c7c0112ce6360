"""Missing capabilities and bad input: one clear line, nothing made."""

import os

import pytest

from meshemu.cli import main
from meshemu.emulation.kernel import Capabilities
from meshemu.emulation.mesh import check_namespace_limit
from meshemu.errors import CapabilityError


def test_not_root_is_one_line(monkeypatch, capsys):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    for argv in (["emulate", "--duration", "1"], ["probe", "--duration", "1"], ["clean"]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "needs root" in err[0] and "sudo" in err[0]


def test_netem_asked_for_where_it_is_missing():
    caps = Capabilities(root=True, netem=False, nfqueue=True, mininet=True, kernel="6.18")
    with pytest.raises(CapabilityError, match="no sch_netem.*--shaper delayline"):
        caps.shaper("netem")
    assert caps.shaper("auto") == "delayline"
    assert Capabilities(True, True, True, True, "6.1").shaper("auto") == "netem"


def test_no_backend_at_all():
    with pytest.raises(CapabilityError, match="neither sch_netem nor NFQUEUE"):
        Capabilities(True, False, False, True, "x").shaper("auto")


def test_more_nodes_than_the_kernel_allows(tmp_path):
    limit = tmp_path / "max_net_namespaces"
    limit.write_text("100\n")
    with pytest.raises(CapabilityError, match="kernel allows 100.*user.max_net_namespaces"):
        check_namespace_limit(1684, str(limit))
    check_namespace_limit(50, str(limit))


def test_the_kernel_refusing_a_namespace_names_the_limit(monkeypatch):
    """Past user.max_net_namespaces (counting every namespace that exists, not just ours) the kernel says
    ENOSPC, which ip prints as "No space left on device": the error names the sysctl instead."""
    import subprocess

    from meshemu.emulation import mesh

    refused = subprocess.CompletedProcess([], 1, "", 'Failed to create a new network namespace "x.p00s01": '
                                                    "No space left on device\nCommand failed /tmp/a.ip:2\n")
    monkeypatch.setattr(mesh.subprocess, "run", lambda *a, **k: refused)
    with pytest.raises(CapabilityError, match=r"exist and user.max_net_namespaces is .*sysctl -w"):
        mesh.run_ip_batch(["netns add x.p00s00", "netns add x.p00s01"], "creating namespaces")


def test_long_ip_batches_run_in_several_processes(monkeypatch):
    """iproute2 keeps every namespace a batch names open: a batch of links is split so it never runs out."""
    import subprocess

    from meshemu.emulation import mesh

    calls = []
    monkeypatch.setattr(mesh.subprocess, "run", lambda argv, **k: calls.append(open(argv[-1]).read().count("\n"))
                        or subprocess.CompletedProcess(argv, 0, "", ""))
    mesh.run_ip_batch([f"link add l{i}" for i in range(2 * mesh.IP_BATCH_LINES + 1)], "creating links")
    assert calls == [mesh.IP_BATCH_LINES, mesh.IP_BATCH_LINES, 1]
