"""Faults on a schedule in a real mesh (root): routes go around them, and serving recovers with the same tokens."""

import numpy as np
import pytest

from meshemu.constellation import TimeGrid, default_ground_stations, load_constellation
from meshemu.deployment import MeshRun, deploy
from meshemu.deployment.faults import Fault, FaultSchedule
from meshemu.errors import InputError
from meshemu.links import compute_link_series
from meshemu.serving.client import record_from_row
from meshemu.serving.job import Recovery, Request, ServingJob, ServingPlan

PROMPT = (1, 5, 9, 4, 17)
N = 300  # tokens: long enough that the fault lands mid-answer (a token takes tens of ms round the mesh)
MODEL = "tiny:llama:0:max_context=1024"


@pytest.fixture(scope="module")
def series():
    c = load_constellation("demo")
    stations = [s for s in default_ground_stations() if s.name in ("Tokyo", "Paris", "New York")]
    return compute_link_series(c, stations, TimeGrid.from_window(c.epoch_utc, start_s=0, duration_s=90, step_s=1))


class TestSchedule:
    """Without root: what the faults do to the series the run plays."""

    def test_a_dark_satellite_loses_every_link_for_its_outage(self, series):
        sched = FaultSchedule(series, [Fault(at_s=10, satellite="p02s03", for_s=5)])
        v = series.short_index("p02s03")
        mine = (series.links[:, 0] == v) | (series.links[:, 1] == v)
        up = ~np.isnan(sched.series.length_m)
        assert not up[10:15, mine].any() and up[15:, mine].any()
        assert (up[:, ~mine] == ~np.isnan(series.length_m[:, ~mine])).all()  # nothing else changed

    def test_a_rank_fault_strikes_who_holds_the_rank(self, series):
        sched = FaultSchedule(series, [Fault(at_s=10, satellite="rank:1", for_s=5)])
        assert not np.isnan(sched.series.length_m).sum() > np.isnan(series.length_m).sum()  # not placed yet
        sched.remap(("p02s03", "p02s04"), 0)
        v = series.short_index("p02s04")
        mine = (series.links[:, 0] == v) | (series.links[:, 1] == v)
        assert np.isnan(sched.series.length_m[10:15][:, mine]).all()

    def test_acquisition_delays_every_new_link(self, series):
        sched = FaultSchedule(series, [], acquisition_s=3)
        rose = ~np.isnan(series.length_m[1:]) & np.isnan(series.length_m[:-1])
        k, l = (int(x[0]) for x in np.nonzero(rose))
        assert np.isnan(sched.series.length_m[k + 1:k + 4, l]).all()

    @pytest.mark.parametrize("fault,words", [
        (Fault(at_s=10, satellite="p99s99", for_s=5), "unknown node 'p99s99'"),
        (Fault(at_s=10, satellite="rank:4", for_s=5), "ranks 0-1"),
        (Fault(at_s=500, satellite="p02s03", for_s=5), "90 s long"),
        (Fault(at_s=10, link=("p02s03", "p05s05"), for_s=5), "no link joins"),
        (Fault(at_s=10, satellite="Tokyo", for_s=5), "a ground station"),
    ])
    def test_nonsense_is_refused_in_one_line(self, series, fault, words):
        with pytest.raises(InputError, match=words):
            FaultSchedule(series, [fault]).check(2)

    def test_two_faults_on_one_element_at_once_are_refused(self, series):
        with pytest.raises(InputError, match=r"faults\[0\] and faults\[1\] strike p02s03 at once"):
            FaultSchedule(series, [Fault(at_s=10, satellite="p02s03", for_s=20),
                                   Fault(at_s=15, satellite="p02s03", reboot_s=2)])
        FaultSchedule(series, [Fault(at_s=10, satellite="p02s03", for_s=5),
                               Fault(at_s=15, satellite="p02s03", for_s=5)])  # one after the other: fine


