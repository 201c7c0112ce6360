"""Each recovery of a run measured beside its prediction, part by part.

A recovery runs from the fault to the first token after it:

- ``detect``: the client notices when the next token is ``detect_timeout_s``
  late. Predicted from the fault's moment in the token cadence: the last token
  before the fault + the timeout - the fault.
- ``probe``: asking every rank's Health; a rank on a dark satellite does not
  answer until the probe's timeout, unless keepalive has already found its
  connection dead (a reset one refuses at once).
- ``place``: the deployment's choice and a shard process started on the spare
  (predicted: one shard process started alone at the beginning of the run),
  plus a modelled uplink of the weights; or, with ``wait``, until the satellite is back.
- ``load``: connecting to every rank and loading the new plan at once
  (predicted: what that took the client at the start of the run).
- ``reprefill``: the prompt and the tokens so far, prefilled on the new
  placement (predicted: the model's TTFT for that many tokens at that step, the
  prompt's measured prefill compute scaled by the length, corrected by the
  ratio of the request's own measured to predicted TTFT).
"""

from __future__ import annotations

import dataclasses

from meshemu.model import Transformer, generate
from meshemu.serving.compute import load_source
from meshemu.serving.recovery import probe_timeout_s
from meshemu.serving.report import predict_at
from meshemu.serving.transport import KEEPALIVE_MS, KEEPALIVE_TIMEOUT_MS

# a connection whose peer went silent is declared dead after a keepalive interval and its timeout
KEEPALIVE_DEAD_S = (KEEPALIVE_MS + KEEPALIVE_TIMEOUT_MS) / 1e3

PARTS = ("detect_s", "probe_s", "place_s", "load_s", "reprefill_s")


def reference_tokens(source: str, requests) -> list[list[int]]:
    """What the whole model, unsharded and untouched by any fault, answers to each greedy request here.

    The proof that a recovery changed no token: the same prompts through one
    process's copy of the model (seconds for SmolLM2-sized models).
    """
    config, weights = load_source(source)
    model = Transformer(weights)
    out = []
    for r in requests:
        res = generate(model, list(r.prompt), max_new_tokens=r.max_new_tokens, stop_ids=frozenset(r.stop_ids))
        out.append(list(res.new_tokens))
    return out


def fault_before(dep, clock_s: float) -> tuple[int, dict] | None:
    """The last fault that fired at or before ``clock_s``: (index, its record)."""
    fired = [(i, rec) for i, rec in dep.schedule.fired.items() if rec["clock_s"] <= clock_s]
    return max(fired, key=lambda x: x[1]["clock_s"]) if fired else None


def recovery_rows(dep, record, ctx, row: dict) -> list[dict]:
    """One row per recovery of ``record`` (a request), measured and predicted parts side by side."""
    out = []
    recovery = dep.run.job.recovery
    timeout = recovery.detect_timeout_s
    tokens = record.tokens
    for k, rec in enumerate(record.recoveries):
        hit = fault_before(dep, rec["noticed_clock_s"])
        if hit is None:
            continue
        i, fired = hit
        fault = dep.schedule.faults[i]
        # the head's timeout runs from the last token that got through (one may have been in flight at the fault)
        before = [t.clock_s for t in tokens if t.clock_s <= rec["noticed_clock_s"]]
        last = before[-1] if before else record.sent_clock_s
        measured = {"detect_s": rec["noticed_clock_s"] - fired["clock_s"], "probe_s": rec["probe_s"],
                    "place_s": rec["place_s"], "load_s": rec["load_s"], "reprefill_s": rec.get("reprefill_s")}
        step = dep.step_at(rec["noticed_clock_s"])
        dark = fault.kind in ("dark", "station")
        deployment_side = next((d for d in dep.recoveries if abs(d["clock_s"] - rec["noticed_clock_s"]) < 1e-6), {})
        waited = deployment_side.get("waited_s", 0.0)
        dark_now = dep.schedule.dark_nodes(step)
        rtts = [dep.routes.rtt_s(step, dep.node(dep.client_node), dep.node(n)) for n in dep.rank_nodes_at(last)
                if dep.node(n) not in dark_now]
        rtt = max([r for r in rtts if r != float("inf")] or [0.0])
        predicted = {"detect_s": max(0.0, last + timeout - fired["clock_s"]),
                     # by then keepalive has found the dark satellite's connection dead: Health fails at once,
                     # and the live ranks answer in a round trip
                     "probe_s": probe_timeout_s(timeout) if dark and timeout < KEEPALIVE_DEAD_S else rtt,
                     "place_s": waited if waited else dep.single_shard_start_s + deployment_side.get("uplink_s", 0.0),
                     "load_s": dep.connect_load_s()}
        new_nodes = rec.get("new_nodes") or list(ctx.rank_nodes)
        moved = dataclasses.replace(ctx, rank_nodes=list(new_nodes))
        n_prompt = record.prompt_tokens + rec["tokens_before"]
        per_stage = [s for s in (record.stage_compute_s[1:] or record.stage_compute_s)]
        if per_stage and record.stage_compute_s:
            stage_compute = [sorted(col)[len(col) // 2] for col in zip(*per_stage)]
            prefill = [c * n_prompt / max(1, record.prompt_tokens) for c in record.stage_compute_s[0]]
            # the model's TTFT, corrected by how far it was off for this request's own first token
            first = predict_at(ctx, dep.step_at(tokens[0].clock_s), stage_compute, list(record.stage_compute_s[0]),
                               record.prompt_tokens).ttft_s
            scale = tokens[0].arrival_s / first if first and first != float("inf") else 1.0
            predicted["reprefill_s"] = predict_at(moved, step, stage_compute, prefill, n_prompt).ttft_s * scale
        else:
            predicted["reprefill_s"] = None
        total = (rec["resumed_clock_s"] - fired["clock_s"]) if "resumed_clock_s" in rec else None
        total_pred = sum(v for v in predicted.values() if v is not None)
        out.append({"request": row.get("request"), "recovery": k, "fault": i, "kind": fault.kind,
                    "target": fault.target, "lost_nodes": " ".join(rec["lost_nodes"]),
                    "new_nodes": " ".join(new_nodes), "decision": deployment_side.get("decision", rec.get("note", "")),
                    "tokens_before": rec["tokens_before"], "recovery_s": total, "predicted_recovery_s": total_pred,
                    "recovery_error": (total / total_pred - 1) if total and total_pred else None,
                    **{k2: measured[k2] for k2 in PARTS}, **{f"predicted_{k2}": predicted[k2] for k2 in PARTS}})
    return out
