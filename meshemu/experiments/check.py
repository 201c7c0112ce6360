"""Everything about an experiment that can be known without root, checked before a run starts.

``meshemu run FILE --check`` calls :func:`check_experiment` on every expanded
spec, and so does a real run before it builds a mesh: a bad constellation,
ground station, placement, layout, model, workload or probe is one line
naming the experiment file and the key, before any namespace exists.
What is left to the root run is what only the kernel can say (which shaping
backend it has, how many namespaces it allows at that moment).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

from meshemu.constellation import TimeGrid, default_ground_stations, load_constellation, read_ground_stations
from meshemu.constellation.propagate import check_window
from meshemu.deployment.faults import FaultSchedule
from meshemu.emulation.mesh import check_namespace_limit
from meshemu.errors import InputError
from meshemu.experiments.plan import plan_run, resolve, time_grid
from meshemu.links import compute_link_series
from meshemu.links.series import check_series_size
from meshemu.model.partition import check_layout
from meshemu.routing import ForwardingStates
from meshemu.serving.compute import parse_compute
from meshemu.serving.job import check_model_compute
from meshemu.serving.placement import place
from meshemu.serving.session import describe_model


@dataclass(frozen=True)
class CheckReport:
    """What a run of the spec would build."""

    satellites: int
    ground_stations: int
    steps: int
    rank_nodes: tuple[str, ...]
    model: str
    layers: int
    max_prompt_tokens: int

    def line(self, spec) -> str:
        return (f"{spec.name}: {spec.constellation} ({self.satellites} satellites, {self.ground_stations} ground "
                f"stations, {self.steps} steps), {spec.parallelism.label} of {self.model} ({self.layers} layers) "
                f"on {' '.join(self.rank_nodes)}, client at {spec.ground_station}, "
                f"{spec.workload.requests} x {spec.workload.max_new_tokens} tokens")


@contextmanager
def _at(spec, field: str):
    """A step of the check: an InputError from a file the experiment names (a constellation, a model) is
    re-raised naming the experiment file and its key too, since that is the file the user will edit."""
    try:
        yield
    except InputError as err:
        if err.file == spec.source:
            raise
        raise InputError(str(err), file=spec.source or None, field=field) from None


def check_experiment(spec) -> CheckReport:
    """Raise InputError for anything in ``spec`` (expanded, no sweep) that a root run would refuse."""
    with _at(spec, "constellation"):
        c = load_constellation(resolve(spec, spec.constellation))
    with _at(spec, "ground_stations"):
        stations = (read_ground_stations(resolve(spec, spec.ground_stations)) if spec.ground_stations
                    else default_ground_stations())
    with _at(spec, "window"):
        grid = time_grid(spec, c)
        check_window(c.satrecs, grid)
        check_series_size(c.size, len(stations), len(grid), len(c.isl_pairs))
    check_namespace_limit(c.size + len(stations))
    # One step is enough to know every node's name and where the placement puts the ranks (it anchors at step 0).
    first = compute_link_series(c, stations, TimeGrid(grid.epoch_utc, grid.offsets_s[:1], grid.ut1_equals_utc))
    with _at(spec, "ground_station"):
        gs = first.node_index(spec.ground_station)
    for i, pair in enumerate(spec.probes):
        with _at(spec, f"probes[{i}]"):
            for name in pair:
                first.node_index(name)
    p = spec.parallelism
    with _at(spec, "model.source"):
        source, config, tok = describe_model(None if spec.model.source == "default" else spec.model.source)
    with _at(spec, "model.compute"):
        parse_compute(spec.model.compute)
        check_model_compute(source, spec.model.compute)  # a shape without weights needs a device model
    with _at(spec, "parallelism"):
        check_layout(config, p.tp, p.pp)
    with _at(spec, "placement"):
        rank_nodes = place(spec.placement, p.tp * p.pp, first, ForwardingStates(first), gs)
    longest = 0
    for i, text in enumerate(spec.workload.prompts):
        if tok is None:
            n = len(text.encode())
        elif spec.workload.chat_template and tok.chat is not None:
            n = len(tok.encode_chat(text))
        else:
            n = len(tok.encode(text))
        if n == 0:  # the head shard refuses an empty prompt, but only once the mesh is up
            raise InputError("the prompt is 0 tokens: give it some text", file=spec.source or None,
                             field=f"workload.prompts[{i}]")
        longest = max(longest, n)
    if longest + spec.workload.max_new_tokens > config.max_context:
        raise InputError(f"the longest prompt ({longest} tokens) + max_new_tokens {spec.workload.max_new_tokens} "
                         f"exceed {config.name or 'the model'}'s context of {config.max_context} tokens",
                         file=spec.source or None, field="workload.max_new_tokens")
    with _at(spec, "shaping"):
        run = plan_run(spec, source, config, tok)  # the plan a run would carry out, checked as a whole
    with _at(spec, "faults"):
        FaultSchedule(first, run.faults).check(run.n_ranks, window_s=spec.window.duration_s)
    return CheckReport(c.size, len(stations), len(grid), tuple(rank_nodes), config.name or spec.model.source,
                       config.n_layers, longest)
