"""Sharded serving on loopback gives the unsharded model's tokens, for every (t, p, algorithm)."""

import numpy as np
import pytest

from meshemu.serving.client import Request, ServingClient, ServingPlan

PROMPT = (1, 5, 9, 4, 17, 33)


def serve(pool, arch, tp, pp, algorithm="ring", **plan):
    client = ServingClient(ServingPlan(f"tiny:{arch}:0", pool[:tp * pp], tp, pp, algorithm, **plan),
                           step_timeout_s=5.0)
    client.wait_ready(10)
    client.load()
    return client


@pytest.mark.parametrize("tp,pp,algorithm", [
    (1, 1, "ring"), (1, 3, "ring"), (2, 1, "ring"), (2, 1, "direct"), (3, 1, "ring"),
    (4, 1, "direct"),  # 4 ranks > 2 kv heads: kv heads replicated, uneven query split
    (2, 2, "ring"), (3, 2, "direct"),
])
def test_tokens_and_logits_equal_the_whole_model(shard_pool, tiny_reference, tp, pp, algorithm):
    tokens, logits = tiny_reference("llama", PROMPT, 8)
    with serve(shard_pool, "llama", tp, pp, algorithm) as client:
        rec = client.generate(Request(PROMPT, max_new_tokens=8, return_logits=True), timeout_s=30)
    assert rec.token_ids == tokens
    assert rec.stop_reason == "length"
    for got, want in zip(rec.logits, logits):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)  # float32 sums in another order


def test_qwen3_hybrid_with_sampling(shard_pool, tiny_reference):
    tokens, _ = tiny_reference("qwen3", PROMPT, 10, temperature=0.8, top_p=0.9, seed=7)
    with serve(shard_pool, "qwen3", 3, 2, "ring") as client:
        rec = client.generate(Request(PROMPT, max_new_tokens=10, temperature=0.8, top_p=0.9, seed=7))
    assert rec.token_ids == tokens


def test_stop_token_ends_the_request(shard_pool, tiny_reference):
    tokens, _ = tiny_reference("llama", PROMPT, 8)
    stop = tokens[3]
    with serve(shard_pool, "llama", 1, 2) as client:
        rec = client.generate(Request(PROMPT, max_new_tokens=8, stop_ids=(stop,)))
    assert rec.token_ids == tokens[:tokens.index(stop) + 1] and rec.stop_reason == "stop"


def test_concurrent_requests_are_micro_batches(shard_pool, tiny_reference):
    prompts = [PROMPT, (3, 3, 3), (7, 8, 9, 10, 11)]
    with serve(shard_pool, "llama", 2, 2, "direct") as client:
        records = client.generate_many([Request(p, max_new_tokens=6) for p in prompts])
    for p, rec in zip(prompts, records):
        assert rec.token_ids == tiny_reference("llama", p, 6)[0]


def test_metrics_break_the_cycle_down(shard_pool):
    with serve(shard_pool, "llama", 2, 2) as client:
        rec = client.generate(Request(PROMPT, max_new_tokens=5))
        shards = client.metrics()
    s = rec.summary()
    assert s["tokens"] == 5 and s["ttft_s"] > 0 and s["tpot_s"] > 0
    assert len(s["itl_s"]) == 4
    assert s["collective_s_per_token"] > 0 and s["compute_s_per_token"] > 0
    assert s["cycle_s_per_token"] >= s["compute_s_per_token"] + s["collective_s_per_token"] - 1e-9
    assert len(s["stage_compute_s_per_token"]) == 2
    assert all(m["frames_in"] > 0 for m in shards[:4])


def test_prompt_larger_than_a_chunk_crosses_stages_in_pieces(shard_pool):
    from meshemu.model import Transformer, generate
    from meshemu.model.tiny import random_weights, tiny_config
    from meshemu.serving.tensors import CHUNK_BYTES

    changes = {"hidden_size": 576, "head_dim": 96, "max_context": 1024}
    prompt = tuple(int(t) for t in np.random.default_rng(1).integers(3, 320, 600))
    assert len(prompt) * 576 * 4 > CHUNK_BYTES      # the prefill's hidden states need two chunks
    whole = generate(Transformer(random_weights(tiny_config("llama", **changes), seed=0)), list(prompt),
                     max_new_tokens=4)
    source = "tiny:llama:0:" + ":".join(f"{k}={v}" for k, v in changes.items())
    with ServingClient(ServingPlan(source, shard_pool[:4], 2, 2, "ring")) as client:
        client.load()
        rec = client.generate(Request(prompt, max_new_tokens=4), timeout_s=60)
    assert rec.token_ids == list(whole.new_tokens)


def test_shards_measure_each_frames_trip_by_sender_and_kind(shard_pool):
    """The floor under load is measured from the frames themselves: a 2 x 2 layout's shards each see their
    peers' all-reduce pieces and hops, every trip positive and far below the step timeout."""
    import time

    t0 = time.monotonic()
    with serve(shard_pool, "llama", 2, 2, "ring") as client:
        client.generate(Request(PROMPT, max_new_tokens=6), timeout_s=30)
        metrics = client.metrics()
    wall_s = time.monotonic() - t0
    seen = {(m["rank"], row["src_rank"], row["kind"]): row for m in metrics for row in m["transit"]}
    assert {(0, 1, "REDUCE"), (1, 0, "REDUCE"), (2, 3, "REDUCE"), (3, 2, "REDUCE")} <= set(seen)
    assert (2, 0, "STEP") in seen or (2, 0, "START") in seen  # stage 0 -> stage 1
    assert all(0 < r["p10_s"] <= r["median_s"] <= r["p90_s"] < wall_s for r in seen.values())
    assert all(src != rank for rank, src, _ in seen)  # a shard does not time what it hands itself


def _passes_on_reader(client) -> dict:
    return {m["rank"]: m["passes_on_reader"] for m in client.metrics()}


def test_passes_from_another_stage_run_on_the_reader_and_those_from_its_own_stage_do_not(shard_pool,
                                                                                         tiny_reference):
    """A decode pass triggered by the previous stage (or the last stage's token) runs on the thread that read
    its frame, so no second thread is woken; a frame from the rank's own stage never does, since its reader
    must stay free for the all-reduce pieces that the same peer sends."""
    tokens, _ = tiny_reference("llama", PROMPT, 6)
    with serve(shard_pool, "llama", 2, 2, "ring") as client:
        before = _passes_on_reader(client)
        assert client.generate(Request(PROMPT, max_new_tokens=6), timeout_s=30).token_ids == tokens
        after = _passes_on_reader(client)
    assert all(1 <= after[r] - before[r] <= 5 for r in range(4)), (before, after)  # 5 decode passes at most
    with serve(shard_pool, "llama", 2, 1, "ring") as client:
        before = _passes_on_reader(client)
        assert client.generate(Request(PROMPT, max_new_tokens=6), timeout_s=30).token_ids == tokens
        assert _passes_on_reader(client) == before  # tokens and pieces come from the same stage here
