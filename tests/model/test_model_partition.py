"""Split runs (pipeline stages, tensor-parallel ranks, both) equal the whole-model run."""

import threading

import numpy as np
import pytest

from meshemu.errors import InputError
from meshemu.model import Transformer, pipeline_ranges, shard_spec, slice_weights, tensor_parallel_specs
from meshemu.model.partition import even_split
from meshemu.model.transformer import rms_norm
from meshemu.model.weights import ShardSpec

PROMPT = [1, 17, 42, 99, 3, 250, 7]
DECODE = [5, 60, 200]


def whole_run(weights, prompt=PROMPT, decode=DECODE):
    """Logits of the last prompt token and of each decode step, on the whole model."""
    model = Transformer(weights)
    cache = model.new_cache(1, len(prompt) + len(decode))
    out = [model.forward(np.array([prompt]), cache)[0, -1]]
    out += [model.forward(np.array([[t]]), cache)[0, -1] for t in decode]
    return np.array(out)


class TensorParallelGroup:
    """Runs TP ranks in one process the way the serving layer will: block by block,
    adding the ranks' partial sums between the two halves of every block."""

    def __init__(self, weights, tp_size, layer_start=0, layer_stop=None):
        specs = tensor_parallel_specs(weights.config, tp_size, layer_start=layer_start,
                                      layer_stop=layer_stop)
        self.ranks = [Transformer(slice_weights(weights, s)) for s in specs]
        self.eps = weights.config.rms_eps

    def new_caches(self, capacity):
        return [r.new_cache(1, capacity) for r in self.ranks]

    def forward(self, inputs, caches):
        first = self.ranks[0]
        x = first.embed(inputs) if first.spec.has_embedding else inputs
        for i, lw in enumerate(first.layers):  # norms are replicated: rank 0's serve all
            xn = rms_norm(x, lw.attn_norm, self.eps)
            h = x + sum(r.attention_partial(i, xn, c) for r, c in zip(self.ranks, caches))
            hn = rms_norm(h, lw.mlp_norm, self.eps)
            x = h + sum(r.mlp_partial(i, hn) for r in self.ranks)
        return first.logits(x[:, -1:]) if first.spec.has_lm_head else x


def tp_run(weights, tp_size, prompt=PROMPT, decode=DECODE):
    group = TensorParallelGroup(weights, tp_size)
    caches = group.new_caches(len(prompt) + len(decode))
    out = [group.forward(np.array([prompt]), caches)[0, -1]]
    out += [group.forward(np.array([[t]]), caches)[0, -1] for t in decode]
    return np.array(out)


def close(got, want):
    # Partial sums are added in another order than the whole matmul: float32
    # rounding, ~1e-6 relative, amplified a little through the blocks.
    np.testing.assert_allclose(got, want, atol=2e-5 * float(np.abs(want).max()))


class TestPlans:
    def test_even_split_puts_larger_parts_first(self):
        assert even_split(10, 3) == [(0, 4), (4, 7), (7, 10)]

    @pytest.mark.parametrize("tp_size", [1, 2, 3, 4, 6])
    def test_every_head_and_column_once(self, tiny_llama, tp_size):
        cfg = tiny_llama.config  # 6 query heads over 2 kv heads
        specs = tensor_parallel_specs(cfg, tp_size)
        assert sorted(q for s in specs for q in s.q_heads) == list(range(cfg.n_heads))
        assert sorted({k for s in specs for k in s.kv_heads}) == list(range(cfg.n_kv_heads))
        assert sum(s.ffn_size for s in specs) == cfg.ffn_size
        if tp_size > cfg.n_kv_heads:  # replicated kv heads, one per rank
            assert all(len(s.kv_heads) == 1 for s in specs)

    def test_more_ranks_than_query_heads(self, tiny_llama):
        with pytest.raises(InputError, match="exceeds the 6 query heads"):
            tensor_parallel_specs(tiny_llama.config, 7)

    def test_query_head_must_sit_with_its_kv_head(self, tiny_llama):
        spec = ShardSpec(0, 3, (0, 1, 2), (1,), 0, 160, True, True)  # heads 0-2 use kv head 0
        with pytest.raises(InputError, match="uses kv head 0"):
            slice_weights(tiny_llama, spec)


