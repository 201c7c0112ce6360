"""Sharded serving in the emulated demo mesh: TPOT measured beside predicted, by placement and as it moves.

Run as root (it builds its own namespaces, prefix ``srv<pid>``, and deletes them)::

    .venv/bin/python experiments/serving_mesh.py placements [--model PATH] [--tokens 8]
    .venv/bin/python experiments/serving_mesh.py moving [--window-s 300 --time-scale 5 --every-s 60]

``placements``: for each placement (plane, spread, nearest) a tensor-parallel
and a pipeline layout of the model, one request each from the ground station;
TPOT measured, TPOT predicted from the same placement, path delays of the
steps in force and the measured per-stage compute; the error.

``moving``: TP, PP and hybrid layouts of a GPU-satellite model (device compute,
Qwen3-8B shapes on H100s by default), requests every ``--every-s`` seconds of
series time while the player moves the constellation ``--time-scale`` times
faster than real time: tokens/s and TPOT as the paths change.

Rows go to ``--out`` as JSON Lines as well as to the terminal.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

from meshemu.constellation import TimeGrid, default_ground_stations, load_constellation
from meshemu.links import compute_link_series
from meshemu.model.partition import pipeline_ranges
from meshemu.serving.client import record_from_row
from meshemu.serving.compute import load_source, parse_compute
from meshemu.serving.mesh import serve_in_mesh
from meshemu.serving.metrics import JsonLines
from meshemu.serving.placement import MeshPaths, place
from meshemu.serving.report import RunContext, analyse


def series_for(args, duration_s):
    c = load_constellation(args.constellation)
    stations = [s for s in default_ground_stations() if s.name == args.ground_station]
    if not stations:
        sys.exit(f"unknown ground station {args.ground_station}")
    return compute_link_series(c, stations, TimeGrid.from_window(c.epoch_utc, start_s=args.start_s,
                                                                   duration_s=duration_s, step_s=1.0))


def one_run(args, series, paths, *, model, compute, tp, pp, algorithm, placement, requests, gap_s=0.0,
            time_scale=1.0):
    config, _ = load_source(model) if model.startswith(("preset:", "tiny:")) else (None, None)
    if config is None:
        from meshemu.serving.session import describe_model

        _, config, _ = describe_model(model)
    nodes = place(placement, tp * pp, paths, args.ground_station)
    job = {"plan": {"model": model, "tp": tp, "pp": pp, "allreduce": algorithm, "compute": compute},
           "requests": requests, "gap_s": gap_s, "timeout_s": 900.0}
    run = serve_in_mesh(series, job, ground_station=args.ground_station, rank_nodes=nodes, shaper=args.shaper,
                        prefix=f"srv{os.getpid()}", time_scale=time_scale, step_timeout_s=60.0,
                        log=lambda line: None)
    delayed = run.backend != "none"
    ctx = RunContext(tp=tp, pp=pp, algorithm=algorithm,
                     layers=[b - a for a, b in pipeline_ranges(config.n_layers, pp)], rank_nodes=nodes,
                     client_node=args.ground_station,
                     activation_bytes=config.hidden_size * (2 if parse_compute(compute) else 4),
                     one_way_at=(lambda k: (lambda a, b: paths.one_way_s(k, a, b))) if delayed
                     else (lambda k: (lambda a, b: 0.0)),
                     step_at=run.step_at, route_at=paths.route)
    rows = []
    for event in (e for e in run.events if e["event"] == "request"):
        rec = record_from_row(event["record"])
        row, _, routes, _ = analyse(rec, ctx)
        row.update(tp=tp, pp=pp, allreduce=algorithm, placement=placement, nodes=nodes, backend=run.backend,
                   model=config.name, compute=compute, error=event.get("error", ""),
                   series_time_s=[float(series.times_s[k]) for k in row.get("steps", [])],
                   routes=routes[:1])
        rows.append(row)
    return rows


def placements(args):
    out = JsonLines(args.out)
    series = series_for(args, 900.0)
    paths = MeshPaths(series)
    model = args.model or str(__import__("meshemu.model.load", fromlist=["x"]).default_model_path())
    layouts = [(args.tp, 1, args.allreduce), (1, args.pp, "ring")]
    print(f"{'placement':<9} {'layout':<11} {'nodes':<30} {'TPOT ms':>9} {'pred ms':>9} {'error':>7} "
          f"{'coll ms':>8} {'hops ms':>8} {'compute':>8}")
    errors = []
    for placement in ("plane", "spread", "nearest"):
        for tp, pp, algo in layouts:
            [row] = one_run(args, series, paths, model=model, compute=args.compute, tp=tp, pp=pp,
                            algorithm=algo, placement=placement,
                            requests=[{"prompt": list(range(3, 3 + args.prompt_tokens)),
                                       "max_new_tokens": args.tokens}])
            if row.get("error"):
                print(f"{placement:<9} {tp}x{pp} {algo}: {row['error']}")
                continue
            errors.append(abs(row["tpot_error"]))
            print(f"{placement:<9} {f'{tp}x{pp} {algo}':<11} {','.join(row['nodes']):<30} "
                  f"{row['tpot_s'] * 1e3:9.1f} {row['predicted_tpot_s'] * 1e3:9.1f} {row['tpot_error']:+7.1%} "
                  f"{row['collective_s_per_token'] * 1e3:8.1f} {row['hop_s_per_token'] * 1e3:8.1f} "
                  f"{row['compute_s_per_token'] * 1e3:8.1f}", flush=True)
            out.write(row)
    print(f"backend {row['backend']}; |TPOT error| median {statistics.median(errors):.1%}, max {max(errors):.1%}")


def moving(args):
    out = JsonLines(args.out)
    series = series_for(args, args.window_s)
    paths = MeshPaths(series)
    n_requests = max(1, int(args.window_s // args.every_s))
    for tp, pp, algo in [(args.tp, 1, args.allreduce), (1, args.pp, "ring"), (args.tp, args.pp, args.allreduce)]:
        rows = one_run(args, series, paths, model=args.model or "preset:qwen3-8b", compute=args.compute,
                       tp=tp, pp=pp, algorithm=algo, placement=args.placement, time_scale=args.time_scale,
                       gap_s=args.every_s / args.time_scale,
                       requests=[{"prompt": list(range(3, 3 + args.prompt_tokens)), "max_new_tokens": args.tokens}
                                 for _ in range(n_requests)])
        print(f"{tp}x{pp} {algo} on {args.placement} {','.join(rows[0]['nodes'])}:")
        for row in rows:
            if row.get("error"):
                print(f"   error: {row['error']}")
                continue
            t = row["series_time_s"]
            print(f"   t {t[0]:6.0f}-{t[-1]:4.0f} s  TPOT {row['tpot_s'] * 1e3:8.1f} ms (pred "
                  f"{row['predicted_tpot_s'] * 1e3:8.1f}, {row['tpot_error']:+6.1%})  "
                  f"{row['decode_tokens_per_s']:6.2f} tok/s  TTFT {row['ttft_s'] * 1e3:7.1f} ms  "
                  f"uplink path {'-'.join(row['routes'][0]['paths']['client->rank0']) if row['routes'] else '?'}",
                  flush=True)
            out.write(row)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=("placements", "moving"))
    parser.add_argument("--model", default=None, help="default: SmolLM2 (placements), preset:qwen3-8b (moving)")
    parser.add_argument("--compute", default=None, help="default: real (placements), device:h100 (moving)")
    parser.add_argument("--constellation", default="demo")
    parser.add_argument("--ground-station", default="Tokyo")
    parser.add_argument("--start-s", type=float, default=0.0)
    parser.add_argument("--shaper", default="auto")
    parser.add_argument("--tp", type=int, default=3)
    parser.add_argument("--pp", type=int, default=3)
    parser.add_argument("--allreduce", default="direct")
    parser.add_argument("--tokens", type=int, default=8)
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--placement", default="spread")
    parser.add_argument("--window-s", type=float, default=300.0)
    parser.add_argument("--every-s", type=float, default=60.0)
    parser.add_argument("--time-scale", type=float, default=5.0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.what == "placements":
        args.compute = args.compute or "real"
        placements(args)
    else:
        args.compute = args.compute or "device:h100"
        moving(args)


if __name__ == "__main__":
    main()
