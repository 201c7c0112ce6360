"""The formation: its geometry over an orbit, against two-body physics, and as a constellation file."""

import math

import numpy as np
import pytest
from scipy.integrate import solve_ivp

from meshemu.constellation import (Formation, Shell, TimeGrid, default_ground_stations, from_shells,
                                   load_constellation, propagate_itrs_m)
from meshemu.constellation.formation import grid_pairs, lvlh_axes, member_positions_m, relative_state_lvlh
from meshemu.constellation.propagate import parse_utc
from meshemu.constants import WGS72_MU_M3_PER_S2
from meshemu.errors import InputError
from meshemu.links import compute_link_series
from meshemu.links.series import LinkSeries

EPOCH = parse_utc("2026-01-01T00:00:00Z")
ONE_MILLIMETRE = 1e-3
# What the CW model leaves out over one orbit: its second-order terms (rho^2 / a ~ 5 cm for rho = 622 m at
# the corners, a = 7,028 km) put each member's true semi-major axis off the reference's, an along-track drift
# of ~3 pi x that per orbit: 0.99 m measured at the worst corner. 1.5 m still catches any wrong sign or
# factor (leaving out the frame's rotation in the initial velocity is off by 5.8 km after an orbit).
CW_ERROR_AFTER_ONE_ORBIT_M = 1.5


@pytest.fixture(scope="module")
def formation81():
    return load_constellation("formation-81")


@pytest.fixture(scope="module")
def one_orbit(formation81):
    """Every satellite's Earth-fixed position over one orbit (97.7 min) at 20 s steps."""
    period_s = formation81.formations[0].formation.period_s
    grid = TimeGrid.from_window(EPOCH, start_s=0, duration_s=period_s, step_s=20)
    return grid, formation81.positions_itrs_m(grid)


def distances_m(pos, pairs):
    return np.linalg.norm(pos[:, pairs[:, 0]] - pos[:, pairs[:, 1]], axis=-1)


class TestTheShippedFormation:
    def test_81_satellites_in_a_9_x_9_grid_with_144_links(self, formation81):
        assert formation81.size == 81
        assert len(formation81.isl_pairs) == 2 * 9 * 8
        assert formation81.satellite_names[:2] == ("cluster-p00-s00", "cluster-p00-s01")
        assert formation81.places[10].tolist() == [0, 1, 1]  # shell, plane = row, slot = column
        assert formation81.isl.rate_gbps == 1600

    def test_neighbours_stay_100_to_200_m_apart_over_an_orbit(self, formation81, one_orbit):
        _, pos = one_orbit
        d = distances_m(pos, formation81.isl_pairs)
        assert d.min() >= 100 and d.max() <= 200
        assert d == pytest.approx(110.0, abs=ONE_MILLIMETRE)  # the grid keeps its shape, to CW's accuracy

    def test_the_whole_cluster_stays_within_a_kilometre(self, formation81, one_orbit):
        _, pos = one_orbit
        centre = pos[:, 40]  # p04s04 sits on the reference orbit
        assert np.linalg.norm(pos - centre[:, None], axis=-1).max() < 1000.0
        i, j = np.triu_indices(81, 1)
        span = distances_m(pos, np.stack([i, j], axis=1))
        assert span.max() == pytest.approx(8 * 110 * math.sqrt(2), abs=ONE_MILLIMETRE)  # corner to corner
        assert span.min() == pytest.approx(110.0, abs=ONE_MILLIMETRE)

    def test_every_distance_in_the_grid_is_constant(self, one_orbit):
        _, pos = one_orbit
        i, j = np.triu_indices(81, 1)
        span = distances_m(pos, np.stack([i, j], axis=1))
        assert np.ptp(span, axis=0).max() < ONE_MILLIMETRE

    def test_the_centre_follows_the_reference_orbit(self, formation81, one_orbit):
        # the reference as a Walker shell of one satellite would fly it: an independent path through SGP4
        grid, pos = one_orbit
        f = formation81.formations[0].formation
        alone = from_shells("ref", [Shell("ref", planes=1, sats_per_plane=1, altitude_km=f.altitude_km,
                                          inclination_deg=f.inclination_deg, raan_offset_deg=f.raan_deg)], EPOCH)
        reference = propagate_itrs_m(alone.satrecs, grid)[:, 0]
        assert np.abs(pos.mean(axis=1) - reference).max() < ONE_MILLIMETRE  # the grid is symmetric about it
        assert np.abs(pos[:, 40] - reference).max() < ONE_MILLIMETRE
        altitude_km = np.linalg.norm(reference, axis=-1) / 1e3 - 6378.135
        assert np.all(np.abs(altitude_km - 650) < 15)  # SGP4's mean elements: within ~10 km of nominal

    def test_each_member_is_back_where_it_was_after_an_orbit(self, formation81):
        f = formation81.formations[0].formation
        offset, _ = relative_state_lvlh(f, np.array([0.0, f.period_s]))
        assert np.abs(offset[1] - offset[0]).max() < ONE_MILLIMETRE

    def test_cities_see_the_whole_cluster_or_none_of_it(self, formation81):
        stations = [s for s in default_ground_stations() if s.name == "London"]
        grid = TimeGrid.from_window(EPOCH, start_s=25_400, duration_s=300, step_s=10)  # a pass over London
        series = compute_link_series(formation81, stations, grid)
        seen = series.up[:, series.is_gsl].sum(axis=1)
        assert set(seen.tolist()) <= {0, 81} and seen.max() == 81

    def test_links_carry_the_isl_rate(self, formation81, tmp_path):
        stations = default_ground_stations()[:5]
        grid = TimeGrid.from_window(EPOCH, start_s=0, duration_s=3, step_s=1)
        series = compute_link_series(formation81, stations, grid)
        rates = series.link_rates_bps()
        assert np.all(rates[~series.is_gsl] == 1.6e12)
        assert np.isnan(rates[series.is_gsl]).all()  # the file gives GSLs no rate: not modelled
        again = LinkSeries.load(series.save(tmp_path / "f.npz"))
        assert np.array_equal(again.link_rates_bps(), rates, equal_nan=True)
        assert again.short_names[:2] == ("p00s00", "p00s01")


