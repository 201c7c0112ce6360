"""The client as a process: one :class:`~meshemu.serving.job.ServingJob` run, its events printed as JSON lines.

``python -m meshemu.serving.client_process --job FILE`` (or ``--job -``: the
job is the first line of stdin) is what the deployment starts in a ground
station's namespace. Later lines of stdin answer the recoveries it asks for
(``lost`` on stdout, ``recover`` back): see :mod:`meshemu.serving.recovery`.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time

from meshemu.config import read_text
from meshemu.errors import MeshemuError
from meshemu.serving.client import ServingClient, ServingError, load_row, record_row
from meshemu.serving.job import ServingJob
from meshemu.serving.recovery import Instruction, RecoveringClient


def run_job(job: ServingJob, emit, controller=None) -> None:
    """Load the plan, run the requests (``concurrency`` at a time, ``gap_s`` apart), and ``emit`` events (dicts).

    Events: ``loaded`` (the shards' replies), ``token`` (as each arrives),
    ``request`` (its record, and its error if it failed), ``shards`` (their metrics).
    With ``job.recovery`` enabled and a ``controller`` (see :mod:`meshemu.serving.recovery`),
    a request that loses a rank is recovered instead of failed.
    """
    requests = job.requests
    if job.recovery.enabled and controller is not None:
        client = RecoveringClient(job.plan, job.recovery, controller, timeout_s=job.timeout_s,
                                  load_timeout_s=job.load_timeout_s)
        ready = client.client
    else:
        client = ready = ServingClient(job.plan, step_timeout_s=job.step_timeout_s)
    try:
        t0 = time.monotonic()
        ready.wait_ready(job.connect_timeout_s)
        replies = ready.load(job.load_timeout_s)
        emit({"event": "loaded", "replies": [load_row(r) for r in replies], "connect_load_s": time.monotonic() - t0})
        lock = threading.Lock()

        def on_token(i, ev, rec):
            with lock:
                emit({"event": "token", "request": i, "index": ev.index, "token": ev.token,
                      "t": rec.tokens[-1].arrival_s, "clock_s": rec.tokens[-1].clock_s})

        for first in range(0, len(requests), job.concurrency):
            if first and job.gap_s:
                time.sleep(job.gap_s)  # let the mesh move between batches
            batch = requests[first:first + job.concurrency]
            hook = lambda i, ev, rec, f=first: on_token(f + i, ev, rec)  # noqa: E731
            results = (client.generate_many(batch, on_token=hook) if client is not ready
                       else client.generate_many(batch, timeout_s=job.timeout_s, on_token=hook))
            for k, res in enumerate(results):
                i = first + k
                if isinstance(res, ServingError):
                    emit({"event": "request", "request": i, "error": str(res), "record": record_row(res.record)})
                else:
                    emit({"event": "request", "request": i, "record": record_row(res)})
        emit({"event": "shards", "metrics": client.metrics()})
    finally:
        client.close()


class PipeController:
    """The client's side of recovery in a ground station's namespace: ask the deployment on stdout, read its
    answer from stdin (one JSON line each way)."""

    def __init__(self, emit, answers):
        self.emit, self.answers = emit, answers

    def __call__(self, lost, plan, noticed_clock_s):
        self.emit({"event": "lost", "ranks": list(lost), "nodes": list(plan.nodes), "clock_s": noticed_clock_s})
        line = self.answers.readline()
        if not line:
            return None
        answer = json.loads(line)
        if answer.get("event") != "recover":
            return None
        return Instruction(tuple(answer["ranks"]), tuple(answer["nodes"]), answer["place_s"], answer["waited_s"],
                           answer["note"])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m meshemu.serving.client_process",
                                     description="Run a serving job (JSON) and print events as JSON lines.")
    parser.add_argument("--job", required=True,
                        help="the job file (JSON), or - for stdin: its first line; later lines answer recoveries")
    args = parser.parse_args(argv)
    from meshemu.serving.shard import die_with_parent  # here: the shard's module pulls in the model

    die_with_parent()
    lock = threading.Lock()  # request threads and a recovery write events at once: whole lines only

    def emit(event):
        with lock:
            sys.stdout.write(json.dumps(event) + "\n")
            sys.stdout.flush()

    try:
        text = sys.stdin.readline() if args.job == "-" else read_text(args.job)
        run_job(ServingJob.from_json(text), emit, controller=PipeController(emit, sys.stdin))
    except MeshemuError as err:
        emit({"event": "error", "message": str(err)})
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
