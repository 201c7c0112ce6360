"""A serving session, whatever drives it: the model's description and the context its predictions need.

Used by ``meshemu generate`` and by the experiment runner, on loopback or in a
mesh; where the ranks ran reaches the predictor through ``where``, any object
with ``one_way_at``, ``step_at`` and ``route_at`` (a deployment has them).
"""

from __future__ import annotations

from meshemu.errors import InputError
from meshemu.model.gguf import _open, config_from_gguf, tokenizer_from_gguf
from meshemu.model.hf import _read_json, config_from_hf
from meshemu.model.load import default_model_path
from meshemu.model.partition import pipeline_ranges
from meshemu.model.tiny import tiny_tokenizer
from meshemu.model.tokenizer import tokenizer_from_hf_dir
from meshemu.serving.compute import load_source
from meshemu.serving.predict import DEFAULT_OVERHEAD_S
from meshemu.serving.report import RunContext


def describe_model(model):
    """``(source string for the shards, config, tokenizer or None)``."""
    from pathlib import Path


    if model is not None and not model.strip():
        # before: '' was read as the current folder, and the error blamed 'config.json'
        raise InputError("the model is empty: give a .gguf file, a Hugging Face folder, tiny:ARCH:SEED or "
                         "preset:NAME (or leave it out for the default)")
    if model and model.startswith("preset:"):
        config, _ = load_source(model)
        return model, config, None
    if model and model.startswith("tiny:"):
        config, _ = load_source(model)
        return model, config, tiny_tokenizer() if config.vocab_size == 320 else None

    path = default_model_path() if model is None else Path(model)
    if path.is_dir():
        config = config_from_hf(_read_json(path / "config.json"), file=path, name=path.name)
        tok = (tokenizer_from_hf_dir(path, bos_token_id=config.bos_token_id, eos_token_ids=config.eos_token_ids)
               if (path / "tokenizer.json").is_file() else None)
        return str(path), config, tok
    if not path.exists():
        raise InputError("no such file or directory", file=path)

    reader = _open(path)
    return str(path), config_from_gguf(reader, file=path), tokenizer_from_gguf(reader, file=path)



def make_context(config, device, *, tp: int, pp: int, allreduce: str, rank_nodes, client_node, where=None,
                 hop_overhead_ms: float | None = None):
    """What the predictor needs about a layout and where its ranks sit (``where``: in a mesh)."""

    layers = [b - a for a, b in pipeline_ranges(config.n_layers, pp)]
    ctx = RunContext(tp=tp, pp=pp, algorithm=allreduce, layers=layers, rank_nodes=list(rank_nodes),
                     client_node=client_node, activation_bytes=config.hidden_size * (2 if device else 4),
                     overhead_s=(hop_overhead_ms / 1e3) if hop_overhead_ms is not None else DEFAULT_OVERHEAD_S)
    if where is not None:
        ctx.one_way_at, ctx.step_at, ctx.route_at = where.one_way_at, where.step_at, where.route_at
        ctx.rank_nodes_at = getattr(where, "rank_nodes_at", None)
    return ctx
