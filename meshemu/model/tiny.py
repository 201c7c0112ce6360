"""Tiny random checkpoints in both formats, for tests that run in milliseconds.

:func:`tiny_config` gives a Llama or Qwen3 shape with a few layers and heads
(6 query heads over 2 kv heads, so tensor-parallel splits can be uneven and can
replicate kv heads); :func:`random_weights` fills it; :func:`write_gguf` and
:func:`write_hf` write it the way llama.cpp's converter and Hugging Face would
(GGUF with permuted Q/K rows, optional Q8_0 blocks; HF safetensors with
``config.json``, ``tokenizer.json`` and ``tokenizer_config.json``).
:func:`tiny_tokenizer` is a 320-token byte-level BPE trained on a few lines.

>>> tok = tiny_tokenizer()
>>> tok.vocab_size, tok.decode(tok.encode("a tiny test"))
(320, 'a tiny test')
"""

from __future__ import annotations

import dataclasses
import json
from functools import lru_cache
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from meshemu.errors import InputError
from meshemu.model.config import ModelConfig
from meshemu.model.gguf import PERMUTED_QK, gguf_name, permute_qk
from meshemu.model.tokenizer import TOKEN_CONTROL, TOKEN_NORMAL, TextTokenizer, _pre_tokenizer
from meshemu.model.weights import ModelWeights, hf_expected_shapes, hf_tensors_from_weights, weights_from_hf

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")  # ids 0, 1, 2 as in SmolLM2
TINY_VOCAB = 320
# SmolLM2's template, with a shorter default system prompt.
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a tiny test model.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
_CORPUS = [
    "What is the capital of France? The capital of France is Paris.",
    "Satellites in low Earth orbit pass over a ground station every ninety minutes or so.",
    "A tiny test model answers with random tokens, 0123456789 times over.",
    "The quick brown fox jumps over the lazy dog; the lazy dog sleeps on.",
]


def tiny_config(arch: str = "llama", **changes) -> ModelConfig:
    """A few-layer configuration of ``arch`` (``"llama"`` untied, ``"qwen3"`` tied with q/k norms).

    >>> tiny_config("qwen3").head_dim * tiny_config("qwen3").n_heads   # explicit head_dim != hidden
    192
    """
    if arch not in ("llama", "qwen3"):
        # before: any other name made a llama and called it one
        raise InputError(f"unknown tiny-model architecture {arch!r}: use llama or qwen3")
    if arch == "qwen3":
        base = ModelConfig(arch="qwen3", vocab_size=TINY_VOCAB, hidden_size=64, n_layers=3,
                           n_heads=6, n_kv_heads=2, head_dim=32, ffn_size=128, rope_theta=1e6,
                           rms_eps=1e-6, tie_embeddings=True, qk_norm=True, max_context=64,
                           bos_token_id=None, eos_token_ids=(2,), name="tiny-qwen3")
    else:
        base = ModelConfig(arch="llama", vocab_size=TINY_VOCAB, hidden_size=96, n_layers=3,
                           n_heads=6, n_kv_heads=2, head_dim=16, ffn_size=160, rope_theta=1e4,
                           rms_eps=1e-5, tie_embeddings=False, qk_norm=False, max_context=64,
                           bos_token_id=1, eos_token_ids=(2,), name="tiny-llama")
    config = dataclasses.replace(base, **changes)
    # a prompt without a tokenizer is its bytes as ids 3..vocab_size-1 (0-2 are pad, bos and eos)
    if config.vocab_size < 4:
        raise InputError(f"a tiny model needs vocab_size 4 or more (ids 0-2 are special), got {config.vocab_size}",
                         field="vocab_size")
    for what, ids in (("bos_token_id", () if config.bos_token_id is None else (config.bos_token_id,)),
                      ("eos_token_ids", config.eos_token_ids)):
        if any(not 0 <= i < config.vocab_size for i in ids):
            raise InputError(f"{what} {ids} is outside the vocabulary of {config.vocab_size}", field=what)
    return config


def random_weights(config: ModelConfig, seed: int = 0) -> ModelWeights:
    """Random weights scaled so activations keep unit size through the blocks."""
    rng = np.random.default_rng(seed)
    tensors = {}
    for name, shape in hf_expected_shapes(config).items():
        if len(shape) == 1:  # norm gains near 1
            tensors[name] = 1.0 + 0.1 * rng.standard_normal(shape, dtype=np.float32)
        elif name.endswith("embed_tokens.weight"):
            tensors[name] = rng.standard_normal(shape, dtype=np.float32)
        else:
            tensors[name] = rng.standard_normal(shape, dtype=np.float32) / np.sqrt(shape[1])
    return weights_from_hf(config, tensors)


@lru_cache(maxsize=1)
def _tiny_backend_json() -> str:
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = _pre_tokenizer("smollm")
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=TINY_VOCAB, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    backend.train_from_iterator(_CORPUS, trainer)
    return backend.to_str()


