"""CLI for the serving layer: sharded ``meshemu generate`` and ``meshemu bench serving``.

``meshemu generate`` (registered by :mod:`meshemu.cli.model`) comes here when
asked for shards: ``--loopback`` (local processes) or ``--constellation NAME``
(processes in an emulated mesh, the client at ``--ground-station``).
"""

from __future__ import annotations

import statistics
import sys
import time
import uuid

from meshemu.cli.types import (finite_float, float_in, int_in, nonnegative_float, placement_strategy,
                               positive_float, positive_int, retire, time_scale, window_duration)
from meshemu.errors import InputError
from meshemu.model.partition import check_layout
from meshemu.serving.compute import parse_compute
from meshemu.serving.job import MAX_STEP_TIMEOUT_S, MAX_WAIT_S, Request, ServingJob, ServingPlan
from meshemu.serving.session import describe_model, make_context

# Requests at once: the client runs each in a thread of its own (100,000 ran out of threads); 300 of
# a tiny model run fine, and a few cores serve no more than this usefully.
MAX_REQUESTS = 1024


def register(commands, benches):
    bench = benches.add_parser(
        "serving", help="loopback serving: hop overhead, TP/PP tokens/s, micro-batching",
        description="Start shard processes on loopback and time: the overhead of one pipeline hop for a "
                    "576-float activation, then decode tokens/s of each (tp, pp, all-reduce) layout, "
                    "predicted beside measured.")
    bench.add_argument("--model", default=None, metavar="PATH",
                       help="checkpoint for the layouts (default SmolLM2-135M-Instruct; tiny:llama:0 is quick)")
    bench.add_argument("--tokens", type=int, default=24, metavar="N", help="tokens per request (default 24)")
    bench.add_argument("--hop-tokens", type=int, default=200, metavar="N",
                       help="tokens timed for the hop overhead (default 200)")
    bench.add_argument("--layouts", default="1x1,1x2,1x3,2x1:ring,2x1:direct,3x1:ring,3x1:direct,3x2:ring",
                       help="TPxPP[:ALGORITHM] list (default %(default)s)")
    bench.add_argument("--concurrency", default="1,2,4", help="micro-batch counts for a 1x3 pipeline (default 1,2,4)")
    bench.add_argument("--metrics", metavar="FILE", help="also write the rows as JSON Lines")
    bench.add_argument("--data-plane", choices=("tcp", "grpc", "both"), default="tcp",
                       help="how frames between shards travel: tcp (the data plane beside gRPC, the default), grpc "
                            "(Exchange streams) or both, one after the other")
    bench.set_defaults(run=run_bench)


def add_serving_arguments(parser) -> None:
    """The sharding options of ``meshemu generate``."""
    g = parser.add_argument_group("sharded serving")
    g.add_argument("--tp", type=positive_int, default=1, metavar="T", help="tensor-parallel degree (default 1)")
    g.add_argument("--pp", type=positive_int, default=1, metavar="P", help="pipeline stages (default 1)")
    g.add_argument("--allreduce", choices=("ring", "direct"), default="ring", help="all-reduce algorithm")
    where = g.add_mutually_exclusive_group()
    where.add_argument("--loopback", action="store_true", help="run the shards as local processes on 127.0.0.1")
    where.add_argument("--constellation", metavar="NAME",
                       help="run the shards in an emulated mesh of this constellation (needs root)")
    g.add_argument("--placement", default="plane", metavar="STRATEGY", type=placement_strategy,
                   help="with --constellation: ranks to satellites, plane, spread, nearest or list:p00s01,... "
                        "(default plane)")
    g.add_argument("--routes", default="auto", choices=("auto", "all", "destinations"),
                   help="with --constellation: routes every node to every other (all), or only towards the "
                        "ground stations, the ranks and probe ends (destinations); auto: all up to 400 nodes")
    g.add_argument("--ground-station", default="Paris", metavar="CITY",
                   help="with --constellation: where the client runs in the mesh (default Paris)")
    g.add_argument("--shaper", default="auto", choices=("auto", "netem", "delayline", "none"),
                   help="with --constellation: link delay backend in the mesh (default auto)")
    g.add_argument("--start", type=finite_float, default=0.0, metavar="S",
                   help="with --constellation: series start, s after the epoch (default 0)")
    g.add_argument("--duration", type=window_duration, default=600.0, metavar="S",
                   help="with --constellation: series length in s (default 600)")
    g.add_argument("--step", type=positive_float, default=1.0, metavar="S",
                   help="with --constellation: series step in s (default 1)")
    for old, new in (("--start-s", "--start"), ("--duration-s", "--duration"), ("--step-s", "--step")):
        retire(g, old, new)
    g.add_argument("--time-scale", type=time_scale, default=1.0, metavar="X",
                   help="with --constellation: mesh clock speed-up (default 1)")
    g.add_argument("--compute", default="real", metavar="MODE",
                   help="real, or device:NAME (h100, h200, a100, l4, orin) to wait modelled device time")
    g.add_argument("--requests", type=int_in(1, MAX_REQUESTS), default=1, metavar="N",
                   help="send the prompt N times at once (micro-batches); text of the first is printed")
    g.add_argument("--metrics", metavar="FILE", help="append per-request and per-token JSON Lines here")
    g.add_argument("--step-timeout", type=float_in(0, MAX_STEP_TIMEOUT_S, "s", open_low=True), default=10.0,
                   metavar="S",
                   help="longest wait for one token or one peer (default 10)")
    g.add_argument("--timeout", type=float_in(0, MAX_WAIT_S, "s", open_low=True), default=600.0, metavar="S",
                   help="deadline of each request (default 600)")
    g.add_argument("--hop-overhead-ms", type=nonnegative_float, default=None, metavar="MS",
                   help="software cost of one message for the prediction (default: measured constant)")


