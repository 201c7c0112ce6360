"""The scene the page draws: decoded, it must give back the series' positions, link states and routes."""

import base64
import math

import numpy as np
import pytest

from meshemu.constellation import default_ground_stations
from meshemu.constants import SPEED_OF_LIGHT_M_PER_S
from meshemu.errors import InputError
from meshemu.routing import shortest_route
from meshemu.view.scene import FIBRE_SPEED_FRACTION, Placement, build_scene, great_circle_m


def _decode(b64, dtype):
    return np.frombuffer(base64.b64decode(b64), dtype=dtype)


class TestBuildScene:
    def test_positions_come_back_within_half_a_unit(self, demo_series):
        s = demo_series
        scene = build_scene(s)
        q = _decode(scene["satellite_positions_b64"], "<i2").reshape(s.n_steps, s.n_satellites, 3)
        back_m = q * scene["position_unit_m"]
        # rounding to the nearest unit, per axis, is the only loss
        assert np.abs(back_m - s.positions_m[:, : s.n_satellites]).max() <= scene["position_unit_m"] / 2 + 1.0
        assert scene["position_unit_m"] < 300.0  # far below a pixel of a whole-Earth view

    def test_link_bits_are_the_series_link_states(self, demo_series):
        s = demo_series
        scene = build_scene(s)
        bits = _decode(scene["link_up_b64"], np.uint8).reshape(s.n_steps, scene["link_up_bytes_per_step"])
        up = np.unpackbits(bits, axis=1, bitorder="little")[:, : len(s.links)].astype(bool)
        assert (up == s.up).all()
        assert np.array(scene["links"]).reshape(-1, 2).tolist() == s.links.tolist()

    def test_route_is_routing_s_shortest_route_at_every_step(self, demo_series):
        s = demo_series
        track = build_scene(s, pairs=[("Tokyo", "Sao Paulo")])["routes"][0]
        src, dst = s.node_index("Tokyo"), s.node_index("Sao Paulo")
        before = None
        for k in range(s.n_steps):
            r = shortest_route(s, k, src, dst)
            got = track["steps"][k]
            assert got["nodes"] == list(r.nodes)
            if r.reachable:
                assert got["rtt_s"] == pytest.approx(r.rtt_s, rel=1e-12)
                assert got["hops"] == r.hops
            assert (k in track["changes"]) == (k > 0 and list(r.nodes) != before)
            before = list(r.nodes)
        assert track["changes"], "the demo shell over 10 minutes should change this route at least once"

    def test_fibre_is_the_great_circle_at_two_thirds_c(self, demo_series):
        s = demo_series
        track = build_scene(s, pairs=[("Paris", "Moscow")])["routes"][0]
        gs = {g.name: g for g in default_ground_stations()}
        a, b = gs["Paris"], gs["Moscow"]
        # haversine on geodetic latitudes: the scene works from Earth-fixed positions on the ellipsoid,
        # which differ from a sphere by under 0.5 % in distance
        p1, p2 = math.radians(a.latitude_deg), math.radians(b.latitude_deg)
        dl = math.radians(b.longitude_deg - a.longitude_deg)
        h = math.sin((p2 - p1) / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
        d_m = 2 * 6_371_008.8 * math.asin(math.sqrt(h))
        assert track["great_circle_m"] == pytest.approx(d_m, rel=5e-3)
        assert track["fibre_rtt_s"] == pytest.approx(2 * track["great_circle_m"] / (FIBRE_SPEED_FRACTION * SPEED_OF_LIGHT_M_PER_S))

    def test_no_fibre_when_one_end_is_a_satellite(self, demo_series):
        track = build_scene(demo_series, pairs=[("Paris", "p00s01")])["routes"][0]
        assert track["fibre_rtt_s"] is None and track["label"] == "Paris - p00s01"

    def test_unknown_pair_is_an_input_error(self, demo_series):
        with pytest.raises(InputError, match="Atlantis"):
            build_scene(demo_series, pairs=[("Paris", "Atlantis")])

    def test_placement_must_name_nodes_of_the_series(self, demo_series):
        with pytest.raises(InputError, match="p99s99"):
            build_scene(demo_series, placement=Placement(("p99s99",)))

    def test_placement_labels_follow_global_rank_order(self, demo_series):
        scene = build_scene(demo_series, placement=Placement(("p00s01", "p00s02", "p01s01", "p01s02"), tp=2, pp=2))
        names = demo_series.short_names
        assert scene["placement"][names.index("p01s02")] == ["rank 3: stage 1, tensor rank 1"]
        assert scene["placement"][names.index("p00s02")] == ["rank 1: stage 0, tensor rank 1"]


class TestGreatCircle:
    def test_antipodes_are_half_the_circumference(self):
        assert great_circle_m(np.array([0, 0, 1.0]), np.array([0, 0, -1.0])) == pytest.approx(math.pi * 6_371_008.8)

    def test_same_place_is_zero(self):
        assert great_circle_m(np.array([6.4e6, 1.0, 2.0]), np.array([6.4e6, 1.0, 2.0])) == 0.0


class TestTokenTrip:
    def test_legs_are_routed_like_the_mesh_routes_them(self, demo_series):
        s = demo_series
        names = s.short_names
        scene = build_scene(s, placement=Placement(("p00s01", "p03s04"), tp=1, pp=2, client="Paris"),
                            tokens_per_step={3: 7})
        trip = scene["token_trip"]
        assert trip["legs"] == ["stage 0 -> stage 1", "stage 1 -> stage 0 (the token)", "stage 0 -> client"]
        a, b, c = names.index("p00s01"), names.index("p03s04"), names.index("Paris")
        for k in (0, 3, s.n_steps - 1):
            routes = [shortest_route(s, k, u, v) for u, v in ((a, b), (b, a), (a, c))]
            assert trip["steps"][k]["segments"] == [list(r.nodes) for r in routes]
            if all(r.reachable for r in routes):
                assert trip["steps"][k]["one_way_s"] == pytest.approx(
                    sum(r.length_m for r in routes) / SPEED_OF_LIGHT_M_PER_S, rel=1e-9)
            else:
                assert trip["steps"][k]["one_way_s"] is None
        assert trip["tokens"][3] == 7 and sum(trip["tokens"]) == 7

    def test_tensor_parallel_stages_add_their_all_reduce_ring(self, demo_series):
        trip = build_scene(demo_series, placement=Placement(("p00s01", "p00s02", "p01s01", "p01s02"), tp=2, pp=2,
                                                            client="Paris"))["token_trip"]
        assert trip["legs"].count("stage 0 all-reduce ring") == 2 and trip["legs"].count("stage 1 all-reduce ring") == 2
        assert trip["tokens"] is None  # no results folder: no tokens to count

    def test_no_placement_no_trip(self, demo_series):
        assert build_scene(demo_series)["token_trip"] is None
