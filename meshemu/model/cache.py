"""The key/value cache of one shard: preallocated, one slot per local layer.

Each shard owns the cache of its own layers and kv heads, so a pipeline stage
or a tensor-parallel rank never needs another's. Each layer keeps its own fill
count, so blocks can be run one at a time (the tensor-parallel layer
all-reduces between the two halves of every block) and still find their
positions.

>>> cache = KVCache(n_layers=2, batch=1, n_kv_heads=3, capacity=16, head_dim=4)
>>> cache.keys.shape, cache.length
((2, 1, 3, 16, 4), 0)
"""

from __future__ import annotations

import numpy as np

from meshemu.errors import InputError


class KVCache:
    """Keys and values of the tokens seen so far, for ``n_layers`` local layers.

    Parameters
    ----------
    n_layers : int
        Layers of the shard (local indices ``0 .. n_layers-1``).
    batch : int
        Sequences decoded together; they advance in lockstep (equal lengths).
    n_kv_heads : int
        Local kv heads.
    capacity : int
        Tokens per sequence the cache can hold.
    head_dim : int
        Width of one head.
    """

    def __init__(self, n_layers: int, batch: int, n_kv_heads: int, capacity: int, head_dim: int):
        # (L, B, nkv, S_max, hd): a layer's (S, hd) slice is C-contiguous, so
        # q @ K^T and p @ V are plain batched BLAS calls on views.
        shape = (n_layers, batch, n_kv_heads, capacity, head_dim)
        self.keys = np.zeros(shape, dtype=np.float32)
        self.values = np.zeros(shape, dtype=np.float32)
        self.lengths = [0] * n_layers  # tokens stored per layer
        self.capacity = capacity

    @property
    def batch(self) -> int:
        return self.keys.shape[1]

    @property
    def length(self) -> int:
        """Tokens stored (every layer holds the same number between forward passes)."""
        if min(self.lengths, default=0) != max(self.lengths, default=0):
            raise RuntimeError(f"layers hold different numbers of tokens: {self.lengths}")
        return self.lengths[0] if self.lengths else 0

    def append(self, layer: int, k: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Store ``k`` and ``v`` ``(B, nkv, T, hd)`` after layer ``layer``'s tokens.

        Returns
        -------
        keys, values : ndarray
            Views ``(B, nkv, S, hd)`` of all ``S`` tokens now held by the layer.
        """
        start = self.lengths[layer]
        stop = start + k.shape[2]
        if stop > self.capacity:
            raise InputError(f"context full: {stop} tokens do not fit the cache of "
                             f"{self.capacity} tokens")
        self.keys[layer, :, :, start:stop] = k
        self.values[layer, :, :, start:stop] = v
        self.lengths[layer] = stop
        return self.keys[layer, :, :, :stop], self.values[layer, :, :, :stop]

    def reset(self) -> None:
        """Forget every token (the arrays are reused)."""
        self.lengths = [0] * len(self.lengths)
