"""A serving plan deployed in an emulated mesh (root): the same tokens as the whole model, delays that show,
one routing pass per step, and links that fail mid-request."""

import numpy as np
import pytest

from meshemu.constellation import TimeGrid, default_ground_stations, load_constellation
from meshemu.deployment import MeshRun, deploy
from meshemu.links import LinkSeries, compute_link_series
from meshemu.serving.client import record_from_row
from meshemu.serving.job import Request, ServingJob, ServingPlan
from meshemu.serving.report import analyse
from meshemu.serving.session import make_context
from meshemu.model.tiny import tiny_config

pytestmark = pytest.mark.root
PROMPT = (1, 5, 9, 4, 17)


@pytest.fixture(scope="module")
def small_series():
    c = load_constellation("demo")
    stations = [s for s in default_ground_stations() if s.name in ("Tokyo", "Paris", "New York")]
    return compute_link_series(c, stations, TimeGrid.from_window(c.epoch_utc, start_s=0, duration_s=30, step_s=1))


def serve(series, prefix, tp, pp, algorithm, placement, shaper, n=6, probes=()):
    job = ServingJob(ServingPlan("tiny:llama:0", tp=tp, pp=pp, allreduce=algorithm),
                     (Request(PROMPT, max_new_tokens=n),), step_timeout_s=10.0)
    run = MeshRun(job, ground_station="Tokyo", placement=placement, shaper=shaper, prefix=prefix, probes=probes)
    dep = deploy(series, run, log=lambda line: None)
    [event] = [e for e in dep.events if e["event"] == "request"]
    assert "error" not in event, event
    return dep, record_from_row(event["record"])


@pytest.mark.parametrize("tp,pp,algorithm,placement", [(2, 2, "ring", "plane"), (3, 1, "direct", "spread")])
def test_tokens_equal_the_whole_model_inside_a_mesh(small_series, prefix, tiny_reference, tp, pp, algorithm, placement):
    # No link delay: only where the bytes go is tested here (the delay backends have their own tests).
    dep, rec = serve(small_series, prefix, tp, pp, algorithm, placement, shaper="none")
    assert rec.token_ids == tiny_reference("llama", PROMPT, 6)[0]
    assert len(set(dep.rank_nodes)) == tp * pp
    assert dep.info()["shaping"]["shaper"] == "none"


def test_each_step_is_routed_once_for_the_player_probes_and_report(small_series, prefix):
    from meshemu.experiments.runner import route_rows

    dep, _ = serve(small_series, prefix, 1, 2, "ring", "plane", shaper="none", probes=(("Paris", "New York"),))
    played = {r.step for r in dep.step_records}
    rows = route_rows(dep)  # every step of the window, after the player stopped
    assert len(rows) == 2 * small_series.n_steps
    summary = dep.routes.summary()
    assert summary["max_passes_per_step"] == 1, summary
    assert summary["passes"] == small_series.n_steps  # played steps whole, the rest for the watched nodes only
    assert dep.probes and {p.step for p in dep.probes} <= played
    # the client's probes crossed the routes the report writes
    first = next(r for r in rows if r["step"] == dep.probes[0].step and r["src"] == dep.client_node)
    assert first["path"].split()[0] == "Tokyo" and first["path"].split()[-1] == dep.rank_nodes[0]


def test_steps_and_tokens_share_one_clock(small_series, prefix):
    dep, rec = serve(small_series, prefix, 1, 2, "ring", "plane", shaper="none", n=12)
    origin = dep.clock_origin["monotonic_s"]
    stamps = [t for _, t in dep.step_clock]
    assert stamps == sorted(stamps) and stamps[0] >= origin
    arrivals = [t.clock_s for t in rec.tokens]
    # every token arrived after the client was started and within the player's run
    assert origin < arrivals[0] <= arrivals[-1]
    assert {dep.step_at(t) for t in arrivals} <= {k for k, _ in dep.step_clock}


def test_a_rate_where_only_the_delay_line_runs_fails_the_run_and_leaves_nothing(small_series, prefix):
    """'auto' without netem is the delay line, which has no rate: the run must refuse, never drop the setting."""
    from meshemu.emulation.kernel import probe
    from meshemu.emulation.mesh import existing_namespaces
    from meshemu.emulation.shaping import ShapingConfig
    from meshemu.errors import MeshemuError

    if probe(prefix).netem:
        pytest.skip("netem is here: auto carries the rate (tests/emulation/test_netem.py measures it)")
    job = ServingJob(ServingPlan("tiny:llama:0"), (Request(PROMPT, max_new_tokens=2),))
    run = MeshRun(job, ground_station="Tokyo", shaping=ShapingConfig(rate_bps=20e6), prefix=prefix)
    with pytest.raises(MeshemuError, match="does delay only"):
        deploy(small_series, run, log=lambda line: None)
    assert not existing_namespaces(prefix)


