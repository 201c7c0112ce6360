import threading

import numpy as np
import pytest

from meshemu.constants import SPEED_OF_LIGHT_M_PER_S
from meshemu.errors import InputError
from meshemu.routing import ForwardingStates, column_changes, forwarding_state, shortest_route, table_changes
from meshemu.routing.forwarding import walk

ONE_METRE = 1.0  # float32 link lengths: sums agree to well under a metre


def _walk(table, src, dst):
    return walk(table[:, dst], src, dst)


class TestForwardingStateColumns:
    def test_some_destinations_equal_the_same_columns_of_the_whole_table(self, demo_series):
        dest = [0, 17, demo_series.n_satellites, demo_series.n_nodes - 1]
        table, length = forwarding_state(demo_series, 5)
        part, part_length = forwarding_state(demo_series, 5, destinations=dest)
        assert part.shape == (demo_series.n_nodes, len(dest))
        np.testing.assert_array_equal(part, table[:, dest])
        np.testing.assert_array_equal(part_length, length[:, dest])


class TestWalk:
    def test_follows_next_hops_and_stops_at_a_gap_or_a_loop(self):
        towards = np.array([1, 2, 3, -1])
        assert walk(towards, 0, 3) == (0, 1, 2, 3)
        assert walk(towards, 3, 3) == (3,)
        towards[2] = 1  # 1 -> 2 -> 1 -> ...
        assert walk(towards, 0, 3) == ()
        assert walk(np.array([-1, -1, -1, -1]), 0, 3) == ()  # no route


