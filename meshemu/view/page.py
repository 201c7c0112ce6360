"""One HTML page that holds everything: the scene, our script and the libraries, inlined.

The libraries (three.js, topojson-client, and world-atlas's Natural Earth
outline) are installed from the npm registry and bundled into one file by
``tools/setup.sh`` (``npm ci && npm run build`` in ``meshemu/view/web``); the
page never loads anything, so it works from a USB stick and from ``file://``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from meshemu.errors import CapabilityError, InputError

WEB_DIR = Path(__file__).parent / "web"
MODES = ("export", "replay", "live")


def vendor_bundle_path() -> Path:
    """Where the bundled libraries are (``MESHEMU_VIEW_VENDOR`` overrides, e.g. for a packaged install)."""
    return Path(os.environ.get("MESHEMU_VIEW_VENDOR") or WEB_DIR / "build" / "vendor.js")


def _vendor() -> str:
    path = vendor_bundle_path()
    if not path.exists():
        raise CapabilityError(f"the view's JavaScript libraries are not built ({path} is missing): run "
                              "'sudo bash tools/setup.sh', or 'npm ci && npm run build' in meshemu/view/web")
    return path.read_text()


def _inline_json(obj) -> str:
    # "</script>" inside a string would end the script element early
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")


def _inline_script(text: str) -> str:
    return text.replace("</script", "<\\/script")


def render_page(scene: dict, mode: str = "export", *, events_url: str | None = None) -> str:
    """The whole page for ``scene`` (see :func:`meshemu.view.scene.build_scene`) in ``mode``."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    scene = dict(scene, mode=mode, events_url=events_url)
    html = (WEB_DIR / "page.html").read_text()
    parts = {"__TITLE__": _escape(scene["title"]), "__MODE__": mode, "__SCENE__": _inline_json(scene),
             "__VENDOR__": _inline_script(_vendor()), "__APP__": _inline_script((WEB_DIR / "app.js").read_text())}
    # one pass, so that a placeholder-like string inside the data or a library is left alone
    out, i = [], 0
    while True:
        j = html.find("__", i)
        if j < 0:
            out.append(html[i:])
            break
        key = next((k for k in parts if html.startswith(k, j)), None)
        out.append(html[i:j] + (parts[key] if key else "__"))
        i = j + (len(key) if key else 2)
    return "".join(out)


WAITING_HTML = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><link rel="icon" href="data:,"><title>meshemu view: __TITLE__</title>
<style>body { margin: 0; padding: 40px; background: #05070d; color: #d8dee9; font: 15px/1.5 system-ui, sans-serif; }</style>
</head><body data-ready="0" data-errors="0" data-mode="live" data-waiting="1">
<h2>__TITLE__</h2><p>__TEXT__</p><p>This page reloads itself when the mesh is up.</p>
<script>
// the run tells this stream "next" when the page of its mesh is ready
const events = new EventSource("events");
events.addEventListener("next", function () { events.close(); location.reload(); });
</script></body></html>
"""


def render_waiting(title: str, text: str) -> str:
    """A live page before there is a mesh to draw (``meshemu run --view`` while the model loads)."""
    return WAITING_HTML.replace("__TITLE__", _escape(title)).replace("__TEXT__", _escape(text))


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def export_page(scene: dict, path) -> Path:
    path = Path(path)
    if path.parent and not path.parent.exists():
        raise InputError("no such folder to export into", file=path.parent)
    path.write_text(render_page(scene, "export"), encoding="utf-8")
    return path
