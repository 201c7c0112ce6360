"""Cutting a model into shards: pipeline stages (layer ranges) and tensor-parallel ranks.

Tensor parallelism follows Megatron: q/k/v and gate/up are split by columns
(whole heads, whole FFN columns), o_proj and down_proj by rows, so each rank's
block halves return *partial sums* of the residual update that an all-reduce
adds back. Heads move in kv groups: a rank holds whole kv heads with all their
query heads while the degree t is at most the kv-head count; beyond that each
kv head is replicated on several ranks and its query heads are dealt among
them. Uneven splits are allowed (larger parts first).

>>> from meshemu.model.config import smollm2_135m_config
>>> cfg = smollm2_135m_config()              # 9 query heads, 3 kv heads, FFN 1536
>>> [(s.q_heads, s.kv_heads, s.ffn_start, s.ffn_stop) for s in tensor_parallel_specs(cfg, 2)]
[((0, 1, 2, 3, 4, 5), (0, 1), 0, 768), ((6, 7, 8), (2,), 768, 1536)]
>>> [(s.q_heads, s.kv_heads) for s in tensor_parallel_specs(cfg, 4)]
[((0, 1), (0,)), ((2,), (0,)), ((3, 4, 5), (1,)), ((6, 7, 8), (2,))]
>>> pipeline_ranges(30, 4)
[(0, 8), (8, 16), (16, 23), (23, 30)]
"""

from __future__ import annotations

import dataclasses

import numpy as np

from meshemu.errors import InputError
from meshemu.model.config import ModelConfig
from meshemu.model.weights import LayerWeights, ModelWeights, ShardSpec, full_spec


def even_split(n: int, parts: int) -> list[tuple[int, int]]:
    """``[start, stop)`` ranges cutting ``n`` items into ``parts``, larger parts first.

    >>> even_split(9, 4)
    [(0, 3), (3, 5), (5, 7), (7, 9)]
    """
    if not 1 <= parts <= n:
        raise InputError(f"cannot split {n} items into {parts} non-empty parts")
    base, extra = divmod(n, parts)
    bounds = np.cumsum([0] + [base + (i < extra) for i in range(parts)])
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


def pipeline_ranges(n_layers: int, n_stages: int) -> list[tuple[int, int]]:
    """Layer ranges of ``n_stages`` pipeline stages."""
    return even_split(n_layers, n_stages)


def _tp_heads(config: ModelConfig, tp_size: int) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    g = config.group_size
    if tp_size > config.n_heads:
        raise InputError(f"tensor-parallel degree {tp_size} exceeds the {config.n_heads} query heads")
    if tp_size <= config.n_kv_heads:
        parts = []
        for a, b in even_split(config.n_kv_heads, tp_size):
            parts.append((tuple(range(a * g, b * g)), tuple(range(a, b))))
        return parts
    # More ranks than kv heads: replicate each kv head on a run of ranks and
    # deal its query heads among them.
    parts = []
    for kv, (ra, rb) in enumerate(even_split(tp_size, config.n_kv_heads)):
        for qa, qb in even_split(g, rb - ra):
            parts.append((tuple(range(kv * g + qa, kv * g + qb)), (kv,)))
    return parts


def tensor_parallel_specs(config: ModelConfig, tp_size: int, *, layer_start: int = 0,
                          layer_stop: int | None = None) -> list[ShardSpec]:
    """The :class:`ShardSpec` of each of ``tp_size`` ranks over one layer range.

    Every rank of the first stage holds the embedding and every rank of the
    last stage the LM head (replicated; they are cheap next to the blocks).
    """
    layer_stop = config.n_layers if layer_stop is None else layer_stop
    ffn = even_split(config.ffn_size, tp_size)
    specs = []
    for (q_heads, kv_heads), (fa, fb) in zip(_tp_heads(config, tp_size), ffn):
        spec = ShardSpec(layer_start, layer_stop, q_heads, kv_heads, fa, fb,
                         has_embedding=layer_start == 0, has_lm_head=layer_stop == config.n_layers)
        spec.validate(config)
        specs.append(spec)
    return specs


