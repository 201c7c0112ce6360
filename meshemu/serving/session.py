"""A serving session, whatever drives it: the model's description, the context its predictions need,
and a run inside an emulated mesh. Used by ``meshemu generate`` and by the experiment runner.
"""

from __future__ import annotations

from dataclasses import dataclass


def describe_model(model):
    """``(source string for the shards, config, tokenizer or None)``."""
    from pathlib import Path

    from meshemu.errors import InputError
    from meshemu.serving.compute import load_source

    if model and model.startswith("preset:"):
        config, _ = load_source(model)
        return model, config, None
    if model and model.startswith("tiny:"):
        from meshemu.model.tiny import tiny_tokenizer

        config, _ = load_source(model)
        return model, config, tiny_tokenizer() if config.vocab_size == 320 else None
    from meshemu.model.load import default_model_path

    path = default_model_path() if model is None else Path(model)
    if path.is_dir():
        from meshemu.model.hf import _read_json, config_from_hf
        from meshemu.model.tokenizer import tokenizer_from_hf_dir

        config = config_from_hf(_read_json(path / "config.json"), file=path, name=path.name)
        tok = (tokenizer_from_hf_dir(path, bos_token_id=config.bos_token_id, eos_token_ids=config.eos_token_ids)
               if (path / "tokenizer.json").is_file() else None)
        return str(path), config, tok
    if not path.exists():
        raise InputError("no such file or directory", file=path)
    from meshemu.model.gguf import _open, config_from_gguf, tokenizer_from_gguf

    reader = _open(path)
    return str(path), config_from_gguf(reader, file=path), tokenizer_from_gguf(reader, file=path)



def make_context(config, device, *, tp: int, pp: int, allreduce: str, rank_nodes, client_node, paths=None, run=None,
                 hop_overhead_ms: float | None = None):
    """What the predictor needs about a layout and where its ranks sit (paths and run: in a mesh)."""
    from meshemu.model.partition import pipeline_ranges
    from meshemu.serving.predict import DEFAULT_OVERHEAD_S
    from meshemu.serving.report import RunContext

    layers = [b - a for a, b in pipeline_ranges(config.n_layers, pp)]
    ctx = RunContext(tp=tp, pp=pp, algorithm=allreduce, layers=layers, rank_nodes=list(rank_nodes),
                     client_node=client_node, activation_bytes=config.hidden_size * (2 if device else 4),
                     overhead_s=(hop_overhead_ms / 1e3) if hop_overhead_ms is not None else DEFAULT_OVERHEAD_S)
    if paths is not None:
        delayed = run.backend != "none"
        ctx.one_way_at = (lambda k: (lambda a, b: paths.one_way_s(k, a, b))) if delayed else (lambda k: (lambda a, b: 0.0))
        ctx.step_at = run.step_at
        ctx.route_at = paths.route
    return ctx


@dataclass
class MeshSession:
    """Where a run in the mesh put things, and what it recorded."""

    rank_nodes: list
    ground_station: str
    paths: object  # placement.MeshPaths
    run: object  # mesh.MeshRun
    info: dict


def run_in_mesh(series, job: dict, *, ground_station: str, placement: str, shaper: str = "auto",
                time_scale: float = 1.0, step_timeout_s: float = 10.0, on_event=None, on_step=None,
                prefix: str | None = None, log=None, paths=None) -> MeshSession:
    """Place the ranks, then serve ``job`` from ``ground_station`` inside the emulated mesh of ``series``.

    ``paths`` (a :class:`~meshemu.serving.placement.MeshPaths` of ``series``) may be passed in
    when the caller has one already: its routing states are cached.
    """
    from meshemu.serving.mesh import serve_in_mesh
    from meshemu.serving.placement import MeshPaths, place

    paths = paths or MeshPaths(series)
    gs = paths.names[paths.node(ground_station)]
    n_ranks = job["plan"]["tp"] * job["plan"]["pp"]
    rank_nodes = place(placement, n_ranks, paths, gs)
    if log:
        log(f"placement {placement}: " + ", ".join(f"rank {r} {n}" for r, n in enumerate(rank_nodes))
            + f"; client at {gs}")
    run = serve_in_mesh(series, job, ground_station=gs, rank_nodes=rank_nodes, shaper=shaper, time_scale=time_scale,
                        step_timeout_s=step_timeout_s, on_event=on_event, on_step=on_step, prefix=prefix, log=log)
    if run.backend == "none" and log:
        log("shaper none: links carry no delay; predictions use zero path delays")
    info = {"mode": "mesh", "constellation": series.constellation, "ground_station": gs, "placement": placement,
            "rank_nodes": rank_nodes, "addresses": run.addresses, "backend": run.backend,
            "time_scale": time_scale, "player": run.play_summary}
    return MeshSession(rank_nodes, gs, paths, run, info)
