"""What the constellation's network alone would cost a layout: the prediction without this host's software.

A run measures what this host can reproduce: every message pays the emulator's
software cost (Python, gRPC or TCP framing, the loopback or veth, waking a
thread: ~0.2-0.4 ms, ``meshemu bench serving``), and a device model's waits
are as late as the host's sleeps. Inside a formation, where a link is 0.37 us
long, that floor is what a tensor-parallel run measures, not the links. So
beside the prediction of the run (measured compute, the measured per-message
cost), a run reports the same cost model (:mod:`meshemu.serving.predict`) with

* compute from the device's roofline, not as measured here (``layer_times_s``,
  ``head_time_s``: what each shard waits, without the host's lateness);
* no per-message software cost (o = 0);
* bytes at the link rate: the slowest ISL rate the series gives (serialisation
  n/R, 51 ns for a 10 KiB activation at 1.6 Tbit/s), infinitely fast where it gives none;
* the path delays of the series, as the run's prediction has them.

>>> from meshemu.serving.compute import DEVICES, PRESETS
>>> times = roofline_stage_s(PRESETS["qwen3-32b"], DEVICES["h100"], tp=8, pp=1, new_tokens=1, context=2)
>>> [round(t * 1e3, 2) for t in times]     # one decode token, each of the 8 ranks' share: ms
[2.79]
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from meshemu.model.partition import pipeline_ranges, shard_spec
from meshemu.serving.compute import head_time_s, layer_times_s
from meshemu.serving.report import predict_at


def link_bytes_per_s(series) -> float:
    """The slowest ISL rate of the series in bytes/s; infinite where it gives none."""
    rates = series.link_rates_bps()[~series.is_gsl]
    rates = rates[np.isfinite(rates)]
    return float(rates.min()) / 8 if len(rates) else math.inf


def roofline_stage_s(config, device, *, tp: int, pp: int, new_tokens: int, context: int) -> list[float]:
    """Each stage's device time for one pass of ``new_tokens`` (tensor rank 0's share; the last stage has the
    LM head), holding ``context`` tokens after it."""
    out = []
    for s, (start, stop) in enumerate(pipeline_ranges(config.n_layers, pp)):
        spec = shard_spec(config, layer_start=start, layer_stop=stop, tp_rank=0, tp_size=tp)
        t = sum(layer_times_s(config, spec, device, batch=1, new_tokens=new_tokens, context=context))
        t *= stop - start
        if s == pp - 1:
            t += head_time_s(config, device, 1)
        out.append(t)
    return out


def network_prediction(ctx, series, config, device, record_row: dict, step: int):
    """The prediction of one request (``record_row``: its measured row) by the network alone, at ``step``;
    None without a device model (real compute has no roofline to take instead of the measurement)."""
    if device is None:
        return None
    prompt = int(record_row.get("prompt_tokens") or 1)
    tokens = int(record_row.get("tokens") or 1)
    decode = roofline_stage_s(config, device, tp=ctx.tp, pp=ctx.pp, new_tokens=1, context=prompt + tokens // 2)
    prefill = roofline_stage_s(config, device, tp=ctx.tp, pp=ctx.pp, new_tokens=prompt, context=prompt)
    alone = dataclasses.replace(ctx, overhead_s=0.0, bandwidth_Bps=link_bytes_per_s(series))
    return predict_at(alone, step, decode, prefill, prompt)


@dataclasses.dataclass(frozen=True)
class MeasuredFloor:
    """What one message between shards cost the emulator in a run, under the run's own load.

    ``per_message_s``: over the frames of decode (STEP: a pipeline hop, REDUCE: an all-reduce piece, TOKEN:
    the drawn token back to stage 0; each one small message), their time from send to the thread that
    waited for them, less the routed path's one-way delay (the median of each sender/receiver/kind,
    weighted by their frame counts): the cost the predictor's per-message term stands for. ``by_kind``: the
    same per kind, START and END too (a START carries the prompt's activations: its trip has slow start and
    bytes in it, which the predictor models apart).
    """

    per_message_s: float
    by_kind: dict
    frames: int


#: The frames whose trips the per-message floor is taken from (one small message each, on decode's path).
DECODE_KINDS = ("STEP", "REDUCE", "TOKEN")


def measured_floor(shards: list, one_way_s, counters: str = "transit") -> MeasuredFloor | None:
    """The floor from each shard's ``transit`` counters (its Metrics) and ``one_way_s(src_rank, dst_rank)``
    (the path's delay between the two ranks, averaged over the run's steps); None if no shard measured any.
    ``counters="arrival"`` reads the trips up to the moment the shard's process read each frame instead.

    >>> shards = [{"rank": 0, "transit": [{"src_rank": 1, "kind": "REDUCE", "n": 30, "median_s": 0.0013}]},
    ...           {"rank": 1, "transit": [{"src_rank": 0, "kind": "REDUCE", "n": 10, "median_s": 0.0009},
    ...                                   {"src_rank": 0, "kind": "START", "n": 1, "median_s": 0.05}]}]
    >>> f = measured_floor(shards, lambda a, b: 0.0001)
    >>> round(f.per_message_s * 1e3, 3), f.frames, round(f.by_kind["REDUCE"] * 1e3, 3), round(f.by_kind["START"] * 1e3, 1)
    (1.1, 40, 1.1, 49.9)
    """
    total, frames, kinds = 0.0, 0, {}
    for shard in shards:
        for row in shard.get(counters) or []:
            floor = max(0.0, row["median_s"] - one_way_s(row["src_rank"], shard["rank"]))
            n = int(row["n"])
            if row["kind"] in DECODE_KINDS:
                total += floor * n
                frames += n
            s, c = kinds.get(row["kind"], (0.0, 0))
            kinds[row["kind"]] = (s + floor * n, c + n)
    if not frames:
        return None
    return MeasuredFloor(total / frames, {k: s / c for k, (s, c) in sorted(kinds.items())}, frames)
