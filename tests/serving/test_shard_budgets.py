"""A shard's budgets: a Load too big for memory is refused up front, and a failed Load leaves it unloaded."""

import threading
import time

import grpc
import numpy as np
import pytest

from meshemu.serving.pipeline import Kind
from meshemu.serving.rpc import shard_pb2 as pb
from meshemu.serving.shard import serve
from meshemu.serving.tensors import encode
from meshemu.serving.transport import stub


@pytest.fixture
def shard():
    server, shard, address = serve("127.0.0.1:0", step_timeout_s=1.0)
    channel, s = stub(address)
    yield address, s
    channel.close()
    server.stop(0)
    shard.close()


def load(s, address, model="tiny:llama:0", ranks=None, n_stages=1):
    return s.Load(pb.LoadRequest(model=model, ranks=ranks or [address], rank=0, tp_size=1, n_stages=n_stages),
                  timeout=20)


def test_a_model_too_big_for_memory_is_refused_at_once(shard):
    # before: ~200 MB/s of allocation for minutes, past the client's deadline, deaf to SIGTERM
    address, s = shard
    t0 = time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        load(s, address, "tiny:llama:0:hidden_size=10000000:n_layers=1000")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "G parameters, float32) needs about" in err.value.details() and "of memory" in err.value.details()
    assert time.monotonic() - t0 < 5
    assert not s.Health(pb.HealthRequest(), timeout=5).loaded


def test_a_load_that_cannot_reach_its_peer_leaves_the_shard_unloaded(shard):
    address, s = shard
    load(s, address)
    assert s.Health(pb.HealthRequest(), timeout=5).loaded
    with pytest.raises(grpc.RpcError) as err:
        load(s, address, ranks=[address, "127.0.0.1:1"], n_stages=2)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "cannot reach 127.0.0.1:1" in err.value.details()
    assert not s.Health(pb.HealthRequest(), timeout=5).loaded
    with pytest.raises(grpc.RpcError, match="no model loaded"):
        list(s.Generate(pb.GenerateRequest(prompt=[1, 2], max_new_tokens=1), timeout=5))


def test_a_refused_load_unloads_the_previous_model(shard):
    address, s = shard
    load(s, address)
    with pytest.raises(grpc.RpcError, match="4 pipeline stages for a model of 3 layers"):
        load(s, address, ranks=[address] * 4, n_stages=4)
    assert not s.Health(pb.HealthRequest(), timeout=5).loaded


def test_tensors_in_flight_share_one_budget():
    # before: each of 16 streams could declare 512 MiB and the 16th allocation failed with a traceback
    import numpy as np

    from meshemu.serving.tensors import Assembler, Budget, TensorError, encode

    budget = Budget(3 << 20)
    chunks = encode(np.zeros(2 << 18, np.float32), chunk_bytes=1 << 19)  # 2 MiB in 4 chunks
    first, second = Assembler(4 << 20, budget), Assembler(4 << 20, budget)
    assert first.feed(chunks[0]) is None and budget.in_flight == 2 << 20
    with pytest.raises(TensorError, match="would make 4194304 bytes in flight, over this shard's budget"):
        second.feed(chunks[0])
    for c in chunks[1:]:
        out = first.feed(c)
    assert out.shape == (2 << 18,) and budget.in_flight == 0
    assert second.feed(chunks[0]) is None  # room again once the first tensor is whole
    second.reset()
    assert budget.in_flight == 0


@pytest.mark.slow
def test_sigterm_ends_a_shard_within_a_second_even_mid_load():
    # before: the executor thread building the weights kept the process alive until the Load finished
    import signal
    import subprocess
    import sys
    import threading

    proc = subprocess.Popen([sys.executable, "-m", "meshemu.serving.shard", "--bind", "127.0.0.1:0"],
                            stdout=subprocess.PIPE, text=True)
    try:
        address = proc.stdout.readline().split()[1]
        channel, s = stub(address)
        errors = []

        def slow_load():
            try:
                load(s, address, "tiny:llama:0:hidden_size=1024:n_layers=24:ffn_size=4096")
            except grpc.RpcError as err:
                errors.append(err)
        busy = threading.Thread(target=slow_load)
        busy.start()
        time.sleep(1.0)  # the Load is now making ~1.2 GB of random weights
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=5)
        assert time.monotonic() - t0 < 1.5  # the shard's 1 s backstop, and the process's teardown
        busy.join(timeout=10)
        channel.close()
        # the Load was stopped, not cut off: its client hears why
        assert errors and errors[0].code() == grpc.StatusCode.UNAVAILABLE
        assert "was stopped (the shard is shutting down) and nothing is loaded" in errors[0].details()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_refused_tensor_is_answered_to_its_sender(shard):
    # before: the stream ended as if all was well and the sender never learnt why nothing happened
    address, s = shard
    load(s, address)
    bad = pb.Frame(kind=Kind.STEP, request_id="r", src_rank=1,
                   tensor=pb.Tensor(dtype="float32", shape=[2**40], total_bytes=2**42, n_chunks=2, chunk=0, data=b"x"))
    rest = pb.Frame(kind=Kind.STEP, request_id="r", src_rank=1,
                    tensor=pb.Tensor(dtype="float32", shape=[2**40], total_bytes=2**42, n_chunks=2, chunk=1, data=b"y"))
    acks = list(s.Exchange(iter([bad, rest]), timeout=5))
    assert [a.request_id for a in acks] == ["r"]  # one answer: the refused tensor's later chunks are dropped unread
    assert acks[0].error.startswith(f"rank 0 (stage 0, {address}, {address}): rejected a tensor from rank 1 "
                                    "(request r): tensor of 4398046511104 bytes exceeds the limit of")


