"""The forward pass against a naive reference, the KV cache, batches, generation and sampling."""

import numpy as np
import pytest

from meshemu.errors import InputError
from meshemu.model import SamplingParams, Sampler, Transformer, generate

# Float32 against a float64 reference through 3 blocks: logits are O(1..10);
# 1e-4 relative to their spread is ~100x float32 rounding, far below any bug.
LOGIT_RTOL = 1e-4

TOKENS = [1, 17, 42, 99, 3, 250, 7, 7, 128, 64]


def spread(a):
    return float(np.abs(a).max())


class TestForward:
    def test_prefill_matches_reference(self, tiny_weights, reference):
        model = Transformer(tiny_weights)
        got = model.forward(np.array([TOKENS]), model.new_cache(1, 16), all_logits=True)[0]
        want = reference(tiny_weights, TOKENS)
        assert np.abs(got - want).max() < LOGIT_RTOL * spread(want)

    def test_decode_with_cache_matches_full_prefill(self, tiny_weights):
        model = Transformer(tiny_weights)
        full = model.forward(np.array([TOKENS]), model.new_cache(1, 16), all_logits=True)[0]
        cache = model.new_cache(1, 16)
        steps = [model.forward(np.array([TOKENS[:4]]), cache)[0, -1]]
        for token in TOKENS[4:]:
            steps.append(model.forward(np.array([[token]]), cache)[0, -1])
        assert cache.length == len(TOKENS)
        np.testing.assert_allclose(np.array(steps), full[3:], atol=1e-5 * spread(full))

    def test_batch_of_two_equals_two_runs(self, tiny_weights):
        model = Transformer(tiny_weights)
        a, b = TOKENS[:5], TOKENS[5:]
        cache = model.new_cache(2, 8)
        batched = [model.forward(np.array([a, b]), cache)[:, -1]]
        batched.append(model.forward(np.array([[11], [12]]), cache)[:, -1])
        for row, (prompt, nxt) in enumerate([(a, 11), (b, 12)]):
            one = model.new_cache(1, 8)
            first = model.forward(np.array([prompt]), one)[0, -1]
            second = model.forward(np.array([[nxt]]), one)[0, -1]
            np.testing.assert_allclose(batched[0][row], first, atol=1e-5 * spread(first))
            np.testing.assert_allclose(batched[1][row], second, atol=1e-5 * spread(second))

    def test_full_cache_is_an_input_error(self, tiny_llama):
        model = Transformer(tiny_llama)
        cache = model.new_cache(1, 4)
        model.forward(np.array([[1, 2, 3]]), cache)
        with pytest.raises(InputError, match="context full"):
            model.forward(np.array([[4, 5]]), cache)

    def test_token_outside_vocabulary(self, tiny_llama):
        model = Transformer(tiny_llama)
        with pytest.raises(InputError, match="vocabulary"):
            model.forward(np.array([[1, 10_000]]), model.new_cache(1, 4))


class TestGenerate:
    def test_greedy_is_repeatable_and_counts_steps(self, tiny_qwen3):
        model = Transformer(tiny_qwen3)
        one = generate(model, TOKENS, max_new_tokens=6)
        two = generate(model, TOKENS, max_new_tokens=6)
        assert one.new_tokens == two.new_tokens
        assert (len(one.new_tokens), one.decode_steps, one.stop_reason) == (6, 5, "length")
        assert one.prefill_tokens_per_s > 0 and one.decode_tokens_per_s > 0

    def test_greedy_continuation_is_the_argmax_chain(self, tiny_llama, reference):
        result = generate(Transformer(tiny_llama), TOKENS[:4], max_new_tokens=3)
        seq = list(TOKENS[:4])
        for _ in range(3):
            seq.append(int(reference(tiny_llama, seq)[-1].argmax()))
        assert list(result.new_tokens) == seq[4:]

    def test_stops_at_a_stop_token(self, tiny_llama):
        model = Transformer(tiny_llama)
        first = generate(model, TOKENS, max_new_tokens=1).new_tokens[0]
        result = generate(model, TOKENS, max_new_tokens=10, stop_ids={first})
        assert result.new_tokens == (first,) and result.stop_reason == "stop"

    def test_stops_when_the_context_is_full(self, tiny_llama):
        context = tiny_llama.config.max_context  # 64
        result = generate(Transformer(tiny_llama), [5] * (context - 2), max_new_tokens=10)
        assert result.stop_reason == "context" and len(result.new_tokens) == 3

    def test_prompt_longer_than_context(self, tiny_llama):
        with pytest.raises(InputError, match="longer than the model's context of 64 tokens"):
            generate(Transformer(tiny_llama), [5] * 65, max_new_tokens=1)

    def test_seeded_sampling_is_repeatable(self, tiny_llama):
        model = Transformer(tiny_llama)  # untied head: logits O(1), so draws vary
        params = SamplingParams(temperature=1.5, top_p=0.95, seed=3)
        runs = [generate(model, TOKENS, max_new_tokens=8, sampling=params).new_tokens for _ in range(2)]
        other = generate(model, TOKENS, max_new_tokens=8,
                         sampling=SamplingParams(temperature=1.5, top_p=0.95, seed=4)).new_tokens
        assert runs[0] == runs[1]
        assert other != runs[0]  # 8 draws from a flat-ish distribution over 320 tokens


class TestSampler:
    def test_tiny_top_p_is_greedy(self):
        logits = np.random.default_rng(0).standard_normal((3, 50)).astype(np.float32)
        sampler = Sampler(SamplingParams(temperature=1.0, top_p=1e-6, seed=0))
        assert list(sampler.sample(logits)) == list(logits.argmax(-1))

    def test_frequencies_follow_the_softmax(self):
        logits = np.log(np.array([[0.5, 0.3, 0.2]], np.float32))
        sampler = Sampler(SamplingParams(temperature=1.0, seed=1))
        draws = np.array([sampler.sample(logits)[0] for _ in range(4000)])
        freq = np.bincount(draws, minlength=3) / len(draws)
        # 4000 draws: standard error of p=0.5 is 0.008; 0.03 is ~4 sigma.
        np.testing.assert_allclose(freq, [0.5, 0.3, 0.2], atol=0.03)

    @pytest.mark.parametrize("kwargs", [{"temperature": -1}, {"top_p": 0}, {"top_p": 1.5}])
    def test_bad_parameters(self, kwargs):
        with pytest.raises(InputError):
            SamplingParams(**kwargs)
