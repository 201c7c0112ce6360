"""A shard's Load: bounded by the client's deadline, stopped by a newer Load, and sized before it reads."""

import re
import threading
import time

import grpc
import pytest

from meshemu.errors import InputError
from meshemu.model.tiny import random_weights, tiny_config, tiny_tokenizer, write_gguf, write_hf
from meshemu.serving.rpc import shard_pb2 as pb
from meshemu.serving.shard import serve
from meshemu.serving.transport import stub

# ~1.2 GB of float32 weights: 5 to 20 s to make on a shared 2-core machine, far longer than the deadlines here.
SLOW_MODEL = "tiny:llama:0:hidden_size=1024:n_layers=24:ffn_size=4096"


@pytest.fixture
def shard():
    server, shard, address = serve("127.0.0.1:0", step_timeout_s=1.0)
    channel, s = stub(address)
    yield shard, address, s
    channel.close()
    server.stop(0)
    shard.close()


def load(s, address, model="tiny:llama:0", timeout_s=20.0):
    return s.Load(pb.LoadRequest(model=model, ranks=[address], rank=0, tp_size=1, n_stages=1), timeout=timeout_s)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def loading_threads() -> list:
    return [t for t in threading.enumerate() if t.name == "load"]


def test_a_load_past_its_deadline_stops_frees_its_memory_and_leaves_the_shard_unloaded(shard):
    # before: the Load ran on for its whole 5-20 s after the client gave up, holding its memory, and the
    # client only heard "Deadline Exceeded"
    _, address, s = shard
    load(s, address)
    base, peak = rss_bytes(), [0]
    done = threading.Event()

    def watch():
        while not done.is_set():
            peak[0] = max(peak[0], rss_bytes())
            time.sleep(0.02)
    watcher = threading.Thread(target=watch)
    watcher.start()
    t0 = time.monotonic()
    try:
        with pytest.raises(grpc.RpcError) as err:
            load(s, address, SLOW_MODEL, timeout_s=3.0)
    finally:
        done.set()
        watcher.join()
    assert time.monotonic() - t0 < 3.0
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # stopped half a second before the deadline, so that the reason reaches the client in time
    assert re.fullmatch(rf"127.0.0.1:\d+: the Load of {re.escape(SLOW_MODEL)} was stopped \(it took longer than "
                        r"the 2\.[3-5]\d* s left before the client's deadline: give the Load a longer deadline or "
                        r"load a smaller model\) and nothing is loaded", err.value.details()), err.value.details()
    assert not loading_threads()
    assert not s.Health(pb.HealthRequest(), timeout=5).loaded
    # What it had made is given back; allocator slack may stay, but not half of it.
    assert peak[0] - base > 50 << 20, "the Load did not get far enough to show its memory is freed"
    assert rss_bytes() - base < (peak[0] - base) / 2
    assert load(s, address).layer_stop == 3  # and the shard takes the next Load


def test_a_newer_load_stops_the_one_in_progress(shard):
    # before: two Loads built two models at once, and the shard said loaded=True with the old one meanwhile
    host, address, s = shard
    load(s, address)
    outcome = {}

    def slow():
        try:
            load(s, address, SLOW_MODEL, timeout_s=60.0)
        except grpc.RpcError as err:
            outcome["err"] = err
    t = threading.Thread(target=slow)
    t.start()
    deadline = time.monotonic() + 5
    while host._loader is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not s.Health(pb.HealthRequest(), timeout=5).loaded  # the old model is gone while the new one loads
    t0 = time.monotonic()
    assert load(s, address).layer_stop == 3
    assert time.monotonic() - t0 < 3
    t.join(10)
    err = outcome["err"]
    assert err.code() == grpc.StatusCode.ABORTED
    assert f"the Load of {SLOW_MODEL} was stopped (a newer Load arrived) and nothing is loaded" in err.details()
    assert s.Health(pb.HealthRequest(), timeout=5).loaded


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A tiny Qwen3 as a Q8_0 GGUF file and as a Hugging Face directory, and its parameter count."""
    config = tiny_config("qwen3")
    weights = random_weights(config)
    folder = tmp_path_factory.mktemp("checkpoints")
    write_gguf(weights, tiny_tokenizer(), folder / "tiny.gguf", quantize="Q8_0")
    write_hf(weights, tiny_tokenizer(), folder / "hf")
    return folder / "tiny.gguf", folder / "hf", config.n_params


def test_a_checkpoint_is_sized_from_its_header(checkpoints):
    from meshemu.serving.compute import checkpoint_elements

    gguf_path, hf_dir, n_params = checkpoints
    assert checkpoint_elements(gguf_path) == n_params  # quantized or not: every weight becomes a float32
    assert checkpoint_elements(hf_dir) == n_params


@pytest.mark.parametrize("which", ["gguf", "hf"])
def test_a_checkpoint_too_big_for_memory_is_refused_before_it_is_read(checkpoints, monkeypatch, which):
    # before: only tiny: models were sized; a checkpoint was read whole (then MemoryError, or the OOM killer)
    import meshemu.model.load
    import meshemu.resources
    from meshemu.serving.compute import load_source

    gguf_path, hf_dir, n_params = checkpoints
    path = gguf_path if which == "gguf" else hf_dir
    monkeypatch.setattr(meshemu.resources, "available_memory_bytes", lambda: 1 << 20)

    def must_not_read(*args, **kwargs):
        raise AssertionError("the checkpoint was read before its size was checked")
    monkeypatch.setattr(meshemu.model.load, "load_model", must_not_read)
    with pytest.raises(InputError) as err:
        load_source(str(path))
    assert str(err.value) == (f"{path} ({n_params / 1e9:.3g} G parameters, float32) needs about "
                              f"{meshemu.resources.format_bytes(n_params * 8)} of memory, 1.0 MiB is available: "
                              "give a smaller model, or its shape as preset:NAME with compute device:NAME to model "
                              "it without weights")


def test_a_checkpoint_that_fits_still_loads(checkpoints, shard):
    gguf_path, hf_dir, _ = checkpoints
    _, address, s = shard
    assert load(s, address, str(gguf_path)).layer_stop == 3
    assert load(s, address, str(hf_dir)).layer_stop == 3


def test_a_truncated_gguf_header_is_one_line(checkpoints, tmp_path):
    from meshemu.model.gguf import tensor_elements

    data = checkpoints[0].read_bytes()
    for cut in (0, 3, 30, 200):
        (tmp_path / "cut.gguf").write_bytes(data[:cut])
        with pytest.raises(InputError, match="not a readable GGUF file, truncated or corrupt"):
            tensor_elements(tmp_path / "cut.gguf")
