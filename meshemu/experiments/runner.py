"""Run an experiment: mesh up, shards in satellites, the workload while the constellation moves, results down.

A results folder holds: ``config.yaml`` (the resolved experiment), ``run.json``
(detected capabilities, shaping backend, placement, player summary),
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
import json
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from meshemu.constellation import TimeGrid, default_ground_stations, load_constellation, read_ground_stations
from meshemu.experiments.spec import ExperimentSpec, as_dict
from meshemu.links import compute_link_series

SUMMARY_COLUMNS = ("name", "tp", "pp", "allreduce", "placement", "compute", "backend", "requests", "failed",
                   "tokens", "ttft_ms", "predicted_ttft_ms", "tpot_ms", "predicted_tpot_ms", "tpot_error_pct",
                   "decode_tokens_per_s", "e2e_s", "itl_p50_ms", "itl_p99_ms", "rank_nodes")


@dataclass
class ExperimentResult:
    spec: ExperimentSpec
    folder: Path
    summary: dict
    requests: list = field(default_factory=list)  # request rows (measured + predicted)
    tokens: list = field(default_factory=list)  # token rows
    probes: list = field(default_factory=list)
    paths: list = field(default_factory=list)  # PathCheck per probe pair and probed step


def _resolve(spec: ExperimentSpec, value: str) -> str:
    """A path in the experiment file is relative to that file."""
    if spec.source and (value.endswith((".yaml", ".yml", ".txt", ".csv"))) and not Path(value).is_absolute():
        candidate = Path(spec.source).parent / value
        if candidate.exists():
            return str(candidate)
    return value


def build_series(spec: ExperimentSpec):
    c = load_constellation(_resolve(spec, spec.constellation))
    stations = (read_ground_stations(_resolve(spec, spec.ground_stations)) if spec.ground_stations
                else default_ground_stations())
    w = spec.window
    grid = TimeGrid.from_window(c.epoch_utc, start_s=w.start_s, duration_s=w.duration_s, step_s=w.step_s)
    return compute_link_series(c, stations, grid)


def build_job(spec: ExperimentSpec, source, config, tok) -> dict:
    """The serving job: one request per workload slot, prompts cycled, greedy, seeded."""
    from meshemu.serving.client import Request

    w = spec.workload
    requests = []
    for i in range(w.requests):
        text = w.prompts[i % len(w.prompts)]
        if tok is None:  # a model shape without a vocabulary: bytes as token ids
            ids, stops = [3 + b % (config.vocab_size - 3) for b in text.encode()], ()
        else:
            ids = tok.encode_chat(text) if (w.chat_template and tok.chat is not None) else tok.encode(text)
            stops = tuple(sorted(tok.stop_ids()))
        requests.append(Request(tuple(ids), max_new_tokens=w.max_new_tokens, temperature=0.0, top_p=1.0,
                                seed=spec.seed + i, stop_ids=stops, request_id=uuid.uuid4().hex))
    p = spec.parallelism
    return {"plan": {"model": source, "tp": p.tp, "pp": p.pp, "allreduce": p.allreduce, "compute": spec.model.compute},
            "requests": [dict(r.__dict__) for r in requests], "concurrency": w.concurrency, "gap_s": w.gap_s,
            "timeout_s": 600.0, "step_timeout_s": 20.0}


def run_experiment(spec: ExperimentSpec, folder: Path, log=None) -> ExperimentResult:
    """Run one (already expanded) experiment and write its results folder."""
    from meshemu.emulation.probe import check_paths, error_summary, path_summary, probe_pairs
    from meshemu.serving.client import record_from_row
    from meshemu.serving.compute import parse_compute
    from meshemu.serving.report import analyse
    from meshemu.serving.session import describe_model, make_context, run_in_mesh

    log = log or (lambda line: print(f"meshemu: {line}", file=sys.stderr))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(as_dict(spec), sort_keys=False))
    series = build_series(spec)
    gs = series.node_index(spec.ground_station)
    probe_pairs_ids = [(series.node_index(a), series.node_index(b)) for a, b in spec.probes]
    source, config, tok = describe_model(None if spec.model.source == "default" else spec.model.source)
    device = parse_compute(spec.model.compute)
    job = build_job(spec, source, config, tok)
    log(f"{spec.name}: {series.constellation}, {series.n_steps} steps of {spec.window.step_s:g} s, "
        f"{spec.parallelism.label}, placement {spec.placement}, client at {series.node_names[gs]}")

    events, probes, checks, captured = [], [], [], {}
    pool = ThreadPoolExecutor(1)
    busy = threading.Lock()

    def on_step(emu, rec):
        captured.setdefault("capabilities", emu.capabilities.as_dict() if emu.capabilities else None)
        pairs = list(probe_pairs_ids)
        if "rank0" in captured:
            pairs.append((gs, captured["rank0"]))
        if pairs and busy.acquire(blocking=False):  # one probe round at a time, never holding up the player
            def probe_round():
                try:
                    probes.extend(probe_pairs(emu, pairs, rec.step, rec.t_s))
                    checks.extend(check_paths(emu, pairs, rec.step, rec.t_s))
                finally:
                    busy.release()
            pool.submit(probe_round)

    def on_event(event):
        events.append(event)

    t0 = time.time()
    try:
        from meshemu.serving.placement import MeshPaths, place

        paths = MeshPaths(series)
        captured["rank0"] = paths.node(place(spec.placement, spec.parallelism.tp * spec.parallelism.pp, paths,
                                             paths.names[gs])[0])
        mesh = run_in_mesh(series, job, ground_station=series.node_names[gs], placement=spec.placement,
                           shaper=spec.shaping.backend, time_scale=spec.time_scale, on_event=on_event,
                           on_step=on_step, log=log, paths=paths)
    finally:
        pool.shutdown(wait=True)
    wall_s = time.time() - t0
    p = spec.parallelism
    ctx = make_context(config, device, tp=p.tp, pp=p.pp, allreduce=p.allreduce, rank_nodes=mesh.rank_nodes,
                       client_node=mesh.ground_station, paths=mesh.paths, run=mesh.run)
    request_rows, token_rows, route_rows = [], [], []
    for event in sorted((e for e in events if e["event"] == "request"), key=lambda e: e["request"]):
        row, tokens, routes, _ = analyse(record_from_row(event["record"]), ctx)
        row.update(request=event["request"], error=event.get("error", row.get("error", "")))
        request_rows.append(row)
        token_rows += [dict(t, request=event["request"]) for t in tokens]
        route_rows += routes
    result = ExperimentResult(spec, folder, {}, request_rows, token_rows, probes, checks)
    result.summary = _summary(spec, mesh, request_rows)
    _write(result, series, mesh, captured, wall_s, config, error_summary(probes), path_summary(checks))
    from meshemu.experiments.report import write_report

    write_report(result, series, mesh, routes=_read_routes(folder))
    return result


def _read_routes(folder) -> list[dict]:
    with open(folder / "routes.csv") as f:
        return list(csv.DictReader(f))


def _mean(rows, key):
    vals = [r[key] for r in rows if r.get(key) is not None]
    return sum(vals) / len(vals) if vals else None


def _ms(x):
    return None if x is None else round(x * 1e3, 3)


def _summary(spec, mesh, rows) -> dict:
    ok = [r for r in rows if not r.get("error")]
    tpot, pred = _mean(ok, "tpot_s"), _mean(ok, "predicted_tpot_s")
    return {"name": spec.name, "tp": spec.parallelism.tp, "pp": spec.parallelism.pp,
            "allreduce": spec.parallelism.allreduce, "placement": spec.placement, "compute": spec.model.compute,
            "backend": mesh.run.backend, "requests": len(rows), "failed": len(rows) - len(ok),
            "tokens": sum(r.get("tokens", 0) for r in rows), "ttft_ms": _ms(_mean(ok, "ttft_s")),
            "predicted_ttft_ms": _ms(_mean(ok, "predicted_ttft_s")), "tpot_ms": _ms(tpot),
            "predicted_tpot_ms": _ms(pred),
            "tpot_error_pct": round((tpot / pred - 1) * 100, 2) if tpot and pred else None,
            "decode_tokens_per_s": _mean(ok, "decode_tokens_per_s"), "e2e_s": _mean(ok, "e2e_s"),
            "itl_p50_ms": _ms(_mean(ok, "itl_p50_s")), "itl_p99_ms": _ms(_mean(ok, "itl_p99_s")),
            "rank_nodes": " ".join(mesh.rank_nodes)}


def _write(result, series, mesh, captured, wall_s, config, probe_summary, path_check_summary) -> None:
    folder, run = result.folder, mesh.run
    from meshemu.emulation.player import PlayReport

    player = PlayReport(run.step_records).summary() if run.step_records else {}
    if run.step_records:
        player.update(first_t_s=run.step_records[0].t_s, last_t_s=run.step_records[-1].t_s)
    meta = {"experiment": result.spec.name, "capabilities": captured.get("capabilities"), "backend": run.backend,
            "placement": dict(enumerate(mesh.rank_nodes)), "client": mesh.ground_station, "addresses": run.addresses,
            "player": player, "wall_s": wall_s, "model": config.name, "probes": probe_summary,
            "paths": path_check_summary}
    (folder / "run.json").write_text(json.dumps(meta, indent=1, default=str))
    series.save(folder / "series.npz")  # the series played, for 'meshemu view DIR' (no rebuild, same numbers)
    _csv(folder / "steps.csv", [r.as_dict() for r in run.step_records])
    events = []
    for k in range(series.n_steps):
        ch = series.changes(k)
        for kind, idx in (("up", ch.went_up), ("down", ch.went_down)):
            for l in idx:
                a, b = series.links[l]
                events.append({"t_s": float(series.times_s[k]), "step": k, "event": kind,
                               "a": series.node_names[a], "b": series.node_names[b],
                               "link": "gsl" if b >= series.n_satellites else "isl"})
    _csv(folder / "link_events.csv", events, ("t_s", "step", "event", "a", "b", "link"))
    routes = route_rows(series, mesh, result.spec.probes)
    _csv(folder / "routes.csv", routes, ("t_s", "step", "src", "dst", "rtt_ms", "hops", "path"))
    _csv(folder / "probes.csv", [p.as_dict() for p in result.probes],
         ("t_s", "step", "src", "dst", "expected_rtt_ms", "measured_rtt_ms"))
    _csv(folder / "paths.csv", [c.as_dict() for c in result.paths],
         ("t_s", "step", "src", "dst", "expected_path", "answered_path", "on_path", "at_route_change"))
    with open(folder / "requests.jsonl", "w") as f:
        for row in result.requests + result.tokens:
            f.write(json.dumps(row, default=str) + "\n")
    _csv(folder / "summary.csv", [result.summary], SUMMARY_COLUMNS)


def route_rows(series, mesh, probes=()) -> list[dict]:
    """The routed path and RTT between the client and rank 0 and between probe pairs, at every step.

    One single-source Dijkstra per pair and step (not a whole forwarding table: at
    Starlink scale that is 0.4 s a step).
    """
    from meshemu.routing import shortest_route

    names = mesh.paths.names
    pairs = [(mesh.ground_station, mesh.rank_nodes[0])] + [tuple(p) for p in probes]
    rows = []
    for k in range(series.n_steps):
        for a, b in pairs:
            r = shortest_route(series, k, mesh.paths.node(a), mesh.paths.node(b))
            rows.append({"t_s": float(series.times_s[k]), "step": k, "src": a, "dst": b,
                         "rtt_ms": round(r.rtt_s * 1e3, 4) if r.reachable else None,
                         "hops": r.hops if r.reachable else None, "path": " ".join(names[v] for v in r.nodes)})
    return rows


def _csv(path, rows, columns=None) -> None:
    columns = list(columns or (rows[0].keys() if rows else []))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def run_file(path, out: Path | None = None, log=None) -> list[ExperimentResult]:
    """``meshemu run``: every value of a sweep in its own folder, and a comparison across them."""
    from meshemu.experiments.report import write_sweep_report
    from meshemu.experiments.spec import expand, load_experiment

    spec = load_experiment(path)
    out = Path(out) if out else Path("results") / f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    specs = expand(spec)
    if len(specs) == 1:
        return [run_experiment(specs[0], out, log)]
    results = [run_experiment(s, out / s.name, log) for s in specs]
    _csv(out / "summary.csv", [r.summary for r in results], SUMMARY_COLUMNS)
    (out / "config.yaml").write_text(yaml.safe_dump(as_dict(spec), sort_keys=False))
    write_sweep_report(spec, results, out)
    return results


__all__ = ["ExperimentResult", "run_experiment", "run_file"]
