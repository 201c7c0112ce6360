"""A rank lost mid-request on loopback: the request recovers on a replacement shard with the same tokens."""

import signal
import time

import pytest

from meshemu.serving.client import ServingError
from meshemu.serving.job import Recovery, Request, ServingJob, ServingPlan
from meshemu.serving.launch import ShardProcesses, start_loopback
from meshemu.serving.recovery import Instruction, RecoveringClient

PROMPT = (1, 5, 9, 4, 17)
N = 40


class Spares:
    """A controller that starts a fresh loopback shard for each lost rank (what the deployment does on a satellite)."""

    def __init__(self, procs):
        self.procs, self.calls = procs, []

    def __call__(self, lost, plan, noticed_clock_s):
        t0 = time.monotonic()
        ranks, nodes = list(plan.ranks), list(plan.nodes)
        for r in lost:
            ranks[r] = self.procs.start_shards(["127.0.0.1:0"], nodes=[f"spare{r}"], step_timeout_s=5.0)[0]
            nodes[r] = f"spare{r}"
        self.calls.append(list(lost))
        return Instruction(tuple(ranks), tuple(nodes), place_s=time.monotonic() - t0)


def serve_and_kill(tp, pp, victim, *, requests=1, policy="replace", kill_at=12):
    with ShardProcesses() as procs:
        addrs = start_loopback(procs, tp * pp, step_timeout_s=5.0)
        plan = ServingPlan("tiny:llama:0", addrs, tp=tp, pp=pp, nodes=[f"loopback{k}" for k in range(tp * pp)])
        spares = Spares(procs)
        shard = procs.procs[victim]
        client = RecoveringClient(plan, Recovery(policy=policy, detect_timeout_s=1.0), spares, timeout_s=60)
        try:
            client.load()

            def on_token(i, ev, rec):
                if ev.index == kill_at and shard.poll() is None:
                    shard.send_signal(signal.SIGKILL)  # a satellite gone dark: no goodbye
            out = client.generate_many([Request(PROMPT, max_new_tokens=N) for _ in range(requests)],
                                       on_token=on_token)
        finally:
            client.close()
        return out, spares


@pytest.mark.parametrize("tp,pp,victim", [(1, 2, 1), (1, 2, 0), (2, 1, 1), (2, 2, 3)])
def test_greedy_tokens_are_those_of_a_run_without_the_fault(tiny_reference, tp, pp, victim):
    [rec], spares = serve_and_kill(tp, pp, victim)
    assert not isinstance(rec, Exception), rec
    assert rec.token_ids == tiny_reference("llama", PROMPT, N)[0]
    assert spares.calls == [[victim]]
    [r] = rec.recoveries
    assert r["lost_ranks"] == [victim] and r["new_nodes"][victim] == f"spare{victim}"
    assert r["tokens_before"] >= 12  # it failed after the kill, not before
    for part in ("probe_s", "place_s", "load_s", "reprefill_s"):
        assert 0 <= r[part] < 10, (part, r)
    summary = rec.summary()
    assert summary["recovered"] and summary["tpot_s"] < 1.0  # the recovery's gap is not a decode step


def test_requests_in_flight_share_one_recovery(tiny_reference):
    recs, spares = serve_and_kill(1, 2, 1, requests=3)
    assert spares.calls == [[1]]  # one replacement, not one per request
    want = tiny_reference("llama", PROMPT, N)[0]
    assert all(not isinstance(r, Exception) and r.token_ids == want for r in recs), recs


def test_policy_fail_keeps_the_error():
    [rec], spares = serve_and_kill(1, 2, 1, policy="fail")
    assert isinstance(rec, ServingError) and spares.calls == []
    assert 12 <= len(rec.record.tokens) < N


def test_a_job_carries_its_recovery():
    job = ServingJob(ServingPlan("tiny:llama:0", pp=2), (Request(PROMPT),),
                     recovery=Recovery(policy="wait", detect_timeout_s=0.5))
    assert ServingJob.from_json(job.to_json()).recovery == job.recovery
    with pytest.raises(Exception, match="uplink_rate_mbps"):
        Recovery(policy="replace", weights="uplink")
