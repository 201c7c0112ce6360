"""Choosing the next token from logits: greedy, or temperature and top-p with a seed.

>>> logits = np.array([[0.0, 3.0, 1.0]], np.float32)
>>> Sampler(SamplingParams()).sample(logits)          # greedy
array([1])
>>> sampler = Sampler(SamplingParams(temperature=1.0, top_p=0.9, seed=7))
>>> [int(sampler.sample(logits)[0]) for _ in range(6)]  # 1 or 2: token 0 is outside the top 90 %
[1, 2, 1, 1, 1, 1]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from meshemu.errors import InputError


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens.

    Attributes
    ----------
    temperature : float
        0 means greedy (argmax); otherwise logits are divided by it.
    top_p : float
        Nucleus sampling: keep the most probable tokens whose probabilities
        sum to at least ``top_p`` (1 keeps all).
    seed : int
        Seed of the numpy Generator, so a sampled run can be repeated.
    """

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self):
        if not self.temperature >= 0:
            raise InputError(f"temperature must be >= 0, got {self.temperature}", field="temperature")
        if not 0 < self.top_p <= 1:
            raise InputError(f"top-p must be in (0, 1], got {self.top_p}", field="top_p")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


class Sampler:
    """Draws tokens for a batch of sequences; holds the random state between steps."""

    def __init__(self, params: SamplingParams):
        self.params = params
        self.rng = np.random.default_rng(params.seed)

    def sample(self, logits: np.ndarray) -> np.ndarray:
        """One token id per row of ``logits`` ``(B, V)``."""
        if self.params.greedy:
            return logits.argmax(axis=-1)
        z = logits.astype(np.float64) / self.params.temperature
        z -= z.max(axis=-1, keepdims=True)
        probs = np.exp(z)
        probs /= probs.sum(axis=-1, keepdims=True)
        out = np.empty(len(probs), dtype=np.int64)
        for b, p in enumerate(probs):  # B rows, not V tokens: the batch is small
            order = np.argsort(-p, kind="stable")
            cumulative = np.cumsum(p[order])
            # Keep through the first token at which the mass reaches top_p.
            keep = int(np.searchsorted(cumulative, self.params.top_p * cumulative[-1])) + 1
            kept = p[order[:keep]]
            out[b] = order[self.rng.choice(keep, p=kept / kept.sum())]
        return out
