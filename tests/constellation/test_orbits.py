"""Propagation and geometry against physics and against Skyfield's own pipeline."""

import numpy as np
import pytest
from sgp4.api import SatrecArray
from skyfield.api import EarthSatellite, wgs84

from meshemu.constellation import Shell, TimeGrid, from_shells, propagate_itrs_m
from meshemu.constellation.ground import geodetic_to_itrs_m
from meshemu.constellation.propagate import parse_utc, timescale
from meshemu.links.gsl import elevation_deg

ONE_METRE = 1.0
EPOCH = parse_utc("2026-01-01T00:00:00Z")


def single(altitude_km=550, inclination_deg=53, planes=1, per_plane=1):
    shell = Shell("t", planes=planes, sats_per_plane=per_plane, altitude_km=altitude_km,
                  inclination_deg=inclination_deg)
    return from_shells("t", [shell], EPOCH)


class TestPeriod:
    def test_550_km_circular_orbit_takes_95_6_minutes(self):
        # A 550 km circular orbit: T = 2 pi sqrt(a^3 / mu) = 95.6 min. The nodal period
        # SGP4 flies differs from the Keplerian one by J2 (~0.1 %): allow 0.3 min.
        c = single()
        grid = TimeGrid.from_window(EPOCH, start_s=0, duration_s=2 * 96 * 60, step_s=1)
        whole, frac = grid.julian_utc()
        _, r_km, _ = SatrecArray(list(c.satrecs)).sgp4(whole, frac)
        z = r_km[0, :, 2]
        ascending = np.flatnonzero((z[:-1] < 0) & (z[1:] >= 0))
        assert len(ascending) >= 2
        period_min = np.diff(ascending).mean() / 60
        assert period_min == pytest.approx(95.6, abs=0.3)

    def test_radius_stays_near_the_shell_altitude(self):
        # SGP4's mean elements put the osculating radius within ~10 km of the nominal one.
        c = single()
        pos = propagate_itrs_m(c.satrecs, TimeGrid.from_window(EPOCH, start_s=0, duration_s=6000, step_s=60))
        radius_km = np.linalg.norm(pos, axis=-1) / 1e3
        assert np.all(np.abs(radius_km - (6378.135 + 550)) < 15)


class TestAgainstSkyfield:
    def test_itrs_positions_match_skyfield_within_a_metre(self):
        c = single(planes=2, per_plane=3)
        grid = TimeGrid.from_window(EPOCH, start_s=0, duration_s=600, step_s=60)
        ours = propagate_itrs_m(c.satrecs, grid)
        ts = timescale()
        for s, satrec in enumerate(c.satrecs):
            theirs = EarthSatellite.from_satrec(satrec, ts).at(grid.times).frame_xyz(
                __import__("skyfield.framelib", fromlist=["itrs"]).itrs).m.T
            assert np.abs(ours[:, s] - theirs).max() < ONE_METRE

    def test_elevation_matches_skyfield_altaz(self):
        # Skyfield's topocentric altitude is the outside authority for elevation.
        c = single(planes=3, per_plane=4)
        grid = TimeGrid.from_window(EPOCH, start_s=0, duration_s=3000, step_s=300)
        pos = propagate_itrs_m(c.satrecs, grid)
        lat, lon = 48.8566, 2.3522
        gs_pos, gs_up = geodetic_to_itrs_m([lat], [lon], [35.0])
        ours = elevation_deg(pos, gs_pos, gs_up)[:, 0, :]  # (T, S)
        ts = timescale()
        paris = wgs84.latlon(lat, lon, elevation_m=35.0)
        for s, satrec in enumerate(c.satrecs):
            alt, _, _ = (EarthSatellite.from_satrec(satrec, ts) - paris).at(grid.times).altaz()
            assert np.abs(ours[:, s] - alt.degrees).max() < 0.01  # degrees

    def test_ground_station_position_matches_skyfield(self):
        pos, up = geodetic_to_itrs_m([-33.8688], [151.2093], [58.0])
        theirs = wgs84.latlon(-33.8688, 151.2093, elevation_m=58.0).itrs_xyz.m
        assert np.abs(pos[0] - theirs).max() < 1e-3


def test_ut1_equals_utc_turns_the_earth_by_under_a_second():
    # UT1 - UTC is under 0.9 s; the Earth's surface moves ~465 m/s at the equator,
    # a satellite's Earth-fixed position by up to ~0.9 s x 7.6 km/s... but only through rotation:
    # at r = 6,928 km, 0.9 s of rotation is at most 6,928 km x 7.29e-5 rad/s x 0.9 s = 455 m.
    c = single()
    a = propagate_itrs_m(c.satrecs, TimeGrid.from_window(EPOCH, start_s=0, duration_s=60, step_s=10))
    b = propagate_itrs_m(c.satrecs, TimeGrid.from_window(EPOCH, start_s=0, duration_s=60, step_s=10,
                                                          ut1_equals_utc=True))
    shift = np.linalg.norm(a - b, axis=-1)
    assert shift.max() < 460 and shift.max() > 0.1
