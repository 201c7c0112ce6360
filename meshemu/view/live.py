"""Live view: the page follows the player's applied steps, in the same process or from another one.

In-process (``meshemu emulate --view``), the player's ``on_step`` callback
publishes each :class:`~meshemu.emulation.player.StepRecord` to a
:class:`~meshemu.view.server.LiveFeed`. Across processes (``meshemu emulate
--out DIR``, then ``meshemu view --attach DIR``), :class:`StepLog` writes
``DIR/series.npz`` before the first step and appends one JSON line per applied
step to ``DIR/steps.jsonl``, which the attached view follows.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from meshemu.view.page import render_page
from meshemu.view.scene import build_scene
from meshemu.view.server import _POLL_S, DEFAULT_PORT, LiveFeed, ViewServer
from meshemu.view.sources import SERIES_FILE

STEP_LOG = "steps.jsonl"


def start_live_view(series, *, port: int = DEFAULT_PORT, time_scale: float = 1.0, pairs=(), title=None,
                    placement=None) -> tuple[ViewServer, LiveFeed]:
    """Serve a live page of ``series``; publish steps to the returned feed (``feed.publish_record``)."""

    feed = LiveFeed(time_scale)
    scene = build_scene(series, pairs=pairs, placement=placement, title=title or f"{series.constellation} (live)")
    server = ViewServer(render_page(scene, "live", events_url="events"), port=port, feed=feed).start()
    return server, feed


class StepLog:
    """What an attached view reads: the series once, then one line per applied step, then an end line."""

    def __init__(self, folder, series, time_scale: float = 1.0):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        series.save(self.folder / SERIES_FILE)
        self._f = open(self.folder / STEP_LOG, "w")
        self._write({"event": "start", "time_scale": time_scale, "steps": series.n_steps})

    def _write(self, row: dict) -> None:
        self._f.write(json.dumps(row) + "\n")
        self._f.flush()  # another process follows this file as it grows

    def record(self, rec) -> None:
        self._write({"event": "step", "step": rec.step, "t_s": rec.t_s, "apply_s": rec.apply_s, "late_s": rec.late_s})

    def close(self) -> None:
        if not self._f.closed:
            self._write({"event": "end"})
            self._f.close()


class StepSinks:
    """Where ``meshemu emulate`` sends each applied step: a live page (``view_port``) and the attach log (``out``).

    Call it with each :class:`~meshemu.emulation.player.StepRecord`; as a context
    manager it ends the streams and stops the server on the way out.
    """

    def __init__(self, series, *, view_port: int | None = None, out=None, time_scale: float = 1.0, log=None):
        import sys

        log = log or (lambda line: print(f"meshemu: {line}", file=sys.stderr))
        self.server = self.feed = self.step_log = None
        if view_port is not None:
            self.server, self.feed = start_live_view(series, port=view_port, time_scale=time_scale)
            log(f"live view at {self.server.url}")
        if out is not None:
            self.step_log = StepLog(out, series, time_scale)

    def __call__(self, rec) -> None:
        if self.feed is not None:
            self.feed.publish_record(rec)
        if self.step_log is not None:
            self.step_log.record(rec)

    def close(self) -> None:
        if self.step_log is not None:
            self.step_log.close()
        if self.feed is not None:
            self.feed.end()
            time.sleep(2 * _POLL_S)  # let open pages read the end of the stream before the server goes
            self.server.stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
