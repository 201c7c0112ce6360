"""Each mode of the view in a real browser (headless Chromium): no JavaScript error, nothing fetched from
the network, the drawn state equal to the series and to meshemu.routing, and a globe with satellites on screen."""

import io
import json
import re
import signal
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

from meshemu.emulation.player import Player
from meshemu.routing import shortest_route
from meshemu.view.live import StepLog, start_live_view
from meshemu.view.page import export_page, render_page
from meshemu.view.scene import build_scene
from meshemu.view.server import ViewServer
from meshemu.view.sources import open_source

STAGE = (0, 45, 950, 800)  # the drawing area of a 1280 x 800 window: x0, y0, x1, y1 (page.html's layout)


def _rgb(png: bytes) -> np.ndarray:
    Image = pytest.importorskip("PIL.Image", reason="Pillow (installed with the plots extra) reads the screenshots")
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


def _stage(img):
    x0, y0, x1, y1 = STAGE
    return img[y0:y1, x0:x1]


def _expected(series, k, pair):
    up = series.up[k]
    names = series.short_names
    src, dst = (names.index(n) if n in names else series.node_index(n) for n in pair)
    return {"isls": int(up[~series.is_gsl].sum()), "gsls": int(up[series.is_gsl].sum()),
            "route": " ".join(names[v] for v in shortest_route(series, k, src, dst).nodes)}


def _frames(browser, n=3):
    start = int(browser.dataset().get("frames", "0"))
    browser.wait_for(f"parseInt(document.body.dataset.frames || '0') >= {min(start + n, 120)}")


def _clean(browser, allowed_prefix):
    assert browser.exceptions == [], browser.exceptions
    assert browser.console_errors == [], browser.console_errors
    assert browser.dataset()["errors"] == "0"
    outside = [u for u in browser.requests if not u.startswith(allowed_prefix)]
    assert outside == [], f"the page fetched {outside}"


