"""Load a Hugging Face checkpoint directory: ``config.json``, ``*.safetensors``, ``tokenizer.json``.

Supported: ``LlamaForCausalLM`` and ``Qwen3ForCausalLM`` without biases, RoPE
scaling or sliding windows (a checkpoint that needs them is refused, not run
wrongly). Tensors are read with the `safetensors` package; bfloat16, which
numpy lacks, is widened to float32 by placing its 16 bits in the high half of
a float32 (exact).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from meshemu.errors import InputError
from meshemu.model.config import ModelConfig
from meshemu.model.naming import folder_model_name, hf_model_name
from meshemu.model.tokenizer import TextTokenizer, tokenizer_from_hf_dir
from meshemu.model.weights import ModelWeights, weights_from_hf

HF_ARCHITECTURES = {"LlamaForCausalLM": "llama", "Qwen3ForCausalLM": "qwen3"}
_MODEL_TYPES = {"llama": "llama", "qwen3": "qwen3"}
_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64}


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except OSError as err:
        raise InputError(f"cannot read: {err.strerror}", file=path) from None
    except ValueError as err:
        raise InputError(f"not valid JSON: {err}", file=path) from None
    if not isinstance(data, dict):
        raise InputError("the top level must be an object", file=path)
    return data


def _ids(value) -> tuple[int, ...]:
    if value is None:
        return ()
    return tuple(int(v) for v in (value if isinstance(value, list) else [value]))


def config_from_hf(cfg: dict, *, file=None, name: str = "") -> ModelConfig:
    """The :class:`ModelConfig` of a Hugging Face ``config.json`` mapping.

    ``name`` is the checkpoint directory's name, the model's name when
    ``config.json`` has no ``_name_or_path``.

    >>> config_from_hf({"architectures": ["GPT2LMHeadModel"]})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    meshemu.errors.InputError: unsupported architecture 'GPT2LMHeadModel' in config.json (supported: ...)
    """
    names = cfg.get("architectures") or []
    arch_name = names[0] if names else cfg.get("model_type")
    arch = HF_ARCHITECTURES.get(arch_name) or (None if names else _MODEL_TYPES.get(arch_name))
    if arch is None:
        raise InputError(f"unsupported architecture {arch_name!r} in config.json "
                         f"(supported: {', '.join(HF_ARCHITECTURES)})", file=file)
    rope = cfg.get("rope_parameters") or {}  # transformers >= 5 moved rope_theta here
    scaling = cfg.get("rope_scaling") or rope
    if scaling.get("rope_type", scaling.get("type", "default")) != "default":
        raise InputError(f"unsupported rope scaling {scaling}", file=file, field="rope_scaling")
    for key in ("attention_bias", "mlp_bias", "use_sliding_window"):
        if cfg.get(key):
            raise InputError(f"{key} is not supported", file=file, field=key)
    if cfg.get("hidden_act", "silu") != "silu":
        raise InputError(f"unsupported activation {cfg['hidden_act']!r}", file=file, field="hidden_act")
    try:
        hidden, heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
        return ModelConfig(
            arch=arch,
            vocab_size=int(cfg["vocab_size"]),
            hidden_size=hidden,
            n_layers=int(cfg["num_hidden_layers"]),
            n_heads=heads,
            n_kv_heads=int(cfg.get("num_key_value_heads") or heads),
            head_dim=int(cfg.get("head_dim") or hidden // heads),
            ffn_size=int(cfg["intermediate_size"]),
            rope_theta=float(cfg.get("rope_theta", rope.get("rope_theta", 10000.0))),
            rms_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            qk_norm=arch == "qwen3",
            max_context=int(cfg.get("max_position_embeddings", 2048)),
            bos_token_id=cfg.get("bos_token_id"),
            eos_token_ids=_ids(cfg.get("eos_token_id")),
            name=hf_model_name(str(cfg.get("_name_or_path") or ""), name or arch_name,
                               dtype=cfg.get("torch_dtype", cfg.get("dtype"))),
        )
    except KeyError as err:
        raise InputError("missing key", file=file, field=err.args[0]) from None
    except (TypeError, ValueError) as err:
        raise InputError(f"bad value: {err}", file=file) from None


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of one ``.safetensors`` file as a numpy array (bfloat16 widened to float32)."""
    from safetensors import SafetensorError, deserialize

    try:
        entries = deserialize(path.read_bytes())
    except OSError as err:
        raise InputError(f"cannot read: {err.strerror}", file=path) from None
    except SafetensorError as err:
        raise InputError(f"not a readable safetensors file ({err})", file=path) from None
    tensors = {}
    for name, entry in entries:
        dtype, shape, data = entry["dtype"], entry["shape"], entry["data"]
        if dtype == "BF16":
            bits = np.frombuffer(data, dtype="<u2").astype(np.uint32) << 16
            tensors[name] = bits.view(np.float32).reshape(shape)
        elif dtype in _DTYPES:
            tensors[name] = np.frombuffer(data, dtype=np.dtype(_DTYPES[dtype]).newbyteorder("<")
                                          ).reshape(shape)
        else:
            raise InputError(f"tensor {name}: unsupported dtype {dtype}", file=path)
    return tensors


def load_hf(directory) -> tuple[ModelWeights, TextTokenizer | None]:
    """Read a Hugging Face checkpoint directory.

    Returns
    -------
    weights : ModelWeights
        Float32, fused and pre-transposed.
    tokenizer : TextTokenizer or None
        ``None`` when the directory has no ``tokenizer.json``.

    Raises
    ------
    InputError
        Missing directory, ``config.json`` or weights; unsupported
        architecture; corrupt, missing or misshapen tensors.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise InputError("no such directory", file=directory)
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise InputError("no config.json (not a Hugging Face checkpoint)", file=directory)
    config = config_from_hf(_read_json(config_path), file=config_path,
                            name=folder_model_name(directory.resolve()))
    generation_path = directory / "generation_config.json"
    if generation_path.is_file():
        extra = _ids(_read_json(generation_path).get("eos_token_id"))
        eos = config.eos_token_ids + tuple(i for i in extra if i not in config.eos_token_ids)
        config = ModelConfig(**(config.to_dict() | {"eos_token_ids": eos}))
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise InputError("no *.safetensors weights", file=directory)
    tensors = {}
    for path in files:
        tensors |= read_safetensors(path)
    weights = weights_from_hf(config, tensors, file=directory)
    tokenizer = None
    if (directory / "tokenizer.json").is_file():
        tokenizer = tokenizer_from_hf_dir(directory, bos_token_id=config.bos_token_id,
                                          eos_token_ids=config.eos_token_ids)
    return weights, tokenizer


def tensor_elements(directory) -> int:
    """Elements in all tensors of a checkpoint directory's ``*.safetensors`` files, from their headers
    (the files are mapped, not read): how big it is before any data is read."""
    import math

    from safetensors import SafetensorError, safe_open

    total = 0
    for path in sorted(Path(directory).glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="numpy") as f:
                total += sum(math.prod(f.get_slice(name).get_shape()) for name in f.keys())
        except OSError as err:
            raise InputError(f"cannot read: {err.strerror}", file=path) from None
        except SafetensorError as err:
            raise InputError(f"not a readable safetensors file ({err})", file=path) from None
    return total
