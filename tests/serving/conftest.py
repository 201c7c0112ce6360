"""Shard processes on loopback, started once and reloaded by each test, and the unsharded reference."""

from __future__ import annotations

import pytest

from meshemu.model import Transformer, generate
from meshemu.model.tiny import random_weights, tiny_config
from meshemu.serving.launch import ShardProcesses, start_loopback

POOL = 6  # enough for tp 3 x pp 2


@pytest.fixture(scope="session")
def shard_pool():
    """Addresses of POOL shard processes on 127.0.0.1 (a plan uses the first n)."""
    with ShardProcesses() as procs:
        yield start_loopback(procs, POOL, step_timeout_s=5.0)


@pytest.fixture(scope="session")
def tiny_reference():
    """``reference(arch, prompt, n, **sampling)``: tokens and logits of the whole tiny model."""
    models = {}

    def reference(arch, prompt, n, temperature=0.0, top_p=1.0, seed=0):
        from meshemu.model.sampling import SamplingParams

        if arch not in models:
            models[arch] = Transformer(random_weights(tiny_config(arch), seed=0))
        model = models[arch]
        seen = []
        orig = model.forward

        def forward(inputs, cache, reduce=None, **kw):
            out = orig(inputs, cache, **kw)
            seen.append(out[0, -1].copy())
            return out
        model.forward = forward
        try:
            res = generate(model, list(prompt), max_new_tokens=n,
                           sampling=SamplingParams(temperature=temperature, top_p=top_p, seed=seed))
        finally:
            model.forward = orig
        return list(res.new_tokens), seen

    return reference
