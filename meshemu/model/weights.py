"""Weights laid out for the forward pass, and which part of the model they are.

Every projection is stored pre-transposed, ``(in, out)`` and C-contiguous, so
that ``x @ W`` streams the matrix once in memory order; q, k and v are fused
into one matrix and so are gate and up, so a decode step makes four weight
products per block instead of seven. A shard of the model (a pipeline stage
and/or a tensor-parallel rank) is the same structure holding fewer layers,
fewer heads and fewer FFN columns; :class:`ShardSpec` says which.

Checkpoints arrive with Hugging Face names and ``(out, in)`` matrices;
:func:`weights_from_hf` is the one place that turns them into this layout and
:func:`hf_tensors_from_weights` the inverse (used to write test checkpoints).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from meshemu.errors import InputError
from meshemu.model.config import ModelConfig

DTYPE = np.float32


@dataclass(frozen=True)
class ShardSpec:
    """Which part of a model a set of weights covers.

    Attributes
    ----------
    layer_start, layer_stop : int
        Global block indices ``[layer_start, layer_stop)`` (a pipeline stage).
    q_heads : tuple of int
        Global query heads, grouped by kv head: ``q_heads[j*g:(j+1)*g]`` use
        ``kv_heads[j]``, with the same ``g`` for every local kv head.
    kv_heads : tuple of int
        Global key/value heads (replicated on several ranks when the
        tensor-parallel degree exceeds the kv-head count).
    ffn_start, ffn_stop : int
        Columns ``[ffn_start, ffn_stop)`` of the SwiGLU hidden layer.
    has_embedding : bool
        Holds the token embedding (takes token ids as input).
    has_lm_head : bool
        Holds the final norm and LM head (returns logits).
    """

    layer_start: int
    layer_stop: int
    q_heads: tuple[int, ...]
    kv_heads: tuple[int, ...]
    ffn_start: int
    ffn_stop: int
    has_embedding: bool
    has_lm_head: bool

    @property
    def n_layers(self) -> int:
        return self.layer_stop - self.layer_start

    @property
    def local_group_size(self) -> int:
        """Local query heads per local kv head."""
        return len(self.q_heads) // len(self.kv_heads)

    @property
    def ffn_size(self) -> int:
        return self.ffn_stop - self.ffn_start

    def validate(self, config: ModelConfig) -> None:
        """Raise :class:`InputError` unless this spec is a valid part of ``config``."""
        if not 0 <= self.layer_start < self.layer_stop <= config.n_layers:
            raise InputError(f"layer range [{self.layer_start}, {self.layer_stop}) is not inside "
                             f"[0, {config.n_layers})")
        if not 0 <= self.ffn_start < self.ffn_stop <= config.ffn_size:
            raise InputError(f"ffn columns [{self.ffn_start}, {self.ffn_stop}) are not inside "
                             f"[0, {config.ffn_size})")
        if not self.q_heads or not self.kv_heads or len(self.q_heads) % len(self.kv_heads):
            raise InputError(f"{len(self.q_heads)} query heads do not divide evenly over "
                             f"{len(self.kv_heads)} kv heads")
        g = self.local_group_size
        for i, q in enumerate(self.q_heads):
            if not 0 <= q < config.n_heads:
                raise InputError(f"query head {q} is not inside [0, {config.n_heads})")
            # A query head must sit beside the kv head the model gives it.
            if q // config.group_size != self.kv_heads[i // g]:
                raise InputError(f"query head {q} uses kv head {q // config.group_size}, "
                                 f"not {self.kv_heads[i // g]}")
        if len(set(self.q_heads)) != len(self.q_heads):
            raise InputError(f"query heads repeat: {self.q_heads}")


def full_spec(config: ModelConfig) -> ShardSpec:
    """The spec of the whole model: every layer, head and FFN column."""
    return ShardSpec(0, config.n_layers, tuple(range(config.n_heads)),
                     tuple(range(config.n_kv_heads)), 0, config.ffn_size, True, True)


@dataclass(frozen=True, eq=False)
class LayerWeights:
    """One block's weights, ``x @ W`` layout (rows are the input features).

    Shapes use the shard's local counts: nq query heads, nkv kv heads, F FFN
    columns, head width hd, residual width C.
    """

    attn_norm: np.ndarray        # (C,)
    wqkv: np.ndarray             # (C, (nq + 2 nkv) hd): columns [q heads | k heads | v heads]
    q_norm: np.ndarray | None    # (hd,) Qwen3 only
    k_norm: np.ndarray | None    # (hd,) Qwen3 only
    wo: np.ndarray               # (nq hd, C): row-parallel, gives a partial sum
    mlp_norm: np.ndarray         # (C,)
    w_gate_up: np.ndarray        # (C, 2 F): columns [gate | up]
    w_down: np.ndarray           # (F, C): row-parallel, gives a partial sum

    def matrices(self) -> tuple[np.ndarray, ...]:
        """The four weight matrices a token streams through, in order."""
        return (self.wqkv, self.wo, self.w_gate_up, self.w_down)


@dataclass(frozen=True, eq=False)
class ModelWeights:
    """The weights of a whole model or of one shard of it (see ``spec``)."""

    config: ModelConfig
    spec: ShardSpec
    layers: tuple[LayerWeights, ...]
    embedding: np.ndarray | None   # (V, C), first stage only
    final_norm: np.ndarray | None  # (C,), last stage only
    lm_head: np.ndarray | None     # (C, V); a transposed view of ``embedding`` when tied

    def matrices(self) -> list[np.ndarray]:
        """Every matrix one decode step multiplies by, in order (for the bandwidth floor)."""
        mats = [m for layer in self.layers for m in layer.matrices()]
        if self.lm_head is not None:
            mats.append(self.lm_head)
        return mats

    @property
    def nbytes(self) -> int:
        """Bytes of distinct arrays (a tied LM head counted once)."""
        arrays = [a for layer in self.layers for a in vars(layer).values() if a is not None]
        arrays += [a for a in (self.embedding, self.final_norm) if a is not None]
        if self.lm_head is not None and not (
                self.embedding is not None and np.may_share_memory(self.lm_head, self.embedding)):
            arrays.append(self.lm_head)
        return sum(a.nbytes for a in arrays)


def hf_layer_names(i: int) -> dict[str, str]:
    """Our field -> Hugging Face tensor name, for block ``i``."""
    p = f"model.layers.{i}."
    return {
        "attn_norm": p + "input_layernorm.weight", "q": p + "self_attn.q_proj.weight",
        "k": p + "self_attn.k_proj.weight", "v": p + "self_attn.v_proj.weight",
        "o": p + "self_attn.o_proj.weight", "q_norm": p + "self_attn.q_norm.weight",
        "k_norm": p + "self_attn.k_norm.weight", "mlp_norm": p + "post_attention_layernorm.weight",
        "gate": p + "mlp.gate_proj.weight", "up": p + "mlp.up_proj.weight",
        "down": p + "mlp.down_proj.weight",
    }


def hf_expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor name a Hugging Face checkpoint of ``config`` has, with its ``(out, in)`` shape."""
    c, f, hd = config.hidden_size, config.ffn_size, config.head_dim
    shapes = {"model.embed_tokens.weight": (config.vocab_size, c), "model.norm.weight": (c,)}
    if not config.tie_embeddings:
        shapes["lm_head.weight"] = (config.vocab_size, c)
    for i in range(config.n_layers):
        n = hf_layer_names(i)
        shapes |= {n["attn_norm"]: (c,), n["q"]: (config.q_width, c), n["k"]: (config.kv_width, c),
                   n["v"]: (config.kv_width, c), n["o"]: (c, config.q_width), n["mlp_norm"]: (c,),
                   n["gate"]: (f, c), n["up"]: (f, c), n["down"]: (c, f)}
        if config.qk_norm:
            shapes |= {n["q_norm"]: (hd,), n["k_norm"]: (hd,)}
    return shapes


