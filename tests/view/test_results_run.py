"""The view of a real results folder: a tiny experiment run in a real mesh (root), then ``meshemu view`` on it."""

import os
import re
import signal
import subprocess
import sys

import pytest

from meshemu.emulation.mesh import existing_namespaces

pytestmark = [pytest.mark.root, pytest.mark.slow]

EXPERIMENT = """
name: tiny-view
description: a tiny model as a 2-stage pipeline on the demo shell, to be viewed
constellation: demo
window: {start_s: 0, duration_s: 20, step_s: 2}
time_scale: 4.0
shaping: {backend: auto}
ground_station: Tokyo
model: {source: "tiny:llama:0", compute: real}
parallelism: {tp: 1, pp: 2}
placement: plane
workload: {prompts: ["hello"], requests: 1, max_new_tokens: 4, gap_s: 0.5}
probes: [[Tokyo, Delhi]]
"""


def test_view_of_a_finished_run(tmp_path, browser, figures):
    if existing_namespaces("meshemu"):
        pytest.skip("a meshemu run is in progress on this machine (its namespaces exist)")
    from meshemu.experiments.runner import run_file

    (tmp_path / "tiny.yaml").write_text(EXPERIMENT)
    result = run_file(tmp_path / "tiny.yaml", tmp_path / "out", log=lambda line: None)[0]
    folder = result.folder
    assert (folder / "series.npz").exists(), "the runner saves the series it played, for the view"
    assert f"meshemu view {folder}" in (folder / "report.md").read_text()
    ranks = result.summary["rank_nodes"].split()
    proc = subprocess.Popen([sys.executable, "-m", "meshemu", "view", str(folder), "--port", "0"],
                            stderr=subprocess.PIPE, text=True)
    try:
        url = re.search(r"http://127\.0\.0\.1:\d+/", proc.stderr.readline()).group(0)
        browser.open(url + "#play=0")
        d = browser.wait_ready()
        # the first pair is the client and rank 0, the route routes.csv recorded at step 0
        first = next(l for l in open(folder / "routes.csv") if l.startswith("0.0,0,Tokyo,"))
        assert d["route"] == first.rstrip("\n").split(",")[-1] and d["route"].split()[-1] == ranks[0]
        assert browser.evaluate("Object.keys(window.meshemuView.scene.placement).length") == len(ranks)
        tokens = sum('"kind": "token"' in l for l in open(folder / "requests.jsonl"))
        assert tokens == 4 and browser.evaluate(
            "window.meshemuView.scene.token_trip.tokens.reduce((a, b) => a + b, 0)") == tokens
        assert browser.exceptions == [] and all(u.startswith(url) for u in browser.requests)
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0 and "Traceback" not in err, err