def test_a_shard_with_no_model_answers_every_frame_it_cannot_use(shard):
    # before: a shard restarted (or whose Load failed) dropped its peers' frames and they waited for a timeout
    address, s = shard
    frames = [pb.Frame(kind=Kind.START, request_id="a", src_rank=0, tokens=[1]),
              pb.Frame(kind=Kind.END, request_id="a", src_rank=0),  # nothing to say about an END
              pb.Frame(kind=Kind.REDUCE, request_id="b", src_rank=1, tensor=encode(np.zeros(4, np.float32))[0])]
    acks = list(s.Exchange(iter(frames), timeout=5))
    assert [a.request_id for a in acks] == ["a", "b"]
    assert acks[1].error == (f"{address} ({address}, no model loaded): rejected a tensor from rank 1 (request b): "
                             "no model is loaded here (it was restarted or its Load failed), so its REDUCE frame "
                             "was dropped: load the plan again")


def test_sixteen_streams_of_the_largest_tensor_are_refused_by_the_budget_not_an_allocation_error():
    # before: 16 streams each declaring 512 MiB failed with UNKNOWN: Unable to allocate
    server, shard, address = serve("127.0.0.1:0", max_tensor_bytes=1 << 20)  # a budget of 4 such tensors
    channel, s = stub(address)
    load(s, address)
    release = threading.Event()
    first = pb.Frame(kind=Kind.STEP, request_id="", src_rank=1,
                     tensor=pb.Tensor(dtype="float32", shape=[1 << 18], total_bytes=1 << 20, n_chunks=2, chunk=0,
                                      data=b"\0" * (1 << 19)))

    def frames(i):
        f = pb.Frame()
        f.CopyFrom(first)
        f.request_id = f"r{i}"
        yield f
        release.wait(10)  # hold the half-received tensor, and so its bytes of the budget

    acks: list = []
    calls = [s.Exchange(frames(i), timeout=20) for i in range(16)]
    readers = [threading.Thread(target=lambda c=c: acks.extend(c)) for c in calls]
    try:
        for t in readers:
            t.start()
        deadline = time.monotonic() + 10
        while len(acks) < 12 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert shard.budget.in_flight == 4 << 20
    finally:
        release.set()
        for t in readers:
            t.join(10)
        channel.close()
        server.stop(0)
        shard.close()
    assert len(acks) == 12
    assert all("would make 5242880 bytes in flight, over this shard's budget of 4194304 bytes: send smaller "
               "tensors or fewer at once" in a.error for a in acks), acks[0].error
    assert shard.budget.in_flight == 0


# -- a second sweep of the wire (issue 10): fields no client or peer of ours sends ---------------------------
@pytest.mark.parametrize("fields,words", [
    # before: NaN passed 'temperature < 0' and failed in the sampler once the request had started
    ({"sampling": pb.Sampling(temperature=float("nan"), top_p=1.0)}, "temperature must be a finite number"),
    # before: NaN never timed out (a hang when a peer dies), 1e300 was an OverflowError in a peer
    ({"step_timeout_s": float("nan")}, "step_timeout_s must be 0 (the shard's default) or within"),
    ({"step_timeout_s": -1.0}, "step_timeout_s must be 0"),
    ({"step_timeout_s": 1e300}, "got 1e+300"),
    # before: kept as a key of the session table and of the last 4,096 ended requests (GBs of ids)
    ({"request_id": "x" * (1 << 20)}, "request_id is 1,048,576 characters: at most 128"),
])
def test_generate_refuses_fields_out_of_range(shard, fields, words):
    address, s = shard
    load(s, address)
    with pytest.raises(grpc.RpcError) as err:
        list(s.Generate(pb.GenerateRequest(prompt=[1, 2, 3], max_new_tokens=2, **fields), timeout=10))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and words in err.value.details()
    assert len(list(s.Generate(pb.GenerateRequest(prompt=[1, 2, 3], max_new_tokens=2), timeout=10))) == 2


@pytest.mark.parametrize("frame,words", [
    (pb.Frame(kind=Kind.START, request_id="a", tokens=[1], max_new_tokens=2, step_timeout_s=float("nan")),
     "step_timeout_s must be 0"),
    (pb.Frame(kind=Kind.STEP, request_id="y" * 5000), "request id of 5,000 characters (at most 128)"),
])
def test_exchange_refuses_frames_no_peer_sends_and_tells_the_sender(shard, frame, words):
    address, s = shard
    load(s, address)
    [ack] = list(s.Exchange(iter([frame]), timeout=5))
    assert words in ack.error and len(ack.request_id) <= 128


@pytest.mark.parametrize("peaks", [{"peak_flops": float("nan")}, {"peak_flops": -1.0},
                                   {"peak_bandwidth_Bps": float("inf")}])
def test_load_refuses_device_peaks_that_cannot_be_waited(shard, peaks):
    # before: accepted; a NaN peak then spun a core for ever in the first request
    address, s = shard
    with pytest.raises(grpc.RpcError) as err:
        s.Load(pb.LoadRequest(model="tiny:llama:0", ranks=[address], rank=0, tp_size=1, n_stages=1,
                              compute="device:h100", **peaks), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "must be a finite number greater than 0" in err.value.details()
