"""Headless Chromium, driven over the DevTools protocol on a pipe: for the view's tests and its frame-time bench.

``--remote-debugging-pipe`` makes Chromium read protocol messages from fd 3
and write them to fd 4 (JSON, each ended by a NUL byte), so no port is opened
and no client library is needed. Every JavaScript exception, console error and
network request the page makes is recorded, so a test can ask that there were
none (the page must never reach the network).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time

from meshemu.errors import CapabilityError

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
# What the brief for these tests asks of a headless browser run as root on a machine without a GPU;
# SwiftShader gives WebGL in software where there is no GPU.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--hide-scrollbars", "--mute-audio")


def find_chromium() -> str | None:
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


class Browser:
    """One headless Chromium with one page; ``with Browser() as b: b.open(url); b.wait_ready()``."""

    def __init__(self, width: int = 1280, height: int = 800, chromium: str | None = None):
        exe = chromium or find_chromium()
        if exe is None:
            raise CapabilityError("no chromium: apt-get install -y chromium (tools/setup.sh does)")
        self._profile = tempfile.mkdtemp(prefix="meshemu-chromium-")
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()

        def fds():  # in the child: put our pipe ends on fds 3 and 4, where Chromium looks
            a, b = os.dup(to_child_r), os.dup(from_child_w)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen(
            [exe, *FLAGS, f"--user-data-dir={self._profile}", f"--window-size={width},{height}",
             "--remote-debugging-pipe", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            preexec_fn=fds, pass_fds=(3, 4))
        os.close(to_child_r)
        os.close(from_child_w)
        self._next_id, self._lock = 0, threading.Lock()
        self._replies: dict = {}
        self._arrived = threading.Condition()
        self.exceptions: list[str] = []
        self.console_errors: list[str] = []
        self.requests: list[str] = []
        self.stderr_lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        threading.Thread(target=self._read_stderr, daemon=True).start()
        targets = self.call("Target.getTargets")["targetInfos"]
        page = next(t for t in targets if t["type"] == "page")
        self.session = self.call("Target.attachToTarget", targetId=page["targetId"], flatten=True)["sessionId"]
        for domain in ("Runtime", "Log", "Network", "Page"):
            self.call(f"{domain}.enable", session=True)
        self.call("Emulation.setDeviceMetricsOverride", session=True, width=width, height=height,
                  deviceScaleFactor=1, mobile=False)

    # -- protocol ----------------------------------------------------------
    def _read(self):
        buf = b""
        while True:
            chunk = os.read(self._from_child, 1 << 20)
            if not chunk:
                break
            buf += chunk
            while b"\0" in buf:
                raw, buf = buf.split(b"\0", 1)
                self._dispatch(json.loads(raw))
        with self._arrived:
            self._replies["closed"] = True
            self._arrived.notify_all()

    def _read_stderr(self):
        for line in self.proc.stderr:
            self.stderr_lines.append(line.decode(errors="replace").rstrip())

    def _dispatch(self, msg):
        if "id" in msg:
            with self._arrived:
                self._replies[msg["id"]] = msg
                self._arrived.notify_all()
            return
        method, params = msg.get("method"), msg.get("params", {})
        if method == "Runtime.exceptionThrown":
            d = params["exceptionDetails"]
            self.exceptions.append((d.get("exception") or {}).get("description") or d.get("text", "?"))
        elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
            self.console_errors.append(" ".join(str(a.get("value", a.get("description", ""))) for a in params["args"]))
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            self.console_errors.append(params["entry"].get("text", ""))
        elif method == "Network.requestWillBeSent":
            self.requests.append(params["request"]["url"])

    def call(self, method: str, session: bool = False, timeout_s: float = 60.0, **params):
        with self._lock:
            self._next_id += 1
            i = self._next_id
        msg = {"id": i, "method": method, "params": params}
        if session:
            msg["sessionId"] = self.session
        os.write(self._to_child, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout_s
        with self._arrived:
            while i not in self._replies:
                left = deadline - time.monotonic()
                if left <= 0 or self._replies.get("closed"):
                    raise RuntimeError(f"chromium gave no answer to {method}: {self.stderr_lines[-5:]}")
                self._arrived.wait(left)
            reply = self._replies.pop(i)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]

    # -- the page ----------------------------------------------------------
    def open(self, url: str) -> None:
        self.call("Page.navigate", session=True, url=url)

    def evaluate(self, expression: str):
        r = self.call("Runtime.evaluate", session=True, expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expression}: {r['exceptionDetails'].get('text')}")
        return r["result"].get("value")

    def dataset(self) -> dict:
        """``document.body``'s data attributes (``data-time-s`` as ``timeS``, as the DOM names them)."""
        return self.evaluate("Object.assign({}, document.body ? document.body.dataset : {})")

    def wait_for(self, expression: str, timeout_s: float = 30.0):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                value = self.evaluate(expression)
            except RuntimeError:
                value = None
            if value:
                return value
            time.sleep(0.1)
        raise TimeoutError(f"page never made {expression!r} true; exceptions: {self.exceptions}")

    def wait_ready(self, timeout_s: float = 30.0) -> dict:
        self.wait_for("document.body && document.body.dataset.ready === '1'", timeout_s)
        return self.dataset()

    def screenshot_png(self) -> bytes:
        return base64.b64decode(self.call("Page.captureScreenshot", session=True, format="png")["data"])

    def click(self, x: float, y: float) -> None:
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", session=True, type=kind, x=x, y=y, button="left", clickCount=1)

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout_s=5)
        except RuntimeError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_child)
        self._reader.join(timeout=5)  # it stops at the end of Chromium's output
        os.close(self._from_child)
        shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
