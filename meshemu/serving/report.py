"""A request's measurement beside its prediction: JSON Lines rows and the line printed for people.

:func:`analyse` takes a :class:`~meshemu.serving.metrics.RequestRecord` and
the run's :class:`RunContext` (placement, delays by step, measured compute)
and returns the request row, one row per token (with the link-series step in
force and the predicted cycle at that step) and the routes between ranks at
every step the request saw.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass

from meshemu.serving.predict import (
    DEFAULT_BANDWIDTH_BPS,
    DEFAULT_OVERHEAD_S,
    Prediction,
)


def _zero(a, b) -> float:
    return 0.0


@dataclass
class RunContext:
    tp: int
    pp: int
    algorithm: str
    layers: list                  # layers per stage
    rank_nodes: list              # node name per global rank
    client_node: str
    activation_bytes: float       # one token's hidden state on the wire
    overhead_s: float = DEFAULT_OVERHEAD_S
    bandwidth_Bps: float = DEFAULT_BANDWIDTH_BPS
    one_way_at: Callable = lambda step: _zero     # step -> (a, b) -> one-way delay s
    step_at: Callable = lambda clock_s: 0         # time.monotonic() -> step in force
    route_at: Callable | None = None              # (step, a, b) -> [node names]
    rank_nodes_at: Callable | None = None         # time.monotonic() -> rank nodes then (ranks move on recovery)

    def pairs(self) -> list[tuple[str, int, int]]:
        """(label, from rank, to rank) of every path a token uses; rank -1 is the client."""
        out = [("client->rank0", -1, 0), ("rank0->client", 0, -1)]
        t, p = self.tp, self.pp
        for s in range(p):
            for j in range(t):
                if t > 1:
                    k = s * t + (j + 1) % t
                    out.append((f"rank{s * t + j}->rank{k}", s * t + j, k))
                if s < p - 1:
                    out.append((f"rank{s * t + j}->rank{(s + 1) * t + j}", s * t + j, (s + 1) * t + j))
        if p > 1 or t > 1:
            last = (p - 1) * t
            for j in range(t):
                if last != j:
                    out.append((f"rank{last}->rank{j}", last, j))
        return out


def _node(ctx: RunContext, rank: int) -> str:
    return ctx.client_node if rank < 0 else ctx.rank_nodes[rank]


def predict_at(ctx: RunContext, step: int, stage_compute_s, prefill_compute_s, prompt_tokens: int) -> Prediction:
    return Prediction.of(tp=ctx.tp, pp=ctx.pp, algorithm=ctx.algorithm, layers=ctx.layers,
                         stage_compute_s=stage_compute_s, prefill_compute_s=prefill_compute_s,
                         rank_nodes=ctx.rank_nodes, client_node=ctx.client_node, one_way_s=ctx.one_way_at(step),
                         activation_bytes=ctx.activation_bytes, prompt_tokens=prompt_tokens,
                         overhead_s=ctx.overhead_s, bandwidth_Bps=ctx.bandwidth_Bps)


def analyse(record, ctx: RunContext) -> tuple[dict, list, list, Prediction | None]:
    """``(request row, token rows, route rows, prediction at the first decode step)``."""
    summary = record.summary()
    row = {"kind": "request", **summary}
    tokens = record.token_rows()
    if not tokens or not record.stage_compute_s:
        return row, [dict(kind="token", request_id=record.request_id, **t) for t in tokens], [], None
    per_stage = list(zip(*record.stage_compute_s[1:])) or list(zip(*record.stage_compute_s))
    stage_compute = [statistics.median(s) for s in per_stage]
    prefill = list(record.stage_compute_s[0])
    steps = [ctx.step_at(t["clock_s"]) for t in tokens]
    token_rows, cycles = [], []
    preds = {}
    first_of = {}
    for t, k in zip(tokens, steps):
        nodes = tuple(ctx.rank_nodes_at(t["clock_s"])) if ctx.rank_nodes_at else tuple(ctx.rank_nodes)
        if (k, nodes) not in preds:
            here = ctx if nodes == tuple(ctx.rank_nodes) else dataclasses.replace(ctx, rank_nodes=list(nodes))
            preds[(k, nodes)] = predict_at(here, k, stage_compute, prefill, record.prompt_tokens)
        first_of.setdefault(k, preds[(k, nodes)])
        pred = preds[(k, nodes)]
        predicted_cycle = pred.ttft_s if t["index"] == 0 else pred.tpot_s
        if not math.isfinite(predicted_cycle):
            predicted_cycle = None  # a token in flight when a satellite on its path went dark: no path to predict
        elif t["index"] > 0:
            cycles.append(pred.tpot_s)
        token_rows.append({"kind": "token", "request_id": record.request_id, **t, "step": k,
                           "predicted_cycle_s": predicted_cycle})
    first = first_of[steps[1] if len(steps) > 1 else steps[0]]
    row.update({
        "steps": sorted(set(steps)),
        "stage_compute_s_per_token": stage_compute,
        "compute_s_per_layer": sum(stage_compute) / max(1, sum(ctx.layers)),
        "predicted_ttft_s": first_of[steps[0]].ttft_s,
        "predicted_tpot_s": statistics.fmean(cycles) if cycles else None,
        "predicted_collective_s_per_token": first.collectives_s,
        "predicted_hop_s_per_token": first.hops_s,
        "predicted_allreduce_s": first.allreduce_s,
        "predicted_tokens_per_s_decode": 1 / statistics.fmean(cycles) if cycles else None,
    })
    if row.get("tpot_s") and row["predicted_tpot_s"]:
        row["tpot_error"] = row["tpot_s"] / row["predicted_tpot_s"] - 1
    route_rows = []
    if ctx.route_at is not None:
        for k in sorted(set(steps)):
            paths = {label: ctx.route_at(k, _node(ctx, a), _node(ctx, b)) for label, a, b in ctx.pairs()
                     if _node(ctx, a) != _node(ctx, b)}
            delays = {label: ctx.one_way_at(k)(_node(ctx, a), _node(ctx, b)) for label, a, b in ctx.pairs()
                      if _node(ctx, a) != _node(ctx, b)}
            route_rows.append({"kind": "routes", "request_id": record.request_id, "step": k, "paths": paths,
                               "one_way_s": delays})
    return row, token_rows, route_rows, first


def _ms(x) -> str:
    return "-" if x is None else f"{x * 1e3:.1f}"


def comparison_line(row: dict) -> str:
    """One line: measured beside predicted."""
    parts = [f"{row['tokens']} tokens",
             f"TTFT {_ms(row.get('ttft_s'))} ms (predicted {_ms(row.get('predicted_ttft_s'))})"]
    if row.get("tpot_s") is not None:
        err = row.get("tpot_error")
        parts.append(f"TPOT {_ms(row['tpot_s'])} ms (predicted {_ms(row.get('predicted_tpot_s'))}"
                     + (f", {err:+.1%}" if err is not None else "") + ")")
        parts.append(f"{row.get('decode_tokens_per_s') or 0:.1f} tok/s decode")
        parts.append(f"per token: compute {_ms(row.get('compute_s_per_token'))} ms, collectives "
                     f"{_ms(row.get('collective_s_per_token'))} (predicted "
                     f"{_ms(row.get('predicted_collective_s_per_token'))}), hops {_ms(row.get('hop_s_per_token'))}"
                     f" (predicted {_ms(row.get('predicted_hop_s_per_token'))})")
    if row.get("error"):
        parts.append(f"error: {row['error']}")
    return "; ".join(parts)