class TestAgainstTwoBodyMotion:
    """The outside authority: Newton's two-body problem, integrated numerically for every member."""

    def test_cw_offsets_match_integrated_orbits_within_a_metre_after_an_orbit(self):
        f = Formation("f", rows=9, columns=9, spacing_m=110, altitude_km=650, inclination_deg=97.99,
                      raan_deg=11, phase_deg=30)
        n, a = f.mean_motion_rad_per_s, f.semi_major_axis_m
        inc, raan = math.radians(f.inclination_deg), math.radians(f.raan_deg)

        def chief(t):  # a circular Kepler orbit, in an inertial frame
            u = n * np.asarray(t)[:, None]
            p = np.array([math.cos(raan), math.sin(raan), 0.0])
            q = np.array([-math.sin(raan) * math.cos(inc), math.cos(raan) * math.cos(inc), math.sin(inc)])
            return a * (np.cos(u) * p + np.sin(u) * q), a * n * (-np.sin(u) * p + np.cos(u) * q)

        t = np.linspace(0.0, f.period_s, 61)
        r_c, v_c = chief(t)
        ours = member_positions_m(f, r_c, v_c, t)  # (T, S, 3)

        # each member's inertial state at t = 0: the offset and its rate, carried out of the rotating frame
        offset, rate = relative_state_lvlh(f, t[:1])
        axes = lvlh_axes(r_c[:1], v_c[:1])[0]  # rows: radial, along-track, normal
        omega = np.array([0.0, 0.0, n])  # the LVLH frame turns about the orbit normal once per orbit
        r0 = r_c[0] + offset[0] @ axes
        v0 = v_c[0] + (rate[0] + np.cross(omega, offset[0])) @ axes

        def gravity(_, y):
            r, v = y.reshape(2, -1, 3)
            return np.concatenate([v, -WGS72_MU_M3_PER_S2 * r / np.linalg.norm(r, axis=-1, keepdims=True) ** 3]).ravel()

        out = solve_ivp(gravity, (0.0, t[-1]), np.concatenate([r0, v0]).ravel(), t_eval=t, method="DOP853",
                        rtol=1e-12, atol=1e-6)
        assert out.success
        theirs = out.y.T.reshape(len(t), 2, -1, 3)[:, 0]  # (T, S, 3)
        assert np.linalg.norm(ours - theirs, axis=-1).max() < CW_ERROR_AFTER_ONE_ORBIT_M
        true_neighbours = distances_m(theirs, grid_pairs(9, 9))
        assert true_neighbours.min() > 109 and true_neighbours.max() < 111  # in Newton's world too
        # and the formation really moved: each corner swept its 622 m circle about the centre
        assert np.linalg.norm(theirs[:, 0] - r_c, axis=-1) == pytest.approx(4 * 110 * math.sqrt(2), rel=1e-3)