class TestForwardingStates:
    def test_each_step_is_computed_once_however_often_it_is_asked(self, demo_series):
        paris, tokyo = demo_series.node_index("Paris"), demo_series.node_index("Tokyo")
        states = ForwardingStates(demo_series, watch=[paris, tokyo, 3])
        for k in range(demo_series.n_steps):  # the player: prepare, apply, a probe
            states.state(k)
            states.state(k)
            states.route(k, paris, tokyo)
        for k in range(demo_series.n_steps):  # the report, afterwards
            states.one_way_s(k, paris, 3)
            states.route(k, tokyo, 3)
        assert states.passes == demo_series.n_steps
        assert states.max_passes_per_step == 1

    def test_routes_after_the_table_is_gone_are_the_installed_ones(self, demo_series):
        paris, moscow = demo_series.node_index("Paris"), demo_series.node_index("Moscow")
        states = ForwardingStates(demo_series, watch=[paris, moscow], keep=1)
        tables = [states.state(k)[0].copy() for k in range(10)]
        for k in range(10):  # only step 9's whole table is still kept
            assert states.route(k, paris, moscow) == _walk(tables[k], paris, moscow)
            assert states.route(k, moscow, paris) == _walk(tables[k], moscow, paris)

    def test_a_step_nobody_needed_whole_is_computed_for_the_watched_only(self, demo_series):
        paris, moscow = demo_series.node_index("Paris"), demo_series.node_index("Moscow")
        states = ForwardingStates(demo_series, watch=[paris, moscow])
        k = 33
        route = states.route(k, paris, moscow)
        assert states.passes == 1
        table, length = forwarding_state(demo_series, k)
        assert route == _walk(table, paris, moscow)
        assert states.one_way_s(k, paris, moscow) == pytest.approx(length[paris, moscow] / SPEED_OF_LIGHT_M_PER_S)

    def test_delays_are_shortest_path_lengths(self, demo_series):
        a, b = demo_series.node_index("Tokyo"), demo_series.node_index("Moscow")
        states = ForwardingStates(demo_series, watch=[a, b])
        for k in (0, 20, 59):
            best = shortest_route(demo_series, k, a, b)
            assert states.length_m(k, a, b) == pytest.approx(best.length_m, abs=ONE_METRE)
            assert states.rtt_s(k, a, b) == pytest.approx(best.rtt_s, abs=2 * ONE_METRE / SPEED_OF_LIGHT_M_PER_S)

    def test_no_path_is_inf_and_an_empty_route(self, demo_series):
        n = demo_series.n_satellites
        states = ForwardingStates(demo_series)
        _, length = states.state(0)
        far = np.argwhere(~np.isfinite(length[n:, n:]))
        if not len(far):
            pytest.skip("every station pair is connected at step 0")
        a, b = (int(v) + n for v in far[0])
        assert states.route(0, a, b) == ()
        assert states.length_m(0, a, b) == float("inf")

    def test_only_the_last_tables_are_kept(self, demo_series):
        states = ForwardingStates(demo_series, keep=2)
        for k in range(5):
            states.state(k)
        assert sorted(states._tables) == [3, 4]

    def test_threads_asking_for_one_step_share_one_pass(self, demo_series):
        states = ForwardingStates(demo_series)
        threads = [threading.Thread(target=states.state, args=(7,)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert states.passes == 1


def test_watching_after_a_step_was_computed_costs_no_second_pass(demo_series):
    states = ForwardingStates(demo_series, keep=2)
    states.state(0)  # placement anchors before the run knows whom it watches
    paris, tokyo = demo_series.node_index("Paris"), demo_series.node_index("Tokyo")
    states.watch([paris, tokyo])
    for k in range(1, 6):
        states.state(k)
    assert states.route(0, paris, tokyo) and states.passes == 6


class TestDestinations:
    """Mode ``destinations``: only the columns towards the destinations, each the whole table's column."""

    def test_auto_is_all_for_small_meshes_and_destinations_above(self, demo_series):
        assert ForwardingStates(demo_series).mode == "all"  # 164 nodes
        from meshemu.routing import resolve_route_mode
        from meshemu.routing.states import ALL_ROUTES_MAX_NODES

        assert resolve_route_mode("auto", ALL_ROUTES_MAX_NODES + 1) == "destinations"
        with pytest.raises(InputError, match="routes must be one of"):
            resolve_route_mode("some", 10)

    def test_columns_equal_the_whole_tables_columns_every_step(self, demo_series):
        paris, sat = demo_series.node_index("Paris"), 17
        states = ForwardingStates(demo_series, watch=[paris, sat], mode="destinations")
        stations = list(range(demo_series.n_satellites, demo_series.n_nodes))
        assert states.destinations.tolist() == stations + [sat]  # every station, then the watched satellite
        for k in range(demo_series.n_steps):
            cols = states.columns(k)
            table, length = forwarding_state(demo_series, k)
            np.testing.assert_array_equal(cols.next_hop, table[:, cols.destinations])
            np.testing.assert_array_equal(cols.length_m, length[:, cols.destinations])
            assert states.route(k, sat, paris) == _walk(table, sat, paris)
        assert states.passes == demo_series.n_steps and states.max_passes_per_step == 1
        assert not states._tables  # no whole table was ever made

    def test_a_destination_added_later_costs_its_own_tree_only(self, demo_series):
        states = ForwardingStates(demo_series, mode="destinations")
        before = states.columns(4)
        assert states.route_to([3, 40]) == [3, 40] and states.route_to([3]) == []
        after = states.columns(4)
        table, length = forwarding_state(demo_series, 4)
        np.testing.assert_array_equal(after.next_hop[:, : len(before.destinations)], before.next_hop)
        np.testing.assert_array_equal(after.next_hop, table[:, after.destinations])
        np.testing.assert_array_equal(after.length_m, length[:, after.destinations])
        assert states.passes == 1 and states.summary()["column_extensions"] == 1

    def test_distances_from_a_node_are_the_routed_lengths(self, demo_series):
        tokyo = demo_series.node_index("Tokyo")
        for mode in ("destinations", "all"):
            states = ForwardingStates(demo_series, mode=mode)
            dist = states.distances_from(12, tokyo)
            _, length = forwarding_state(demo_series, 12)
            finite = np.isfinite(length[tokyo])
            np.testing.assert_array_equal(np.isfinite(dist), finite)
            np.testing.assert_allclose(dist[finite], length[tokyo][finite], rtol=0, atol=ONE_METRE)

    def test_column_changes_with_every_node_a_destination_are_the_table_changes(self, demo_series):
        a, b = forwarding_state(demo_series, 0)[0], forwarding_state(demo_series, 1)[0]
        whole = table_changes(a, b)
        cols = column_changes(a, b, np.arange(demo_series.n_nodes))
        for f in ("node", "destination", "next_hop"):
            np.testing.assert_array_equal(getattr(cols, f), getattr(whole, f))
        d = np.array([70, 3, 100])
        part = column_changes(a[:, d[:2]], b[:, d], d)  # the third column is new: all its routes installed
        assert set(zip(part.node.tolist(), part.destination.tolist())) == (
            {(u, int(v)) for u, v in zip(whole.node, whole.destination) if v in (70, 3)}
            | {(u, 100) for u in np.flatnonzero(b[:, 100] != -1)})