def check_layout(config: ModelConfig, tp: int, pp: int) -> None:
    """InputError unless ``tp`` x ``pp`` ranks can split ``config``: before any shard is started.

    >>> from meshemu.model.config import smollm2_135m_config
    >>> check_layout(smollm2_135m_config(), 1, 50)
    Traceback (most recent call last):
    ...
    meshemu.errors.InputError: pp 50: 50 pipeline stages for a model of 30 layers: give pp at most 30
    """
    if not isinstance(tp, int) or not isinstance(pp, int) or tp < 1 or pp < 1:
        raise InputError(f"tp and pp must be whole numbers of at least 1, got tp {tp}, pp {pp}")
    if pp > config.n_layers:
        raise InputError(f"{pp} pipeline stages for a model of {config.n_layers} layers: "
                         f"give pp at most {config.n_layers}", field=f"pp {pp}")
    if tp > config.n_heads or tp > config.ffn_size:
        raise InputError(f"tensor-parallel degree {tp} cannot split {config.name}'s {config.n_heads} query heads: "
                         f"give tp at most {config.n_heads}", field=f"tp {tp}")
    tensor_parallel_specs(config, tp)


def shard_spec(config: ModelConfig, *, layer_start: int = 0, layer_stop: int | None = None,
               tp_rank: int = 0, tp_size: int = 1) -> ShardSpec:
    """The spec of one shard: pipeline stage ``[layer_start, layer_stop)``, TP rank ``tp_rank``."""
    if not 0 <= tp_rank < tp_size:
        raise InputError(f"tensor-parallel rank {tp_rank} is not inside [0, {tp_size})")
    return tensor_parallel_specs(config, tp_size, layer_start=layer_start,
                                 layer_stop=layer_stop)[tp_rank]


def _head_columns(heads, head_dim: int, offset: int) -> np.ndarray:
    # Column indices of the given heads inside a block that starts at ``offset``.
    return (offset + np.asarray(heads)[:, None] * head_dim + np.arange(head_dim)).ravel()


def slice_layer(layer: LayerWeights, config: ModelConfig, spec: ShardSpec) -> LayerWeights:
    """One block's weights restricted to ``spec``'s heads and FFN columns (copies, unless it is all of them)."""
    hd, f = config.head_dim, config.ffn_size
    if (spec.q_heads == tuple(range(config.n_heads)) and spec.kv_heads == tuple(range(config.n_kv_heads))
            and (spec.ffn_start, spec.ffn_stop) == (0, f)):
        # A pipeline stage without tensor parallelism: gathering every column would copy the
        # block for nothing (half a second for SmolLM2), and sharing keeps the weight cache's
        # memory-mapped pages shared between the shard processes of one machine.
        return layer
    qkv_cols = np.concatenate([
        _head_columns(spec.q_heads, hd, 0),
        _head_columns(spec.kv_heads, hd, config.q_width),
        _head_columns(spec.kv_heads, hd, config.q_width + config.kv_width),
    ])
    ffn_cols = np.arange(spec.ffn_start, spec.ffn_stop)
    return dataclasses.replace(
        layer,
        # np.take, not w[:, cols]: it gathers columns several times faster, in C order.
        wqkv=np.take(layer.wqkv, qkv_cols, axis=1),                          # column-parallel
        wo=np.ascontiguousarray(layer.wo[_head_columns(spec.q_heads, hd, 0)]),  # row-parallel
        w_gate_up=np.take(layer.w_gate_up, np.concatenate([ffn_cols, f + ffn_cols]), axis=1),
        w_down=np.ascontiguousarray(layer.w_down[spec.ffn_start:spec.ffn_stop]),
    )


def slice_weights(weights: ModelWeights, spec: ShardSpec) -> ModelWeights:
    """The weights of shard ``spec`` cut from a whole model's ``weights``.

    Parameters
    ----------
    weights : ModelWeights
        A whole model (``weights.spec`` is the full spec).
    spec : ShardSpec
        The part to keep, e.g. from :func:`shard_spec`.

    Returns
    -------
    ModelWeights
        New arrays for the blocks that tensor parallelism cuts; whole blocks,
        the embedding and the LM head are shared with ``weights`` (read-only
        use), not copied.
    """
    config = weights.config
    if weights.spec != full_spec(config):
        raise ValueError("slice_weights needs the whole model's weights")
    spec.validate(config)
    layers = tuple(slice_layer(weights.layers[i], config, spec)
                   for i in range(spec.layer_start, spec.layer_stop))
    return ModelWeights(
        config, spec, layers,
        embedding=weights.embedding if spec.has_embedding else None,
        final_norm=weights.final_norm if spec.has_lm_head else None,
        lm_head=weights.lm_head if spec.has_lm_head else None,
    )