def check_hf_tensors(config: ModelConfig, tensors: dict, *, file=None) -> None:
    """Raise :class:`InputError` naming the first missing, unexpected or misshapen tensor."""
    expected = hf_expected_shapes(config)
    for name, shape in expected.items():
        if name not in tensors:
            raise InputError(f"missing tensor {name}", file=file)
        if tuple(tensors[name].shape) != shape:
            raise InputError(f"tensor {name} has shape {tuple(tensors[name].shape)}, "
                             f"expected {shape}", file=file)
    # A bias or an extra norm we do not compute would silently change the
    # output; refuse it. A tied checkpoint may still carry lm_head.weight.
    ignorable = {"lm_head.weight"}
    for name in tensors:
        if name not in expected and name not in ignorable and not name.endswith("rotary_emb.inv_freq"):
            raise InputError(f"unexpected tensor {name} (not part of a {config.arch} model)", file=file)


def _f32(a) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=DTYPE)


def _stack_transposed(*mats) -> np.ndarray:
    """``concatenate(mats, axis=0).T`` as one C-contiguous float32 array, without the intermediate."""
    out = np.empty((mats[0].shape[1], sum(m.shape[0] for m in mats)), dtype=DTYPE)
    col = 0
    for m in mats:
        out[:, col:col + m.shape[0]] = m.T
        col += m.shape[0]
    return out