def _globe_with_satellites(browser, n_satellites):
    """A screenshot with the satellites and one without: the difference is the satellites, over a globe."""
    _frames(browser)
    with_sats = _rgb(browser.screenshot_png())
    browser.evaluate("document.getElementById('show-satellites').click()")
    browser.wait_for("document.body.dataset.satellites === '0'")
    _frames(browser)
    without = _rgb(browser.screenshot_png())
    browser.evaluate("document.getElementById('show-satellites').click()")
    browser.wait_for(f"document.body.dataset.satellites === '{n_satellites}'")
    stage = _stage(without)
    # the globe: ocean blue, darker than the land outline, over a large disc in the middle of the stage
    ocean = (stage[..., 2] > stage[..., 0] + 30) & (stage[..., 2] > 60)
    assert ocean.mean() > 0.15, f"only {ocean.mean():.1%} of the stage is globe"
    h, w = ocean.shape
    assert ocean[h // 2 - 20: h // 2 + 20, w // 2 - 20: w // 2 + 20].mean() > 0.5, "the globe is not in the middle"
    changed = (np.abs(_stage(with_sats) - stage).sum(axis=2) > 60)
    # at least a quarter of the satellites in front of the globe, a few pixels each
    assert changed.sum() > n_satellites * 0.25 * 8, f"{changed.sum()} pixels change when the satellites are hidden"
    return with_sats


def _save(img, path):
    from PIL import Image

    Image.fromarray(img.astype(np.uint8)).save(path)


class TestExport:
    def test_page_from_a_file_shows_the_series_at_the_chosen_time(self, demo_series, browser, tmp_path, figures):
        s = demo_series
        page = export_page(build_scene(s, pairs=[("Paris", "Moscow")]), tmp_path / "view.html")
        k = 23
        t_s = float(s.times_s[k]) + 4.0  # between two steps: links of step k, positions in between
        browser.open(f"{page.as_uri()}#t={t_s}&play=0")
        d = browser.wait_ready()
        assert d["mode"] == "export" and d["view"] == "globe"
        assert d["satellites"] == str(s.n_satellites) and float(d["timeS"]) == float(s.times_s[k])
        want = _expected(s, k, ("Paris", "Moscow"))
        assert want["route"].startswith("Paris ")  # a route exists at this step, so there is one to compare
        assert (int(d["isls"]), int(d["gsls"]), d["route"]) == (want["isls"], want["gsls"], want["route"])
        img = _globe_with_satellites(browser, s.n_satellites)
        _save(img, figures / "view-export.png")
        _clean(browser, "file://")

    def test_dump_dom_reads_the_same_state(self, demo_series, page_assets, tmp_path):
        """The plain way, without the DevTools protocol: ``chromium --headless --dump-dom``."""
        from meshemu.view.browser import FLAGS, find_chromium

        exe = find_chromium()
        if exe is None:
            pytest.skip("no chromium on this machine (apt-get install -y chromium; tools/setup.sh installs it)")
        s, k = demo_series, 40
        page = export_page(build_scene(s, pairs=[("Tokyo", "Delhi")]), tmp_path / "view.html")
        r = subprocess.run([exe, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000",
                            "--dump-dom", f"{page.as_uri()}#t={float(s.times_s[k])}&play=0"],
                           capture_output=True, text=True, timeout=120)
        body = dict(re.findall(r'data-([a-z-]+)="([^"]*)"', re.search(r"<body[^>]*>", r.stdout).group(0)))
        want = _expected(s, k, ("Tokyo", "Delhi"))
        assert want["route"].startswith("Tokyo ")  # a route exists at this step, so there is one to compare
        assert body["ready"] == "1" and body["errors"] == "0" and body["satellites"] == str(s.n_satellites)
        assert float(body["time-s"]) == float(s.times_s[k])
        assert (int(body["isls"]), int(body["gsls"]), body["route"]) == (want["isls"], want["gsls"], want["route"])

    def test_map_toggle_and_playing(self, demo_series, browser, tmp_path, figures):
        s = demo_series
        page = export_page(build_scene(s), tmp_path / "view.html")
        browser.open(f"{page.as_uri()}#speed=300")
        browser.wait_ready()
        browser.evaluate("document.getElementById('toggle').click()")
        browser.wait_for("document.body.dataset.view === 'map'")
        t0 = float(browser.dataset()["timeS"])
        browser.wait_for(f"parseFloat(document.body.dataset.timeS) >= {t0 + 3 * (s.times_s[1] - s.times_s[0])}")
        browser.evaluate("document.getElementById('play').click()")  # pause
        _frames(browser)
        d = browser.dataset()
        k = int(d["step"])
        want = _expected(s, k, ("Paris", "Moscow"))
        # the map leaves out links that would wrap round its edge, never more than that
        assert 0 < int(d["isls"]) <= want["isls"] and d["route"] == want["route"]
        img = _stage(_rgb(browser.screenshot_png()))
        land = (img[..., 0] > 120) & (img[..., 2] > 180)  # the land outline's light blue
        assert land.mean() > 0.005, "no coastline on the map"
        _save(img, figures / "view-map.png")
        _clean(browser, "file://")

    def test_clicking_a_satellite_lists_its_links(self, demo_series, browser, tmp_path):
        s = demo_series
        page = export_page(build_scene(s), tmp_path / "view.html")
        k = 5
        browser.open(f"{page.as_uri()}#t={float(s.times_s[k])}&play=0")
        browser.wait_ready()
        _frames(browser)
        spots = browser.evaluate(f"Array.from({{length: {s.n_nodes}}}, (_, v) => window.meshemuView.screenOf(v))")
        shown = {v: p for v, p in enumerate(spots) if p and v < s.n_satellites and STAGE[0] < p[0] < STAGE[2]
                 and STAGE[1] < p[1] < STAGE[3]}
        pts = np.array([p for p in spots if p])
        # the satellite farthest from any other drawn node, so the click cannot be taken by a neighbour
        v = max(shown, key=lambda v: np.sort(np.hypot(*(pts - shown[v]).T))[1])
        browser.click(*shown[v])
        name = s.short_names[v]
        browser.wait_for(f"document.body.dataset.selected === '{name}'")
        rows = browser.evaluate("document.querySelectorAll('#satinfo tr').length")
        n_links = int((s.up[k] & ((s.links[:, 0] == v) | (s.links[:, 1] == v))).sum())
        assert rows == n_links and n_links >= 2
        _clean(browser, "file://")


class TestReplay:
    def test_results_folder_served_on_localhost(self, demo_series, browser, tmp_path, make_results_folder, figures):
        s, k = demo_series, 10
        names = s.short_names
        # shards on the first two satellites of Paris's route at step k: in view, since the page faces the client
        hops = shortest_route(s, k, s.node_index("Paris"), s.node_index("Moscow")).nodes
        ranks = (names[hops[1]], names[hops[2]])
        folder = make_results_folder(tmp_path / "run", s, ranks=ranks)
        src = open_source(folder)
        with ViewServer(render_page(src.scene(), "replay"), port=0) as server:
            browser.open(f"{server.url}#t={float(s.times_s[k])}&play=0")
            d = browser.wait_ready()
            assert d["mode"] == "replay"
            # the first pair of a results folder: the client and rank 0, as routes.csv has it
            assert d["route"] == _expected(s, k, ("Paris", ranks[0]))["route"]
            img = _globe_with_satellites(browser, s.n_satellites)
            _save(img, figures / "view-replay.png")
            assert "Paris - Moscow" in browser.evaluate("document.getElementById('pair').innerText")
            browser.click(*browser.evaluate("window.meshemuView.screenOf(%d)" % names.index(ranks[0])))
            browser.wait_for(f"document.body.dataset.selected === '{ranks[0]}'")
            info = browser.evaluate("document.getElementById('satinfo').innerText")
            assert "runs rank 0: stage 0" in info
            # the fixture's requests.jsonl has 3 tokens at step 10; stage 0's leader is on every token's trip
            assert browser.dataset()["tokens"] == "3" and "token trips through here so far: 3" in info
            leg = lambda u, v: " ".join(names[x] for x in shortest_route(s, k, names.index(u), names.index(v)).nodes)
            assert browser.dataset()["trip"] == " | ".join([leg(ranks[0], ranks[1]), leg(ranks[1], ranks[0]),
                                                            leg(ranks[0], "Paris")])
            _clean(browser, server.url)


    def test_replay_counts_tokens_per_link_and_a_satellites_load(self, demo_series, browser, tmp_path,
                                                                 make_results_folder):
        s, k = demo_series, 11
        names = s.short_names
        hops = shortest_route(s, 10, s.node_index("Paris"), s.node_index("Moscow")).nodes
        ranks = (names[hops[1]], names[hops[2]])
        # tokens at steps 10, 10, 10, 11; the request's first token (its prompt) at step 10
        folder = make_results_folder(tmp_path / "run", s, ranks=ranks)
        with ViewServer(render_page(open_source(folder).scene(), "replay"), port=0) as server:
            browser.open(f"{server.url}#t={float(s.times_s[k])}&play=0")
            d = browser.wait_ready()
            assert d["tokens"] == "4" and d["prompts"] == "1"
            a, b, c = (names.index(n) for n in (*ranks, "Paris"))
            want = {}
            for step, n_tokens, n_prompts in ((10, 3, 1), (11, 1, 0)):
                for u, v, n in ((a, b, n_tokens), (b, a, n_tokens), (a, c, n_tokens), (c, a, n_prompts)):
                    path = shortest_route(s, step, u, v).nodes
                    for x, y in zip(path, path[1:]):
                        key = " ".join(names[z] for z in sorted((x, y)))
                        want[key] = want.get(key, 0) + n
            want = {key: n for key, n in want.items() if n}
            assert browser.evaluate("window.meshemuView.linkCounts()") == want
            assert int(browser.dataset()["linkCrossings"]) == sum(want.values())
            browser.click(*browser.evaluate("window.meshemuView.screenOf(%d)" % b))
            browser.wait_for(f"document.body.dataset.selected === '{ranks[1]}'")
            info = browser.evaluate("document.getElementById('satinfo').innerText")
            # stage 1 holds layers 1-2 of 3 (run.json's load); it sent each of the 4 tokens back to stage 0
            assert "runs rank 1: stage 1, layers 1-2" in info and "tokens processed so far: 4" in info
            assert "activations sent 4" in info
            _clean(browser, server.url)


class _Emulation:
    """Stands in for Emulation: what the player needs (prepare, apply_step), applying nothing."""

    def __init__(self, series):
        self.series = series

    def prepare(self, k):
        pass

    def apply_step(self, k):
        ch = self.series.changes(k)
        return SimpleNamespace(apply_s=0.0, link_up=len(ch.went_up), link_down=len(ch.went_down),
                               delay_changes=len(ch.delay_changed), route_changes=0)


def _follow(browser, n_steps):
    """Live step numbers the page shows while the player runs, until the stream ends."""
    seen = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        d = browser.dataset()
        if "liveStep" in d:
            seen.append(int(d["liveStep"]))
            assert int(d["step"]) == int(d["liveStep"]), "the page ran ahead of (or behind) the player"
        if d.get("liveEnded") == "1":
            return seen
        time.sleep(0.05)
    raise AssertionError(f"the live stream never ended; steps seen {seen}")


class TestLive:
    def test_page_follows_the_players_applied_steps(self, demo_series, browser, figures):
        s, n_steps = demo_series, 12
        server, feed = start_live_view(s, port=0, time_scale=40.0)  # 10 s steps every 0.25 s
        try:
            browser.open(server.url)
            d = browser.wait_ready()
            assert d["mode"] == "live"
            player = Player(_Emulation(s), time_scale=40.0)
            thread = threading.Thread(target=lambda: (player.play(0, n_steps, on_step=feed.publish_record), feed.end()))
            thread.start()
            seen = _follow(browser, n_steps)
            thread.join()
            assert seen[-1] == n_steps - 1 and len(set(seen)) >= 4, seen
            assert seen == sorted(seen)
            _frames(browser)
            d = browser.dataset()
            k = n_steps - 1
            want = _expected(s, k, ("Paris", "Moscow"))
            assert float(d["timeS"]) == float(s.times_s[k])
            assert float(d["clockS"]) == pytest.approx(float(s.times_s[k]), abs=1e-3)  # stopped with the player
            assert (int(d["isls"]), int(d["gsls"]), d["route"]) == (want["isls"], want["gsls"], want["route"])
            img = _globe_with_satellites(browser, s.n_satellites)
            _save(img, figures / "view-live.png")
            _clean(browser, server.url)
        finally:
            server.stop()

    def test_attach_follows_another_process(self, demo_series, browser, tmp_path):
        s = demo_series
        log = StepLog(tmp_path / "emu", s, time_scale=1.0)
        proc = subprocess.Popen([sys.executable, "-m", "meshemu", "view", str(tmp_path / "emu"), "--attach",
                                 "--port", "0"], stderr=subprocess.PIPE, text=True)
        try:
            line = proc.stderr.readline()
            url = re.search(r"http://127\.0\.0\.1:\d+/", line).group(0)
            browser.open(url)
            browser.wait_ready()
            for k in range(4):
                log.record(SimpleNamespace(step=k, t_s=float(s.times_s[k]), apply_s=0.001, late_s=0.0))
                browser.wait_for(f"document.body.dataset.liveStep === '{k}'", timeout_s=20)
            log.close()
            browser.wait_for("document.body.dataset.liveEnded === '1'", timeout_s=20)
            assert browser.dataset()["timeS"] == str(float(s.times_s[3])).rstrip("0").rstrip(".")
            _clean(browser, url)
        finally:
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=20)
        assert proc.returncode == 0 and "Traceback" not in err, err

    @pytest.mark.root
    @pytest.mark.slow
    def test_emulate_view_on_the_real_mesh(self, browser, prefix):
        proc = subprocess.Popen([sys.executable, "-m", "meshemu", "emulate", "-c", "demo", "--duration", "30",
                                 "--step", "5", "--time-scale", "3", "--shaper", "none", "--prefix", prefix,
                                 "--view", "--view-port", "0"], stderr=subprocess.PIPE, text=True)
        try:
            url = None
            for line in proc.stderr:
                m = re.search(r"live view at (http://127\.0\.0\.1:\d+/)", line)
                if m:
                    url = m.group(1)
                    break
            assert url, "emulate --view printed no address"
            browser.open(url)
            browser.wait_ready(60)
            seen = _follow(browser, 6)
            assert seen and seen[-1] == 5 and len(set(seen)) >= 3, seen
            _clean(browser, url)
        finally:
            _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err


