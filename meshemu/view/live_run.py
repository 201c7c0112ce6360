"""Live view of ``meshemu run --view``: the page follows each experiment of the file in turn, its steps and tokens.

The runner calls two hooks: ``on_step(emulation, record)`` in the player's
thread after each applied step, and ``on_event(event)`` for each of the
client's events (``loaded``, ``token``, ``request``, ``shards``, ``error``).
Both only stamp the time and queue, so the player never waits for the view;
one worker thread builds each experiment's scene and publishes to the page.

- The scene is built from the emulation's own series (``emulation.series``)
  when the experiment's first step is applied; until then the page says what
  it waits for, and reloads when the mesh's page is up. A sweep's next
  experiment replaces the page the same way once its own mesh is up (the
  label says which experiment the page shows).
- A token counts in the step in force when it reached the client: the last
  step whose applying began at or before the token's ``clock_s`` (both
  ``time.monotonic()``), as the runner's ``Deployment.step_at`` does. A token
  that arrives while a step is being applied may count in the step before.
- The deployment says where it placed the ranks (``placed``, before the mesh
  is up) and where a recovery moved them (``moved``); the shards' own report
  (``shards``: node per rank) checks it at the end. A failover (the client's
  ``lost``) is shown at once; the counts keep following the first placement.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field

from meshemu.errors import MeshemuError
from meshemu.view.page import render_page, render_waiting
from meshemu.view.scene import Placement, build_scene
from meshemu.view.server import _POLL_S, DEFAULT_PORT, LiveFeed, ViewServer


def placement_of(spec, event: dict) -> Placement:
    """The deployment's ``placed`` event as the page's placement of ``spec``'s layout."""
    p = spec.parallelism
    return Placement(tuple(event["rank_nodes"]), p.tp, p.pp, event["client"], p.allreduce)


@dataclass
class _Shown:
    """One experiment on the page: its feed, and what the worker learnt of it so far."""

    index: int
    spec: object
    feed: LiveFeed
    emulation: object = None
    placement: Placement | None = None
    step_starts: list = field(default_factory=list)  # (step, applied_s: when applying began, after the player's start)
    player_start_s: float = float("inf")  # time.monotonic() when the player started (an upper bound, see _step)
    tokens: int = 0
    lost: int = 0  # the client's "lost" events (a failover may move ranks)

    def step_at(self, clock_s: float) -> int:
        step = self.step_starts[0][0] if self.step_starts else 0
        for k, applied_s in self.step_starts:
            if self.player_start_s + applied_s > clock_s:
                break
            step = k
        return step


