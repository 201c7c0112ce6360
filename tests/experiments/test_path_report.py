"""An experiment records its path checks in paths.csv and states the share on the expected path (root)."""

import csv
import json
import os

import pytest

from meshemu.emulation.mesh import existing_namespaces
from meshemu.experiments.runner import run_file

pytestmark = pytest.mark.root

EXPERIMENT = """
name: paths
constellation: demo
window: {start_s: 0, duration_s: 12, step_s: 1}
time_scale: 2.0
shaping: {backend: auto}
ground_station: Tokyo
model: {source: "tiny:llama:0", compute: real}
parallelism: {tp: 1, pp: 2}
placement: plane
workload: {prompts: ["hello"], requests: 1, max_new_tokens: 4, gap_s: 0.5}
probes: [[Tokyo, Delhi]]
"""


@pytest.fixture(autouse=True)
def no_run_in_progress():
    if os.geteuid() == 0 and existing_namespaces("meshemu"):
        pytest.skip("a meshemu run is in progress on this machine (its namespaces exist)")


def test_paths_csv_and_the_share_in_the_report(tmp_path):
    path = tmp_path / "paths.yaml"
    path.write_text(EXPERIMENT)
    (result,) = run_file(path, tmp_path / "out", log=lambda line: None)
    rows = list(csv.DictReader(open(tmp_path / "out" / "paths.csv")))
    assert rows and {r["src"] for r in rows} == {"Tokyo"}
    assert all(r["expected_path"].startswith("Tokyo ") for r in rows)
    counted = [r for r in rows if r["on_path"] in ("True", "False") and r["at_route_change"] == "False"]
    assert counted, "no path check counted"
    # every counted check compares TTL 1 .. hops + 1 answers with the path: hops + 1 entries
    assert all(len(r["answered_path"].split()) == len(r["expected_path"].split()) for r in counted)
    meta = json.loads((tmp_path / "out" / "run.json").read_text())
    share = meta["paths"]["on_path_share"]
    assert meta["paths"]["counted"] == len(counted)
    assert share == sum(r["on_path"] == "True" for r in counted) / len(counted)
    assert share == 1.0, [r for r in counted if r["on_path"] != "True"]
    report = (tmp_path / "out" / "report.md").read_text()
    assert "on the expected path 100.0 %" in report and "paths.csv" in report
    assert not existing_namespaces("meshemu")
