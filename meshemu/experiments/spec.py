"""An experiment, declared: one YAML file under ``experiments/``, validated into frozen dataclasses.

Unknown keys and wrong types are errors that name the file and the key.
A ``sweep`` runs the experiment once per value of one field, or of several
fields together (each value then a list, one entry per field).

>>> spec = ExperimentSpec(name="x", constellation="demo")
>>> [s.parallelism.tp for s in expand(replace(spec, sweep=Sweep("parallelism.tp", (1, 3))))]
[1, 3]
>>> both = Sweep(("constellation", "parallelism.tp"), (("demo", 2), ("compute-12", 1)))
>>> [(s.name, s.constellation, s.parallelism.tp) for s in expand(replace(spec, sweep=both))]
[('x-demo-tp2', 'demo', 2), ('x-compute-12-tp1', 'compute-12', 1)]
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Literal

from meshemu.config import check_name
from meshemu.config import from_mapping, load_yaml
from meshemu.deployment.faults import Fault
from meshemu.serving.job import Recovery
from meshemu.errors import InputError
from meshemu.serving.placement import check_strategy

# Requests of one run: each keeps its per-token records until the report is written.
MAX_REQUESTS = 10_000
# Requests in flight: the client runs each in a thread of its own.
MAX_CONCURRENCY = 1024
# A pause past a week between batches is a typo (and past ~292 years it overflows the clock).
MAX_GAP_S = 7 * 86400.0
# Request i samples with seed + i, which travels as 64 bits.
MAX_SEED = (1 << 63) - MAX_REQUESTS
# netem's rate is whole bytes per second: under 1 kbit/s it rounds to nothing (no limit at all).
MIN_RATE_MBPS, MAX_RATE_MBPS = 1e-3, 1e7
# Fields a sweep cannot vary: the experiment's identity and where it was read from.
_NOT_SWEPT = ("sweep", "name", "source")


@dataclass(frozen=True)
class Window:
    start_s: float = 0.0
    duration_s: float = 60.0
    step_s: float = 1.0

    def __post_init__(self):
        if not self.duration_s > 0 or not self.step_s > 0:
            raise ValueError(f"window.duration_s and window.step_s must be greater than 0 s, got "
                             f"duration_s {self.duration_s}, step_s {self.step_s}")


@dataclass(frozen=True)
class Shaping:
    backend: Literal["auto", "netem", "delayline", "none"] = "auto"
    rate_mbps: float | None = None
    loss: float = 0.0

    def __post_init__(self):
        if self.rate_mbps is not None and not self.rate_mbps > 0:
            raise ValueError(f"shaping.rate_mbps must be greater than 0 Mbit/s, got {self.rate_mbps}")
        if self.rate_mbps is not None and not MIN_RATE_MBPS <= self.rate_mbps <= MAX_RATE_MBPS:
            raise ValueError(f"shaping.rate_mbps {self.rate_mbps:g} is outside [{MIN_RATE_MBPS:g}, "
                             f"{MAX_RATE_MBPS:g}] Mbit/s (1 kbit/s to 10 Tbit/s)")
        if not 0 <= self.loss <= 1:
            raise ValueError(f"shaping.loss is a probability within [0, 1], got {self.loss}")


@dataclass(frozen=True)
class Model:
    source: str = "default"  # 'default' (SmolLM2-135M), a .gguf file, an HF directory, or a preset name
    compute: str = "real"  # 'real' numpy, or a device model such as 'h100'

    def __post_init__(self):
        if not self.source.strip():
            # before: '' was read as the current folder, and the error blamed 'config.json'
            raise ValueError("model.source is empty: give default, a .gguf file, a Hugging Face folder, "
                             "tiny:ARCH:SEED or preset:NAME")


@dataclass(frozen=True)
class Parallelism:
    tp: int = 1
    pp: int = 1
    allreduce: Literal["ring", "direct"] = "ring"

    def __post_init__(self):
        if self.tp < 1 or self.pp < 1:
            raise ValueError(f"tp and pp must be at least 1, got tp={self.tp}, pp={self.pp}")

    @property
    def label(self) -> str:
        return f"tp{self.tp}-pp{self.pp}" + (f"-{self.allreduce}" if self.tp > 1 else "")


@dataclass(frozen=True)
class Workload:
    prompts: tuple[str, ...] = ("What is the capital of France?",)
    requests: int = 1  # prompts are cycled to make this many
    max_new_tokens: int = 16
    concurrency: int = 1  # requests in flight together (micro-batched by a pipeline)
    gap_s: float = 0.0  # pause between batches, to let the constellation move
    chat_template: bool = True

    def __post_init__(self):
        if not self.prompts:
            raise ValueError("workload.prompts is empty")
        if self.requests < 1 or self.max_new_tokens < 1 or self.concurrency < 1:
            raise ValueError("workload.requests, max_new_tokens and concurrency must be at least 1")
        if self.requests > MAX_REQUESTS:
            # every request is a record of per-token rows kept until the report is written
            raise ValueError(f"workload.requests is at most {MAX_REQUESTS:,} per run, got {self.requests:,}: "
                             "split it into runs")
        if self.concurrency > MAX_CONCURRENCY:
            raise ValueError(f"workload.concurrency is at most {MAX_CONCURRENCY:,} requests in flight, "
                             f"got {self.concurrency:,}")
        if not self.gap_s >= 0:
            raise ValueError(f"workload.gap_s must be 0 s or more, got {self.gap_s}")
        if self.gap_s > MAX_GAP_S:
            raise ValueError(f"workload.gap_s must be at most {MAX_GAP_S:,.0f} s (a week), got {self.gap_s:g} s")


@dataclass(frozen=True)
class Links:
    acquisition_s: float = 0.0  # a newly appearing ISL or GSL carries traffic only this long after

    def __post_init__(self):
        if not 0 <= self.acquisition_s < 1e6:
            raise ValueError(f"links.acquisition_s must be 0 s or more, got {self.acquisition_s}")


@dataclass(frozen=True)
class Sweep:
    field: str | tuple[str, ...]  # a dotted path such as parallelism.tp, or several swept together
    values: tuple[Any, ...] = ()
    names: tuple[str, ...] = ()  # optional: each value's run name (after the experiment's), instead of its label

    def __post_init__(self):
        if self.names and len(self.names) != len(self.values):
            raise ValueError(f"sweep.names gives {len(self.names)} names for {len(self.values)} values: "
                             "one per value, or none")

    @property
    def fields(self) -> tuple[str, ...]:
        return (self.field,) if isinstance(self.field, str) else tuple(self.field)

    @property
    def what(self) -> str:
        """The swept fields, for people: ``parallelism``, ``constellation + parallelism``."""
        return " + ".join(self.fields)

    def settings(self, value) -> list[tuple[str, Any]]:
        """``(field, value)`` for each swept field, from one of ``values``; ValueError if it does not fit."""
        if isinstance(self.field, str):
            return [(self.field, value)]
        if not isinstance(value, (list, tuple)) or len(value) != len(self.fields):
            raise ValueError(f"a sweep over {len(self.fields)} fields ({', '.join(self.fields)}) takes values "
                             f"that are lists of {len(self.fields)}, one per field")
        return list(zip(self.fields, value))


@dataclass(frozen=True)
class ExperimentSpec:
    name: str
    description: str = ""
    constellation: str = "demo"
    ground_stations: str | None = None  # a file; default: the 100 cities
    window: Window = Window()
    time_scale: float = 1.0
    shaping: Shaping = Shaping()
    ground_station: str = "Paris"  # where the client sits
    model: Model = Model()
    parallelism: Parallelism = Parallelism()
    placement: str = "plane"
    routes: Literal["auto", "all", "destinations"] = "auto"  # every node to every other, the run's only, by size
    workload: Workload = Workload()
    probes: tuple[tuple[str, ...], ...] = ()  # extra node pairs whose RTT is measured every step
    links: Links = Links()
    faults: tuple[Fault, ...] = ()  # what fails when (seconds after the window's start)
    recovery: Recovery = Recovery()  # what the client does when it loses a rank
    seed: int = 0
    sweep: Sweep | None = None
    source: str = field(default="", compare=False)  # the file it came from

    def __post_init__(self):
        check_name(self.name, "name")
        if not 1e-6 <= self.time_scale <= 1e6:
            # before: 1e-300 passed, a constellation that never moves and a run that never ends
            raise ValueError(f"time_scale must be greater than 0 (1 is real time), within [1e-6, 1e6], "
                             f"got {self.time_scale:g}")
        if self.seed < 0:
            raise ValueError(f"seed must be 0 or more, got {self.seed}")
        if self.seed > MAX_SEED:
            raise ValueError(f"seed must be at most 2^63 - {MAX_REQUESTS:,} (request i samples with seed + i), "
                             f"got {self.seed:g}")
        if not self.ground_station:
            raise ValueError("ground_station is empty: name the city where the client sits")
        try:
            check_strategy(self.placement)
        except InputError as err:
            raise ValueError(f"placement: {err.detail}") from None

    @property
    def label(self) -> str:
        return self.name


def load_experiment(path) -> ExperimentSpec:
    """Read and validate an experiment file; relative paths in it are relative to the file."""
    path = Path(path)
    spec = from_mapping(ExperimentSpec, load_yaml(path), file=path)
    for pair in spec.probes:
        if len(pair) != 2:
            raise InputError(f"each probe is a pair [SRC, DST], got {list(pair)}", file=path, field="probes")
    if spec.sweep is not None:
        if not spec.sweep.values:
            raise InputError("a sweep needs at least one value", file=path, field="sweep.values")
        if not spec.sweep.fields or len(set(spec.sweep.fields)) != len(spec.sweep.fields):
            raise InputError("name each swept field once", file=path, field="sweep.field")
        for dotted in spec.sweep.fields:
            _check_field(spec, dotted, path)
    spec = replace(spec, source=str(path))
    expand(spec)  # every sweep value must make a valid experiment: say so now, naming the value
    return spec


def _check_field(spec, dotted: str, path) -> None:
    obj = spec
    for part in dotted.split("."):
        if not is_dataclass(obj) or part not in {f.name for f in fields(obj)} or part in _NOT_SWEPT:
            raise InputError(f"cannot sweep {dotted!r}: no such field", file=path, field="sweep.field")
        obj = getattr(obj, part)


def set_field(spec, dotted: str, value):
    """A copy of ``spec`` with the dotted field set (validated as if read from YAML)."""
    head, _, rest = dotted.partition(".")
    if not rest:
        return from_mapping(type(spec), {**_plain(spec), head: value})
    return replace(spec, **{head: set_field(getattr(spec, head), rest, value)})


def expand(spec: ExperimentSpec) -> list[ExperimentSpec]:
    """One spec per sweep value (the spec itself when there is no sweep), each named after its value."""
    if spec.sweep is None:
        return [spec]
    out, named = [], {}
    for i, value in enumerate(spec.sweep.values):
        try:
            one, labels = replace(spec, sweep=None), []
            for dotted, v in spec.sweep.settings(value):
                one = set_field(one, dotted, v)
                labels.append(_label(dotted, v))
            label = spec.sweep.names[i] if spec.sweep.names else "-".join(labels)
            one = replace(one, name=f"{spec.name}-{label}", source=spec.source)
        except (InputError, ValueError, TypeError) as err:
            why = getattr(err, "detail", str(err))
            raise InputError(f"{value!r} cannot be {spec.sweep.what}: {why}", file=spec.source or None,
                             field=f"sweep.values[{i}]") from None
        if named.setdefault(one.name, i) != i:
            # before: both ran, into one results folder named after the value
            raise InputError(f"{value!r} gives the run name {one.name!r} that sweep.values[{named[one.name]}] "
                             "gives too: each value must make its own run", file=spec.source or None,
                             field=f"sweep.values[{i}]")
        out.append(one)
    return out


def _label(dotted: str, value) -> str:
    """A folder name for one sweep value: ``tp2``, ``plane``, ``tp2-pp2-direct``."""
    if isinstance(value, dict):
        return "-".join(f"{k}{v}" if isinstance(v, (int, float)) else str(v) for k, v in value.items())
    if isinstance(value, (int, float)):
        return f"{dotted.split('.')[-1]}{value}"
    return str(value).replace(":", "-").replace("/", "-")


def _plain(obj):
    """Dataclass values back to YAML-like data."""
    if is_dataclass(obj):
        return {f.name: _plain(getattr(obj, f.name)) for f in fields(obj) if f.init}
    if isinstance(obj, tuple):
        return [_plain(v) for v in obj]
    return obj


def as_dict(spec: ExperimentSpec) -> dict:
    """The resolved config, as written next to the results."""
    return _plain(spec)
