import math

import numpy as np
import pytest

from meshemu.constants import EARTH_EQUATORIAL_RADIUS_M, SPEED_OF_LIGHT_M_PER_S
from meshemu.constellation import IslRules, Shell, TimeGrid, from_shells, propagate_itrs_m
from meshemu.constellation.propagate import parse_utc
from meshemu.constellation.grid import plus_grid_pairs
from meshemu.links.isl import grazing_altitude_m, isl_lengths_m

EPOCH = parse_utc("2026-01-01T00:00:00Z")


class TestPlusGrid:
    def test_each_satellite_has_four_neighbours_with_the_seam(self):
        pairs = plus_grid_pairs(6, 8, cross_seam=True)
        degree = np.bincount(pairs.ravel(), minlength=48)
        assert len(pairs) == 2 * 48 and np.all(degree == 4)

    def test_without_the_seam_the_edge_planes_have_three(self):
        pairs = plus_grid_pairs(6, 8, cross_seam=False)
        degree = np.bincount(pairs.ravel(), minlength=48).reshape(6, 8)
        assert np.all(degree[0] == 3) and np.all(degree[-1] == 3) and np.all(degree[1:-1] == 4)

    def test_the_seam_shift_wraps_walker_phasing(self):
        pairs = {tuple(p) for p in plus_grid_pairs(4, 5, cross_seam=True, seam_shift=1)}
        assert (3 * 5 + 0, 0 * 5 + 1) in {(max(a, b), min(a, b)) for a, b in pairs}

    def test_hypatia_starlink_count(self):
        assert len(plus_grid_pairs(72, 22)) == 3168


class TestGeometry:
    def test_in_plane_lengths_match_the_chord(self):
        # S satellites evenly spaced on a circle of radius r are 2 r sin(pi / S) apart.
        shell = Shell("s", planes=1, sats_per_plane=20, altitude_km=800, inclination_deg=53)
        c = from_shells("s", [shell], EPOCH, IslRules(cross_seam=False))
        pos = propagate_itrs_m(c.satrecs, TimeGrid.from_window(EPOCH, start_s=0, duration_s=600, step_s=60))
        length = isl_lengths_m(pos, c.isl_pairs)
        r = np.linalg.norm(pos, axis=-1).mean()
        chord = 2 * r * math.sin(math.pi / 20)
        # SGP4's short-period terms move the radius by ~10 km: 1 % of a 2,200 km chord covers it
        assert np.nanmax(np.abs(length - chord)) / chord < 0.01

    def test_delay_is_length_over_c(self, demo_series):
        np.testing.assert_allclose(demo_series.delay_s, demo_series.length_m / SPEED_OF_LIGHT_M_PER_S, rtol=1e-6)
        k = 3
        a, b = demo_series.links[:, 0], demo_series.links[:, 1]
        direct = np.linalg.norm(demo_series.positions_m[k, a].astype(float) - demo_series.positions_m[k, b], axis=-1)
        up = demo_series.up[k]
        np.testing.assert_allclose(demo_series.length_m[k, up], direct[up], atol=1.0)  # float32: < 1 m

    def test_links_are_undirected_pairs(self, demo_series):
        assert np.all(demo_series.links[:, 0] < demo_series.links[:, 1])
        assert len(np.unique(demo_series.links, axis=0)) == len(demo_series.links)


class TestEarthGrazing:
    def test_constructed_case_either_side_of_80_km(self):
        # Two satellites at radius r, symmetric about the x axis: the chord's lowest
        # point is at x = r cos(phi). Place it at 79 km and at 81 km above the surface.
        r = EARTH_EQUATORIAL_RADIUS_M + 550e3
        for height_m, expect_up in ((79e3, False), (81e3, True)):
            phi = math.acos((EARTH_EQUATORIAL_RADIUS_M + height_m) / r)
            a = np.array([[[r * math.cos(phi), r * math.sin(phi), 0], [r * math.cos(phi), -r * math.sin(phi), 0]]])
            length = isl_lengths_m(a, np.array([[0, 1]]), min_grazing_altitude_m=80e3)
            assert np.isfinite(length[0, 0]) == expect_up
            assert float(grazing_altitude_m(a[0, 0], a[0, 1])) == pytest.approx(height_m, abs=1e-3)

    def test_max_range_cuts_long_links(self):
        pos = np.array([[[7e6, 0, 0], [7e6, 1e6, 0], [7e6, 3e6, 0]]])
        length = isl_lengths_m(pos, np.array([[0, 1], [0, 2]]), max_range_m=2e6)
        assert np.isfinite(length[0, 0]) and np.isnan(length[0, 1])

    def test_latitude_limit_cuts_only_cross_plane_links(self):
        high = 7e6 * np.array([math.cos(math.radians(75)), 0, math.sin(math.radians(75))])
        pos = np.array([[high, high + [0, 1e5, 0], high + [0, 0, 1e5]]])
        pairs = np.array([[0, 1], [0, 2]])
        length = isl_lengths_m(pos, pairs, cross_plane=np.array([True, False]), max_cross_plane_latitude_deg=70)
        assert np.isnan(length[0, 0]) and np.isfinite(length[0, 1])
