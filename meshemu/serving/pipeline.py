"""Ranks, stages and the per-request worker that runs one shard's part of every pass.

Global rank ``r`` is tensor rank ``r % t`` of pipeline stage ``r // t``; rank 0
is the *head*, where clients connect. One request flows around a ring::

    head --START(prompt)--> stage 0 ranks --hidden--> stage 1 ... --> last stage
       ^                                                                |
       +------------------- TOKEN (drawn by the last stage's rank 0) ---+

Tensor rank ``j`` of a stage hands its (all-reduced, hence identical) hidden
states to tensor rank ``j`` of the next stage, so stages of the same degree
connect pairwise and nothing is broadcast. The last stage's rank 0 applies
the LM head, samples, and sends the token to every rank of stage 0, which
starts the next decode pass at once: the decode loop stays among the shards
(in orbit), and the head streams each token to the client as it passes.

Every rank keeps one :class:`Session` per request: its KV cache, its sampler
(last stage), a mailbox for all-reduce pieces and a thread that takes the
request's frames in order. Requests are independent, so concurrent requests
are micro-batches that occupy different stages at the same time. A decode pass
that another stage triggers while its request is alone at the rank runs on the
thread that read its frame (:meth:`Session.run_here`): waking one thread fewer
is a fifth of a hop's cost here.

>>> lay = Layout(("a:1", "b:1", "c:1", "d:1"), tp_size=2, n_stages=2)
>>> lay.stage_of(3), lay.tp_rank_of(3), lay.stage_ranks(1), lay.layer_range(1, 30)
(1, 1, [2, 3], (15, 30))
>>> lay.peers(0), lay.peers(1), lay.peers(2)
([1, 2, 3], [0, 3], [0, 1, 3])
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass

import numpy as np

from meshemu.errors import InputError, MeshemuError
from meshemu.model.partition import pipeline_ranges
from meshemu.model.sampling import Sampler, SamplingParams
from meshemu.serving.collectives import AllReduce, Mailbox
from meshemu.serving.rpc import shard_pb2 as pb
from meshemu.serving.tensors import expect

Kind = pb.Frame.Kind
#: The frames a pass waits for, whose trips a shard counts (REDUCE pieces are counted by the mailbox).
_TIMED = {k: Kind.Name(k) for k in (Kind.START, Kind.STEP, Kind.TOKEN)}


@dataclass(frozen=True)
class Layout:
    """Where every rank listens, and how ranks form stages."""

    ranks: tuple[str, ...]  # address IP:PORT per global rank
    tp_size: int
    n_stages: int

    def __post_init__(self):
        if self.tp_size < 1 or self.n_stages < 1:
            raise InputError(f"tp {self.tp_size} and pp {self.n_stages} must be >= 1")
        if len(self.ranks) != self.tp_size * self.n_stages:
            raise InputError(f"{len(self.ranks)} rank addresses for tp {self.tp_size} x pp {self.n_stages}")

    @property
    def size(self) -> int:
        return len(self.ranks)

    def stage_of(self, rank: int) -> int:
        return rank // self.tp_size

    def tp_rank_of(self, rank: int) -> int:
        return rank % self.tp_size

    def rank_of(self, stage: int, tp_rank: int) -> int:
        return stage * self.tp_size + tp_rank

    def stage_ranks(self, stage: int) -> list[int]:
        return [self.rank_of(stage, j) for j in range(self.tp_size)]

    def peers(self, rank: int) -> list[int]:
        """The ranks ``rank`` sends to: its stage's other ranks, its successor, the first stage, the head."""
        stage, j = self.stage_of(rank), self.tp_rank_of(rank)
        out = set(self.stage_ranks(stage))
        if stage < self.n_stages - 1:
            out.add(self.rank_of(stage + 1, j))
        elif j == 0:
            out.update(self.stage_ranks(0))
        out.add(0)
        if rank == 0:
            out.update(range(self.size))
        out.discard(rank)
        return sorted(out)

    def layer_range(self, stage: int, n_layers: int) -> tuple[int, int]:
        return pipeline_ranges(n_layers, self.n_stages)[stage]


class RequestFailed(MeshemuError):
    """A request could not go on at this shard (the message says where and why)."""