class TestPipeline:
    @pytest.mark.parametrize("n_stages", [2, 3])
    def test_stages_chain_to_the_whole_model(self, tiny_weights, n_stages):
        cfg = tiny_weights.config
        stages = [Transformer(slice_weights(tiny_weights, shard_spec(cfg, layer_start=a, layer_stop=b)))
                  for a, b in pipeline_ranges(cfg.n_layers, n_stages)]
        caches = [s.new_cache(1, 16) for s in stages]

        def run(inputs):
            for stage, cache in zip(stages, caches):
                inputs = stage.forward(inputs, cache)
            return inputs[0, -1]

        assert stages[0].spec.has_embedding and not stages[0].spec.has_lm_head
        assert stages[-1].spec.has_lm_head and stages[-1].weights.embedding is None
        got = [run(np.array([PROMPT]))] + [run(np.array([[t]])) for t in DECODE]
        close(np.array(got), whole_run(tiny_weights))

    def test_a_stage_shares_its_whole_blocks(self, tiny_llama):
        # No copy: shards on one machine share the weight cache's memory-mapped pages.
        stage = slice_weights(tiny_llama, shard_spec(tiny_llama.config, layer_start=1, layer_stop=3))
        assert all(a is b for a, b in zip(stage.layers, tiny_llama.layers[1:3]))


class TestTensorParallel:
    @pytest.mark.parametrize("tp_size", [2, 3, 4, 6])
    def test_partial_sums_add_to_the_whole_model(self, tiny_weights, tp_size):
        close(tp_run(tiny_weights, tp_size), whole_run(tiny_weights))

    def test_reduce_hook_with_threads(self, tiny_qwen3):
        """Each rank in its own thread, ``reduce`` an all-reduce through a barrier."""
        tp_size = 3
        specs = tensor_parallel_specs(tiny_qwen3.config, tp_size)
        ranks = [Transformer(slice_weights(tiny_qwen3, s)) for s in specs]
        slots = [None] * tp_size
        barrier = threading.Barrier(tp_size)
        results = [None] * tp_size

        def all_reduce(rank):
            def reduce(partial):
                slots[rank] = partial
                barrier.wait()
                total = sum(slots)
                barrier.wait()  # nobody overwrites a slot before all have summed
                return total
            return reduce

        def worker(rank):
            model = ranks[rank]
            results[rank] = model.forward(np.array([PROMPT]), model.new_cache(1, 8),
                                          reduce=all_reduce(rank))[0, -1]

        threads = [threading.Thread(target=worker, args=(r,)) for r in range(tp_size)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        want = whole_run(tiny_qwen3, decode=[])[0]
        for got in results:
            close(got, want)

    def test_pipeline_of_tensor_parallel_stages(self, tiny_llama):
        """2 stages x 2 ranks: hidden states pass from one TP group to the next."""
        cfg = tiny_llama.config
        groups = [TensorParallelGroup(tiny_llama, 2, a, b) for a, b in pipeline_ranges(cfg.n_layers, 2)]
        caches = [g.new_caches(16) for g in groups]

        def run(inputs):
            for group, cache in zip(groups, caches):
                inputs = group.forward(inputs, cache)
            return inputs[0, -1]

        got = [run(np.array([PROMPT]))] + [run(np.array([[t]])) for t in DECODE]
        close(np.array(got), whole_run(tiny_llama))


@pytest.mark.slow
class TestRealModelSplits:
    """SmolLM2-135M (9 query heads / 3 kv heads, 30 layers): uneven splits, a few tokens."""

    PROMPT = [1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47]
    DECODE = [2, 198]

    def test_pipeline_halves_and_uneven_tensor_parallel(self, smollm2):
        weights = smollm2.weights
        want = whole_run(weights, self.PROMPT, self.DECODE)
        cfg = weights.config
        stages = [Transformer(slice_weights(weights, shard_spec(cfg, layer_start=a, layer_stop=b)))
                  for a, b in pipeline_ranges(cfg.n_layers, 2)]
        caches = [s.new_cache(1, 16) for s in stages]
        got = []
        for inputs in [np.array([self.PROMPT])] + [np.array([[t]]) for t in self.DECODE]:
            for stage, cache in zip(stages, caches):
                inputs = stage.forward(inputs, cache)
            got.append(inputs[0, -1])
        close(np.array(got), want)
        for tp_size in (2, 4):  # 6+3 heads; 2+1+3+3 heads with kv head 0 replicated
            close(tp_run(weights, tp_size, self.PROMPT, self.DECODE), want)
