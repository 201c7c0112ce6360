"""Load a GGUF checkpoint (llama.cpp's format): metadata, dequantized weights, tokenizer.

The `gguf` package (from llama.cpp, pure Python + numpy) parses the file and
dequantizes every block format (SmolLM2 ships Q4_1 blocks and a Q8_0
embedding); weights become float32.

llama.cpp's converter permutes the rows of Llama's q and k projections so that
its kernel can rotate adjacent pairs ``(2i, 2i+1)``; Hugging Face rotates
``(i, i + hd/2)``. :func:`unpermute_qk` restores the Hugging Face order, so one
forward pass serves both formats. Qwen3 files are written unpermuted.

>>> w = np.arange(8.0).reshape(8, 1)          # one head of width 8, one input
>>> permute_qk(w, n_heads=1).ravel()          # llama.cpp order
array([0., 4., 1., 5., 2., 6., 3., 7.])
>>> unpermute_qk(permute_qk(w, 1), 1).ravel()
array([0., 1., 2., 3., 4., 5., 6., 7.])
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from meshemu.errors import InputError
from meshemu.model.config import ModelConfig
from meshemu.model.naming import gguf_model_name
from meshemu.model.tokenizer import TextTokenizer, tokenizer_from_gguf_vocab
from meshemu.model.weights import ModelWeights, weights_from_hf

# GGUF block tensor name -> Hugging Face name (after "model.layers.{i}.").
BLOCK_NAMES = {
    "attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
    "ffn_norm": "post_attention_layernorm", "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}

# general.architecture -> our arch, and which need the Q/K un-permutation.
GGUF_ARCHITECTURES = {"llama": "llama", "qwen3": "qwen3"}
PERMUTED_QK = {"llama"}


def permute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's permutation of q or k rows ``(n_heads * hd, ...)`` (convert_hf_to_gguf.py)."""
    return (w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def unpermute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
    """The inverse of :func:`permute_qk`: back to Hugging Face row order."""
    return (w.reshape(n_heads, w.shape[0] // n_heads // 2, 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def hf_name(gguf_name: str) -> str:
    """The Hugging Face name of a GGUF tensor, e.g. ``blk.3.attn_q.weight``.

    >>> hf_name("blk.3.attn_q.weight")
    'model.layers.3.self_attn.q_proj.weight'
    """
    parts = gguf_name.split(".")
    if len(parts) == 4 and parts[0] == "blk" and parts[2] in BLOCK_NAMES:
        return f"model.layers.{parts[1]}.{BLOCK_NAMES[parts[2]]}.{parts[3]}"
    if len(parts) == 2 and parts[0] in TOP_NAMES:
        return f"{TOP_NAMES[parts[0]]}.{parts[1]}"
    return gguf_name  # unknown: the weight check names it


def gguf_name(name: str) -> str:
    """The GGUF name of a Hugging Face tensor (the inverse of :func:`hf_name`)."""
    for short, long in TOP_NAMES.items():
        if name == f"{long}.weight":
            return f"{short}.weight"
    parts = name.split(".", 3)  # model, layers, i, rest
    rest = parts[3].removesuffix(".weight")
    short = next(k for k, v in BLOCK_NAMES.items() if v == rest)
    return f"blk.{parts[2]}.{short}.weight"


def _open(path: Path):
    import gguf  # imported here: only needed when a GGUF file is read

    if not path.is_file():
        # /dev/zero or a pipe would be read for ever; /dev/null is there, just not a file
        raise InputError("no such file" if not path.exists() else
                         "is not a regular file (a device, pipe or socket): give a .gguf file", file=path)
    try:
        return gguf.GGUFReader(path)
    except (ValueError, IndexError, KeyError, OverflowError, UnicodeDecodeError, OSError) as err:
        raise InputError(f"not a readable GGUF file, truncated or corrupt ({err})", file=path) from None


def _field(reader, key: str, default=None, *, required: bool = False):
    field = reader.fields.get(key)
    if field is None:
        if required:
            raise InputError(f"missing metadata key {key}")
        return default
    return field.contents()


def _float32(value) -> float:
    # GGUF stores float32: 1e-5 arrives as 9.99999974738e-06. The shortest
    # decimal that rounds to the same float32 is the value the writer meant.
    return float(repr(np.float32(value)).removeprefix("np.float32(").removesuffix(")"))


def quantization(reader) -> str | None:
    """The file's number format: ``general.file_type`` (``MOSTLY_Q4_1`` is ``Q4_1``), or else the
    tensor type that holds most of the weights."""
    from gguf import LlamaFileType

    file_type = _field(reader, "general.file_type")
    if file_type is not None:
        try:  # GUESSED is a flag the converter ORs in when it inferred the type
            kind = LlamaFileType(int(file_type) & ~LlamaFileType.GUESSED)
            return kind.name.removeprefix("MOSTLY_").removeprefix("ALL_")
        except ValueError:
            pass  # a type newer than this gguf package: count the tensors instead
    elements = Counter()
    for tensor in reader.tensors:
        elements[tensor.tensor_type.name] += int(tensor.n_elements)
    return elements.most_common(1)[0][0] if elements else None


def name_fields(reader) -> dict:
    """What the readable name is made of (:func:`~meshemu.model.naming.gguf_model_name`'s
    arguments but the stem): ``general.{name,basename,size_label,finetune}`` and the number format."""
    general = {key: str(_field(reader, f"general.{key}", "") or "")
               for key in ("name", "basename", "size_label", "finetune")}
    return general | {"quantization": quantization(reader)}


def config_from_gguf(reader, *, file=None) -> ModelConfig:
    """The :class:`ModelConfig` a GGUF file's metadata describes."""
    arch = _field(reader, "general.architecture", required=True)
    if arch not in GGUF_ARCHITECTURES:
        raise InputError(f"unsupported architecture {arch!r} "
                         f"(supported: {', '.join(GGUF_ARCHITECTURES)})", file=file)
    scaling = _field(reader, f"{arch}.rope.scaling.type", "none")
    if scaling not in ("none", None):
        raise InputError(f"unsupported RoPE scaling {scaling!r}", file=file)
    hidden = int(_field(reader, f"{arch}.embedding_length", required=True))
    heads = int(_field(reader, f"{arch}.attention.head_count", required=True))
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    eos = _field(reader, "tokenizer.ggml.eos_token_id")
    bos = _field(reader, "tokenizer.ggml.bos_token_id")
    return ModelConfig(
        arch=GGUF_ARCHITECTURES[arch],
        vocab_size=int(_field(reader, f"{arch}.vocab_size", len(tokens.data) if tokens else 0)),
        hidden_size=hidden,
        n_layers=int(_field(reader, f"{arch}.block_count", required=True)),
        n_heads=heads,
        n_kv_heads=int(_field(reader, f"{arch}.attention.head_count_kv", heads)),
        head_dim=int(_field(reader, f"{arch}.attention.key_length", hidden // heads)),
        ffn_size=int(_field(reader, f"{arch}.feed_forward_length", required=True)),
        rope_theta=_float32(_field(reader, f"{arch}.rope.freq_base", 10000.0)),
        rms_eps=_float32(_field(reader, f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)),
        tie_embeddings="output.weight" not in {t.name for t in reader.tensors},
        qk_norm=arch == "qwen3",
        max_context=int(_field(reader, f"{arch}.context_length", 2048)),
        bos_token_id=None if bos is None else int(bos),
        eos_token_ids=() if eos is None else (int(eos),),
        name=gguf_model_name(stem=Path(file).stem if file else "", **name_fields(reader)),
    )


def _dequantize(tensor, *, file) -> np.ndarray:
    from gguf import dequantize

    shape = tuple(int(n) for n in reversed(tensor.shape))  # ggml lists the fastest axis first
    try:
        values = dequantize(tensor.data, tensor.tensor_type)
    except NotImplementedError:
        raise InputError(f"tensor {tensor.name}: cannot dequantize {tensor.tensor_type.name}",
                         file=file) from None
    return np.asarray(values, dtype=np.float32).reshape(shape)


def tokenizer_from_gguf(reader, *, file=None) -> TextTokenizer:
    """The tokenizer stored in a GGUF file's ``tokenizer.*`` metadata."""
    if "tokenizer.ggml.tokens" not in reader.fields:
        raise InputError("no tokenizer in the file (tokenizer.ggml.tokens)", file=file)
    tokens = _field(reader, "tokenizer.ggml.tokens")
    return tokenizer_from_gguf_vocab(
        tokens,
        _field(reader, "tokenizer.ggml.token_type", [1] * len(tokens)),
        _field(reader, "tokenizer.ggml.merges", []),
        model=_field(reader, "tokenizer.ggml.model", required=True),
        pre=_field(reader, "tokenizer.ggml.pre", "default"),
        bos_token_id=_field(reader, "tokenizer.ggml.bos_token_id"),
        eos_token_id=_field(reader, "tokenizer.ggml.eos_token_id"),
        add_bos=bool(_field(reader, "tokenizer.ggml.add_bos_token", False)),
        chat_template=_field(reader, "tokenizer.chat_template"),
    )


def load_gguf(path) -> tuple[ModelWeights, TextTokenizer]:
    """Read a GGUF checkpoint: float32 weights in Hugging Face row order, and its tokenizer.

    Parameters
    ----------
    path : str or Path
        A ``.gguf`` file of a Llama or Qwen3 model.

    Raises
    ------
    InputError
        Missing or corrupt file, unsupported architecture or tensor type,
        missing or misshapen tensor.
    """
    weights, tokenizer, _ = read_gguf(path)
    return weights, tokenizer


def read_gguf(path) -> tuple[ModelWeights, TextTokenizer, dict]:
    """:func:`load_gguf`, and the file's :func:`name_fields` (the weight cache keeps them, so that
    a copy of the file under another name is named as that file)."""
    path = Path(path)
    reader = _open(path)
    try:
        config = config_from_gguf(reader, file=path)
        tokenizer = tokenizer_from_gguf(reader, file=path)
        tensors = {hf_name(t.name): _dequantize(t, file=path) for t in reader.tensors}
    except (ValueError, IndexError, UnicodeDecodeError) as err:  # truncated or garbled data
        raise InputError(f"corrupt GGUF data ({type(err).__name__}: {err})", file=path) from None
    if config.arch in PERMUTED_QK:
        for i in range(config.n_layers):
            for proj, heads in (("q_proj", config.n_heads), ("k_proj", config.n_kv_heads)):
                name = f"model.layers.{i}.self_attn.{proj}.weight"
                if name in tensors:  # a missing one is reported by weights_from_hf
                    tensors[name] = unpermute_qk(tensors[name], heads)
    return weights_from_hf(config, tensors, file=path), tokenizer, name_fields(reader)


def tensor_elements(path) -> int:
    """Elements in all of a GGUF file's tensors, from the tensor infos in its header: how big the model is
    before any data is read. The metadata before them is stepped over, not decoded (GGUFReader takes
    seconds over a 50k-token vocabulary)."""
    import mmap
    import struct

    path = Path(path)
    if not path.is_file():
        raise InputError("no such file", file=path)
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return _count_elements(buf)
    except (OSError, ValueError, KeyError, struct.error) as err:
        raise InputError(f"not a readable GGUF file, truncated or corrupt ({err})", file=path) from None


def _count_elements(buf) -> int:
    import math
    from struct import unpack_from

    sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # GGUF scalar types: bytes
    string, array = 8, 9

    def skip(kind: int, pos: int, depth: int = 0) -> int:
        if kind == string:
            return pos + 8 + unpack_from("<Q", buf, pos)[0]
        if kind != array:
            return pos + sizes[kind]
        item, n = unpack_from("<IQ", buf, pos)
        pos += 12
        if item in sizes:
            return pos + n * sizes[item]
        if depth > 4:
            raise ValueError("arrays nested too deep")
        for _ in range(n):  # strings or arrays: each takes at least 8 bytes, so this ends at the file's end
            pos = skip(item, pos, depth + 1)
            if pos > len(buf):
                raise ValueError("an array runs past the end of the file")
        return pos

    magic, version, n_tensors, n_kv = unpack_from("<4sIQQ", buf, 0)
    if magic != b"GGUF" or version < 2:
        raise ValueError(f"magic {magic!r} version {version}, expected GGUF version 2 or later")
    pos = 24
    for _ in range(n_kv):
        pos = skip(string, pos)
        pos = skip(unpack_from("<I", buf, pos)[0], pos + 4)
    total = 0
    for _ in range(n_tensors):
        pos = skip(string, pos)
        (n_dims,) = unpack_from("<I", buf, pos)
        if n_dims > 8:
            raise ValueError(f"a tensor with {n_dims} dimensions")
        total += math.prod(unpack_from(f"<{n_dims}Q", buf, pos + 4))
        pos += 4 + 8 * n_dims + 4 + 8  # dims, then type and offset
    return total
