"""The client: load a model onto the shards, send prompts to the head, receive streamed tokens.

It needs only the shards' addresses, so it runs the same in this process (on
loopback) and inside a ground station's namespace, as the process of
:mod:`meshemu.serving.client_process`.

Every call has a deadline; a shard that is down, or a path that stays down,
turns into a :class:`ServingError` naming what failed, never a hang.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent import futures
from dataclasses import asdict

import grpc

from meshemu.errors import InputError, MeshemuError
from meshemu.serving.job import Request, ServingJob, ServingPlan  # noqa: F401 - the names callers know
from meshemu.serving.metrics import RequestRecord
from meshemu.serving.rpc import shard_pb2 as pb
from meshemu.serving.tensors import decode
from meshemu.serving.transport import stub


class ServingError(MeshemuError):
    """A request or a load failed on the shards; the message says where."""


def _rpc_error(err: grpc.RpcError, what: str) -> ServingError:
    return ServingError(f"{what}: {err.code().name}: {err.details()}")


class ServingClient:
    """Talks to every shard of a :class:`ServingPlan` (use as a context manager)."""

    def __init__(self, plan: ServingPlan, *, step_timeout_s: float = 10.0, reuse=None):
        if not plan.ranks:
            raise InputError(f"no shard addresses for tp {plan.tp} x pp {plan.pp}: start the shards first")
        self.plan = plan
        self.step_timeout_s = step_timeout_s
        # channels already connected to a shard that stays (a recovery replaced another) are kept: a new
        # connection across the mesh costs round trips, and more after a loss
        kept = {} if reuse is None else {a: s for a, s in zip(reuse.plan.ranks, reuse._stubs)}
        self._stubs = [kept.pop(a) if a in kept else stub(a) for a in plan.ranks]
        for ch, _ in kept.values():
            ch.close()
        if reuse is not None:
            reuse._stubs = []  # now this client's
        self.load_replies: list = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def close(self) -> None:
        for ch, _ in self._stubs:
            ch.close()

    def _name(self, r: int) -> str:
        node = f" on {self.plan.nodes[r]}" if r < len(self.plan.nodes) and self.plan.nodes[r] else ""
        return f"rank {r}{node} ({self.plan.ranks[r]})"

    def wait_ready(self, timeout_s: float = 30.0) -> list:
        """Health of every shard, waiting up to ``timeout_s`` for each to answer."""
        replies = []
        for r, (_, s) in enumerate(self._stubs):
            try:
                replies.append(s.Health(pb.HealthRequest(), timeout=timeout_s, wait_for_ready=True))
            except grpc.RpcError as err:
                raise _rpc_error(err, f"{self._name(r)} is unreachable") from None
        return replies

    def load(self, timeout_s: float = 300.0) -> list:
        """Give every rank its part of the model (in parallel); return the replies by rank."""
        p = self.plan

        def one(r):
            req = pb.LoadRequest(model=p.model, ranks=p.ranks, rank=r, tp_size=p.tp, n_stages=p.pp,
                                 allreduce=p.allreduce, compute=p.compute, peak_flops=p.peak_flops,
                                 peak_bandwidth_Bps=p.peak_bandwidth_Bps,
                                 node=p.nodes[r] if r < len(p.nodes) else "")
            try:
                return self._stubs[r][1].Load(req, timeout=timeout_s, wait_for_ready=True)
            except grpc.RpcError as err:
                raise _rpc_error(err, f"loading {self._name(r)}") from None

        with futures.ThreadPoolExecutor(max_workers=len(p.ranks)) as pool:
            replies = list(pool.map(one, range(len(p.ranks))))
        if len({r.config_json for r in replies}) != 1:
            raise ServingError("the shards loaded different models")
        self.load_replies = replies
        return replies

    def generate(self, request: Request, *, timeout_s: float = 300.0, on_token=None) -> RequestRecord:
        """Run one request; ``on_token(event, record)`` sees each token as it arrives.

        Raises :class:`ServingError` when the request fails (the record so far is
        attached as ``err.record``).
        """
        req = pb.GenerateRequest(request_id=request.request_id, prompt=request.prompt,
                                 max_new_tokens=request.max_new_tokens,
                                 sampling=pb.Sampling(temperature=request.temperature, top_p=request.top_p,
                                                      seed=request.seed),
                                 stop_ids=request.stop_ids, step_timeout_s=self.step_timeout_s,
                                 return_logits=request.return_logits)
        record = RequestRecord(request.request_id, len(request.prompt))
        record.logits = []
        record.sent_clock_s = time.monotonic()
        t0 = time.perf_counter()
        try:
            for ev in self._stubs[0][1].Generate(req, timeout=timeout_s, wait_for_ready=True):
                arrival = time.perf_counter() - t0
                stages = sorted(ev.timings, key=lambda s: s.stage)
                record.add_token(ev.index, ev.token, arrival, cycle_s=ev.cycle_s,
                                 compute_s=sum(s.compute_s for s in stages),
                                 collective_s=sum(s.collective_s for s in stages), clock_s=time.monotonic(),
                                 stage_compute_s=[s.compute_s for s in stages])
                if ev.HasField("logits"):
                    record.logits.append(decode(ev.logits))
                if ev.done:
                    record.stop_reason = ev.stop_reason
                if on_token is not None:
                    on_token(ev, record)
        except grpc.RpcError as err:
            record.error = f"{err.code().name}: {err.details()}"
            failure = ServingError(f"request {request.request_id[:8]} failed after {len(record.tokens)} tokens "
                                   f"and {time.perf_counter() - t0:.2f} s: {record.error}")
            failure.record = record
            raise failure from None
        return record

    def generate_many(self, requests, *, timeout_s: float = 300.0, on_token=None) -> list:
        """Run ``requests`` concurrently (micro-batches in the pipeline); records, or errors, in order."""
        return generate_all(lambda r, on_token: self.generate(r, timeout_s=timeout_s, on_token=on_token),
                            requests, on_token)

    def metrics(self, timeout_s: float = 5.0) -> list:
        out = []
        for r, (_, s) in enumerate(self._stubs):
            try:
                out.append(json.loads(s.Metrics(pb.MetricsRequest(), timeout=timeout_s).json))
            except grpc.RpcError as err:
                out.append({"rank": r, "error": f"{err.code().name}: {err.details()}"})
        return out


# -- a job: what the CLI asks a client in a ground station's namespace to do ---------------------
def generate_all(generate, requests, on_token=None) -> list:
    """``generate(request, on_token)`` for every request at once, one thread each; records, or errors, in order.

    ``on_token(i, event, record)`` sees request i's tokens.
    """
    out = [None] * len(requests)

    def one(i):
        try:
            out[i] = generate(requests[i], None if on_token is None else lambda ev, rec: on_token(i, ev, rec))
        except ServingError as err:
            out[i] = err
    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def load_row(r) -> dict:
    return {"rank": r.rank, "stage": r.stage, "tp_rank": r.tp_rank, "layers": [r.layer_start, r.layer_stop],
            "q_heads": list(r.q_heads), "kv_heads": list(r.kv_heads), "ffn": [r.ffn_start, r.ffn_stop],
            "load_s": r.load_s, "weight_bytes": r.weight_bytes, "model": r.model_name}


def record_row(rec: RequestRecord) -> dict:
    row = asdict(rec)
    row.pop("tokens")
    row["token_rows"] = rec.token_rows()
    row["logits"] = [a.tolist() for a in getattr(rec, "logits", [])]
    return row


def record_from_row(row: dict) -> RequestRecord:
    rec = RequestRecord(row["request_id"], row["prompt_tokens"], stop_reason=row["stop_reason"],
                        error=row["error"], sent_clock_s=row["sent_clock_s"],
                        stage_compute_s=row["stage_compute_s"], recoveries=row["recoveries"])
    for t in row["token_rows"]:
        rec.add_token(t["index"], t["token"], t["arrival_s"], cycle_s=t["cycle_s"], compute_s=t["compute_s"],
                      collective_s=t["collective_s"], clock_s=t["clock_s"])
    rec.logits = row.get("logits", [])
    return rec