# Options that only mean something in a mesh, with their defaults: given without --constellation they
# were dropped without a word.
MESH_ONLY = {"placement": ("--placement", "plane"), "ground_station": ("--ground-station", "Paris"),
             "shaper": ("--shaper", "auto"), "start": ("--start", 0.0), "duration": ("--duration", 600.0),
             "step": ("--step", 1.0), "time_scale": ("--time-scale", 1.0), "routes": ("--routes", "auto")}


def check_mesh_only(args) -> None:
    """InputError when an option of the mesh was given (changed from its default) without --constellation."""
    if args.constellation:
        return
    given = [flag for name, (flag, default) in MESH_ONLY.items() if getattr(args, name) != default]
    if given:
        raise InputError(f"{', '.join(given)} {'goes' if len(given) == 1 else 'go'} with --constellation NAME "
                         f"(the shards in a mesh); {'it does' if len(given) == 1 else 'they do'} nothing "
                         f"{'on --loopback' if args.loopback else 'here'}")


def wants_shards(args) -> bool:
    return bool(args.loopback or args.constellation or args.tp != 1 or args.pp != 1
                or args.compute != "real" or args.requests != 1 or args.metrics
                or str(args.model or "").startswith(("tiny:", "preset:")))


def _prompt_ids(args, config, tok) -> tuple[list[int], frozenset]:
    if tok is None:  # a shape without a vocabulary: bytes as ids
        ids = [3 + b % (config.vocab_size - 3) for b in args.prompt.encode()]
        return ids, frozenset()
    if args.no_chat_template or tok.chat is None:
        ids = tok.encode(args.prompt)
    else:
        ids = tok.encode_chat(args.prompt, system=args.system)
    return ids, tok.stop_ids()


# -- sharded generate ---------------------------------------------------------------------------------
def serving_job(args, source, config, tok) -> ServingJob:
    """The job of ``meshemu generate``'s flags: the prompt ``--requests`` times at once."""
    check_layout(config, args.tp, args.pp)  # before a single shard process starts
    prompt, stop_ids = _prompt_ids(args, config, tok)
    if not prompt:
        raise InputError("the prompt is empty (0 tokens)")
    if len(prompt) + args.max_new_tokens > config.max_context:
        raise InputError(f"{len(prompt)} prompt tokens + --max-new-tokens {args.max_new_tokens} exceed "
                         f"{config.name or 'the model'}'s context of {config.max_context} tokens")
    temperature = 0.0 if args.greedy else args.temperature
    requests = [Request(tuple(prompt), max_new_tokens=args.max_new_tokens, temperature=temperature,
                        top_p=args.top_p if temperature > 0 else 1.0, seed=args.seed, stop_ids=tuple(sorted(stop_ids)),
                        request_id=uuid.uuid4().hex) for _ in range(args.requests)]
    plan = ServingPlan(source, tp=args.tp, pp=args.pp, allreduce=args.allreduce, compute=args.compute)
    return ServingJob(plan, tuple(requests), concurrency=args.requests, timeout_s=args.timeout,
                      step_timeout_s=args.step_timeout)


