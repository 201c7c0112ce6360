"""Faults end requests with a clear error within their deadline; nothing hangs; other requests go on."""

import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import pytest

from meshemu.serving.client import Request, ServingClient, ServingError, ServingPlan
from meshemu.serving.launch import ShardProcesses, start_loopback
from meshemu.serving.pipeline import Kind
from meshemu.serving.rpc import shard_pb2 as pb
from meshemu.serving.tensors import encode
from meshemu.serving.transport import stub

PROMPT = (1, 5, 9, 4)
# A device so slow that a tiny model's layer takes ~30 ms: requests last long enough to break.
SLOW = {"compute": "device:h100", "peak_bandwidth_Bps": 3e6}


def test_unreachable_shard_is_named():
    plan = ServingPlan("tiny:llama:0", ("127.0.0.1:1",), 1, 1)
    with ServingClient(plan) as client, pytest.raises(ServingError, match=r"rank 0 \(127.0.0.1:1\) is unreachable"):
        t0 = time.monotonic()
        client.wait_ready(timeout_s=1.0)
    assert time.monotonic() - t0 < 3


def test_bad_requests_are_refused(shard_pool):
    with ServingClient(ServingPlan("tiny:llama:0", shard_pool[:2], 1, 2)) as client:
        client.load()
        for req, match in [(Request(()), "prompt is empty"), (Request((1, 999)), "outside the vocabulary"),
                           (Request(PROMPT, max_new_tokens=0), "max_new_tokens")]:
            with pytest.raises(ServingError, match=match):
                client.generate(req, timeout_s=5)
    _, s = stub(shard_pool[1])
    with pytest.raises(grpc.RpcError, match="requests go to rank 0"):
        list(s.Generate(pb.GenerateRequest(prompt=[1], max_new_tokens=1), timeout=5))


def test_bad_plan_is_refused(shard_pool):
    with ServingClient(ServingPlan("tiny:llama:0", shard_pool[:4], 4, 1, "allgather")) as client, \
            pytest.raises(ServingError, match="unknown all-reduce 'allgather'"):
        client.load()
    with ServingClient(ServingPlan("tiny:llama:0", shard_pool[:4], 1, 4)) as client, \
            pytest.raises(ServingError, match="4 pipeline stages for a model of 3 layers"):
        client.load()


def test_peer_dies_mid_generation():
    with ShardProcesses() as procs:
        addrs = start_loopback(procs, 3, step_timeout_s=2.0)
        with ServingClient(ServingPlan("tiny:llama:0", addrs, 1, 3, **SLOW), step_timeout_s=2.0) as client:
            client.load()
            first = threading.Event()
            threading.Timer(5, first.set).start()
            killer = threading.Thread(target=lambda: (first.wait(), procs.procs[2].kill()))
            killer.start()
            t0 = time.monotonic()
            with pytest.raises(ServingError, match="did not come within 2 s") as info:
                client.generate(Request(PROMPT, max_new_tokens=500), timeout_s=60,
                                on_token=lambda ev, rec: first.set() if ev.index == 3 else None)
            elapsed = time.monotonic() - t0
            killer.join()
            assert len(info.value.record.tokens) >= 4
            assert elapsed < 10, f"took {elapsed:.1f} s to fail"
            # The survivors serve the next request.
            client2 = ServingClient(ServingPlan("tiny:llama:0", addrs[:2], 1, 2))
            client2.load()
            assert len(client2.generate(Request(PROMPT, max_new_tokens=4), timeout_s=10).tokens) == 4
            client2.close()


def test_client_deadline_ends_the_request_everywhere(shard_pool):
    with ServingClient(ServingPlan("tiny:llama:0", shard_pool[:2], 1, 2, **SLOW)) as client:
        client.load()
        t0 = time.monotonic()
        with pytest.raises(ServingError, match="DEADLINE_EXCEEDED"):
            client.generate(Request(PROMPT, max_new_tokens=500), timeout_s=1.0)
        assert time.monotonic() - t0 < 2
        # Sessions are let go on every shard, and the head takes new work.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if sum(h.sessions for h in client.wait_ready()) == 0:
                break
            time.sleep(0.1)
        assert sum(h.sessions for h in client.wait_ready()) == 0


def test_malformed_tensor_fails_its_request_and_only_it(shard_pool):
    with ServingClient(ServingPlan("tiny:llama:0", shard_pool[:2], 1, 2, **SLOW)) as client:
        client.load()
        victim = Request(PROMPT, max_new_tokens=500, request_id="victim")
        bystander = Request(PROMPT, max_new_tokens=3, request_id="bystander")
        results = {}
        t = threading.Thread(target=lambda: results.update(v=client.generate_many([victim])[0]))
        t.start()
        time.sleep(1.0)
        ch, s = stub(shard_pool[1])
        # Declares 2**40 floats: refused before any allocation.
        huge = pb.Frame(kind=Kind.STEP, request_id="victim", step=99, src_rank=0,
                        tensor=pb.Tensor(dtype="float32", shape=[2**20, 2**20], data=b"\0" * 8, chunk=0,
                                         n_chunks=4, total_bytes=4 * 2**40))
        list(s.Exchange(iter([huge]), timeout=5))
        t.join(30)
        assert isinstance(results["v"], ServingError)
        assert "rejected a tensor from rank 0" in str(results["v"]) and "exceeds the limit" in str(results["v"])
        # A wrong shape of a plausible size is refused too (by the stage that would use it).
        ch.close()
        assert client.generate(bystander, timeout_s=20).token_ids  # others go on
        metrics = client.metrics()
        assert metrics[1]["rejected_tensors"] >= 1


def test_wrong_shape_activation_is_rejected(shard_pool):
    with ServingClient(ServingPlan("tiny:llama:0", shard_pool[:2], 1, 2)) as client:
        client.load()
        _, s = stub(shard_pool[1])
        bad = pb.Frame(kind=Kind.START, request_id="odd", step=0, src_rank=0, max_new_tokens=2)
        bad.tensor.CopyFrom(encode(np.zeros((1, 3, 7), np.float32))[0])
        list(s.Exchange(iter([bad]), timeout=5))
        deadline = time.monotonic() + 5
        while client.metrics()[1]["session_errors"] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.metrics()[1]["session_errors"] >= 1


def test_port_in_use_is_one_line():
    with ShardProcesses() as procs:
        [addr] = start_loopback(procs, 1)
        out = subprocess.run([sys.executable, "-m", "meshemu.serving.shard", "--bind", addr],
                             capture_output=True, text=True, timeout=30, check=False)
    assert out.returncode == 2
    assert out.stderr.strip() == f"meshemu-shard: error: cannot listen on {addr}: port in use"
