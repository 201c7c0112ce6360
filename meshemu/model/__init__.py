"""The model layer: a numpy Llama / Qwen3 decoder that can be cut into shards.

Front door::

    from meshemu.model import load_model, Transformer, generate
    loaded = load_model()                      # SmolLM2-135M-Instruct from its GGUF file
    model = Transformer(loaded.weights)

Modules, in data-flow order: :mod:`~meshemu.model.config` (the shape),
:mod:`~meshemu.model.weights` (fused, pre-transposed arrays and the
:class:`~meshemu.model.weights.ShardSpec` of the part they cover),
:mod:`~meshemu.model.gguf` / :mod:`~meshemu.model.hf` (checkpoint readers),
:mod:`~meshemu.model.naming` (the name people read),
:mod:`~meshemu.model.weight_cache` (dequantized GGUF weights on disk),
:mod:`~meshemu.model.tokenizer`, :mod:`~meshemu.model.partition` (pipeline
stages and tensor-parallel ranks), :mod:`~meshemu.model.cache`,
:mod:`~meshemu.model.transformer` (the forward pass),
:mod:`~meshemu.model.sampling`, :mod:`~meshemu.model.generate`,
:mod:`~meshemu.model.tiny` (random checkpoints for tests).
"""

from meshemu.model.cache import KVCache
from meshemu.model.config import ModelConfig
from meshemu.model.generate import GenerationResult, generate
from meshemu.model.load import LoadedModel, default_model_path, load_model
from meshemu.model.partition import pipeline_ranges, shard_spec, slice_weights, tensor_parallel_specs
from meshemu.model.sampling import Sampler, SamplingParams
from meshemu.model.transformer import Transformer
from meshemu.model.weights import ModelWeights, ShardSpec

__all__ = [
    "GenerationResult", "KVCache", "LoadedModel", "ModelConfig", "ModelWeights", "Sampler",
    "SamplingParams", "ShardSpec", "Transformer", "default_model_path", "generate", "load_model",
    "pipeline_ranges", "shard_spec", "slice_weights", "tensor_parallel_specs",
]