def run_sharded_generate(args) -> int:
    from meshemu.serving.client_process import run_job
    from meshemu.serving.metrics import JsonLines

    if not (args.loopback or args.constellation):
        raise InputError("sharded serving needs --loopback (local processes) or --constellation NAME (a mesh)")
    check_mesh_only(args)
    source, config, tok = describe_model(args.model)
    device = parse_compute(args.compute)
    job = serving_job(args, source, config, tok)
    out = _Streamer(tok)
    records = []
    loaded = {}

    def on_event(event):
        kind = event["event"]
        if kind == "token" and event["request"] == 0:
            out.add(event["token"])
        elif kind == "loaded":
            loaded["replies"] = event["replies"]
        elif kind == "request":
            records.append(event)

    metrics = JsonLines(args.metrics)
    t0 = time.perf_counter()
    try:
        if args.loopback:
            from meshemu.serving.launch import ShardProcesses, start_loopback

            with ShardProcesses() as procs:
                addrs = start_loopback(procs, job.plan.n_ranks, step_timeout_s=args.step_timeout)
                nodes = [f"loopback{k}" for k in range(len(addrs))]
                run_job(job.placed(addrs, nodes), on_event)
                cpu = procs.cpu_latency.status
            ctx_info = {"mode": "loopback", "rank_nodes": nodes, "client_node": "loopback", "backend": "loopback",
                        "cpu_latency": cpu}
            ctx = _context(args, config, device, nodes, "client", None)
        else:
            ctx, ctx_info = _run_in_mesh(args, config, device, job, on_event)
    finally:
        out.finish()
    _report(args, records, ctx, ctx_info, loaded, metrics, config, time.perf_counter() - t0)
    metrics.close()
    failed = [r for r in records if r.get("error")]
    if failed:
        raise InputError(failed[0]["error"]) if len(records) == 1 else InputError(
            f"{len(failed)} of {len(records)} requests failed; first: {failed[0]['error']}")
    return 0


class _Streamer:
    """Prints the first request's text as its tokens arrive (holding back a partial UTF-8 character)."""

    def __init__(self, tok):
        self.tok, self.ids, self.printed = tok, [], 0

    def _text(self) -> str:
        if self.tok is None:
            return " ".join(str(i) for i in self.ids)
        return self.tok.decode(self.ids)

    def add(self, token: int) -> None:
        self.ids.append(token)
        text = self._text()
        if text.endswith("\ufffd"):
            return
        sys.stdout.write(text[self.printed:])
        sys.stdout.flush()
        self.printed = len(text)

    def finish(self) -> None:
        sys.stdout.write(self._text()[self.printed:] + "\n")
        sys.stdout.flush()


def _context(args, config, device, rank_nodes, client_node, where):
    return make_context(config, device, tp=args.tp, pp=args.pp, allreduce=args.allreduce, rank_nodes=rank_nodes,
                        client_node=client_node, where=where, hop_overhead_ms=args.hop_overhead_ms)


def _run_in_mesh(args, config, device, job, on_event):
    from meshemu.cli.scenario import scenario_of
    from meshemu.cli.topology import compute_series
    from meshemu.constellation import load_constellation
    from meshemu.deployment import MeshRun, deploy

    series = compute_series(scenario_of(load_constellation(args.constellation), start_s=args.start,
                                        duration_s=args.duration, step_s=args.step))
    run = MeshRun(job, ground_station=args.ground_station, placement=args.placement, shaper=args.shaper,
                  time_scale=args.time_scale, routes=args.routes)
    dep = deploy(series, run, on_event=on_event, log=lambda line: print(f"meshemu: {line}", file=sys.stderr))
    info = dict(dep.info(), mode="mesh", constellation=series.constellation, ground_station=dep.client_node,
                start_s=args.start, step_s=args.step)
    return _context(args, config, device, dep.rank_nodes, dep.client_node, dep), info


