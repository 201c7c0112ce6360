"""The CPU wake-latency request: held while shards run, gone when they stop, and never a failure."""

import os
import struct

import pytest

from meshemu.cpu_latency import PM_QOS_PATH, CpuLatency, cpu_latency_setting, enforced_us
from meshemu.errors import InputError
from meshemu.serving.launch import ShardProcesses, start_loopback

pm_qos = pytest.mark.skipif(not (os.path.exists(PM_QOS_PATH) and os.access(PM_QOS_PATH, os.R_OK | os.W_OK)),
                            reason=f"{PM_QOS_PATH} is absent or not writable here (needs root)")


def test_the_request_is_written_once_and_its_file_closed_on_release(tmp_path):
    path = tmp_path / "qos"
    path.write_bytes(b"")
    held = CpuLatency("7", path=str(path)).hold()
    assert held.held and "held at 7 us" in held.status
    fds_held = len(os.listdir("/proc/self/fd"))
    held.hold()  # holding twice is one request
    assert len(os.listdir("/proc/self/fd")) == fds_held
    held.release()
    assert not held.held and len(os.listdir("/proc/self/fd")) == fds_held - 1
    assert path.read_bytes() == struct.pack("=i", 7)


def test_without_the_file_the_run_goes_on_and_the_status_says_why(tmp_path):
    held = CpuLatency("0", path=str(tmp_path / "absent")).hold()
    assert not held.held and held.status.startswith("not held:") and "absent" in held.status
    held.release()


def test_off_never_opens_and_a_bad_value_is_one_line(monkeypatch):
    assert cpu_latency_setting("off") is None and cpu_latency_setting(" OFF ") is None
    monkeypatch.setenv("MESHEMU_CPU_LATENCY", "off")
    assert CpuLatency(path="/nonexistent").hold().status == "not held (MESHEMU_CPU_LATENCY=off)"
    for bad in ("-1", "fast", "1.5", "99999999999"):
        with pytest.raises(InputError, match="MESHEMU_CPU_LATENCY=.*whole number of microseconds"):
            cpu_latency_setting(bad)


@pm_qos
def test_the_kernel_enforces_it_while_held_and_drops_it_after():
    before = enforced_us()
    with CpuLatency("0") as held:
        assert held.held and enforced_us() == 0
    assert enforced_us() == before


@pm_qos
def test_shard_processes_hold_it_while_shards_run(monkeypatch):
    monkeypatch.delenv("MESHEMU_CPU_LATENCY", raising=False)
    before = enforced_us()
    with ShardProcesses() as procs:
        assert not procs.cpu_latency.held  # nothing runs yet
        start_loopback(procs, 1, step_timeout_s=5.0)
        assert procs.cpu_latency.held and enforced_us() == 0
    assert not procs.cpu_latency.held and enforced_us() == before
