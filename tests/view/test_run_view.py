"""``meshemu run FILE --view``: a live page of a real run (root, a tiny model in the demo shell's namespaces)."""

import io
import json
import re
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from meshemu.emulation.mesh import existing_namespaces

pytestmark = [pytest.mark.root, pytest.mark.slow]

# Long enough to watch: 3 requests of up to 48 tokens, 1.5 s apart, while 2 s steps pass every 0.5 s.
EXPERIMENT = """
name: tiny-live
description: a tiny model as a 2-stage pipeline on the demo shell, watched live
constellation: demo
window: {start_s: 0, duration_s: 120, step_s: 2}
time_scale: 4.0
shaping: {backend: auto}
ground_station: Tokyo
model: {source: "tiny:llama:0", compute: real}
parallelism: {tp: 1, pp: 2}
placement: plane
workload: {prompts: ["hello"], chat_template: false, requests: 3, max_new_tokens: 48, gap_s: 1.5}
probes: [[Tokyo, Delhi]]
"""
STAGE = (0, 45, 950, 800)  # the drawing area of a 1280 x 800 window (page.html's layout)


def _rgb(png: bytes) -> np.ndarray:
    Image = pytest.importorskip("PIL.Image", reason="Pillow (installed with the plots extra) reads the screenshots")
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


def _stage(img):
    x0, y0, x1, y1 = STAGE
    return img[y0:y1, x0:x1]


def _no_run_in_progress(timeout_s=300):
    """Experiments use the default prefix: wait for someone else's run to end rather than touch it."""
    deadline = time.monotonic() + timeout_s
    while existing_namespaces("meshemu"):
        if time.monotonic() > deadline:
            pytest.skip("a meshemu run is in progress on this machine (its namespaces exist)")
        time.sleep(5)


def test_run_view_follows_a_real_run(tmp_path, browser, figures):
    _no_run_in_progress()
    (tmp_path / "tiny.yaml").write_text(EXPERIMENT)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "meshemu", "run", str(tmp_path / "tiny.yaml"), "--out", str(out),
                             "--view", "--view-port", "0"], stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    lines, found = [], threading.Event()

    def drain():  # the run logs every step: never let its stderr pipe fill up
        for line in proc.stderr:
            lines.append(line)
            if "live view at" in line:
                found.set()

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    seen = []
    try:
        deadline = time.monotonic() + 120
        while not found.wait(0.5) and proc.poll() is None and time.monotonic() < deadline:
            pass
        assert found.is_set(), "run --view printed no address: " + "".join(lines[-5:])
        url = re.search(r"live view at (http://127\.0\.0\.1:\d+/)", next(l for l in lines if "live view at" in l)).group(1)
        browser.open(url)
        browser.wait_for("document.body && document.body.dataset.waiting === '1'")  # the mesh is being built
        d = browser.wait_ready(180)
        assert d["mode"] == "live" and d["run"] == "tiny-live" and d["satellites"] == "64"
        shot = None
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            d = browser.dataset()
            if d.get("liveEnded") == "1":
                break
            seen.append((float(d["timeS"]), int(d.get("tokens") or 0), int(d["satellites"]), int(d["isls"])))
            if shot is None and int(d.get("tokens") or 0) >= 20:
                shot = _screenshot_with_load(browser)
            time.sleep(0.1)
        else:
            raise AssertionError(f"the live stream never ended; seen {seen[-3:]}")
        times = sorted({t for t, _, _, _ in seen})
        assert len(times) >= 3, f"the page showed only the steps at {times}"
        assert [t for t, _, _, _ in seen] == sorted(t for t, _, _, _ in seen), "the page went back in time"
        assert max(n for _, n, _, _ in seen) > 0, "no token was counted while the run was going"
        assert all(s == 64 and i > 0 for _, _, s, i in seen)
        final = browser.dataset()
        assert browser.exceptions == [] and browser.console_errors == [] and final["errors"] == "0"
        assert all(u.startswith(url) for u in browser.requests), browser.requests
    finally:
        try:
            proc.wait(timeout=300)
        finally:
            reader.join(timeout=10)
    err = "".join(lines)
    assert proc.returncode == 0 and "Traceback" not in err, err[-3000:]
    assert "live view:" not in err, err  # the view had nothing to complain of (e.g. a placement it got wrong)
    assert existing_namespaces("meshemu") == [], "the run left namespaces behind"
    # the live counts are the run's: every token of requests.jsonl, the ranks of run.json
    tokens = [json.loads(l) for l in open(out / "requests.jsonl") if '"kind": "token"' in l]
    assert int(final["tokens"]) == len(tokens) > 0
    run = json.loads((out / "run.json").read_text())
    shown = browser.evaluate("window.meshemuView.scene.ranks.map((r) => window.meshemuView.scene.short_names[r.node])")
    assert shown == run["rank_nodes"]
    assert shot is not None, "never 20 tokens while the page was watched"
    from PIL import Image

    Image.fromarray(shot.astype(np.uint8)).save(figures / "view-run-live.png")


def _screenshot_with_load(browser):
    """Rank 0's satellite clicked (its shard, layers and load), and the tokens' links on the globe (pixels)."""
    v = browser.evaluate("window.meshemuView.scene.ranks[0].node")
    spot = browser.evaluate(f"window.meshemuView.screenOf({v})")
    if spot:
        browser.click(*spot)
        browser.wait_for("document.body.dataset.selected !== undefined")
        info = browser.evaluate("document.getElementById('satinfo').innerText")
        assert "runs rank 0: stage 0" in info and "tokens processed so far" in info, info
    browser.evaluate("document.getElementById('tokens-panel').scrollIntoView()")  # the counts, then the node
    print(f"live run page: {browser.dataset()['frameMs']} ms of work a frame")
    with_trip = _rgb(browser.screenshot_png())
    browser.evaluate("document.getElementById('show-trip').click()")
    frames = int(browser.dataset().get("frames", "0"))
    browser.wait_for(f"parseInt(document.body.dataset.frames || '0') >= {min(frames + 3, 120)}")
    without = _rgb(browser.screenshot_png())
    browser.evaluate("document.getElementById('show-trip').click()")
    stage = _stage(without)
    ocean = (stage[..., 2] > stage[..., 0] + 30) & (stage[..., 2] > 60)
    assert ocean.mean() > 0.15, f"only {ocean.mean():.1%} of the stage is globe"
    changed = np.abs(_stage(with_trip) - stage).sum(axis=2) > 60
    assert changed.sum() > 30, f"{changed.sum()} pixels change when the token's trip is hidden"
    return with_trip