def tiny_tokenizer() -> TextTokenizer:
    """A byte-level BPE tokenizer of 320 tokens with SmolLM2's special tokens and chat template."""
    backend = Tokenizer.from_str(_tiny_backend_json())
    return TextTokenizer(backend, bos_token_id=1, eos_token_ids=(2,), chat_template=CHAT_TEMPLATE)


def _vocab_and_merges(tokenizer: TextTokenizer) -> tuple[list[str], list[str]]:
    model = json.loads(tokenizer.backend.to_str())["model"]
    tokens = [""] * len(model["vocab"])
    for token, i in model["vocab"].items():
        tokens[i] = token
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    return tokens, merges


def write_gguf(weights: ModelWeights, tokenizer: TextTokenizer, path, *, quantize: str | None = None,
               general: dict[str, str] | None = None):
    """Write a GGUF file as llama.cpp's converter would (Q/K rows permuted for Llama).

    Parameters
    ----------
    quantize : {None, "Q8_0"}
        Store the 2-D matrices as Q8_0 blocks instead of float32.
    general : dict of str to str, optional
        More ``general.*`` metadata, e.g. ``{"basename": "tiny", "size_label": "1M"}``.
    """
    import gguf

    cfg = weights.config
    writer = gguf.GGUFWriter(str(path), cfg.arch)
    writer.add_name(cfg.name)
    for key, value in (general or {}).items():
        writer.add_string(f"general.{key}", value)
    writer.add_block_count(cfg.n_layers)
    writer.add_context_length(cfg.max_context)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.ffn_size)
    writer.add_head_count(cfg.n_heads)
    writer.add_head_count_kv(cfg.n_kv_heads)
    writer.add_rope_freq_base(cfg.rope_theta)
    writer.add_layer_norm_rms_eps(cfg.rms_eps)
    writer.add_rope_dimension_count(cfg.head_dim)
    if cfg.head_dim * cfg.n_heads != cfg.hidden_size:
        writer.add_key_length(cfg.head_dim)
        writer.add_value_length(cfg.head_dim)
    writer.add_vocab_size(cfg.vocab_size)
    tokens, merges = _vocab_and_merges(tokenizer)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(tokens)
    writer.add_token_types([TOKEN_CONTROL if t in SPECIAL_TOKENS else TOKEN_NORMAL for t in tokens])
    writer.add_token_merges(merges)
    if cfg.bos_token_id is not None:
        writer.add_bos_token_id(cfg.bos_token_id)
    if cfg.eos_token_ids:
        writer.add_eos_token_id(cfg.eos_token_ids[0])
    writer.add_add_bos_token(False)
    writer.add_chat_template(tokenizer.chat_template)
    for name, array in hf_tensors_from_weights(weights).items():
        if cfg.arch in PERMUTED_QK and name.endswith(("q_proj.weight", "k_proj.weight")):
            heads = cfg.n_heads if name.endswith("q_proj.weight") else cfg.n_kv_heads
            array = permute_qk(array, heads)
        array = np.ascontiguousarray(array, dtype=np.float32)
        if quantize and array.ndim == 2:
            qtype = gguf.GGMLQuantizationType[quantize]
            writer.add_tensor(gguf_name(name), gguf.quants.quantize(array, qtype), raw_dtype=qtype)
        else:
            writer.add_tensor(gguf_name(name), array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def hf_config_dict(config: ModelConfig) -> dict:
    """The ``config.json`` mapping Hugging Face transformers writes for ``config``."""
    arch = {"llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM"}[config.arch]
    out = {
        "architectures": [arch], "model_type": config.arch, "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size, "intermediate_size": config.ffn_size,
        "num_hidden_layers": config.n_layers, "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.n_kv_heads, "head_dim": config.head_dim,
        "hidden_act": "silu", "rms_norm_eps": config.rms_eps, "rope_theta": config.rope_theta,
        "rope_scaling": None, "max_position_embeddings": config.max_context,
        "tie_word_embeddings": config.tie_embeddings, "attention_bias": False,
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_ids[0] if config.eos_token_ids else None,
        "torch_dtype": "float32",
    }
    if config.arch == "llama":
        out["mlp_bias"] = False
    else:
        out["use_sliding_window"] = False
    return out


def write_hf(weights: ModelWeights, tokenizer: TextTokenizer | None, directory) -> Path:
    """Write a Hugging Face checkpoint directory (float32 safetensors)."""
    from safetensors.numpy import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(hf_config_dict(weights.config), indent=2))
    save_file(hf_tensors_from_weights(weights), str(directory / "model.safetensors"))
    if tokenizer is not None:
        tokenizer.backend.save(str(directory / "tokenizer.json"))
        (directory / "tokenizer_config.json").write_text(json.dumps({
            "chat_template": tokenizer.chat_template, "eos_token": "<|im_end|>",
            "bos_token": "<|im_start|>",
        }, indent=2))
    return directory
