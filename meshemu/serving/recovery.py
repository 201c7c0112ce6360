"""Requests that outlive a lost rank: find who is gone, have it replaced, reload, re-prefill, go on.

A :class:`RecoveringClient` wraps a :class:`~meshemu.serving.client.ServingClient`.
When a request fails (no token within the recovery's ``detect_timeout_s``, a
peer refused, a stream broke), it asks every rank's ``Health`` (each within
the same timeout): the ranks that do not answer are lost. A *controller*
(the deployment, which alone can start a process on a satellite) answers with
the plan's new addresses, a spare satellite's shard in a lost rank's place, or
the same one back; the client loads the new plan on every rank and sends the
prompt again with every token generated so far appended. The shards rebuild
their KV cache in that one prefill, so a greedy request's tokens are the same
as if nothing had happened. Concurrent requests share one recovery.

What each recovery cost is kept on the request's record, in parts measured on
the host's one clock (``time.monotonic()``): ``probe_s`` (finding the lost
ranks), ``place_s`` (the controller: choosing a spare, starting its shard, a
modelled uplink of the weights), ``load_s`` and ``reprefill_s`` (from the
request sent again to its first token). The deployment adds ``detect_s``, from
the fault to the client noticing, since only it knows when the fault fired.
"""

from __future__ import annotations

import threading
import time
from concurrent import futures
from dataclasses import dataclass, replace

import grpc

from meshemu.serving.client import ServingClient, ServingError, generate_all
from meshemu.serving.job import Recovery, Request, ServingPlan
from meshemu.serving.metrics import RequestRecord
from meshemu.serving.rpc import shard_pb2 as pb

MAX_RECOVERIES = 8  # per request: a plan that keeps losing ranks is reported, not retried for ever


def probe_timeout_s(detect_timeout_s: float) -> float:
    """How long a rank has to answer Health: a live shard answers in a round trip (< 0.3 s even via GEO-like
    paths), so a second is plenty, and the detect timeout bounds it."""
    return min(detect_timeout_s, 1.0)


@dataclass(frozen=True)
class Instruction:
    """A controller's answer: the plan's addresses now (rank order), and what choosing them took."""

    ranks: tuple[str, ...]
    nodes: tuple[str, ...]
    place_s: float = 0.0  # choosing spares and starting their shards (and any modelled uplink)
    waited_s: float = 0.0  # of place_s: waiting for a lost satellite to come back (policy wait)
    note: str = ""


@dataclass
class _Token:
    """A token event as the wrapped client's callers see it (index counted over the whole request)."""

    index: int
    token: int


