"""A shard lives as long as the process that started it: not shorter (the thread that started it may end), not
longer (it goes when that process does, even killed)."""

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

from meshemu.serving.launch import ShardProcesses
from meshemu.serving.rpc import shard_pb2 as pb
from meshemu.serving.transport import stub


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(")")[-1].split()[0] != "Z"


def test_a_shard_started_on_a_thread_outlives_the_thread():
    with ShardProcesses() as procs:
        got = []
        t = threading.Thread(target=lambda: got.extend(procs.start_shards(["127.0.0.1:0"], step_timeout_s=5.0)))
        t.start()
        t.join()
        time.sleep(0.5)  # a death signal tied to the thread would have struck by now
        channel, s = stub(got[0])
        try:
            assert s.Health(pb.HealthRequest(), timeout=5).address == got[0]
        finally:
            channel.close()
        assert procs.procs[0].poll() is None


def test_a_shard_exits_when_the_process_that_started_it_is_killed():
    starter = textwrap.dedent("""
        from meshemu.serving.launch import ShardProcesses
        procs = ShardProcesses()
        procs.start_shards(["127.0.0.1:0"], step_timeout_s=5.0)
        print(procs.procs[0].pid, flush=True)
        import time; time.sleep(60)
    """)
    parent = subprocess.Popen([sys.executable, "-c", starter], stdout=subprocess.PIPE, text=True)
    try:
        pid = int(parent.stdout.readline())
        assert alive(pid)
        parent.send_signal(signal.SIGKILL)  # no chance to clean up: the shard must notice by itself
        parent.wait()
        deadline = time.monotonic() + 10
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(pid), "the shard outlived the process that started it"
    finally:
        parent.kill()
        parent.wait()
        parent.stdout.close()
