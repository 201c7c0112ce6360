"""Faults end requests with a clear error within their deadline; nothing hangs; other requests go on."""

import json
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
        for req, match in [(Request(()), "prompt is empty"), (Request((1, 999)), "outside the vocabulary")]:
            with pytest.raises(ServingError, match=match):
                client.generate(req, timeout_s=5)
    _, s = stub(shard_pool[0])
    # a Request refuses max_new_tokens 0 when it is made; the head still refuses it from any other client
    with pytest.raises(grpc.RpcError, match="max_new_tokens"):
        list(s.Generate(pb.GenerateRequest(prompt=list(PROMPT), max_new_tokens=0), timeout=5))
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


def _load_pp(stubs, addrs, model="tiny:llama:0"):
    for r, s in enumerate(stubs):
        s.Load(pb.LoadRequest(model=model, ranks=addrs, rank=r, tp_size=1, n_stages=len(addrs)), timeout=20)


def test_a_peer_with_no_model_fails_the_request_at_once(shard_pool):
    # before: rank 1 dropped the hidden states and the request waited out its step timeout
    addrs = list(shard_pool[:2])
    (c0, head), (c1, second) = stub(addrs[0]), stub(addrs[1])
    _load_pp([head, second], addrs)
    with pytest.raises(grpc.RpcError, match="4 pipeline stages"):  # rank 1 is left unloaded, as after a restart
        second.Load(pb.LoadRequest(model="tiny:llama:0", ranks=[addrs[1]] * 4, rank=0, tp_size=1, n_stages=4),
                    timeout=20)
    t0 = time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        list(head.Generate(pb.GenerateRequest(prompt=list(PROMPT), max_new_tokens=3, step_timeout_s=5), timeout=20))
    assert time.monotonic() - t0 < 2, "the request waited for a timeout instead of hearing the refusal"
    assert err.value.code() == grpc.StatusCode.ABORTED
    assert f"({addrs[1]}, no model loaded): rejected a tensor from rank 0 (request " in err.value.details()
    assert "no model is loaded here (it was restarted or its Load failed), so its START frame was dropped: " \
           "load the plan again" in err.value.details()
    assert json.loads(head.Metrics(pb.MetricsRequest(), timeout=5).json)["refused_by_peers"] >= 1
    c0.close()
    c1.close()


def test_an_oversized_activation_is_refused_to_its_sender():
    from meshemu.serving.shard import serve

    servers = [serve("127.0.0.1:0"), serve("127.0.0.1:0", max_tensor_bytes=1024)]  # 4 x 96 float32: 1536 bytes
    addrs = [a for _, _, a in servers]
    channels = [stub(a) for a in addrs]
    try:
        _load_pp([s for _, s in channels], addrs)
        head = channels[0][1]
        with pytest.raises(grpc.RpcError) as err:
            list(head.Generate(pb.GenerateRequest(prompt=list(PROMPT), max_new_tokens=3, step_timeout_s=5),
                               timeout=20))
        assert err.value.code() == grpc.StatusCode.ABORTED
        assert err.value.details() == (f"rank 1 (stage 1, {addrs[1]}, {addrs[1]}): rejected a tensor from rank 0 "
                                       "(request " + err.value.details().split("(request ")[1].split(")")[0] +
                                       "): tensor of 1536 bytes exceeds the limit of 1024 bytes")
        deadline = time.monotonic() + 5  # the head heard it twice: from rank 1 directly and on its own stream
        while servers[0][1].counters["refused_by_peers"] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert servers[0][1].counters["refused_by_peers"] == 1
    finally:
        for ch, _ in channels:
            ch.close()
        for server, shard, _ in servers:
            server.stop(0)
            shard.close()


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
