"""A small server for the page: replay (the page alone) and live (the player's applied steps as server-sent events).

Starlette answers the three routes and uvicorn serves them, on 127.0.0.1
only. Live mode needs one direction only (player -> page), which is what
server-sent events are: the browser's ``EventSource`` reconnects by itself,
and no websocket library is needed on either side.

A :class:`LiveFeed` is filled from the player's thread (``publish`` per
applied step), and by ``meshemu run`` with its client's events (tokens), and
read by every connected page; a page that connects late first gets every
token so far and the last step, so it shows the mesh and its counts as they
are now. A run of several experiments gives the server a new :class:`Page`
(page and feed) for each, and tells pages of the one before (``next``) to
reload.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from pathlib import Path

from meshemu.errors import CapabilityError, InputError

LOCALHOST = "127.0.0.1"
DEFAULT_PORT = 8765
_POLL_S = 0.05  # how often an open event stream looks for new steps: well under any step


class LiveFeed:
    """What a live page is told, in order (applied steps, and a run's tokens), shared between threads.

    Filled from the player's thread (``publish`` per applied step) and from a
    run's client events (``publish_event``); read by every connected page.
    """

    def __init__(self, time_scale: float = 1.0, label: str = ""):
        self.time_scale = time_scale
        self.label = label  # which run the page shows, e.g. "experiment 2 of 3: tp2-pp1"
        self._events: list[tuple[str, dict]] = []
        self._steps = 0
        self._ended = False
        self._lock = threading.Lock()

    def publish(self, step: int, t_s: float, *, apply_s: float = 0.0, late_s: float = 0.0, **extra) -> None:
        with self._lock:
            self._events.append(("step", {"step": int(step), "t_s": float(t_s), "apply_ms": apply_s * 1e3,
                                          "late_ms": late_s * 1e3, **extra}))
            self._steps += 1

    def publish_record(self, rec) -> None:
        """A player :class:`~meshemu.emulation.player.StepRecord` (what ``Player.play``'s ``on_step`` receives)."""
        self.publish(rec.step, rec.t_s, apply_s=rec.apply_s, late_s=rec.late_s, link_up=rec.link_up,
                     link_down=rec.link_down, route_changes=rec.route_changes)

    def publish_event(self, kind: str, data: dict) -> None:
        """Anything else a page follows: ``token``, ``loaded``, ``request``, ``next`` (another run's page is up)."""
        if kind in ("step", "hello", "end"):
            raise ValueError(f"{kind!r} is the feed's own event")
        with self._lock:
            self._events.append((kind, data))

    def end(self) -> None:
        with self._lock:
            self._ended = True

    def since(self, i: int) -> tuple[list[tuple[str, dict]], bool]:
        """``(events from the i-th on, ended)``, each event ``(kind, data)``."""
        with self._lock:
            return self._events[i:], self._ended

    def catch_up(self) -> tuple[list[tuple[str, dict]], int]:
        """What a page that connects now is sent first: every event but the steps, then the last step."""
        with self._lock:
            events = [e for e in self._events if e[0] != "step"]
            last = next((e for e in reversed(self._events) if e[0] == "step"), None)
            return events + ([last] if last else []), len(self._events)

    @property
    def count(self) -> int:
        """Steps published so far."""
        with self._lock:
            return self._steps


class StepFileFollower:
    """Feeds a :class:`LiveFeed` from a ``steps.jsonl`` that a running ``meshemu emulate --out DIR`` appends to."""

    def __init__(self, path: Path, feed: LiveFeed, poll_s: float = 0.2):
        self.path, self.feed, self.poll_s = Path(path), feed, poll_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "StepFileFollower":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        offset, partial = 0, ""
        while not self._stop.is_set():
            if self.path.exists():
                with open(self.path) as f:
                    f.seek(offset)
                    text = f.read()
                    offset = f.tell()
                partial += text
                *lines, partial = partial.split("\n")
                for line in lines:
                    if not line.strip():
                        continue
                    row = json.loads(line)
                    if row.get("event") == "end":
                        self.feed.end()
                        return
                    if row.get("event") == "start":
                        self.feed.time_scale = float(row.get("time_scale", 1.0))
                        continue
                    self.feed.publish(row["step"], row["t_s"], apply_s=row.get("apply_s", 0.0),
                                      late_s=row.get("late_s", 0.0))
            self._stop.wait(self.poll_s)


def bind(port: int, host: str = LOCALHOST) -> socket.socket:
    """A listening socket, or a one-line error (port in use, no permission)."""
    if host != LOCALHOST:
        raise InputError(f"the view listens on {LOCALHOST} only, not {host}")
    if not 0 <= port <= 65535:
        raise InputError(f"--port {port} is not a TCP port (0-65535)")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((host, port))
        sock.listen(64)
    except OSError as err:
        sock.close()
        hint = "; another view (or program) uses it: pick another with --port" if port else ""
        raise InputError(f"cannot listen on {host}:{port}: {err.strerror}{hint}") from None
    return sock


class Page:
    """The page a server answers with, and the feed of its events; a run of several experiments swaps both."""

    def __init__(self, html: str, feed: LiveFeed | None = None):
        self._lock = threading.Lock()
        self._html, self._feed = html, feed

    def set(self, html: str, feed: LiveFeed | None) -> None:
        with self._lock:
            self._html, self._feed = html, feed

    def get(self) -> tuple[str, LiveFeed | None]:
        with self._lock:
            return self._html, self._feed


def make_app(page: Page):
    try:
        from starlette.applications import Starlette
        from starlette.responses import HTMLResponse, JSONResponse, StreamingResponse
        from starlette.routing import Route
    except ImportError:
        raise CapabilityError("the view's server needs Starlette and uvicorn: pip install -e '.[view]'") from None

    async def html(request):
        return HTMLResponse(page.get()[0], headers={"Cache-Control": "no-store"})

    async def health(request):
        feed = page.get()[1]
        return JSONResponse({"live": feed is not None, "steps": feed.count if feed else 0,
                             "label": feed.label if feed else ""})

    async def events(request):
        feed = page.get()[1]  # the page's own feed: a swap later ends this stream with "next"
        if feed is None:
            return JSONResponse({"error": "not a live view"}, status_code=404)

        async def stream():
            yield _sse("hello", {"time_scale": feed.time_scale, "label": feed.label})
            first, seen = feed.catch_up()  # a late page starts from the mesh as it is now
            for kind, data in first:
                yield _sse(kind, data)
            while True:
                if await request.is_disconnected():
                    return
                new, ended = feed.since(seen)
                for kind, data in new:
                    yield _sse(kind, data)
                seen += len(new)
                if ended:
                    yield _sse("end", {})
                    return
                await asyncio.sleep(_POLL_S)

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})

    return Starlette(routes=[Route("/", html), Route("/health", health), Route("/events", events)])


def _sse(event: str, data: dict) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


class ViewServer:
    """Serves ``html`` (and, live, ``feed``'s events) on 127.0.0.1:``port`` from a background thread."""

    def __init__(self, html: str, *, port: int = DEFAULT_PORT, feed: LiveFeed | None = None):
        self._sock = bind(port)
        self.port = self._sock.getsockname()[1]
        try:
            import uvicorn
        except ImportError:
            self._sock.close()
            raise CapabilityError("the view's server needs Starlette and uvicorn: pip install -e '.[view]'") from None
        self.page = Page(html, feed)
        app = make_app(self.page)
        self._server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False))
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{LOCALHOST}:{self.port}/"

    def start(self) -> "ViewServer":
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        if not self._server.started:
            raise CapabilityError(f"the view server did not start on {self.url}")
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()

    def wait(self) -> None:
        """Until Ctrl-C (KeyboardInterrupt reaches the caller after the server has stopped)."""
        try:
            while self._thread.is_alive():
                self._thread.join(0.5)
        finally:
            self.stop()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
