"""An experiment end to end in a real mesh, with a tiny model (root)."""

import csv
import json
import os

import pytest

from meshemu.emulation.mesh import existing_namespaces
from meshemu.experiments.runner import run_file

pytestmark = pytest.mark.root

EXPERIMENT = """
name: tiny
description: a tiny model as a 2-stage pipeline on the demo shell
constellation: demo
window: {start_s: 0, duration_s: 30, step_s: 1}
time_scale: 5.0
shaping: {backend: auto}
ground_station: Tokyo
model: {source: "tiny:llama:0", compute: real}
parallelism: {tp: 1, pp: 2}
placement: plane
workload: {prompts: ["hello"], requests: 2, max_new_tokens: 5, gap_s: 0.5}
probes: [[Tokyo, Delhi]]
sweep: {field: placement, values: [plane, nearest]}
"""


@pytest.fixture(autouse=True)
def no_run_in_progress():
    if os.geteuid() == 0 and existing_namespaces("meshemu"):
        pytest.skip("a meshemu run is in progress on this machine (its namespaces exist)")


def test_a_sweep_writes_a_results_folder_per_value_and_a_comparison(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(EXPERIMENT)
    results = run_file(path, tmp_path / "out", log=lambda line: None)
    assert [r.spec.placement for r in results] == ["plane", "nearest"]
    out = tmp_path / "out"
    for name in ("summary.csv", "comparison.png", "report.md", "config.yaml"):
        assert (out / name).exists(), name
    rows = list(csv.DictReader(open(out / "summary.csv")))
    assert [r["placement"] for r in rows] == ["plane", "nearest"] and all(r["failed"] == "0" for r in rows)
    one = out / "tiny-plane"
    for name in ("config.yaml", "run.json", "steps.csv", "link_events.csv", "routes.csv", "probes.csv",
                 "requests.jsonl", "summary.csv", "rtt_hops.png", "tpot.png", "predicted_vs_measured.png",
                 "report.md"):
        assert (one / name).exists(), name
    meta = json.loads((one / "run.json").read_text())
    assert meta["backend"] in ("netem", "delayline") and meta["capabilities"]["root"] is True
    requests = [json.loads(l) for l in open(one / "requests.jsonl") if '"kind": "request"' in l]
    assert len(requests) == 2 and all(r["tokens"] == 5 and r["ttft_s"] > 0 for r in requests)
    assert all(r["predicted_tpot_s"] > 0 for r in requests)
    report = (one / "report.md").read_text()
    assert "TPOT" in report and "rtt_hops.png" in report and meta["backend"] in report
    assert not existing_namespaces("meshemu")
