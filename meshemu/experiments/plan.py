"""An experiment spec made into what a run needs: its link series and its one typed run plan.

:func:`build_series` and :func:`plan_run` are shared by ``--check`` and the
run itself, so the two can never disagree about what a file means.
"""

from __future__ import annotations

import uuid
from pathlib import Path

from meshemu.constellation import TimeGrid, default_ground_stations, load_constellation, read_ground_stations
from meshemu.deployment import MeshRun
from meshemu.emulation.shaping import ShapingConfig
from meshemu.experiments.spec import ExperimentSpec
from meshemu.links import compute_link_series
from meshemu.serving.job import Request, ServingJob, ServingPlan

# One request's deadline, and the longest wait for one token or one peer: a mesh run's tokens cross
# the emulated links (and a moving constellation's handovers), so both are generous.
REQUEST_TIMEOUT_S = 600.0
STEP_TIMEOUT_S = 20.0


def resolve(spec: ExperimentSpec, value: str) -> str:
    """A path in the experiment file is relative to that file."""
    if spec.source and (value.endswith((".yaml", ".yml", ".txt", ".csv"))) and not Path(value).is_absolute():
        candidate = Path(spec.source).parent / value
        if candidate.exists():
            return str(candidate)
    return value


def constellation_and_stations(spec: ExperimentSpec):
    c = load_constellation(resolve(spec, spec.constellation))
    stations = (read_ground_stations(resolve(spec, spec.ground_stations)) if spec.ground_stations
                else default_ground_stations())
    return c, stations


def time_grid(spec: ExperimentSpec, constellation) -> TimeGrid:
    w = spec.window
    return TimeGrid.from_window(constellation.epoch_utc, start_s=w.start_s, duration_s=w.duration_s, step_s=w.step_s)


def build_series(spec: ExperimentSpec):
    c, stations = constellation_and_stations(spec)
    return compute_link_series(c, stations, time_grid(spec, c))


def request_texts(spec: ExperimentSpec) -> list[str]:
    """The prompt of every request: the workload's prompts, cycled."""
    w = spec.workload
    return [w.prompts[i % len(w.prompts)] for i in range(w.requests)]


def prompt_ids(text: str, config, tok, chat_template: bool) -> tuple[list[int], tuple[int, ...]]:
    """``(token ids, stop ids)`` of a prompt; a model shape without a vocabulary takes bytes as ids."""
    if tok is None:
        return [3 + b % (config.vocab_size - 3) for b in text.encode()], ()
    ids = tok.encode_chat(text) if (chat_template and tok.chat is not None) else tok.encode(text)
    return ids, tuple(sorted(tok.stop_ids()))


def plan_run(spec: ExperimentSpec, source: str, config, tok) -> MeshRun:
    """The run plan: one greedy, seeded request per workload slot, placed, shaped and probed as the file says."""
    w, p = spec.workload, spec.parallelism
    requests = []
    for i, text in enumerate(request_texts(spec)):
        ids, stops = prompt_ids(text, config, tok, w.chat_template)
        requests.append(Request(tuple(ids), max_new_tokens=w.max_new_tokens, temperature=0.0, top_p=1.0,
                                seed=spec.seed + i, stop_ids=stops, request_id=uuid.uuid4().hex))
    # with recovery on, a token that is detect_timeout_s late means a lost rank: the step timeout is that
    step_timeout_s = spec.recovery.detect_timeout_s if spec.recovery.enabled else STEP_TIMEOUT_S
    job = ServingJob(ServingPlan(source, tp=p.tp, pp=p.pp, allreduce=p.allreduce, compute=spec.model.compute),
                     tuple(requests), concurrency=w.concurrency, gap_s=w.gap_s, timeout_s=REQUEST_TIMEOUT_S,
                     step_timeout_s=step_timeout_s, recovery=spec.recovery)
    sh = spec.shaping
    shaping = ShapingConfig(rate_bps=None if sh.rate_mbps is None else sh.rate_mbps * 1e6, loss=sh.loss)
    return MeshRun(job, ground_station=spec.ground_station, placement=spec.placement, routes=spec.routes,
                   shaper=sh.backend, shaping=shaping, time_scale=spec.time_scale,
                   probes=tuple(tuple(pair) for pair in spec.probes),
                   faults=spec.faults, acquisition_s=spec.links.acquisition_s)
