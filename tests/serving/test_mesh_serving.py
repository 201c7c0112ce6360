"""Serving inside an emulated mesh (root): the same tokens as the whole model, and delays that show."""


import pytest

from meshemu.constellation import TimeGrid, default_ground_stations, load_constellation
from meshemu.links import compute_link_series
from meshemu.serving.client import record_from_row
from meshemu.serving.mesh import serve_in_mesh
from meshemu.serving.placement import MeshPaths, place
from meshemu.serving.report import RunContext, analyse

pytestmark = pytest.mark.root
PROMPT = [1, 5, 9, 4, 17]


@pytest.fixture(scope="module")
def small_series():
    c = load_constellation("demo")
    stations = [s for s in default_ground_stations() if s.name in ("Tokyo", "Paris", "New York")]
    return compute_link_series(c, stations, TimeGrid.from_window(c.epoch_utc, start_s=0, duration_s=30, step_s=1))


def run(series, prefix, tp, pp, algorithm, placement, shaper, n=6):
    paths = MeshPaths(series)
    nodes = place(placement, tp * pp, paths, "Tokyo")
    job = {"plan": {"model": "tiny:llama:0", "tp": tp, "pp": pp, "allreduce": algorithm},
           "requests": [{"prompt": PROMPT, "max_new_tokens": n}]}
    mesh_run = serve_in_mesh(series, job, ground_station="Tokyo", rank_nodes=nodes, shaper=shaper, prefix=prefix,
                             step_timeout_s=10.0, log=lambda line: None)
    [event] = [e for e in mesh_run.events if e["event"] == "request"]
    assert "error" not in event, event
    return mesh_run, record_from_row(event["record"]), paths, nodes


@pytest.mark.parametrize("tp,pp,algorithm,placement", [(2, 2, "ring", "plane"), (3, 1, "direct", "spread")])
def test_tokens_equal_the_whole_model_inside_a_mesh(small_series, prefix, tiny_reference, tp, pp, algorithm, placement):
    # No link delay: only where the bytes go is tested here (the delay backends have their own tests).
    _, rec, _, nodes = run(small_series, prefix, tp, pp, algorithm, placement, shaper="none")
    assert rec.token_ids == tiny_reference("llama", PROMPT, 6)[0]
    assert len(set(nodes)) == tp * pp


@pytest.mark.slow
def test_tpot_follows_the_link_delays(small_series, prefix, tiny_reference):
    mesh_run, rec, paths, nodes = run(small_series, prefix, 1, 3, "ring", "plane", shaper="auto")
    assert rec.token_ids == tiny_reference("llama", PROMPT, 6)[0]
    if mesh_run.backend == "none":
        pytest.skip("no delay backend here")
    ctx = RunContext(tp=1, pp=3, algorithm="ring", layers=[1, 1, 1], rank_nodes=nodes, client_node="Tokyo",
                     activation_bytes=96 * 4, one_way_at=lambda k: (lambda a, b: paths.one_way_s(k, a, b)),
                     step_at=mesh_run.step_at, route_at=paths.route)
    row, tokens, routes, _ = analyse(rec, ctx)
    # Three in-plane hops of ~18 ms each way round the ring: tens of milliseconds, not loopback's one.
    assert row["predicted_tpot_s"] > 0.04
    # The delay line adds up to a few ms per traversal on a busy 2-core machine: 30 % covers it.
    assert row["tpot_s"] == pytest.approx(row["predicted_tpot_s"], rel=0.3)
    assert routes and routes[0]["paths"]["rank0->rank1"][0] == nodes[0]
    assert all("step" in t for t in tokens)


def line_series():
    """Satellites 0-1-2 in a line (1,000 km links) and station Alpha on 0; link 1-2 is down for steps 1-4."""
    import numpy as np

    from meshemu.links import LinkSeries

    links = np.array([[0, 1], [1, 2], [0, 3]], dtype=np.int32)
    length = np.full((12, 3), 1e6, dtype=np.float32)
    length[1:5, 1] = np.nan
    places = np.array([[0, 0, 0], [0, 0, 1], [0, 0, 2]], dtype=np.int32)
    return LinkSeries("line", "2026-01-01T00:00:00Z", np.arange(12, dtype=float),
                      ("q-p00-s00", "q-p00-s01", "q-p00-s02", "Alpha"), 3, links, length,
                      np.zeros((12, 4, 3), dtype=np.float32), False, places)


@pytest.mark.slow
def test_link_down_on_the_path_fails_the_request_and_the_next_one_recovers(prefix):
    series = line_series()
    job = {"plan": {"model": "tiny:llama:0", "tp": 1, "pp": 3, "compute": "device:h100",
                    "peak_bandwidth_Bps": 3e6},           # ~30 ms a layer: the request outlives the link
           "requests": [{"prompt": PROMPT, "max_new_tokens": 500}, {"prompt": PROMPT, "max_new_tokens": 3}],
           "gap_s": 3.0, "timeout_s": 30.0}
    mesh_run = serve_in_mesh(series, job, ground_station="Alpha", rank_nodes=["p00s00", "p00s01", "p00s02"],
                             shaper="none", prefix=prefix, step_timeout_s=1.5, log=lambda line: None)
    first, second = [e for e in mesh_run.events if e["event"] == "request"]
    assert "did not come within 1.5 s" in first["error"] and "rank 2" in first["error"], first["error"]
    failed_at = first["record"]["token_rows"][-1]["arrival_s"] if first["record"]["token_rows"] else 0
    assert failed_at < 3.0                                   # cut at ~1 s, noticed within the step timeout
    assert "error" not in second and len(second["record"]["token_rows"]) == 3