def weights_from_hf(config: ModelConfig, tensors: dict, *, file=None) -> ModelWeights:
    """Build full-model weights from Hugging Face named ``(out, in)`` arrays.

    Parameters
    ----------
    config : ModelConfig
    tensors : dict of str to ndarray
        Names as in ``model.safetensors`` (``model.layers.0.self_attn.q_proj.weight``...).
        Q/K rows must already be in the Hugging Face order (see :mod:`meshemu.model.gguf`).
    file : path, optional
        Named in errors.

    Returns
    -------
    ModelWeights
        Float32 weights, fused and pre-transposed.
    """
    check_hf_tensors(config, tensors, file=file)
    layers = []
    for i in range(config.n_layers):
        n = hf_layer_names(i)
        t = {k: tensors[v] for k, v in n.items() if v in tensors}
        layers.append(LayerWeights(
            attn_norm=_f32(t["attn_norm"]),
            wqkv=_stack_transposed(t["q"], t["k"], t["v"]),
            q_norm=_f32(t["q_norm"]) if config.qk_norm else None,
            k_norm=_f32(t["k_norm"]) if config.qk_norm else None,
            wo=_stack_transposed(t["o"]),
            mlp_norm=_f32(t["mlp_norm"]),
            w_gate_up=_stack_transposed(t["gate"], t["up"]),
            w_down=_stack_transposed(t["down"]),
        ))
    embedding = _f32(tensors["model.embed_tokens.weight"])
    # Tied: the head is a view, so the 113 MB matrix exists once.
    lm_head = embedding.T if config.tie_embeddings else _stack_transposed(tensors["lm_head.weight"])
    return ModelWeights(config, full_spec(config), tuple(layers), embedding,
                        _f32(tensors["model.norm.weight"]), lm_head)


def hf_tensors_from_weights(weights: ModelWeights) -> dict[str, np.ndarray]:
    """The inverse of :func:`weights_from_hf` for a whole model (to write checkpoints)."""
    config = weights.config
    if weights.spec != full_spec(config):
        raise ValueError("only a whole model can be written as a checkpoint")
    qw, kw, f = config.q_width, config.kv_width, config.ffn_size
    out = {"model.embed_tokens.weight": weights.embedding, "model.norm.weight": weights.final_norm}
    if not config.tie_embeddings:
        out["lm_head.weight"] = weights.lm_head.T
    for i, layer in enumerate(weights.layers):
        n = hf_layer_names(i)
        qkv = layer.wqkv.T
        out |= {n["attn_norm"]: layer.attn_norm, n["q"]: qkv[:qw], n["k"]: qkv[qw:qw + kw],
                n["v"]: qkv[qw + kw:], n["o"]: layer.wo.T, n["mlp_norm"]: layer.mlp_norm,
                n["gate"]: layer.w_gate_up.T[:f], n["up"]: layer.w_gate_up.T[f:],
                n["down"]: layer.w_down.T}
        if config.qk_norm:
            out |= {n["q_norm"]: layer.q_norm, n["k_norm"]: layer.k_norm}
    return {k: np.ascontiguousarray(v) for k, v in out.items()}