class Session:
    """One request at one shard: cache, sampler, mailbox and a worker thread.

    ``host`` is the shard; it provides ``rank``, ``layout``, ``compute``,
    ``algorithm``, ``step_timeout_s``, ``send(ranks, frame, array)``,
    ``report_error(request_id, message)`` and ``session_ended(request_id)``.
    """

    def __init__(self, host, request_id: str, idle_timeout_s: float):
        self.host, self.rid, self.idle_timeout_s = host, request_id, idle_timeout_s
        lay, r = host.layout, host.rank
        self.stage, self.tp_rank = lay.stage_of(r), lay.tp_rank_of(r)
        self.first, self.last = self.stage == 0, self.stage == lay.n_stages - 1
        self.inbox: queue.Queue = queue.Queue()
        self.mailbox = Mailbox()
        self.cache = None
        self.sampler = None
        self.settings = None
        self.drawn = 0
        self.seq = 0
        self.step_timeout_s = host.step_timeout_s
        self.allreduce = None
        self._coll_s = 0.0
        self._coll_n = 0
        self._running = threading.Lock()  # one frame at a time, on this request's thread or a reader's
        self.idle_since = time.monotonic()  # when its last frame was done: a frame sent later was waited for
        self.thread = threading.Thread(target=self._run, name=f"session-{request_id[:8]}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def put(self, frame, array, then: queue.Queue | None = None) -> None:
        """Queue a frame for this request's thread, which puts it on ``then`` too as soon as it has taken it."""
        self.inbox.put((frame, array, then))

    def put_piece(self, frame, array) -> None:
        self.mailbox.put((frame.seq, frame.phase, self.host.layout.tp_rank_of(frame.src_rank)), array,
                         frame.sent_clock_s, frame.src_rank)

    def _arrived(self, src_rank: int, kind: str, sent_clock_s: float, waiting_since_s: float) -> None:
        """Count one frame's trip to this thread (the cost a pass waits for), when it was sent while the thread
        already waited for it: then nothing else (this rank's own lateness, a queue) hides in the sample."""
        if sent_clock_s >= waiting_since_s and src_rank != self.host.rank:
            self.host.transit.add(src_rank, kind, time.monotonic() - sent_clock_s)

    # -- the loop ---------------------------------------------------------------------------
    def run_here(self, frame, array, then: queue.Queue | None = None) -> bool:
        """Run a frame's pass on the calling thread (a data-plane reader) instead of waking this request's
        thread, when nothing else is queued or running for it; False: not taken (queue it, as :meth:`put`).

        Waking a second thread costs a frame 35-45 us here. Only STEPs and tokens that go on are run so (what
        ends a request stays with the request's thread, which cleans up). The caller must not be the reader of
        a connection that this pass waits on: a reader of frames from another stage, which sends no pieces.
        """
        if frame.kind not in (Kind.STEP, Kind.TOKEN) or (frame.kind == Kind.TOKEN and frame.done) \
                or self.settings is None or not self.inbox.empty() or not self._running.acquire(blocking=False):
            return False
        try:
            if not self.inbox.empty():  # something came meanwhile: keep the order, the thread takes both
                return False
            if then is not None:
                then.put((frame, array))
            self.host.counters["passes_on_reader"] += 1
            try:
                self._handle(frame, array)
            except Exception as err:  # noqa: BLE001 - as on the request's thread: the request ends with a message
                self._failed(err)
                self.inbox.put((pb.Frame(kind=Kind.END), None, None))  # its thread ends it and cleans up
            self.idle_since = time.monotonic()
            return True
        finally:
            self._running.release()

    def _run(self) -> None:
        try:
            while True:
                try:
                    frame, array, then = self.inbox.get(timeout=self.idle_timeout_s)
                except queue.Empty:
                    if time.monotonic() - self.idle_since < self.idle_timeout_s:
                        continue  # its passes ran on the reader
                    return  # the request was abandoned (its END never came)
                with self._running:
                    if then is not None:
                        then.put((frame, array))
                    ended = self._handle(frame, array)
                    self.idle_since = time.monotonic()
                if ended:
                    return
        except Exception as err:  # noqa: BLE001 - every failure ends the request with a message
            self._failed(err)
        finally:
            self.mailbox.close("the request ended")
            self.host.session_ended(self.rid)

    def _failed(self, err: Exception) -> None:
        self.host.counters["session_errors"] += 1
        self.host.report_error(self.rid, f"{type(err).__name__}: {err}" if not isinstance(err, MeshemuError)
                               else str(err))

    def _handle(self, frame, array) -> bool:
        """One frame of this request; True: the request ends here."""
        if frame.sent_clock_s and frame.kind in _TIMED:
            self._arrived(frame.src_rank, _TIMED[frame.kind], frame.sent_clock_s, self.idle_since)
        if frame.kind == Kind.END:
            return True
        if frame.kind == Kind.START:
            self._setup(frame, array)
            self._pass(frame, array)
        elif frame.kind == Kind.STEP:
            if self.settings is None:
                raise RequestFailed(f"step {frame.step} arrived before the request's start")
            self._pass(frame, array)
        elif frame.kind == Kind.TOKEN:
            if frame.done:
                return True
            # The token drawn from pass k is the input of pass k + 1.
            self._pass(frame, np.asarray([[frame.tokens[0]]], dtype=np.int64), step=frame.step + 1)
        return False

    def _setup(self, frame, array) -> None:
        compute, cfg = self.host.compute, self.host.compute.config
        prompt_len = len(frame.tokens) if self.first else (array.shape[1] if array is not None and array.ndim == 3 else 0)
        if prompt_len < 1:
            raise RequestFailed("the request's start carries no prompt")
        s = frame.sampling
        self.settings = frame
        self.step_timeout_s = frame.step_timeout_s or self.host.step_timeout_s
        capacity = max(prompt_len, min(cfg.max_context, prompt_len + max(1, frame.max_new_tokens) - 1))
        self.cache = compute.new_cache(batch=1, capacity=capacity)
        if self.last and self.tp_rank == 0:
            self.sampler = Sampler(SamplingParams(temperature=s.temperature, top_p=s.top_p or 1.0, seed=s.seed))
        if self.host.layout.tp_size > 1:
            lay = self.host.layout
            group = lay.stage_ranks(self.stage)
            self.mailbox.on_wait = lambda src, sent, since: self._arrived(src, "REDUCE", sent, since)
            self.allreduce = AllReduce(self.host.algorithm, lay.tp_size, self.tp_rank, self._send_piece,
                                       self.mailbox, timeout_s=self.step_timeout_s,
                                       names=[f"rank {g} ({lay.ranks[g]})" for g in group])

    def _send_piece(self, peer: int, phase: int, array: np.ndarray, seq: int) -> None:
        dst = self.host.layout.rank_of(self.stage, peer)
        meta = pb.Frame(kind=Kind.REDUCE, request_id=self.rid, seq=seq, phase=phase, src_rank=self.host.rank)
        self.host.send([dst], meta, array)

    def _reduce(self, partial: np.ndarray) -> np.ndarray:
        if self.allreduce is None:
            return partial
        self.host.compute.settle()  # device compute: the time owed so far passes before anything is sent
        t0 = time.perf_counter()
        out = self.allreduce(partial, self.seq)
        self.seq += 1
        self._coll_s += time.perf_counter() - t0
        self._coll_n += 1
        return out

    def _pass(self, frame, inputs, step: int | None = None) -> None:
        """Run this shard's layers on one pass's input and hand the result on."""
        host, compute, cfg = self.host, self.host.compute, self.host.compute.config
        step = frame.step if step is None else step
        t0 = time.perf_counter()
        self._coll_s, self._coll_n = 0.0, 0
        if self.first:
            tokens = np.asarray(frame.tokens, dtype=np.int64)[None] if frame.kind == Kind.START else inputs
            x = compute.embed(tokens)
        else:
            x = expect(inputs, (1, None, cfg.hidden_size), compute.dtype, f"stage {self.stage} input")
            if frame.kind == Kind.STEP and x.shape[1] != 1:
                raise RequestFailed(f"decode step {step} carries {x.shape[1]} tokens, expected 1")
        for i in range(compute.n_layers):
            x = compute.layer(i, x, self.cache, self._reduce)
        compute.settle()
        timing = pb.StageTiming(stage=self.stage, rank=host.rank, collective_s=self._coll_s,
                                collectives=self._coll_n)
        before = [] if frame.kind == Kind.TOKEN else frame.timings  # a TOKEN's are the last pass's
        if not self.last:
            timing.compute_s = time.perf_counter() - t0 - self._coll_s
            meta = pb.Frame(kind=Kind.START if step == 0 else Kind.STEP, request_id=self.rid, step=step,
                            src_rank=host.rank)
            meta.timings.extend(before)
            meta.timings.append(timing)
            if step == 0:
                self._copy_settings(meta)
            host.send([host.layout.rank_of(self.stage + 1, self.tp_rank)], meta, np.ascontiguousarray(x))
            return
        if self.tp_rank != 0:
            return  # the last stage's rank 0 draws the token
        token, logits = compute.draw(x, self.sampler, step)
        timing.compute_s = time.perf_counter() - t0 - self._coll_s
        self.drawn += 1
        s = self.settings
        reason = ""
        if token in s.stop_ids:
            reason = "stop"
        elif self.drawn >= s.max_new_tokens:
            reason = "length"
        elif self.cache.length >= cfg.max_context:
            reason = "context"
        meta = pb.Frame(kind=Kind.TOKEN, request_id=self.rid, step=step, src_rank=host.rank, tokens=[token],
                        done=bool(reason), stop_reason=reason)
        meta.timings.extend(before)
        meta.timings.append(timing)
        host.send(host.layout.stage_ranks(0), meta,
                  logits.astype(np.float32) if s.return_logits and logits is not None else None)

    def _copy_settings(self, meta) -> None:
        s = self.settings
        meta.sampling.CopyFrom(s.sampling)
        meta.max_new_tokens = s.max_new_tokens
        meta.stop_ids.extend(s.stop_ids)
        meta.return_logits = s.return_logits
        meta.step_timeout_s = s.step_timeout_s
