"""The forward pass of a Llama / Qwen3 decoder in numpy, for a whole model or one shard.

A block is::

    h   = x + reduce(attention_partial(rms_norm(x)))
    out = h + reduce(mlp_partial(rms_norm(h)))

On the whole model ``reduce`` is the identity. On a tensor-parallel rank the
weights hold only some heads and FFN columns, each half returns a partial sum
and ``reduce`` is the all-reduce the serving layer plugs in. A pipeline stage
holds a layer range: it takes token ids if it has the embedding, hidden states
otherwise, and returns logits if it has the LM head, hidden states otherwise.

Shapes: B sequences, T new tokens, S cached tokens, C residual width, nq/nkv
local query/kv heads, g = nq // nkv, hd head width, F local FFN columns, V vocabulary.

>>> from meshemu.model.tiny import tiny_config, random_weights
>>> model = Transformer(random_weights(tiny_config("qwen3"), seed=0))
>>> cache = model.new_cache(batch=1, capacity=8)
>>> model.forward(np.array([[1, 2, 3]]), cache).shape        # prefill: logits of the last token
(1, 1, 320)
>>> model.forward(np.array([[4]]), cache).shape, cache.length  # one decode step
((1, 1, 320), 4)
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from scipy.special import expit

from meshemu.errors import InputError
from meshemu.model.cache import KVCache
from meshemu.model.weights import ModelWeights

Reduce = Callable[[np.ndarray], np.ndarray]


def identity(x: np.ndarray) -> np.ndarray:
    """The ``reduce`` of a whole model: a partial sum that is already the whole sum."""
    return x


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """Root-mean-square normalisation over the last axis, then a per-feature gain.

    >>> rms_norm(np.array([[3.0, 4.0]], np.float32), np.ones(2, np.float32), 0.0).round(4)
    array([[0.8485, 1.1314]], dtype=float32)
    """
    # Bare ufunc calls: on the decode path the arrays are tiny and np.mean's
    # Python wrapper would cost more than the arithmetic.
    ms = np.add.reduce(x * x, axis=-1, keepdims=True)
    ms *= np.float32(1.0 / x.shape[-1])
    ms += np.float32(eps)
    return x * (1.0 / np.sqrt(ms)) * weight


def rope_tables(positions: np.ndarray, head_dim: int, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """cos and signed sin ``(T, 1, 2, hd/2)`` of the rotary angles at ``positions``.

    Angles are computed in float32 as Hugging Face does, so logits agree to
    float32 rounding. The ``(2, hd/2)`` axes address the two halves of a head.
    """
    inv_freq = (1.0 / theta ** (np.arange(0, head_dim, 2) / head_dim)).astype(np.float32)
    angles = positions.astype(np.float32)[:, None] * inv_freq[None, :]   # (T, hd/2)
    cos, sin = np.cos(angles), np.sin(angles)
    return (np.stack([cos, cos], axis=1)[:, None],    # (T, 1, 2, hd/2)
            np.stack([-sin, sin], axis=1)[:, None])


def apply_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Rotate ``x`` ``(B, T, H, hd)`` by the tables of :func:`rope_tables`, "rotate_half" pairing.

    Feature ``i`` pairs with ``i + hd/2`` as in Hugging Face (not ``2i`` with
    ``2i+1`` as in the llama.cpp kernel; the GGUF loader un-permutes Q/K rows
    to match): ``out = [x1 cos - x2 sin, x2 cos + x1 sin]``. Swapping the
    halves is a reversed view, so this is three array operations.
    """
    halves = x.reshape(*x.shape[:-1], 2, x.shape[-1] // 2)   # (B, T, H, 2, hd/2)
    return (halves * cos + halves[..., ::-1, :] * sin).reshape(x.shape)


def softmax_(scores: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, in place (scores are a fresh array each step)."""
    np.subtract(scores, scores.max(axis=-1, keepdims=True), out=scores)
    np.exp(scores, out=scores)
    scores /= np.add.reduce(scores, axis=-1, keepdims=True)
    return scores


class Transformer:
    """Runs a whole model or a shard of one (see :class:`~meshemu.model.weights.ShardSpec`).

    Parameters
    ----------
    weights : ModelWeights
        Whole-model weights or a slice from :func:`~meshemu.model.partition.slice_weights`.
    """

    def __init__(self, weights: ModelWeights):
        self.weights = weights
        self.config = weights.config
        self.spec = weights.spec
        self.layers = weights.layers
        self.n_q = len(self.spec.q_heads)
        self.n_kv = len(self.spec.kv_heads)
        self._rope_memo = (None, None)
        # Qwen3's q and k norms as one (nq + nkv, hd) gain, so q and k are
        # normed (and rotated) in one call each.
        self._qk_norm = [None if lw.q_norm is None else np.concatenate(
            [np.tile(lw.q_norm, (self.n_q, 1)), np.tile(lw.k_norm, (self.n_kv, 1))])
            for lw in self.layers]

    def new_cache(self, batch: int, capacity: int) -> KVCache:
        """An empty cache for this shard's layers and kv heads."""
        if capacity > self.config.max_context:
            raise InputError(f"{capacity} tokens exceed the model's context of "
                             f"{self.config.max_context} tokens")
        return KVCache(len(self.layers), batch, self.n_kv, capacity, self.config.head_dim)

    # -- the pieces, each callable on its own ---------------------------------

    def embed(self, tokens: np.ndarray) -> np.ndarray:
        """Token ids ``(B, T)`` to hidden states ``(B, T, C)``."""
        if self.weights.embedding is None:
            raise ValueError("this shard has no embedding (it is not the first stage)")
        tokens = np.asarray(tokens)
        if tokens.size and (tokens.min() < 0 or tokens.max() >= self.config.vocab_size):
            raise InputError(f"token id outside the vocabulary of {self.config.vocab_size}")
        return self.weights.embedding[tokens]

    def attention_partial(self, i: int, x: np.ndarray, cache: KVCache) -> np.ndarray:
        """Local layer ``i``'s attention on normed ``x`` ``(B, T, C)``: a partial sum ``(B, T, C)``.

        Appends this shard's keys and values for the T new tokens to ``cache``.
        """
        cfg, lw = self.config, self.layers[i]
        B, T, C = x.shape
        nq, nkv, hd = self.n_q, self.n_kv, cfg.head_dim
        g = nq // nkv
        qkv = x.reshape(B * T, C) @ lw.wqkv                       # (B T, (nq + 2 nkv) hd)
        qk = qkv[:, :(nq + nkv) * hd].reshape(B, T, nq + nkv, hd)  # q and k heads side by side
        v = qkv[:, (nq + nkv) * hd:].reshape(B, T, nkv, hd)
        if cfg.qk_norm:  # Qwen3: RMSNorm of each head before the rotation
            qk = rms_norm(qk, self._qk_norm[i], cfg.rms_eps)
        start = cache.lengths[i]
        qk = apply_rope(qk, *self._rope(start, T))               # (B, T, nq + nkv, hd)
        q = qk[:, :, :nq].reshape(B, T, nkv, g, hd).transpose(0, 2, 3, 1, 4)  # (B, nkv, g, T, hd)
        q = q.reshape(B, nkv, g * T, hd) * np.float32(1.0 / np.sqrt(hd))
        keys, values = cache.append(i, qk[:, :, nq:].transpose(0, 2, 1, 3),
                                    v.transpose(0, 2, 1, 3))     # (B, nkv, S, hd)
        S = keys.shape[2]
        # The g query heads of a kv head and their T tokens share that head's
        # keys: one (g T, hd) @ (hd, S) product per kv head, no Python loop.
        scores = q @ keys.transpose(0, 1, 3, 2)                  # (B, nkv, g T, S)
        if T > 1:  # causal: token t (at position start + t) sees keys 0 .. start + t
            future = np.arange(S)[None, :] > np.arange(start, start + T)[:, None]  # (T, S)
            scores.reshape(B, nkv, g, T, S)[..., future] = -np.inf
        out = softmax_(scores) @ values                          # (B, nkv, g T, hd)
        out = out.reshape(B, nkv, g, T, hd).transpose(0, 3, 1, 2, 4).reshape(B * T, nq * hd)
        return (out @ lw.wo).reshape(B, T, C)                    # row-parallel: partial sum

    def _rope(self, start: int, T: int) -> tuple[np.ndarray, np.ndarray]:
        # Every layer of a forward pass rotates the same positions: compute
        # once. Key and tables live in one tuple so threads never mix them.
        key, tables = self._rope_memo
        if key != (start, T):
            tables = rope_tables(np.arange(start, start + T), self.config.head_dim,
                                 self.config.rope_theta)
            self._rope_memo = ((start, T), tables)
        return tables

    def mlp_partial(self, i: int, x: np.ndarray) -> np.ndarray:
        """Local layer ``i``'s SwiGLU MLP on normed ``x`` ``(B, T, C)``: a partial sum ``(B, T, C)``."""
        lw = self.layers[i]
        B, T, C = x.shape
        F = lw.w_down.shape[0]
        gate_up = x.reshape(B * T, C) @ lw.w_gate_up            # (B T, 2 F)
        gate, up = gate_up[:, :F], gate_up[:, F:]
        hidden = gate * expit(gate)                              # SiLU; expit cannot overflow
        hidden *= up
        return (hidden @ lw.w_down).reshape(B, T, C)             # row-parallel: partial sum

    def block(self, i: int, x: np.ndarray, cache: KVCache, reduce: Reduce = identity) -> np.ndarray:
        """Local layer ``i`` on hidden states ``(B, T, C)``; ``reduce`` sums the partials."""
        lw, eps = self.layers[i], self.config.rms_eps
        h = x + reduce(self.attention_partial(i, rms_norm(x, lw.attn_norm, eps), cache))
        return h + reduce(self.mlp_partial(i, rms_norm(h, lw.mlp_norm, eps)))

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Final norm and LM head: hidden states ``(B, T, C)`` to logits ``(B, T, V)``."""
        if self.weights.lm_head is None:
            raise ValueError("this shard has no LM head (it is not the last stage)")
        B, T, C = x.shape
        x = rms_norm(x, self.weights.final_norm, self.config.rms_eps)
        return (x.reshape(B * T, C) @ self.weights.lm_head).reshape(B, T, -1)

    # -- the whole shard -------------------------------------------------------

    def forward(self, inputs: np.ndarray, cache: KVCache, reduce: Reduce = identity, *,
                all_logits: bool = False) -> np.ndarray:
        """Run every local layer on new tokens, appending them to ``cache``.

        Parameters
        ----------
        inputs : ndarray
            Token ids ``(B, T)`` on a shard with the embedding, else hidden states ``(B, T, C)``.
        cache : KVCache
            This shard's cache; the tokens are placed after those it holds.
        reduce : callable
            Sums the partials of a tensor-parallel rank (identity otherwise).
        all_logits : bool
            Return logits of every position instead of only the last (prefill
            needs only the last, and the LM head is the largest matrix).

        Returns
        -------
        ndarray
            Logits ``(B, T or 1, V)`` on a shard with the LM head, else hidden
            states ``(B, T, C)`` for the next stage.
        """
        x = self.embed(inputs) if self.spec.has_embedding else np.asarray(inputs, np.float32)
        for i in range(len(self.layers)):
            x = self.block(i, x, cache, reduce)
        if not self.spec.has_lm_head:
            return x
        return self.logits(x if all_logits else x[:, -1:])
