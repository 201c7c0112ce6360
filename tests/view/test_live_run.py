"""``meshemu run --view`` without root: :class:`RunView` fed the runner's hooks by hand, read in a real browser.

The hooks get what the deployment gives them (an emulation with its series, the
player's step records, the client's events), so the page, its token counts and
a sweep's change of page are checked here on the demo series; the real run is
in test_run_view.py (root).
"""

import time
from dataclasses import replace
from types import SimpleNamespace

import pytest

from meshemu.experiments.spec import Parallelism, Sweep, expand, load_experiment
from meshemu.routing import shortest_route
from meshemu.routing import ForwardingStates
from meshemu.serving.placement import place
from meshemu.view.live_run import RunView


def planned_placement(spec, series):
    """What the deployment's ``placed`` event says for ``spec`` (it calls ``place`` so)."""
    p = spec.parallelism
    nodes = place(spec.placement, p.tp * p.pp, series, ForwardingStates(series), spec.ground_station, step=0)
    return SimpleNamespace(rank_nodes=tuple(nodes), client=series.short_names[series.short_index(spec.ground_station)])


def placed(view, spec, series):
    got = planned_placement(spec, series)
    view.on_event({"event": "placed", "rank_nodes": list(got.rank_nodes), "client": got.client})

EXPERIMENT = """
name: live-demo
constellation: demo
window: {start_s: 0, duration_s: 600, step_s: 10}
time_scale: 1.0
ground_station: Paris
model: {source: "tiny:llama:0", compute: real}
parallelism: {tp: 1, pp: 2}
placement: plane
workload: {prompts: ["hello"], requests: 1, max_new_tokens: 4}
probes: [[Paris, Moscow]]
"""


@pytest.fixture
def spec(tmp_path):
    (tmp_path / "live.yaml").write_text(EXPERIMENT)
    return load_experiment(tmp_path / "live.yaml")


PLAYER_START_S = time.monotonic()


def _record(k, t_s, apply_s=0.001):
    """A step record as the player makes it, applied just now (``applied_s``: since the player started)."""
    applied_s = time.monotonic() - apply_s - PLAYER_START_S
    return SimpleNamespace(step=k, t_s=t_s, applied_s=applied_s, apply_s=apply_s, late_s=0.0, link_up=0,
                           link_down=0, route_changes=0)


def _wait(predicate, timeout_s=20):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _feed(view):
    return view.server.page.get()[1]


class TestRunView:
    def test_tokens_count_in_the_step_in_force_when_they_arrived(self, spec, demo_series):
        emu = SimpleNamespace(series=demo_series)
        with RunView([spec], port=0) as view:
            placed(view, spec, demo_series)
            view.on_event({"event": "loaded", "replies": [{"rank": 0, "stage": 0, "layers": [0, 1]},
                                                          {"rank": 1, "stage": 1, "layers": [1, 2]}]})
            t0 = time.monotonic()
            view.on_step(emu, _record(0, 0.0))
            view.on_step(emu, _record(1, 10.0))  # applying began a moment ago: tokens from then on are step 1's
            view.on_event({"event": "token", "request": 0, "index": 0, "clock_s": t0 - 1.0})
            view.on_event({"event": "token", "request": 0, "index": 1, "clock_s": time.monotonic()})
            _wait(lambda: sum(kind == "token" for kind, _ in _feed(view).since(0)[0]) == 2)
            events = _feed(view).since(0)[0]
            assert [d["step"] for kind, d in events if kind == "token"] == [0, 1]
            assert [kind for kind, _ in events][:2] == ["loaded", "step"]
        assert view.placements == [planned_placement(spec, demo_series).rank_nodes] and view.tokens == [2]
        assert view.errors == []

    def test_placement_is_the_deployments(self, spec, demo_series):
        with RunView([spec], port=0) as view:
            view.on_event({"event": "placed", "rank_nodes": ["p07s07", "p07s06"], "client": "Paris"})
            view.on_step(SimpleNamespace(series=demo_series), _record(0, 0.0))
        assert view.placements == [("p07s07", "p07s06")]

    def test_a_wrong_placement_is_told(self, spec, demo_series):
        with RunView([spec], port=0) as view:
            placed(view, spec, demo_series)
            view.on_event({"event": "loaded", "replies": []})
            view.on_step(SimpleNamespace(series=demo_series), _record(0, 0.0))
            view.on_event({"event": "shards", "metrics": [{"rank": 0, "node": "p07s07"}]})
        assert view.errors and "rank 0" in view.errors[0] and "p07s07" in view.errors[0]

    def test_a_rank_moved_by_a_failover_is_shown_where_it_went(self, spec, demo_series):
        with RunView([spec], port=0) as view:
            placed(view, spec, demo_series)
            view.on_event({"event": "loaded", "replies": []})
            view.on_step(SimpleNamespace(series=demo_series), _record(0, 0.0))
            first = planned_placement(spec, demo_series).rank_nodes
            view.on_event({"event": "lost", "ranks": [1], "nodes": list(first), "clock_s": time.monotonic()})
            view.on_event({"event": "shards", "metrics": [{"rank": 0, "node": first[0]}, {"rank": 1, "node": "p07s07"}]})
            _wait(lambda: any(kind == "moved" for kind, _ in _feed(view).since(0)[0]))
            moved = next(d for kind, d in _feed(view).since(0)[0] if kind == "moved")
            lost = next(d for kind, d in _feed(view).since(0)[0] if kind == "lost")
        assert moved["rank_nodes"] == [first[0], "p07s07"] and lost["ranks"] == [1] and lost["step"] == 0
        assert view.errors == []