class TestFormationFiles:
    def write(self, tmp_path, text, name="f.yaml"):
        path = tmp_path / name
        path.write_text(text)
        return path

    def test_a_shell_and_a_formation_number_one_after_the_other(self, tmp_path):
        path = self.write(tmp_path, """
name: mixed
shells:
  - {name: walker, planes: 2, sats_per_plane: 3, altitude_km: 550, inclination_deg: 53}
formations:
  - {name: cluster, rows: 2, columns: 3, spacing_m: 150}
""")
        c = load_constellation(path)
        assert c.size == 12 and c.satellite_names[6] == "cluster-p00-s00"
        assert c.places[6:].tolist() == [[1, 0, 0], [1, 0, 1], [1, 0, 2], [1, 1, 0], [1, 1, 1], [1, 1, 2]]
        formation_links = c.isl_pairs[c.isl_pairs[:, 0] >= 6] - 6
        assert formation_links.tolist() == grid_pairs(2, 3).tolist()
        grid = TimeGrid.from_window(c.epoch_utc, start_s=0, duration_s=600, step_s=60)
        pos = c.positions_itrs_m(grid)
        assert distances_m(pos, c.isl_pairs[c.isl_pairs[:, 0] >= 6]) == pytest.approx(150.0, abs=ONE_MILLIMETRE)
        walker_alone = load_constellation(self.write(tmp_path, """
name: walker
shells:
  - {name: walker, planes: 2, sats_per_plane: 3, altitude_km: 550, inclination_deg: 53}
""", "w.yaml"))
        assert np.array_equal(pos[:, :6], walker_alone.positions_itrs_m(grid))  # shells are untouched
        series = compute_link_series(c, default_ground_stations()[:2], grid)
        assert series.short_names[:7] == ("a0p00s00", "a0p00s01", "a0p00s02", "a0p01s00", "a0p01s01", "a0p01s02",
                                          "b0p00s00")

    def test_the_grid_has_no_wrap_around(self):
        assert grid_pairs(1, 1).shape == (0, 2)
        assert grid_pairs(3, 3).tolist() == [[0, 1], [0, 3], [1, 2], [1, 4], [2, 5], [3, 4], [3, 6], [4, 5],
                                             [4, 7], [5, 8], [6, 7], [7, 8]]

    def test_a_wrong_key_names_the_file_and_key(self, tmp_path):
        path = self.write(tmp_path, "name: x\nformations:\n  - {name: c, rows: 3, spacing: 100}\n")
        with pytest.raises(InputError, match=r"f\.yaml: formations\[0\]\.spacing: unknown key"):
            load_constellation(path)

    def test_a_bad_value_says_which_and_why(self, tmp_path):
        path = self.write(tmp_path, "name: x\nformations:\n  - {name: c, rows: 3, spacing_m: 0.1}\n")
        with pytest.raises(InputError, match="spacing_m 0.1 is outside 1 m-100 km"):
            load_constellation(path)

    def test_a_rate_out_of_range_is_refused(self, tmp_path):
        path = self.write(tmp_path, "name: x\nformations:\n  - {name: c}\nisl: {rate_gbps: 1e9}\n")
        with pytest.raises(InputError, match=r"isl\.rate_gbps 1e\+09 is outside"):
            load_constellation(path)

    def test_formations_and_a_tle_file_do_not_mix(self, tmp_path):
        path = self.write(tmp_path, "name: x\ntle_file: t.txt\nformations:\n  - {name: c}\n")
        with pytest.raises(InputError, match="not both"):
            load_constellation(path)

    def test_a_formation_and_a_shell_of_one_name_are_refused(self, tmp_path):
        path = self.write(tmp_path, """
name: x
shells: [{name: c, planes: 1, sats_per_plane: 2, altitude_km: 550, inclination_deg: 53}]
formations: [{name: c}]
""")
        with pytest.raises(InputError, match=r"two are named 'c': give each shell its own name "
                                             r"\(a formation counts as a shell\)"):
            load_constellation(path)
