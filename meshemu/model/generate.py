"""Generation: prefill the whole prompt in one pass, then decode one token per step from the KV cache.

>>> from meshemu.model.tiny import tiny_config, random_weights
>>> from meshemu.model.transformer import Transformer
>>> model = Transformer(random_weights(tiny_config("llama"), seed=0))
>>> result = generate(model, [1, 5, 9], max_new_tokens=4)
>>> len(result.new_tokens), result.stop_reason, result.decode_steps
(4, 'length', 3)
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from meshemu.errors import InputError
from meshemu.model.sampling import Sampler, SamplingParams
from meshemu.model.transformer import Transformer


@dataclass(frozen=True)
class GenerationResult:
    """Tokens out and where the time went.

    Attributes
    ----------
    prompt_tokens, new_tokens : tuple of int
        The stop token, when one was drawn, ends ``new_tokens``.
    stop_reason : str
        ``"stop"`` (a stop token), ``"length"`` (``max_new_tokens``) or
        ``"context"`` (the model's context is full).
    prefill_s : float
        Time of the one pass over the prompt (to the first new token's logits).
    decode_s : float
        Time of the ``decode_steps`` single-token passes that followed.
    decode_steps : int
    """

    prompt_tokens: tuple[int, ...]
    new_tokens: tuple[int, ...]
    stop_reason: str
    prefill_s: float
    decode_s: float
    decode_steps: int

    @property
    def prefill_tokens_per_s(self) -> float:
        return len(self.prompt_tokens) / self.prefill_s if self.prefill_s > 0 else float("nan")

    @property
    def decode_tokens_per_s(self) -> float:
        return self.decode_steps / self.decode_s if self.decode_s > 0 else float("nan")


def generate(model: Transformer, prompt: list[int], *, max_new_tokens: int,
             sampling: SamplingParams = SamplingParams(), stop_ids=frozenset(),
             on_token: Callable[[int], None] | None = None) -> GenerationResult:
    """Continue ``prompt`` with up to ``max_new_tokens`` tokens on a whole model.

    Parameters
    ----------
    model : Transformer
        A whole model (embedding and LM head).
    prompt : list of int
        Token ids, at least one.
    max_new_tokens : int
    sampling : SamplingParams
        Greedy by default.
    stop_ids : set of int
        Generation ends after drawing one of these.
    on_token : callable, optional
        Called with each new token as it is drawn (for streaming output).

    Raises
    ------
    InputError
        An empty prompt, or one longer than the model's context.
    """
    context = model.config.max_context
    if not prompt:
        raise InputError("the prompt is empty (0 tokens)")
    if len(prompt) > context:
        raise InputError(f"the prompt is {len(prompt)} tokens, longer than the model's context "
                         f"of {context} tokens")
    if max_new_tokens < 1:
        raise InputError(f"max-new-tokens must be >= 1, got {max_new_tokens}")
    # The last drawn token is never fed back, so the cache needs one slot less.
    capacity = min(context, len(prompt) + max_new_tokens - 1)
    cache = model.new_cache(batch=1, capacity=capacity)
    sampler = Sampler(sampling)

    start = time.perf_counter()
    logits = model.forward(np.asarray([prompt]), cache)          # (1, 1, V)
    prefill_s = time.perf_counter() - start

    new, reason, steps = [], "length", 0
    start = time.perf_counter()
    while True:
        token = int(sampler.sample(logits[:, -1])[0])
        new.append(token)
        if on_token is not None:
            on_token(token)
        if token in stop_ids:
            reason = "stop"
            break
        if len(new) == max_new_tokens:
            break
        if cache.length == context:
            reason = "context"
            break
        logits = model.forward(np.asarray([[token]]), cache)
        steps += 1
    decode_s = time.perf_counter() - start
    return GenerationResult(tuple(prompt), tuple(new), reason, prefill_s, decode_s, steps)
