"""Run an experiment: mesh up, shards in satellites, the workload while the constellation moves, results down.

A results folder holds: ``config.yaml`` (the resolved experiment), ``run.json``
(detected capabilities, shaping backend, placement, player summary, each shard's counters),
``steps.csv`` (per step: scheduled and applied time, apply duration, changes),
``link_events.csv`` (links up and down), ``routes.csv`` (the routed path and
RTT between the client and each rank, and between probe pairs, at every step),
``probes.csv`` (RTT measured on the live mesh), ``paths.csv`` (TTL-limited probes:
who answered hop by hop, against the expected path), ``requests.jsonl`` (per request,
per token, per route, measured beside predicted), ``summary.csv``, PNG plots and
``report.md``.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from meshemu.deployment import deploy
from meshemu.emulation.probe import error_summary, path_summary
from meshemu.experiments.network import measured_floor, network_prediction
from meshemu.experiments.plan import build_series, plan_run, request_texts
from meshemu.experiments.recovery import recovery_rows, reference_tokens
from meshemu.experiments.report import write_report, write_sweep_report
from meshemu.experiments.spec import ExperimentSpec, as_dict, expand, load_experiment
from meshemu.serving.client import record_from_row
from meshemu.serving.compute import parse_compute
from meshemu.serving.predict import allreduce_messages_per_token
from meshemu.serving.report import analyse
from meshemu.serving.session import describe_model, make_context

SUMMARY_COLUMNS = ("name", "tp", "pp", "allreduce", "placement", "compute", "backend", "requests", "failed",
                   "tokens", "ttft_ms", "predicted_ttft_ms", "tpot_ms", "predicted_tpot_ms", "tpot_error_pct",
                   "predicted_tpot_network_ms", "collective_ms_per_message", "floor_ms_per_message",
                   "predicted_tpot_loaded_ms", "tpot_error_loaded_pct",
                   "decode_tokens_per_s", "e2e_s", "itl_p50_ms", "itl_p99_ms", "rank_nodes", "recoveries",
                   "recovery_s", "predicted_recovery_s")


@dataclass
class ExperimentResult:
    spec: ExperimentSpec
    folder: Path
    summary: dict
    requests: list = field(default_factory=list)  # request rows (measured + predicted, prompt and answer)
    tokens: list = field(default_factory=list)  # token rows
    probes: list = field(default_factory=list)
    paths: list = field(default_factory=list)  # PathCheck per probe pair and probed step
    routes: list = field(default_factory=list)  # routes.csv rows
    recoveries: list = field(default_factory=list)  # recoveries.csv rows: measured beside predicted, by part
    faults: list = field(default_factory=list)  # faults.csv rows: what fired, where and when


def run_experiment(spec: ExperimentSpec, folder: Path, log=None, *, on_step=None, on_event=None,
                   prefix: str | None = None) -> ExperimentResult:
    """Run one (already expanded) experiment and write its results folder (``on_step``, ``on_event``: see deploy)."""
    log = log or (lambda line: print(f"meshemu: {line}", file=sys.stderr))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(as_dict(spec), sort_keys=False))
    series = build_series(spec)
    source, config, tok = describe_model(None if spec.model.source == "default" else spec.model.source)
    device = parse_compute(spec.model.compute)
    run = plan_run(spec, source, config, tok)
    if prefix:
        run = dataclasses.replace(run, prefix=prefix)  # a run of its own beside others on this machine
    log(f"{spec.name}: {series.constellation}, {series.n_steps} steps of {spec.window.step_s:g} s, "
        f"{spec.parallelism.label}, placement {spec.placement}, client at {spec.ground_station}")
    t0 = time.monotonic()
    dep = deploy(series, run, log=log, on_step=on_step, on_event=on_event)
    wall_s = time.monotonic() - t0
    p = spec.parallelism
    ctx = make_context(config, device, tp=p.tp, pp=p.pp, allreduce=p.allreduce, rank_nodes=dep.rank_nodes,
                       client_node=dep.client_node, where=dep)
    texts = request_texts(spec)
    # a run with faults proves its answers: greedy tokens beside the whole model's, which no fault touched
    reference = (reference_tokens(source, run.job.requests) if run.faults and spec.model.compute == "real"
                 else None)
    floor = _floor(dep)
    # the same prediction with the per-message cost the shards measured under this run's load
    loaded_ctx = dataclasses.replace(ctx, overhead_s=floor.per_message_s) if floor else None
    request_rows, token_rows, recoveries = [], [], []
    for event in sorted((e for e in dep.events if e["event"] == "request"), key=lambda e: e["request"]):
        rec = record_from_row(event["record"])
        row, tokens, _, _ = analyse(rec, ctx)
        if loaded_ctx is not None:
            row["predicted_tpot_loaded_s"] = analyse(rec, loaded_ctx)[0].get("predicted_tpot_s")
        steps = row.get("steps") or [0]
        alone = network_prediction(ctx, dep.series, config, device, row, steps[1] if len(steps) > 1 else steps[0])
        n_msg = allreduce_messages_per_token(p.tp, p.allreduce, ctx.layers)
        row.update(predicted_tpot_network_s=alone.tpot_s if alone else None,
                   predicted_ttft_network_s=alone.ttft_s if alone else None,
                   collective_s_per_message=(row["collective_s_per_token"] / n_msg
                                             if n_msg and row.get("collective_s_per_token") is not None else None))
        i = event["request"]
        row.update(request=i, prompt=texts[i], answer=_decode(tok, rec.token_ids),
                   error=event.get("error", row.get("error", "")))
        mine = recovery_rows(dep, rec, ctx, row)
        hit = {r["fault"] for r in mine} | _faults_during(dep, rec)
        if reference is not None:
            row["same_tokens_as_fault_free"] = rec.token_ids == reference[i]
        row.update(faults=sorted(hit), recovered=bool(mine) and not row["error"],
                   recovery_s=[r["recovery_s"] for r in mine], predicted_recovery_s=[r["predicted_recovery_s"] for r in mine])
        recoveries += mine
        request_rows.append(row)
        token_rows += [dict(t, request=i) for t in tokens]
    result = ExperimentResult(spec, folder, {}, request_rows, token_rows, dep.probes, dep.path_checks,
                              route_rows(dep), recoveries, dep.schedule.rows())
    result.summary = _summary(spec, dep, request_rows)
    result.summary["predictor_ms_per_message"] = _ms(ctx.overhead_s)  # report.md only: the floor predicted
    result.summary["floor_ms_per_message"] = _ms(floor.per_message_s) if floor else None
    result.summary["floor_by_kind_ms"] = {k: _ms(v) for k, v in floor.by_kind.items()} if floor else {}
    _write(result, dep.series, dep, wall_s, config)
    write_report(result, dep.series, dep)
    return result


def _floor(dep):
    """The per-message floor the shards measured (their frames' transit less the path's delay between the
    ranks, averaged over the run's steps); None where no frame went between shards (one rank)."""
    shards = next((e["metrics"] for e in dep.events if e["event"] == "shards"), [])
    played = sorted({r.step for r in dep.step_records}) or [0]
    steps = played[:: max(1, len(played) // 16)]  # the path's delay changes slowly: a few steps tell its mean
    nodes = dep.rank_nodes
    memo = {}

    def one_way_s(a: int, b: int) -> float:
        if (a, b) not in memo:
            if max(a, b) >= len(nodes):
                memo[a, b] = 0.0
            else:
                d = [dep.one_way_at(k)(nodes[a], nodes[b]) for k in steps]
                d = [x for x in d if math.isfinite(x)]
                memo[a, b] = sum(d) / len(d) if d else 0.0
        return memo[a, b]
    return measured_floor(shards, one_way_s)


def _faults_during(dep, rec) -> set[int]:
    """Faults that fired while the request was in flight."""
    end = rec.tokens[-1].clock_s if rec.tokens else rec.sent_clock_s
    return {i for i, f in dep.schedule.fired.items() if rec.sent_clock_s <= f["clock_s"] <= end}


def _decode(tok, ids) -> str:
    """The answer as text (a model shape without a vocabulary has none: its ids)."""
    return tok.decode(list(ids)) if tok is not None else " ".join(map(str, ids))


def _mean(rows, key):
    vals = [r[key] for r in rows if r.get(key) is not None]
    return sum(vals) / len(vals) if vals else None


def _ms(x):
    return None if x is None else round(x * 1e3, 3)


def _summary(spec, dep, rows) -> dict:
    ok = [r for r in rows if not r.get("error")]
    tpot, pred, loaded = _mean(ok, "tpot_s"), _mean(ok, "predicted_tpot_s"), _mean(ok, "predicted_tpot_loaded_s")
    return {"name": spec.name, "tp": spec.parallelism.tp, "pp": spec.parallelism.pp,
            "allreduce": spec.parallelism.allreduce, "placement": spec.placement, "compute": spec.model.compute,
            "backend": dep.backend, "requests": len(rows), "failed": len(rows) - len(ok),
            "tokens": sum(r.get("tokens", 0) for r in rows), "ttft_ms": _ms(_mean(ok, "ttft_s")),
            "predicted_ttft_ms": _ms(_mean(ok, "predicted_ttft_s")), "tpot_ms": _ms(tpot),
            "predicted_tpot_ms": _ms(pred),
            "predicted_tpot_network_ms": _ms(_mean(ok, "predicted_tpot_network_s")),
            "collective_ms_per_message": _ms(_mean(ok, "collective_s_per_message")),
            "floor_ms_per_message": None,  # set by run_experiment: what the shards measured
            "predicted_tpot_loaded_ms": _ms(loaded),
            "tpot_error_loaded_pct": round((tpot / loaded - 1) * 100, 2) if tpot and loaded else None,
            "tpot_error_pct": round((tpot / pred - 1) * 100, 2) if tpot and pred else None,
            "decode_tokens_per_s": _mean(ok, "decode_tokens_per_s"), "e2e_s": _mean(ok, "e2e_s"),
            "itl_p50_ms": _ms(_mean(ok, "itl_p50_s")), "itl_p99_ms": _ms(_mean(ok, "itl_p99_s")),
            "rank_nodes": " ".join(dep.rank_nodes), "recoveries": sum(len(r.get("recovery_s") or []) for r in rows),
            "recovery_s": _mean_of_lists(rows, "recovery_s"), "predicted_recovery_s": _mean_of_lists(rows, "predicted_recovery_s")}


def _mean_of_lists(rows, key):
    vals = [v for r in rows for v in (r.get(key) or []) if v is not None]
    return round(sum(vals) / len(vals), 3) if vals else None


def _write(result, series, dep, wall_s, config) -> None:
    folder = result.folder
    meta = {"experiment": result.spec.name, **dep.info(), "wall_s": wall_s, "model": config.name,
            "probes": error_summary(result.probes), "paths": path_summary(result.paths),
            # each shard's counters at the end (frames in, on the data plane or gRPC, refused, dropped)
            "shards": next((e["metrics"] for e in dep.events if e["event"] == "shards"), [])}
    (folder / "run.json").write_text(json.dumps(meta, indent=1, default=str))
    series.save(folder / "series.npz")  # the series played, for 'meshemu view DIR' (no rebuild, same numbers)
    _csv(folder / "steps.csv", [r.as_dict() for r in dep.step_records])
    names = series.short_names
    events = []
    for k in range(series.n_steps):
        ch = series.changes(k)
        for kind, idx in (("up", ch.went_up), ("down", ch.went_down)):
            for l in idx:
                a, b = series.links[l]
                events.append({"t_s": float(series.times_s[k]), "step": k, "event": kind,
                               "a": names[a], "b": names[b], "link": "gsl" if b >= series.n_satellites else "isl"})
    _csv(folder / "link_events.csv", events, ("t_s", "step", "event", "a", "b", "link"))
    _csv(folder / "routes.csv", result.routes, ("t_s", "step", "src", "dst", "rtt_ms", "hops", "path"))
    _csv(folder / "probes.csv", [p.as_dict() for p in result.probes],
         ("t_s", "step", "src", "dst", "expected_rtt_ms", "measured_rtt_ms"))
    _csv(folder / "paths.csv", [c.as_dict() for c in result.paths],
         ("t_s", "step", "src", "dst", "expected_path", "answered_path", "on_path", "at_route_change"))
    with open(folder / "requests.jsonl", "w") as f:
        for row in result.requests + result.tokens:
            f.write(json.dumps(row, default=str) + "\n")
    _csv(folder / "summary.csv", [result.summary], SUMMARY_COLUMNS)
    if result.faults:
        _csv(folder / "faults.csv", result.faults)
        _csv(folder / "recoveries.csv", result.recoveries, RECOVERY_COLUMNS)


RECOVERY_COLUMNS = ("request", "recovery", "fault", "kind", "target", "lost_nodes", "new_nodes", "decision",
                    "tokens_before", "recovery_s", "predicted_recovery_s", "recovery_error",
                    "detect_s", "predicted_detect_s", "probe_s", "predicted_probe_s", "place_s", "predicted_place_s",
                    "load_s", "predicted_load_s", "reprefill_s", "predicted_reprefill_s")


def route_rows(dep) -> list[dict]:
    """The installed route and its RTT between the client and rank 0 and between probe pairs, at every step.

    Read off the run's forwarding states (the watched nodes' columns): the
    routes the player installed, not a second shortest-path computation.
    """
    series, routes, names = dep.series, dep.routes, dep.series.short_names
    pairs = [(dep.client_node, dep.rank_nodes[0])] + [tuple(p) for p in dep.run.probes]
    rows = []
    for k in range(series.n_steps):
        for a, b in pairs:
            u, v = dep.node(a), dep.node(b)
            path = routes.route(k, u, v)
            rows.append({"t_s": float(series.times_s[k]), "step": k, "src": a, "dst": b,
                         "rtt_ms": round(routes.rtt_s(k, u, v) * 1e3, 4) if path else None,
                         "hops": len(path) - 1 if path else None, "path": " ".join(names[x] for x in path)})
    return rows


def _csv(path, rows, columns=None) -> None:
    columns = list(columns or (rows[0].keys() if rows else []))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def run_file(path, out: Path | None = None, log=None, *, on_step=None, on_event=None,
             prefix: str | None = None) -> list[ExperimentResult]:
    """``meshemu run``: every value of a sweep in its own folder, and a comparison across them."""
    spec = load_experiment(path)
    out = Path(out) if out else Path("results") / f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    specs = expand(spec)
    if len(specs) == 1:
        return [run_experiment(specs[0], out, log, on_step=on_step, on_event=on_event, prefix=prefix)]
    results = [run_experiment(s, out / s.name, log, on_step=on_step, on_event=on_event, prefix=prefix)
               for s in specs]
    _csv(out / "summary.csv", [r.summary for r in results], SUMMARY_COLUMNS)
    (out / "config.yaml").write_text(yaml.safe_dump(as_dict(spec), sort_keys=False))
    write_sweep_report(spec, results, out)
    return results


__all__ = ["ExperimentResult", "run_experiment", "run_file"]