@pytest.mark.slow
def test_full_scale_frame_time(browser, tmp_path, figures):
    """Starlink shell 1 and 100 cities, playing: the page's own work per frame must fit in 30 frames/s.

    Headless Chromium here has no GPU (WebGL in software), so the frame rate measured here is a floor;
    the work per frame (positions, links, draw calls) is what the page itself costs on any machine.
    """
    from meshemu.constellation import TimeGrid, default_ground_stations, load_constellation
    from meshemu.links import compute_link_series

    c = load_constellation("starlink-shell1")
    s = compute_link_series(c, default_ground_stations(), TimeGrid.from_window(c.epoch_utc, start_s=0,
                                                                               duration_s=120, step_s=10))
    page = export_page(build_scene(s), tmp_path / "full.html")
    out = {}
    for view in ("globe", "map"):
        browser.open("about:blank")
        browser.wait_for("document.URL === 'about:blank'")
        browser.open(f"{page.as_uri()}#speed=10&view={view}")  # 4 s at 10x stays inside the window
        d = browser.wait_ready(60)
        assert d["satellites"] == "1584" and d["stations"] == "100"
        time.sleep(4)  # the page's rolling means cover its last 120 frames
        d = browser.dataset()
        out[view] = {"work_ms": float(d["frameMs"]), "interval_ms": float(d["frameIntervalMs"]),
                     "renderer": d.get("renderer"), "isls": int(d["isls"]), "gsls": int(d["gsls"])}
        if view == "globe":
            _save(_rgb(browser.screenshot_png()), figures / "view-starlink.png")
    (figures / "view-frame-time.json").write_text(json.dumps(out, indent=1))
    print(f"full scale: {out}")
    assert out["globe"]["work_ms"] < 1000 / 30 and out["map"]["work_ms"] < 1000 / 30, out
    _clean(browser, "file://")
