"""The fast link series and the bench's bounded searches give today's results, bit for bit.

The reference below is ``compute_link_series`` as it was before it wrote
chunks straight into float32 arrays and before ground links were pre-filtered
(every station-satellite pair tested in float64, one (T, N, 3) array of
positions, concatenated at the end). Equality is exact: no tolerance.
"""

import numpy as np
import pytest

from meshemu.constellation import GslRules, TimeGrid, default_ground_stations, load_constellation
from meshemu.constellation.ground import ground_positions_m
from meshemu.constellation.propagate import propagate_itrs_m
from meshemu.links import LinkSeries, compute_link_series
from meshemu.links.gsl import dense_visible_links, visible_links
from meshemu.links.isl import isl_lengths_m
from meshemu.routing import ground_station_distances_m, split_graph
from meshemu.routing.paths import bounded_station_distances_m, search_limits_m


def reference_link_series(c, stations, grid, chunk_steps=50):
    n_sat, n_t = c.size, len(grid)
    gs_pos, gs_up = ground_positions_m(stations)
    pairs = c.isl_pairs
    cross_plane = (c.plane[pairs[:, 0]] != c.plane[pairs[:, 1]]) if len(pairs) else np.zeros(0, bool)
    isl_len = np.empty((n_t, len(pairs)), dtype=np.float32)
    sat_pos = np.empty((n_t, n_sat, 3), dtype=np.float32)
    parts = []
    for t0 in range(0, n_t, chunk_steps):
        sub = TimeGrid(grid.epoch_utc, grid.offsets_s[t0:t0 + chunk_steps], grid.ut1_equals_utc)
        pos = propagate_itrs_m(c.satrecs, sub, c.satellite_names)
        sat_pos[t0:t0 + len(sub)] = pos
        isl_len[t0:t0 + len(sub)] = isl_lengths_m(
            pos, pairs, max_range_m=None if c.isl.max_range_km is None else c.isl.max_range_km * 1e3,
            min_grazing_altitude_m=c.isl.min_grazing_altitude_km * 1e3, cross_plane=cross_plane,
            max_cross_plane_latitude_deg=c.isl.max_cross_plane_latitude_deg)
        t, g, s, rng = dense_visible_links(pos, gs_pos, gs_up, min_elevation_deg=c.gsl.elevation_limit_deg,
                                           max_range_m=None if c.gsl.max_range_km is None else c.gsl.max_range_km * 1e3,
                                           policy=c.gsl.policy)
        parts.append((t + t0, g, s, rng))
    t, g, s, rng = (np.concatenate(v) for v in zip(*parts))
    key, column = np.unique(g * n_sat + s, return_inverse=True)
    gsl_len = np.full((n_t, len(key)), np.nan, dtype=np.float32)
    gsl_len[t, column] = rng
    links = np.concatenate([pairs, np.stack([key % n_sat, n_sat + key // n_sat], axis=1)]).astype(np.int32)
    gs32 = np.broadcast_to(gs_pos.astype(np.float32), (n_t, len(stations), 3))
    return links, np.concatenate([isl_len, gsl_len], axis=1), np.concatenate([sat_pos, gs32], axis=1)


def assert_same_series(series: LinkSeries, reference) -> None:
    links, length_m, positions_m = reference
    for name, want in (("links", links), ("length_m", length_m), ("positions_m", positions_m)):
        got = getattr(series, name)
        assert got.dtype == want.dtype and got.shape == want.shape, name
        np.testing.assert_array_equal(got, want, err_msg=name)  # NaN == NaN here, nothing else is forgiven


@pytest.fixture(scope="module")
def shell1():
    return load_constellation("starlink-shell1")


class TestComputeLinkSeries:
    def test_demo_matches_the_reference(self, demo):
        grid = TimeGrid.from_window(demo.epoch_utc, start_s=0, duration_s=600, step_s=10)
        stations = default_ground_stations()
        assert_same_series(compute_link_series(demo, stations, grid), reference_link_series(demo, stations, grid))

    def test_starlink_shell1_matches_across_chunks(self, shell1):
        # 120 steps: chunks of 50 plus a ragged one, passes coming and going
        grid = TimeGrid.from_window(shell1.epoch_utc, start_s=1000, duration_s=120, step_s=1)
        stations = default_ground_stations()
        assert_same_series(compute_link_series(shell1, stations, grid), reference_link_series(shell1, stations, grid))

    @pytest.mark.parametrize("rules", [GslRules(min_elevation_deg=10.0, policy="nearest"),
                                       GslRules(min_elevation_deg=25.0, max_range_km=1000.0),
                                       GslRules(min_elevation_deg=None, max_range_km=1500.0)])
    def test_other_gsl_rules_match(self, demo, rules):
        from dataclasses import replace

        c = replace(demo, gsl=rules)
        grid = TimeGrid.from_window(c.epoch_utc, start_s=0, duration_s=300, step_s=10)
        stations = default_ground_stations()[:40]
        assert_same_series(compute_link_series(c, stations, grid), reference_link_series(c, stations, grid))


class TestVisibleLinks:
    @pytest.mark.parametrize("policy", ["all", "nearest"])
    @pytest.mark.parametrize("max_range_m", [None, 1.0e6])
    @pytest.mark.parametrize("min_elevation_deg", [0.0, 25.0, 60.0])
    def test_prefilter_keeps_every_link_the_dense_test_finds(self, shell1, policy, max_range_m, min_elevation_deg):
        grid = TimeGrid.from_window(shell1.epoch_utc, start_s=0, duration_s=8, step_s=1)
        pos = propagate_itrs_m(shell1.satrecs, grid, shell1.satellite_names)
        gs_pos, gs_up = ground_positions_m(default_ground_stations())
        kw = dict(min_elevation_deg=min_elevation_deg, max_range_m=max_range_m, policy=policy)
        fast, dense = visible_links(pos, gs_pos, gs_up, **kw), dense_visible_links(pos, gs_pos, gs_up, **kw)
        assert len(dense[0]) > 0
        for got, want in zip(fast, dense):
            assert got.dtype == want.dtype
            np.testing.assert_array_equal(got, want)


class TestBoundedStationDistances:
    def test_same_distances_as_unbounded_step_after_step(self, shell1):
        grid = TimeGrid.from_window(shell1.epoch_utc, start_s=0, duration_s=30, step_s=1)
        series = compute_link_series(shell1, default_ground_stations(), grid)
        limits_m = np.full(series.n_ground_stations, np.inf)
        for k in range(series.n_steps):
            graph = split_graph(series, k)
            got = bounded_station_distances_m(series, k, graph, limits_m)
            np.testing.assert_array_equal(got, ground_station_distances_m(series, k, graph))
            limits_m = search_limits_m(got)
        assert np.isfinite(limits_m).all()

    def test_a_limit_too_short_is_searched_again(self, demo_series):
        k = 3
        graph = split_graph(demo_series, k)
        want = ground_station_distances_m(demo_series, k, graph)
        tight_m = np.full(demo_series.n_ground_stations, 1.0)  # nothing but the source itself within 1 m
        np.testing.assert_array_equal(bounded_station_distances_m(demo_series, k, graph, tight_m), want)


class TestBenchStationPairs:
    def test_forked_workers_count_what_one_process_counts(self, demo_series):
        from meshemu.cli.topology import station_pairs_with_a_path

        one = station_pairs_with_a_path(demo_series, 1, steps_per_task=7)
        assert one == station_pairs_with_a_path(demo_series, 2, steps_per_task=7)
        want = sum(int(np.isfinite(d).sum() - len(d)) for d in
                   (ground_station_distances_m(demo_series, k) for k in range(demo_series.n_steps)))
        assert one == want > 0