def serve(series, prefix, faults, *, tp=1, pp=2, policy="replace", n=N, station="Tokyo"):
    recovery = Recovery(policy=policy, detect_timeout_s=2.0)
    job = ServingJob(ServingPlan(MODEL, tp=tp, pp=pp), (Request(PROMPT, max_new_tokens=n),),
                     step_timeout_s=recovery.detect_timeout_s, recovery=recovery)
    run = MeshRun(job, ground_station=station, placement="plane", shaper="auto", prefix=prefix, faults=tuple(faults))
    dep = deploy(series, run, log=lambda line: None)
    [event] = [e for e in dep.events if e["event"] == "request"]
    return dep, event, record_from_row(event["record"])


@pytest.mark.root
@pytest.mark.slow
@pytest.mark.parametrize("tp,pp,rank", [(1, 2, 1), (2, 1, 1)])
def test_a_dark_rank_is_replaced_and_the_tokens_are_unchanged(series, prefix, tiny_reference, tp, pp, rank):
    dep, event, rec = serve(series, prefix, [Fault(at_s=3, satellite=f"rank:{rank}", for_s=60)], tp=tp, pp=pp)
    assert "error" not in event, event["error"]
    assert rec.token_ids == tiny_reference("llama", PROMPT, N, max_context=1024)[0]
    [r] = rec.recoveries
    struck = dep.schedule.fired[0]["node"]
    assert r["lost_ranks"] == [rank] and r["lost_nodes"] == [series.short_names[struck]]
    assert r["new_nodes"][rank] != series.short_names[struck] and 0 < r["tokens_before"] < N
    [d] = dep.recoveries
    assert d["decision"] == "replace"
    # later tokens crossed the spare's links: the routes in force end at the new rank
    assert dep.rank_nodes_at(r["resumed_clock_s"])[rank] == r["new_nodes"][rank]


@pytest.mark.root
@pytest.mark.slow
def test_a_reset_satellite_that_is_back_keeps_its_rank(series, prefix, tiny_reference):
    # back 1 s after the reset, before the client can notice (2 s): its fresh shard takes the rank again
    dep, event, rec = serve(series, prefix, [Fault(at_s=3, satellite="rank:1", reboot_s=1)], policy="wait")
    assert "error" not in event, event["error"]
    assert rec.token_ids == tiny_reference("llama", PROMPT, N, max_context=1024)[0]
    [r] = rec.recoveries
    assert r["new_nodes"] == list(dep.rank_nodes)  # the same satellites: it came back with an empty shard
    assert dep.recoveries[0]["decision"] in ("wait", "back already")


@pytest.mark.root
@pytest.mark.slow
def test_a_cut_link_on_the_path_reroutes_and_a_station_outage_is_waited_out(series, prefix, tiny_reference):
    first = FaultSchedule(series, [])
    a, b = "p02s03", "p02s04"
    faults = [Fault(at_s=3, link=(a, b), for_s=30), Fault(at_s=8, ground_station="Tokyo", for_s=3)]
    dep, event, rec = serve(series, prefix, faults)
    assert "error" not in event, event["error"]
    assert rec.token_ids == tiny_reference("llama", PROMPT, N, max_context=1024)[0]
    assert set(dep.schedule.fired) == {0, 1}
    cut_at = dep.schedule.fired[0]["step"]
    route = dep.route_at(cut_at + 1, dep.rank_nodes[0], dep.rank_nodes[1])
    assert route and not ({a, b} <= set(route) and abs(route.index(a) - route.index(b)) == 1)
    assert first is not None


@pytest.mark.root
@pytest.mark.slow
def test_a_spare_nobody_routed_to_is_reached_before_its_shard_starts(series, prefix, tiny_reference, monkeypatch):
    """Routed as big meshes are (destinations only): the spare is no destination until the failover reaches
    it, then the client's frames get there and the tokens are unchanged."""
    from meshemu.routing import states

    monkeypatch.setattr(states, "ALL_ROUTES_MAX_NODES", 0)  # "auto" now routes towards destinations only
    dep, event, rec = serve(series, prefix, [Fault(at_s=3, satellite="rank:1", for_s=60)])
    assert dep.routes.mode == "destinations"
    assert "error" not in event, event["error"]
    assert rec.token_ids == tiny_reference("llama", PROMPT, N, max_context=1024)[0]
    [r] = rec.recoveries
    spare = series.short_index(r["new_nodes"][1])
    assert spare in dep.routes.destinations.tolist()
    assert dep.routes.summary()["destinations"] < series.n_nodes
