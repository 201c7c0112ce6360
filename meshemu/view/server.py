"""A small server for the page: replay (the page alone) and live (the player's applied steps as server-sent events).

Starlette answers the three routes and uvicorn serves them, on 127.0.0.1
only. Live mode needs one direction only (player -> page), which is what
server-sent events are: the browser's ``EventSource`` reconnects by itself,
and no websocket library is needed on either side.

A :class:`LiveFeed` is filled from the player's thread (``publish`` per
applied step) and read by every connected page; a page that connects late
first gets the last step, so it shows the mesh as it is now.
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
    """Applied steps, in order, shared between the player's thread and the server's."""

    def __init__(self, time_scale: float = 1.0):
        self.time_scale = time_scale
        self._steps: list[dict] = []
        self._ended = False
        self._lock = threading.Lock()

    def publish(self, step: int, t_s: float, *, apply_s: float = 0.0, late_s: float = 0.0, **extra) -> None:
        with self._lock:
            self._steps.append({"step": int(step), "t_s": float(t_s), "apply_ms": apply_s * 1e3,
                                "late_ms": late_s * 1e3, **extra})

    def publish_record(self, rec) -> None:
        """A player :class:`~meshemu.emulation.player.StepRecord` (what ``Player.play``'s ``on_step`` receives)."""
        self.publish(rec.step, rec.t_s, apply_s=rec.apply_s, late_s=rec.late_s, link_up=rec.link_up,
                     link_down=rec.link_down, route_changes=rec.route_changes)

    def end(self) -> None:
        with self._lock:
            self._ended = True

    def since(self, i: int) -> tuple[list[dict], bool]:
        with self._lock:
            return self._steps[i:], self._ended

    @property
    def count(self) -> int:
        with self._lock:
            return len(self._steps)


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


def make_app(html: str, feed: LiveFeed | None = None):
    try:
        from starlette.applications import Starlette
        from starlette.responses import HTMLResponse, JSONResponse, StreamingResponse
        from starlette.routing import Route
    except ImportError:
        raise CapabilityError("the view's server needs Starlette and uvicorn: pip install -e '.[view]'") from None

    async def page(request):
        return HTMLResponse(html)

    async def health(request):
        return JSONResponse({"live": feed is not None, "steps": feed.count if feed else 0})

    async def events(request):
        if feed is None:
            return JSONResponse({"error": "not a live view"}, status_code=404)

        async def stream():
            yield _sse("hello", {"time_scale": feed.time_scale})
            seen, (steps, _) = 0, feed.since(0)
            if steps:  # a late page starts from the mesh as it is now
                seen = len(steps)
                yield _sse("step", steps[-1])
            while True:
                if await request.is_disconnected():
                    return
                steps, ended = feed.since(seen)
                for s in steps:
                    yield _sse("step", s)
                seen += len(steps)
                if ended:
                    yield _sse("end", {})
                    return
                await asyncio.sleep(_POLL_S)

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})

    return Starlette(routes=[Route("/", page), Route("/health", health), Route("/events", events)])


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
        app = make_app(html, feed)
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