class RecoveringClient:
    """A client for ``plan`` that recovers lost ranks through ``controller(lost_ranks, plan, noticed_clock_s)``.

    The controller returns an :class:`Instruction`, or None to give up.
    """

    def __init__(self, plan: ServingPlan, recovery: Recovery, controller, *, timeout_s: float = 600.0,
                 load_timeout_s: float = 300.0):
        self.plan, self.recovery, self.controller = plan, recovery, controller
        self.timeout_s, self.load_timeout_s = timeout_s, load_timeout_s
        self.client = ServingClient(plan, step_timeout_s=recovery.detect_timeout_s)
        self._generation = 0
        self._lock = threading.Lock()
        self._last: dict = {}  # the latest recovery, for requests that failed with the same generation

    def close(self) -> None:
        self.client.close()

    def load(self):
        return self.client.load(self.load_timeout_s)

    def metrics(self):
        return self.client.metrics()

    # -- one request ----------------------------------------------------------------------------
    def generate(self, request: Request, *, on_token=None) -> RequestRecord:
        record = RequestRecord(request.request_id, len(request.prompt))
        record.sent_clock_s = time.monotonic()
        t0 = time.perf_counter()
        done: list[int] = []
        while True:
            generation, client = self._generation, self.client
            # a new id each attempt: the shards may still hold the failed attempt's session under the old one
            attempt = len(record.recoveries)
            sub = replace(request, prompt=tuple(request.prompt) + tuple(done),
                          max_new_tokens=request.max_new_tokens - len(done),
                          request_id=request.request_id if not attempt else f"{request.request_id}.{attempt}")
            sent = time.monotonic()

            def relay(ev, inner, base=len(done), sent=sent):
                t = inner.tokens[-1]
                record.add_token(base + ev.index, ev.token, time.perf_counter() - t0, cycle_s=t.cycle_s,
                                 compute_s=t.compute_s, collective_s=t.collective_s, clock_s=t.clock_s,
                                 stage_compute_s=inner.stage_compute_s[-1] if inner.stage_compute_s else None)
                done.append(int(ev.token))
                if ev.index == 0 and base and record.recoveries and "reprefill_s" not in record.recoveries[-1]:
                    record.recoveries[-1]["reprefill_s"] = t.clock_s - sent
                    record.recoveries[-1]["resumed_clock_s"] = t.clock_s
                if on_token is not None:
                    on_token(_Token(base + ev.index, int(ev.token)), record)

            try:
                part = client.generate(sub, timeout_s=self.timeout_s, on_token=relay)
            except ServingError as err:
                if not self.recovery.enabled or len(record.recoveries) >= MAX_RECOVERIES \
                        or len(done) >= request.max_new_tokens:
                    record.error = err.record.error if getattr(err, "record", None) else str(err)
                    failure = ServingError(str(err))
                    failure.record = record
                    raise failure from None
                try:
                    info = self._recover(generation, str(err))
                except ServingError as gave_up:
                    record.error = str(gave_up)
                    gave_up.record = record
                    raise
                record.recoveries.append(dict(info, tokens_before=len(done)))
                continue
            record.stop_reason = part.stop_reason
            return record

    def generate_many(self, requests, *, on_token=None) -> list:
        """Like :meth:`ServingClient.generate_many`: records, or errors, in order."""
        return generate_all(lambda r, hook: self.generate(r, on_token=hook), requests, on_token)

    # -- one recovery, shared by every request that failed with this plan ------------------------
    def _recover(self, generation: int, error: str) -> dict:
        with self._lock:
            if self._generation != generation:  # another request recovered already: resume on its plan
                return dict(self._last, shared=True)
            noticed = time.monotonic()
            lost = self._lost_ranks()
            probed = time.monotonic()
            info = {"noticed_clock_s": noticed, "error": error, "lost_ranks": lost,
                    "lost_nodes": [self.plan.nodes[r] if r < len(self.plan.nodes) else "" for r in lost],
                    "probe_s": probed - noticed}
            instruction = self.controller(lost, self.plan, noticed)
            if instruction is None:
                raise ServingError(f"lost {self._names(lost)} and no recovery: {error}")
            placed = time.monotonic()
            plan = replace(self.plan, ranks=tuple(instruction.ranks), nodes=tuple(instruction.nodes))
            old = self.client
            self.plan, self.client = plan, ServingClient(plan, step_timeout_s=self.recovery.detect_timeout_s,
                                                         reuse=old)
            old.close()
            closed = time.monotonic()
            ready = []
            for r, (_, stub) in enumerate(self.client._stubs):
                t = time.monotonic()
                stub.Health(pb.HealthRequest(), timeout=self.load_timeout_s, wait_for_ready=True)
                ready.append(round(time.monotonic() - t, 3))
            connected = time.monotonic()
            self.client.load(self.load_timeout_s)
            loaded = time.monotonic()
            info.update(place_s=placed - probed, waited_s=instruction.waited_s, load_s=loaded - placed,
                        connect_s=connected - placed, close_s=closed - placed, ready_s=ready,
                        new_nodes=list(plan.nodes), note=instruction.note)
            self._generation += 1
            self._last = info
            return info

    def _lost_ranks(self) -> list[int]:
        """Ranks whose shard does not answer Health within the detect timeout (asked all at once)."""
        timeout = probe_timeout_s(self.recovery.detect_timeout_s)

        def alive(r) -> bool:
            try:
                self.client._stubs[r][1].Health(pb.HealthRequest(), timeout=timeout)
                return True
            except grpc.RpcError:
                return False
        with futures.ThreadPoolExecutor(max_workers=len(self.plan.ranks)) as pool:
            ok = list(pool.map(alive, range(len(self.plan.ranks))))
        return [r for r, up in enumerate(ok) if not up]

    def _names(self, ranks) -> str:
        return ", ".join(f"rank {r}" + (f" on {self.plan.nodes[r]}" if r < len(self.plan.nodes) else "")
                         for r in ranks) or "no rank"
