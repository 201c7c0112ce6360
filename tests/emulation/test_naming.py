import ipaddress

import numpy as np
import pytest

from meshemu.emulation.naming import IFNAMSIZ, plan_mesh
from meshemu.errors import InputError


def test_demo_plan_is_readable_and_unique(demo_series):
    s = demo_series
    plan = plan_mesh(s.node_names, s.n_satellites, s.links, s.places())
    assert plan.node_names[0] == "p00s00" and plan.addresses[0] == "10.100.0.1"
    assert plan.node_names[s.n_satellites] == "Tokyo" and plan.addresses[s.n_satellites] == "10.200.0.1"
    assert "NewYork" in plan.node_names and "SaoPaulo" in plan.node_names
    assert len(set(plan.node_names)) == len(plan.node_names) == len(set(plan.addresses))
    assert all(ns.startswith("meshemu.") for ns in plan.namespaces)


def test_interface_names_fit_and_name_the_peer(demo_series):
    s = demo_series
    plan = plan_mesh(s.node_names, s.n_satellites, s.links, s.places())
    per_node = {}
    for l, (a, b) in enumerate(s.links):
        ia, ib = plan.ifname[l]
        assert len(ia) <= IFNAMSIZ and len(ib) <= IFNAMSIZ
        assert plan.node_names[b].startswith(ia.split("_")[0]) and plan.node_names[a].startswith(ib.split("_")[0])
        per_node.setdefault(a, []).append(ia)
        per_node.setdefault(b, []).append(ib)
    assert all(len(set(v)) == len(v) for v in per_node.values())


def test_link_addresses_are_consecutive_31s(demo_series):
    s = demo_series
    plan = plan_mesh(s.node_names, s.n_satellites, s.links, s.places())
    a, b = plan.link_address(7)
    assert ipaddress.ip_address(b) == ipaddress.ip_address(a) + 1 and int(ipaddress.ip_address(a)) % 2 == 0
    np.testing.assert_array_equal(plan.link_address_int()[7], [int(ipaddress.ip_address(a)), int(ipaddress.ip_address(b))])


def test_multi_shell_and_gridless_names():
    places = np.array([[0, 0, 0], [1, 0, 0], [0, -1, -1]])
    plan = plan_mesh(("a", "b", "c", "Rio de Janeiro"), 3, np.array([[0, 1], [2, 3]]), places)
    assert plan.node_names == ("a0p00s00", "b0p00s00", "sat2", "RiodeJaneiro")
    assert plan.addresses[:3] == ("10.100.0.1", "10.101.0.1", "10.99.0.3")
    assert plan.node("Rio de Janeiro") == 3 and plan.node("sat2") == 2


def test_bad_prefix_is_refused():
    with pytest.raises(InputError, match="prefix"):
        plan_mesh(("a",), 1, np.zeros((0, 2)), np.zeros((1, 3)), prefix="no spaces")


class TestOneLinkPerPair:
    """A pair joined twice (in either order) or a node joined to itself is refused before anything is built."""

    places = np.array([[0, 0, 0], [0, 0, 1], [0, 1, 0]])

    def test_the_same_pair_twice_in_either_order(self):
        links = np.array([[0, 1], [1, 2], [2, 0], [1, 0]])
        with pytest.raises(InputError, match=r"lists a - b twice \(links 0 and 3; 1 pair"):
            plan_mesh(("a", "b", "c"), 3, links, self.places)

    def test_a_link_to_itself(self):
        with pytest.raises(InputError, match="joins b to itself"):
            plan_mesh(("a", "b", "c"), 3, np.array([[0, 1], [1, 1]]), self.places)

    def test_distinct_pairs_pass(self):
        plan = plan_mesh(("a", "b", "c"), 3, np.array([[0, 1], [1, 2], [2, 0]]), self.places)
        assert len(plan.links) == 3