def _report(args, records, ctx, info, loaded, metrics, config, wall_s) -> None:
    from meshemu.serving.client import record_from_row
    from meshemu.serving.report import analyse, comparison_line

    run_row = {"kind": "run", "tp": args.tp, "pp": args.pp, "allreduce": args.allreduce, "compute": args.compute,
               "model": config.name, "config": config.to_dict(), "requests": args.requests,
               "load": loaded.get("replies"), **info, "wall_s": wall_s,
               "hop_overhead_s": ctx.overhead_s, "bandwidth_Bps": ctx.bandwidth_Bps}
    metrics.write(run_row)
    where = info.get("constellation", "loopback")
    print(f"meshemu: tp {args.tp} x pp {args.pp}, {args.allreduce} all-reduce, {args.compute} compute, "
          f"{where} ({info['backend']}); cpu idle: {info.get('cpu_latency') or 'not recorded'}", file=sys.stderr)
    tokens_total, e2e = 0, 0.0
    for event in sorted(records, key=lambda e: e["request"]):
        rec = record_from_row(event["record"])
        row, token_rows, route_rows, _ = analyse(rec, ctx)
        row.update(tp=args.tp, pp=args.pp, allreduce=args.allreduce, placement=info.get("placement", "loopback"),
                   error=event.get("error", row.get("error", "")))
        metrics.write(row)
        for r in token_rows + route_rows:
            metrics.write(r)
        tokens_total += row["tokens"]
        e2e = max(e2e, row.get("e2e_s") or 0.0)
        print(f"meshemu: request {event['request']}: {comparison_line(row)}", file=sys.stderr)
    if len(records) > 1 and e2e > 0:
        print(f"meshemu: {len(records)} requests at once: {tokens_total} tokens in {e2e:.2f} s, "
              f"{tokens_total / e2e:.1f} tok/s in all", file=sys.stderr)


# -- the benchmark ---------------------------------------------------------------------------------------
BASELINE_BYTES = 2400
BASELINE_IDLE_S = 0.003
_ECHO = """
import socket, sys
s = socket.create_server(("127.0.0.1", 0)); print(s.getsockname()[1], flush=True)
c, _ = s.accept(); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
while (d := c.recv(1 << 16)):
    c.sendall(d)
"""


def loopback_baseline(rounds: int = 300) -> tuple[float, float]:
    """Median one-way time of a message echoed over TCP on loopback by a bare Python process, back to back
    and after :data:`BASELINE_IDLE_S` of idling: what the host's kernel and scheduler cost before any framing,
    so the data plane's floor can be read against it (on an idle virtual CPU, waking is most of it)."""
    import socket
    import subprocess

    child = subprocess.Popen([sys.executable, "-c", _ECHO], stdout=subprocess.PIPE, text=True)
    try:
        port = int(child.stdout.readline())
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            msg = b"x" * BASELINE_BYTES

            def trip(idle_s):
                time.sleep(idle_s)
                t0 = time.perf_counter()
                sock.sendall(msg)
                got = 0
                while got < len(msg):
                    got += len(sock.recv(1 << 16))
                return (time.perf_counter() - t0) / 2
            return tuple(statistics.median(trip(idle) for _ in range(rounds)) for idle in (0.0, BASELINE_IDLE_S))
    finally:
        child.kill()
        child.wait()


def _layouts(text):
    out = []
    for item in text.split(","):
        shape, _, algo = item.strip().partition(":")
        t, _, p = shape.partition("x")
        if not (t.isdigit() and p.isdigit()) or algo not in ("", "ring", "direct"):
            raise InputError(f"bad layout {item!r}: expected TPxPP[:ring|direct]")
        if int(t) < 1 or int(p) < 1:
            raise InputError(f"bad layout {item!r}: tp and pp must be at least 1")
        out.append((int(t), int(p), algo or "ring"))
    return out


def _counts(text):
    """``--concurrency 1,2,4``: micro-batch counts, each within [1, MAX_REQUESTS]."""
    out = []
    for item in text.split(","):
        if not item.strip():
            continue
        if not item.strip().isdigit() or not 1 <= int(item) <= MAX_REQUESTS:
            # before: 'x' was a traceback and 0 printed a row of 0 requests
            raise InputError(f"--concurrency {item.strip()!r}: each count is a whole number within [1, {MAX_REQUESTS}]")
        out.append(int(item))
    return out


