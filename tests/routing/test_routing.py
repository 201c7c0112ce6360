import networkx as nx
import numpy as np
import pytest

from meshemu.routing import ground_station_distances_m, next_hops, shortest_route, table_changes

ONE_METRE = 1.0  # float32 link lengths: sums agree to well under a metre


def nx_length_without_relays(series, k, src, dst):
    """networkx's answer on the snapshot, other ground stations removed so none can relay."""
    g = series.snapshot(k)
    n = series.n_satellites
    g.remove_nodes_from([v for v in range(n, series.n_nodes) if v not in (src, dst)])
    try:
        return nx.shortest_path_length(g, src, dst, weight="length_m")
    except nx.NetworkXNoPath:
        return float("inf")


class TestShortestRoute:
    @pytest.mark.parametrize("k", [0, 17, 59])
    def test_matches_networkx_between_cities(self, demo_series, k):
        rng = np.random.default_rng(k)
        n = demo_series.n_satellites
        for src, dst in rng.choice(np.arange(n, demo_series.n_nodes), size=(15, 2)):
            if src == dst:
                continue
            ours = shortest_route(demo_series, k, src, dst)
            theirs = nx_length_without_relays(demo_series, k, src, dst)
            assert ours.length_m == pytest.approx(theirs, abs=ONE_METRE) or (not ours.reachable and theirs == float("inf"))

    def test_matches_networkx_between_satellites(self, demo_series):
        g = demo_series.snapshot(4)
        g.remove_nodes_from(range(demo_series.n_satellites, demo_series.n_nodes))
        theirs = nx.single_source_dijkstra_path_length(g, 0, weight="length_m")
        for dst, length in theirs.items():
            assert shortest_route(demo_series, 4, 0, dst).length_m == pytest.approx(length, abs=ONE_METRE)

    def test_ground_stations_never_relay(self, demo_series):
        n = demo_series.n_satellites
        for k in range(0, demo_series.n_steps, 7):
            for src in range(n, demo_series.n_nodes, 9):
                for dst in range(0, demo_series.n_nodes, 11):
                    r = shortest_route(demo_series, k, src, dst)
                    assert all(v < n for v in r.nodes[1:-1])

    def test_symmetric(self, demo_series):
        n = demo_series.n_satellites
        d = ground_station_distances_m(demo_series, 8)
        np.testing.assert_allclose(d, d.T, atol=ONE_METRE)
        a, b = n + 3, n + 40
        assert shortest_route(demo_series, 8, a, b).length_m == pytest.approx(d[3, 40], abs=ONE_METRE)

    def test_rtt_is_twice_the_length_over_c(self, demo_series):
        r = shortest_route(demo_series, 0, 0, 9)
        assert r.rtt_s == pytest.approx(2 * r.length_m / 299_792_458)


class TestForwarding:
    def test_following_next_hops_walks_a_shortest_path(self, demo_series):
        k = 12
        table = next_hops(demo_series, k)
        n = demo_series.n_satellites
        g = demo_series.snapshot(k)
        for src in range(0, demo_series.n_nodes, 5):
            for dst in range(1, demo_series.n_nodes, 6):
                if src == dst:
                    continue
                route = shortest_route(demo_series, k, src, dst)
                if not route.reachable:
                    assert table[src, dst] == -1
                    continue
                walked, node, length = [src], src, 0.0
                while node != dst:
                    nxt = int(table[node, dst])
                    assert nxt != -1 and (nxt < n or nxt == dst)  # no station relays
                    length += g.edges[node, nxt]["length_m"]
                    node = nxt
                    walked.append(node)
                    assert len(walked) <= demo_series.n_nodes
                assert length == pytest.approx(route.length_m, abs=ONE_METRE)

    def test_no_node_routes_to_itself(self, demo_series):
        table, length = __import__("meshemu.routing", fromlist=["x"]).forwarding_state(demo_series, 3)
        assert (np.diag(table) == -1).all() and (np.diag(length) == 0).all()

    def test_changes_between_steps(self, demo_series):
        a, b = next_hops(demo_series, 0), next_hops(demo_series, 59)
        ch = table_changes(a, b)
        patched = a.copy()
        patched[ch.node, ch.destination] = ch.next_hop
        np.testing.assert_array_equal(patched, b)
        assert ch.count > 0  # ten minutes of motion re-route something
        first = table_changes(None, a)
        assert first.count == int((a != -1).sum())