@pytest.mark.slow
def test_tpot_follows_the_link_delays(small_series, prefix, tiny_reference):
    dep, rec = serve(small_series, prefix, 1, 3, "ring", "plane", shaper="auto")
    assert rec.token_ids == tiny_reference("llama", PROMPT, 6)[0]
    ctx = make_context(tiny_config("llama"), None, tp=1, pp=3, allreduce="ring", rank_nodes=dep.rank_nodes,
                       client_node=dep.client_node, where=dep)
    row, tokens, routes, _ = analyse(rec, ctx)
    # Three in-plane hops of ~18 ms each way round the ring: tens of milliseconds, not loopback's one.
    assert row["predicted_tpot_s"] > 0.04
    # The delay line adds up to a few ms per traversal on a busy 2-core machine: 30 % covers it.
    assert row["tpot_s"] == pytest.approx(row["predicted_tpot_s"], rel=0.3)
    assert routes and routes[0]["paths"]["rank0->rank1"][0] == dep.rank_nodes[0]
    assert all("step" in t for t in tokens)


def line_series():
    """Satellites 0-1-2 in a line (1,000 km links) and station Alpha on 0; link 1-2 is down for steps 1-4."""
    links = np.array([[0, 1], [1, 2], [0, 3]], dtype=np.int32)
    length = np.full((12, 3), 1e6, dtype=np.float32)
    length[1:5, 1] = np.nan
    places = np.array([[0, 0, 0], [0, 0, 1], [0, 0, 2]], dtype=np.int32)
    return LinkSeries("line", "2026-01-01T00:00:00Z", np.arange(12, dtype=float),
                      ("q-p00-s00", "q-p00-s01", "q-p00-s02", "Alpha"), 3, links, length,
                      np.zeros((12, 4, 3), dtype=np.float32), False, places)


@pytest.mark.slow
def test_link_down_on_the_path_fails_the_request_and_the_next_one_recovers(prefix):
    # ~30 ms a layer on a slow modelled device: the first request outlives the link
    plan = ServingPlan("tiny:llama:0", tp=1, pp=3, compute="device:h100", peak_bandwidth_Bps=3e6)
    job = ServingJob(plan, (Request(PROMPT, max_new_tokens=500), Request(PROMPT, max_new_tokens=3)),
                     gap_s=3.0, timeout_s=30.0, step_timeout_s=1.5)
    run = MeshRun(job, ground_station="Alpha", placement="list:p00s00,p00s01,p00s02", shaper="none", prefix=prefix)
    dep = deploy(line_series(), run, log=lambda line: None)
    first, second = [e for e in dep.events if e["event"] == "request"]
    assert "did not come within 1.5 s" in first["error"] and "rank 2" in first["error"], first["error"]
    failed_at = first["record"]["token_rows"][-1]["arrival_s"] if first["record"]["token_rows"] else 0
    assert failed_at < 3.0                                   # cut at ~1 s, noticed within the step timeout
    assert "error" not in second and len(second["record"]["token_rows"]) == 3


def test_routed_towards_destinations_only_each_step_is_still_routed_once(small_series, prefix, monkeypatch):
    from meshemu.routing import states

    monkeypatch.setattr(states, "ALL_ROUTES_MAX_NODES", 0)  # "auto" routes towards destinations only
    dep, _ = serve(small_series, prefix, 1, 2, "ring", "plane", shaper="delayline", probes=(("Paris", "New York"),))
    summary = dep.routes.summary()
    assert summary["mode"] == "destinations" and summary["max_passes_per_step"] == 1, summary
    # the three stations and the two ranks: nobody routes towards any other satellite
    stations = range(small_series.n_satellites, small_series.n_nodes)
    ranks = [small_series.short_index(n) for n in dep.rank_nodes]
    assert sorted(dep.routes.destinations.tolist()) == sorted([*stations, *ranks])
    assert dep.probes and all(p.measured_rtt_ms is not None for p in dep.probes)
