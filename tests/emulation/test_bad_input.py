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