class RunView:
    """Serves the live page of a ``meshemu run`` on 127.0.0.1; pass ``on_step`` and ``on_event`` to the runner.

    ``specs`` are the file's experiments in the order the runner runs them
    (``expand(spec)``). Use as a context manager: on the way out the page is
    told the run ended, and the server stops.
    """

    def __init__(self, specs, *, port: int = DEFAULT_PORT, log=None):
        self.specs = list(specs)
        self.log = log or (lambda line: None)
        if not self.specs:
            raise MeshemuError("a run view needs at least one experiment")
        waiting = LiveFeed(self.specs[0].time_scale, self._label(0))  # tells the waiting page "next", no more
        self.server = ViewServer(self._waiting(), port=port, feed=waiting)
        self._page_feed = waiting  # the feed of the page now served
        self._queue: queue.Queue = queue.Queue()
        self._shown: _Shown | None = None
        self.placements: list[tuple[str, ...]] = []  # what the page showed, per experiment
        self.tokens: list[int] = []  # tokens counted, per experiment
        self.errors: list[str] = []  # what the worker could not show (the run goes on regardless)
        self._worker = threading.Thread(target=self._work, name="run-view", daemon=True)

    @property
    def url(self) -> str:
        return self.server.url

    def start(self) -> "RunView":
        self.server.start()
        self._worker.start()
        return self

    # -- the runner's hooks (any thread; never block) -----------------------------------------------
    def on_step(self, emulation, record) -> None:
        self._queue.put(("step", time.monotonic(), emulation, record))

    def on_event(self, event: dict) -> None:
        self._queue.put(("event", event))

    # -- the worker ------------------------------------------------------------------------------------
    def _label(self, i: int) -> str:
        name = self.specs[i].name if i < len(self.specs) else "?"
        return f"experiment {i + 1} of {len(self.specs)}: {name}" if len(self.specs) > 1 else name

    def _waiting(self) -> str:
        return render_waiting(f"{self._label(0)} (live)", "Waiting for the mesh and the shards: the page "
                                                         "appears with the first step the player applies.")

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            try:
                if item[0] == "step":
                    self._step(*item[1:])
                else:
                    self._event(item[1])
            except Exception as err:  # noqa: BLE001 - the view must never stop the run it shows
                self.errors.append(f"{type(err).__name__}: {err}")
                self.log(f"live view: {self.errors[-1]}")

    def _begin(self) -> _Shown:
        """The next experiment: its own feed from now on; the page before stays until its mesh is up."""
        i = self._shown.index + 1 if self._shown else 0
        if self._shown is not None:
            self._finish()
        spec = self.specs[min(i, len(self.specs) - 1)]
        self._shown = _Shown(i, spec, LiveFeed(spec.time_scale, self._label(i)))
        return self._shown

    def _swap(self, html: str, feed: LiveFeed) -> None:
        old = self._page_feed
        self.server.page.set(html, feed)
        self._page_feed = feed
        if old is not feed:
            old.publish_event("next", {"label": feed.label})  # open pages reload onto the new one
            old.end()

    def _finish(self) -> None:
        self.tokens.append(self._shown.tokens)

    def _step(self, now_s: float, emulation, record) -> None:
        shown = self._shown or self._begin()
        if shown.emulation is not None and emulation is not shown.emulation:
            shown = self._begin()  # another experiment's mesh, without a "loaded" before it
        if shown.emulation is None:
            shown.emulation = emulation
            series = emulation.series
            pairs = [tuple(p) for p in shown.spec.probes]
            if shown.placement is not None:
                self.placements.append(shown.placement.rank_nodes)
                pairs.insert(0, (shown.placement.client, shown.placement.rank_nodes[0]))
            scene = build_scene(series, pairs=pairs, placement=shown.placement, title=f"{shown.spec.name} (live)")
            scene["run"] = {"label": shown.feed.label, "index": shown.index, "count": len(self.specs)}
            self._swap(render_page(scene, "live", events_url="events"), shown.feed)
        # The player started at most this long before now (the hook runs after the step is applied, and after
        # whatever the deployment does first); the earliest bound over all steps is the deployment's own clock.
        shown.player_start_s = min(shown.player_start_s, now_s - record.applied_s - record.apply_s)
        shown.step_starts.append((record.step, record.applied_s))
        shown.feed.publish_record(record)

    def _event(self, event: dict) -> None:
        kind = event.get("event")
        if kind == "placed":  # the deployment's first word about an experiment: before its mesh is up
            shown = self._begin() if self._shown is None or self._shown.emulation is not None else self._shown
            shown.placement = placement_of(shown.spec, event)
            return
        if kind == "moved" and self._shown is not None:
            self._shown.feed.publish_event("moved", {"rank_nodes": list(event["rank_nodes"])})
            return
        if kind == "loaded":
            shown = self._begin() if self._shown is None or self._shown.emulation is not None else self._shown
            shown.feed.publish_event("loaded", {"replies": [{"rank": r.get("rank"), "stage": r.get("stage"),
                                                             "tp_rank": r.get("tp_rank"), "layers": r.get("layers")}
                                                            for r in event.get("replies", [])]})
            return
        shown = self._shown or self._begin()
        if kind == "token":
            shown.tokens += 1
            shown.feed.publish_event("token", {"request": event.get("request"), "index": event.get("index"),
                                               "step": shown.step_at(float(event.get("clock_s", 0.0)))})
        elif kind == "request":
            shown.feed.publish_event("request", {"request": event.get("request"), "error": event.get("error", "")})
        elif kind == "lost":  # a failover follows: the deployment replaces the ranks (or waits for them)
            shown.lost += 1
            shown.feed.publish_event("lost", {"ranks": event.get("ranks", []), "nodes": event.get("nodes", []),
                                              "step": shown.step_at(float(event.get("clock_s", 0.0)))})
        elif kind == "shards" and shown.placement is not None:
            said = {m.get("rank"): m.get("node") for m in event.get("metrics", []) if isinstance(m, dict)}
            wrong = [(r, n, said[r]) for r, n in enumerate(shown.placement.rank_nodes) if said.get(r) not in (None, n)]
            if wrong and shown.lost:  # a recovery moved them: say where they are now
                shown.feed.publish_event("moved", {"rank_nodes": [said.get(r, n) for r, n in
                                                                  enumerate(shown.placement.rank_nodes)]})
            elif wrong:
                r, shown_node, real = wrong[0]
                self.errors.append(f"the page placed rank {r} on {shown_node}, the shard says {real}")
                self.log(f"live view: {self.errors[-1]}")
        elif kind == "error":
            shown.feed.publish_event("failed", {"message": str(event.get("message", ""))})

    # -- the end -----------------------------------------------------------------------------------------
    def close(self) -> None:
        if self._worker.is_alive():
            self._queue.put(None)
            self._worker.join()
        if self._shown is not None:
            self._finish()
            self._shown = None
        self._page_feed.end()
        time.sleep(2 * _POLL_S)  # let open pages read the end of the stream before the server goes
        self.server.stop()

    def __enter__(self) -> "RunView":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
