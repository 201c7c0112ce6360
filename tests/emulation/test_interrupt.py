"""Ctrl-C, SIGTERM and kill -9 in the middle of a run (root): nothing is left that trips the next one."""

import signal
import subprocess
import sys
import time

import pytest

from meshemu.emulation.clean import _helper_pids
from meshemu.emulation.mesh import existing_namespaces

pytestmark = pytest.mark.root


def start_emulate(prefix):
    proc = subprocess.Popen([sys.executable, "-m", "meshemu", "emulate", "--duration", "600", "--prefix", prefix],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    for line in proc.stderr:
        if " up in " in line:
            return proc
        assert time.monotonic() < deadline, "the mesh did not come up"
    raise AssertionError(f"meshemu emulate ended early: {proc.wait()}")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_run_cleans_up(prefix, sig):
    proc = start_emulate(prefix)
    assert existing_namespaces(prefix)
    time.sleep(1.5)  # a step or so into the run
    proc.send_signal(sig)
    rest = proc.stderr.read()
    assert proc.wait(timeout=30) == 130, rest
    assert "Traceback" not in rest and "interrupted" in rest
    assert existing_namespaces(prefix) == [] and _helper_pids(prefix) == []


def test_killed_run_is_cleaned_by_meshemu_clean(prefix):
    proc = start_emulate(prefix)
    proc.kill()
    proc.wait()
    assert existing_namespaces(prefix)
    again = subprocess.run([sys.executable, "-m", "meshemu", "emulate", "--duration", "5", "--prefix", prefix],
                           capture_output=True, text=True)
    assert again.returncode == 2 and "meshemu clean" in again.stderr.strip().splitlines()[-1]
    done = subprocess.run([sys.executable, "-m", "meshemu", "clean", "--prefix", prefix], capture_output=True, text=True)
    assert done.returncode == 0
    deadline = time.monotonic() + 10
    while _helper_pids(prefix) and time.monotonic() < deadline:  # the helper also leaves on its own
        time.sleep(0.1)
    assert existing_namespaces(prefix) == [] and _helper_pids(prefix) == []