def test_live_run_page_counts_tokens_per_link_and_follows_a_sweep(spec, demo_series, browser):
    s, names = demo_series, demo_series.short_names
    specs = expand(replace(spec, sweep=Sweep("parallelism.pp", (2, 1))))
    first, second = SimpleNamespace(series=s), SimpleNamespace(series=s)
    with RunView(specs, port=0) as view:
        browser.open(view.url)
        browser.wait_for("document.body && document.body.dataset.waiting === '1'")
        placed(view, specs[0], s)
        view.on_event({"event": "loaded", "replies": [{"rank": 0, "stage": 0, "layers": [0, 1]},
                                                      {"rank": 1, "stage": 1, "layers": [1, 2]}]})
        k = 3
        for j in range(k + 1):
            view.on_step(first, _record(j, float(s.times_s[j])))
        d = browser.wait_ready()
        assert d["mode"] == "live" and d["run"].startswith("experiment 1 of 2")
        browser.wait_for(f"document.body.dataset.liveStep === '{k}'")
        for i in range(5):
            view.on_event({"event": "token", "request": 0, "index": i, "clock_s": time.monotonic()})
        browser.wait_for("document.body.dataset.tokens === '5'")
        # each token crosses every link of its step's trip once; the prompt, the client -> rank 0 route once
        place = planned_placement(specs[0], s)
        r0, r1, client = (names.index(n) for n in (*place.rank_nodes, place.client))
        want = {}
        for u, v, n in ((r0, r1, 5), (r1, r0, 5), (r0, client, 5), (client, r0, 1)):
            path = shortest_route(s, k, u, v).nodes
            for a, b in zip(path, path[1:]):
                key = " ".join(names[x] for x in sorted((a, b)))
                want[key] = want.get(key, 0) + n
        got = browser.evaluate("window.meshemuView.linkCounts()")
        assert got == want
        assert int(browser.dataset()["linkCrossings"]) == sum(want.values())
        # the load of rank 1's satellite: it runs stage 1 (layer 1), processed all 5 tokens, sent each back
        browser.click(*browser.evaluate(f"window.meshemuView.screenOf({r1})"))
        browser.wait_for(f"document.body.dataset.selected === '{names[r1]}'")
        info = browser.evaluate("document.getElementById('satinfo').innerText")
        assert "rank 1: stage 1, layer 1" in info and "tokens processed so far: 5" in info
        assert "activations sent 5" in info
        # the sweep's next experiment: the page reloads onto its mesh, with its own counts
        view.on_event({"event": "shards", "metrics": []})
        placed(view, specs[1], s)
        view.on_event({"event": "loaded", "replies": [{"rank": 0, "stage": 0, "layers": [0, 2]}]})
        view.on_step(second, _record(0, 0.0))
        browser.wait_for("(document.body.dataset.run || '').startsWith('experiment 2 of 2')")
        browser.wait_for("document.body.dataset.ready === '1' && document.body.dataset.liveStep === '0'")
        assert browser.dataset()["tokens"] == "0"
        assert browser.exceptions == [] and browser.console_errors == []
        assert all(u.startswith(view.url) for u in browser.requests)
    assert view.tokens == [5, 0] and view.errors == []
