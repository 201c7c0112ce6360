"""``meshemu run`` killed with SIGKILL at random points, then ``meshemu clean``: nothing left, every time (root)."""

import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from meshemu.emulation.clean import _helper_pids, _pids_in
from meshemu.emulation.mesh import existing_namespaces

pytestmark = [pytest.mark.root, pytest.mark.slow]

EXPERIMENT = """
name: killed
constellation: demo
window: {start_s: 0, duration_s: 120, step_s: 1}
time_scale: 4.0
shaping: {backend: auto}
ground_station: Tokyo
model: {source: "tiny:llama:0:max_context=1024"}
parallelism: {tp: 2, pp: 2}
placement: plane
workload: {prompts: ["hello"], requests: 4, max_new_tokens: 200, gap_s: 1, chat_template: false}
probes: [[Tokyo, Delhi]]
"""
RUNS = 4


def _netns_inode(pid: int):
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


def test_killed_runs_leave_nothing_after_clean(tmp_path, prefix):
    (tmp_path / "k.yaml").write_text(EXPERIMENT)
    rng = random.Random(11)  # random points, the same ones every run of the test
    for i in range(RUNS):
        proc = subprocess.Popen([sys.executable, "-m", "meshemu", "run", str(tmp_path / "k.yaml"), "--out",
                                 str(tmp_path / f"out{i}"), "--prefix", prefix],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while not existing_namespaces(prefix):  # the mesh is being built
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "no namespace appeared"
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 6.0))  # building, loading, serving or probing: wherever it is
        namespaces = existing_namespaces(prefix)
        inside = {pid for ns in namespaces for pid in _pids_in(ns)}
        inodes = {_netns_inode(pid) for pid in inside} - {None}
        proc.kill()
        proc.wait()
        done = subprocess.run([sys.executable, "-m", "meshemu", "clean", "--prefix", prefix],
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            alive = [p for p in inside if Path(f"/proc/{p}").exists()] + _helper_pids(prefix)
            if not alive:
                break
            time.sleep(0.1)
        assert existing_namespaces(prefix) == [], f"run {i}: namespaces left"
        assert not alive, f"run {i}: processes left: {alive}"
        # no process anywhere still sits in one of the run's (now deleted) namespaces
        strays = [int(p) for p in os.listdir("/proc") if p.isdigit() and _netns_inode(int(p)) in inodes]
        assert not strays, f"run {i}: processes in the run's namespaces: {strays}"
        mine = [b for b in Path("/dev/shm").glob("meshemu-dl-*") if f"-{proc.pid}-" in b.name]
        assert not mine, f"run {i}: shared memory left: {mine}"