def run_bench(args) -> int:
    import os

    from meshemu.serving.transport import DATA_PLANE_ENV

    planes = ("tcp", "grpc") if args.data_plane == "both" else (args.data_plane,)
    before = os.environ.get(DATA_PLANE_ENV)
    try:
        for plane in planes:
            os.environ[DATA_PLANE_ENV] = plane  # the shard processes inherit it
            _run_bench(args, plane)
    finally:
        if before is None:
            os.environ.pop(DATA_PLANE_ENV, None)
        else:
            os.environ[DATA_PLANE_ENV] = before
    return 0


def _run_bench(args, plane: str) -> None:
    from dataclasses import replace

    from meshemu.experiments.network import measured_floor
    from meshemu.model.partition import pipeline_ranges
    from meshemu.serving.client import ServingClient
    from meshemu.serving.launch import ShardProcesses, start_loopback
    from meshemu.serving.metrics import JsonLines
    from meshemu.serving.predict import allreduce_messages_per_token
    from meshemu.serving.report import RunContext, analyse

    layouts = _layouts(args.layouts)
    concurrency = _counts(args.concurrency)
    if args.tokens < 2 or args.hop_tokens < 2:
        raise InputError("--tokens and --hop-tokens must be >= 2")
    source, config, tok = describe_model(args.model)
    for t, p, _ in layouts:  # before a single shard process starts (100x100 started 10,000 of them)
        try:
            check_layout(config, t, p)
        except InputError as err:
            raise InputError(f"--layouts {t}x{p}: {err}") from None
    prompt = tuple(tok.encode("Satellites in low Earth orbit pass over a ground station every ninety minutes.")
                   if tok is not None else range(3, 19))
    metrics = JsonLines(args.metrics)
    need = max([t * p for t, p, _ in layouts] + [4, 3])
    with ShardProcesses() as procs:
        addrs = start_loopback(procs, need, step_timeout_s=30.0)

        def serve(model, t, p, algo, reqs, m=1, ids=prompt):
            """The records of ``m`` requests at once, their wall time, and every shard's Metrics after them."""
            with ServingClient(ServingPlan(model, addrs[:t * p], t, p, algo), step_timeout_s=30.0) as client:
                client.load()
                client.generate(Request(ids[:4], max_new_tokens=2))  # warm the streams
                t0 = time.perf_counter()
                out = client.generate_many([Request(ids, max_new_tokens=reqs) for _ in range(m)])
                wall_s = time.perf_counter() - t0
                return out, wall_s, client.metrics()

        print(f"data plane: {plane}; cpu idle: {procs.cpu_latency.status}")
        # 0. What this host's loopback costs with no framing at all: the floor under every figure below.
        warm_s, idle_s = loopback_baseline()
        print(f"loopback one way, {BASELINE_BYTES} B echoed by a bare process: {warm_s * 1e6:.0f} us back to back, "
              f"{idle_s * 1e6:.0f} us after {BASELINE_IDLE_S * 1e3:.0f} ms idle (a pipeline stage's wait)")
        metrics.write({"kind": "bench_loopback", "one_way_s_warm": warm_s, "one_way_s_after_idle": idle_s,
                       "data_plane": plane})

        # 1. Hop overhead: a 4-stage pipeline of a 576-wide tiny model, compute subtracted.
        hop_model = "tiny:llama:0:hidden_size=576:n_layers=4:head_dim=96:ffn_size=64:max_context=512"
        [rec], _, shards = serve(hop_model, 1, 4, "ring", args.hop_tokens, ids=tuple(range(3, 19)))
        hop_floor = measured_floor(shards, lambda a, b: 0.0)
        decode = rec.tokens[1:]
        per_hop = [t.hop_s / 4 for t in decode]
        compute = [t.compute_s for t in decode]
        hop_ms = statistics.median(per_hop) * 1e3
        print(f"hop      median {hop_ms:.3f} ms per pipeline hop (576 float32 = 2304 B), p90 "
              f"{sorted(per_hop)[int(0.9 * len(per_hop))] * 1e3:.3f} ms; cycle of 4 hops "
              f"{statistics.median(t.cycle_s for t in decode) * 1e3:.2f} ms, compute "
              f"{statistics.median(compute) * 1e3:.2f} ms ({len(decode)} tokens; goal < 0.150 ms)")
        # the same frames up to the moment the shard process read them: the rest is the hand-off to the pass
        hop_read = measured_floor(shards, lambda a, b: 0.0, counters="arrival")
        if hop_floor:
            print(f"         send to use, as the shards measured each frame: "
                  + ", ".join(f"{k} {v * 1e3:.3f} ms" for k, v in hop_floor.by_kind.items())
                  + ("; of it send to read: " + ", ".join(f"{k} {v * 1e3:.3f} ms" for k, v in
                                                           hop_read.by_kind.items()) if hop_read else ""))
        metrics.write({"kind": "bench_hop", "hop_ms_median": hop_ms, "tokens": len(decode), "data_plane": plane,
                       "floor_by_kind_s": hop_floor.by_kind if hop_floor else {}})
        overhead_s = hop_ms / 1e3

        # 2. Layouts of the real model: decode tokens/s, predicted beside measured, with the idle hop's cost
        # per message and again with the floor the shards measured under the layout's own load.
        print(f"model    {config.name}: {config.n_layers} layers, hidden {config.hidden_size}; "
              f"{args.tokens} tokens per request; prediction with o = {hop_ms:.3f} ms per message, then with "
              "the floor the shards measured in the run")
        print(f"{'layout':<12} {'tok/s':>7} {'TPOT ms':>8} {'pred ms':>8} {'err':>7} {'compute':>8} "
              f"{'collect':>8} {'hops':>7} {'floor ms':>8} {'pred@fl':>8} {'err@fl':>7} {'coll/msg':>8}")
        for t, p, algo in layouts:
            [rec], _, shards = serve(source, t, p, algo, args.tokens)
            if isinstance(rec, Exception):
                print(f"{t}x{p} {algo}: {rec}")
                continue
            layers = [b - a for a, b in pipeline_ranges(config.n_layers, p)]
            ctx = RunContext(tp=t, pp=p, algorithm=algo, layers=layers,
                             rank_nodes=[f"r{k}" for k in range(t * p)], client_node="c",
                             activation_bytes=4 * config.hidden_size, overhead_s=overhead_s)
            row, *_ = analyse(rec, ctx)
            # the floor beside every result: what one message cost in this run as the shards measured it
            # (loopback: no path delay to take off), and for TP what one all-reduce message cost on the critical
            # path (collective time over its messages)
            floor = measured_floor(shards, lambda a, b: 0.0)
            loaded = analyse(rec, replace(ctx, overhead_s=floor.per_message_s))[0] if floor else {}
            n_msg = allreduce_messages_per_token(t, algo, layers)
            per_msg_s = row["collective_s_per_token"] / n_msg if n_msg else None
            row.update(kind="bench_layout", tp=t, pp=p, allreduce=algo, data_plane=plane, hop_s=overhead_s,
                       floor_s=floor.per_message_s if floor else None,
                       floor_by_kind_s=floor.by_kind if floor else {},
                       predicted_tpot_loaded_s=loaded.get("predicted_tpot_s"),
                       tpot_error_loaded=loaded.get("tpot_error"), collective_s_per_message=per_msg_s)
            metrics.write(row)
            print(f"{t}x{p} {algo:<7} {row['decode_tokens_per_s']:7.1f} {row['tpot_s'] * 1e3:8.2f} "
                  f"{row['predicted_tpot_s'] * 1e3:8.2f} {row['tpot_error']:+7.1%} "
                  f"{row['compute_s_per_token'] * 1e3:8.2f} {row['collective_s_per_token'] * 1e3:8.2f} "
                  f"{row['hop_s_per_token'] * 1e3:7.2f} "
                  + (f"{floor.per_message_s * 1e3:8.3f} {loaded['predicted_tpot_s'] * 1e3:8.2f} "
                     f"{loaded['tpot_error']:+7.1%} " if floor else f"{'-':>8} {'-':>8} {'-':>7} ")
                  + (f"{per_msg_s * 1e3:8.3f}" if per_msg_s is not None else f"{'-':>8}"))

        # 3. Micro-batching: m requests at once through a 3-stage pipeline.
        for m in concurrency:
            recs, wall, _ = serve(source, 1, 3, "ring", args.tokens, m)
            ok = [r for r in recs if not isinstance(r, Exception)]
            total = sum(len(r.tokens) for r in ok)
            print(f"1x3 m={m:<3} {total / wall:7.1f} tok/s in all ({len(ok)} of {m} requests, "
                  f"{total} tokens in {wall:.2f} s)")
            metrics.write({"kind": "bench_microbatch", "m": m, "tokens_per_s": total / wall, "wall_s": wall,
                           "data_plane": plane})
    metrics.close()

