"""The shard process: one rank of the model behind a gRPC server.

    python -m meshemu.serving.shard --bind 127.0.0.1:0 [--node NAME]

It prints ``READY IP:PORT`` once it listens (port 0: the kernel picks one) and
serves until SIGTERM, SIGINT or the death of its parent. Beside the gRPC
server it listens for peers' frames on a data plane (plain TCP, on the same
address, its port in ``Health``; ``--data-plane grpc`` turns it off). It runs the same on
loopback and inside a satellite's network namespace: it only knows the
address it binds and the addresses it is told in ``Load``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # two BLAS threads per shard collapse on 2 shared cores

import argparse
import ctypes
import errno
import json
import math
import queue
import select
import signal
import socket
import sys
import threading
import time
import uuid
from collections import OrderedDict
from concurrent import futures

import grpc
import numpy as np

from meshemu.errors import InputError, MeshemuError
from meshemu.serving.collectives import ALGORITHMS
from meshemu.serving.compute import make_compute
from meshemu.serving.job import MAX_REQUEST_ID_CHARS, MAX_STEP_TIMEOUT_S
from meshemu.serving.metrics import Transit
from meshemu.serving.pipeline import Kind, Layout, Session
from meshemu.serving.rpc import shard_pb2 as pb
from meshemu.serving.rpc import shard_pb2_grpc as pb_grpc
from meshemu.resources import available_memory_bytes
from meshemu.serving.tensors import MAX_TENSOR_BYTES, Assembler, Budget, TensorError, check_header, encode
from meshemu.serving.transport import (FRAME_MAGIC, SERVER_OPTIONS, DataPlaneServer, Links, Message, ProtocolError,
                                       Reader, ack_bytes, data_plane_mode)

DEFAULT_STEP_TIMEOUT_S = 10.0
POLL_S = 0.1
STOP_WAIT_S = 1.0  # how long a stopped Load may take to unwind before its RPC answers anyway


class Shard(pb_grpc.ShardServicer):
    """The servicer: holds the loaded part of the model, the sessions and the links to peers."""

    def __init__(self, address: str, node: str = "", *, max_tensor_bytes: int = MAX_TENSOR_BYTES,
                 step_timeout_s: float = DEFAULT_STEP_TIMEOUT_S, max_sessions: int = 256,
                 data_plane: str | None = None):
        self.address, self.node = address, node or address
        self.max_tensor_bytes = max_tensor_bytes
        # all streams together hold at most a few tensors' worth, and never more than half the free memory
        self.budget = Budget(min(4 * max_tensor_bytes, available_memory_bytes() // 2))
        self.step_timeout_s = step_timeout_s
        self.max_sessions = max_sessions
        self.started = time.monotonic()
        self.data_plane = data_plane_mode(data_plane)
        self.links = Links(on_refused=self._refused_by_peer, data_plane=self.data_plane)
        self.data_server: DataPlaneServer | None = None
        self.layout: Layout | None = None
        self.rank = 0
        self.compute = None
        self.algorithm = "ring"
        self.load_info: dict = {}
        self._lock = threading.Lock()
        self._load_lock = threading.Lock()  # one Load at a time
        self._loader: Loader | None = None
        self.sessions: dict[str, Session] = {}
        self.ended: OrderedDict = OrderedDict()
        self.head_requests: dict[str, queue.Queue] = {}
        self.counters = {"frames_in": 0, "bytes_in": 0, "requests": 0, "requests_failed": 0,
                         "sessions": 0, "session_errors": 0, "rejected_tensors": 0, "dropped_frames": 0,
                         "refused_by_peers": 0, "frames_in_data_plane": 0,
                         "passes_on_reader": 0}  # passes a data-plane reader ran itself, waking no thread
        self.transit = Transit()  # send to the thread that waited for the frame: the floor a pass sees
        self.arrival = Transit()  # send to this process reading the frame: the wire's part of that floor

    def start_data_plane(self, host: str) -> int:
        """Listen for peers' frames on a plain TCP port of ``host`` (its port, 0 when off); see :mod:`transport`."""
        if self.data_plane == "tcp" and self.data_server is None:
            self.data_server = DataPlaneServer(host, self._serve_data)
        return self.data_server.port if self.data_server is not None else 0

    # -- RPCs ------------------------------------------------------------------------------
    def Load(self, request, context):
        with self._lock:
            running = self._loader
        if running is not None:
            running.stop("a newer Load arrived", grpc.StatusCode.ABORTED)  # the newest plan wins
        with self._load_lock:
            return self._load(request, context)

    def _load(self, request, context):
        # Forget the old model first: its memory is needed for the new one, and a Load that fails leaves none.
        self._unload()
        # trips are keyed by rank: a new layout's ranks start counting afresh
        self.transit, self.arrival = Transit(), Transit()
        try:
            layout = Layout(tuple(request.ranks), request.tp_size, request.n_stages)
            if request.rank >= layout.size:
                raise InputError(f"rank {request.rank} outside the {layout.size} ranks")
            algorithm = request.allreduce or "ring"
            if algorithm not in ALGORITHMS:
                raise InputError(f"unknown all-reduce {algorithm!r}: use {' or '.join(ALGORITHMS)}")
        except MeshemuError as err:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{self.node}: {err}")
        stage, tp_rank = layout.stage_of(request.rank), layout.tp_rank_of(request.rank)
        budget_s = _load_budget_s(context.time_remaining())
        t0 = time.perf_counter()
        loader = Loader(lambda: make_compute(request.model, request.compute or "real", stage=stage,
                                             n_stages=layout.n_stages, tp_rank=tp_rank, tp_size=layout.tp_size,
                                             peak_flops=request.peak_flops,
                                             peak_bandwidth_Bps=request.peak_bandwidth_Bps))
        with self._lock:
            self._loader = loader
        try:
            self._wait_load(loader, budget_s, context)
        finally:
            with self._lock:
                if self._loader is loader:
                    self._loader = None
        load_s = time.perf_counter() - t0
        if loader.stopped:
            context.abort(loader.stopped_code, f"{self.node}: the Load of {request.model} was stopped "
                                               f"({loader.stopped}) and nothing is loaded")
        if isinstance(loader.error, MeshemuError):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{self.node}: {loader.error}")
        if isinstance(loader.error, MemoryError):
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"{self.node}: out of memory loading {request.model}: give a smaller model or more ranks")
        if loader.error is not None:
            raise loader.error
        compute = loader.result
        connect_s = min(10.0, self.step_timeout_s)
        if budget_s is not None:
            connect_s = max(0.1, min(connect_s, budget_s - load_s))
        unreached = self._connect_peers(layout, request.rank, timeout_s=connect_s)
        if unreached:
            # a shard that cannot reach its peers must not say loaded=True and accept requests that then hang
            context.abort(grpc.StatusCode.UNAVAILABLE, f"{self.node}: cannot reach {', '.join(unreached)}")
        with self._lock:
            self.layout, self.rank, self.compute, self.algorithm = layout, request.rank, compute, algorithm
            if request.node:
                self.node = request.node
        spec = compute.spec
        self.load_info = {"model": compute.config.name, "compute": compute.kind, "stage": stage, "tp_rank": tp_rank,
                          "layers": [spec.layer_start, spec.layer_stop], "load_s": load_s}
        return pb.LoadReply(rank=request.rank, stage=stage, tp_rank=tp_rank, layer_start=spec.layer_start,
                            layer_stop=spec.layer_stop, q_heads=spec.q_heads, kv_heads=spec.kv_heads,
                            ffn_start=spec.ffn_start, ffn_stop=spec.ffn_stop, load_s=load_s,
                            weight_bytes=int(compute.weight_bytes), model_name=compute.config.name,
                            config_json=json.dumps(compute.config.to_dict()))

    def _wait_load(self, loader: "Loader", budget_s: float | None, context) -> None:
        """Wait for ``loader``; stop it at the deadline or when the client leaves, then give it a moment to unwind."""
        t0 = time.monotonic()
        while not loader.wait(POLL_S):
            if budget_s is not None and time.monotonic() - t0 > budget_s:
                loader.stop(f"it took longer than the {budget_s:.3g} s left before the client's deadline: "
                            "give the Load a longer deadline or load a smaller model",
                            grpc.StatusCode.DEADLINE_EXCEEDED)
            elif not context.is_active():
                loader.stop("the client cancelled it or went away", grpc.StatusCode.CANCELLED)
            if loader.stopped:
                # the stop lands between two numpy calls; its frames unwind and free what was made so far
                loader.wait(STOP_WAIT_S)
                return

    def _unload(self) -> None:
        """Forget the model: Health says loaded=False, Generate is refused and peers' frames are answered."""
        with self._lock:
            for sess in self.sessions.values():
                sess.put(pb.Frame(kind=Kind.END), None)
            self.layout, self.compute, self.load_info = None, None, {}

    def _connect_peers(self, layout: Layout, rank: int, timeout_s: float) -> list[str]:
        """Open the streams to every peer ``rank`` will send to (in parallel); return those not reached."""
        peers = [layout.ranks[r] for r in layout.peers(rank)]
        if not peers:
            return []
        with futures.ThreadPoolExecutor(max_workers=len(peers)) as pool:
            ok = list(pool.map(lambda a: self.links.get(a).connect(timeout_s), peers))
        return [f"{a} (not connected within {timeout_s:g} s)" for a, good in zip(peers, ok) if not good]

    def Exchange(self, request_iterator, context):
        """Take a peer's frames; answer only a refused one, with an Ack that names its request and why."""
        asm = Assembler(self.max_tensor_bytes, self.budget)
        try:
            yield from self._exchange(request_iterator, asm)
        finally:
            asm.reset()  # a stream that ends mid-tensor gives its bytes back to the budget

    def _exchange(self, request_iterator, asm):
        head = None      # the first frame of the tensor being received, without its data
        skipping = ""    # request id of a refused chunked tensor: its later chunks are dropped unread
        told: OrderedDict = OrderedDict()  # requests already answered on this stream: one Ack each
        for frame in request_iterator:
            self.counters["frames_in"] += 1
            first = head if head is not None else frame
            try:
                if frame.HasField("tensor"):
                    self.counters["bytes_in"] += len(frame.tensor.data)
                    if head is None and skipping and frame.request_id == skipping and frame.tensor.chunk > 0:
                        self.counters["dropped_frames"] += 1
                        continue
                    skipping = ""
                    if head is None:
                        _check_frame(frame)
                        self._refuse_if_unloaded(frame)
                        head = pb.Frame()
                        head.CopyFrom(frame)
                        head.ClearField("tensor")
                    array = asm.feed(frame.tensor)
                    if array is None:
                        continue
                    meta, head = head, None
                else:
                    skipping = ""
                    _check_frame(frame)
                    self._refuse_if_unloaded(frame)
                    meta, array = frame, None
                self.deliver(meta, array)
            except TensorError as err:
                rid = first.request_id[:MAX_REQUEST_ID_CHARS]
                head = None
                asm.reset()
                if frame.HasField("tensor") and frame.tensor.n_chunks > 1:
                    skipping = rid
                ack = self._refuse(first, err, told)
                if ack is not None:
                    yield ack

    def _refuse(self, first, err: TensorError, told: OrderedDict) -> pb.Ack | None:
        """Fail the request of a refused frame here and at the head; the Ack for its sender (one per request)."""
        self.counters["rejected_tensors"] += 1
        rid, src = first.request_id[:MAX_REQUEST_ID_CHARS], first.src_rank
        what = "a tensor" if first.HasField("tensor") else f"a {_kind_name(first.kind)} frame"
        message = self._where() + f": rejected {what} from rank {src} (request {rid}): {err}"
        self.fail_request(rid, message)
        if rid in told:
            return None
        told[rid] = True
        while len(told) > 64:
            told.popitem(last=False)
        return pb.Ack(request_id=rid, error=message)

    def _serve_data(self, conn, peer) -> None:
        """Take one peer's frames from the data plane; answer a refused one on the same connection."""
        reader = Reader(conn)
        told: OrderedDict = OrderedDict()
        try:
            while True:
                body, nbytes = reader.head(FRAME_MAGIC)
                self.counters["frames_in"] += 1
                self.counters["frames_in_data_plane"] += 1
                try:
                    frame = pb.Frame.FromString(body)
                except Exception:  # noqa: BLE001 - protobuf's DecodeError; the next header is still found
                    frame = None
                try:
                    array, nbytes = self._read_tensor(frame, nbytes, reader), 0
                except TensorError as err:
                    reader.skip(nbytes)  # refused unread: the next message starts right after
                    ack = self._refuse(frame if frame is not None else pb.Frame(), err, told)
                    if ack is not None:
                        conn.sendall(ack_bytes(ack))
                    continue
                self.deliver(frame, array, reader=True)
        except ProtocolError as err:
            self.counters["rejected_tensors"] += 1
            try:
                conn.sendall(ack_bytes(pb.Ack(error=f"{self._where()}: closed the data-plane connection from "
                                                   f"{peer[0]}:{peer[1]}: {err}")))
            except OSError:
                pass
        except (OSError, EOFError):
            pass  # the peer went away; its next Load dials again

    def _read_tensor(self, frame, nbytes: int, reader: Reader):
        """Check one data-plane frame and read its tensor (``nbytes`` declared) into a new array; None: none."""
        if frame is None:
            raise TensorError("the frame could not be parsed")
        _check_frame(frame)
        self._refuse_if_unloaded(frame)
        if not frame.HasField("tensor"):
            if nbytes:
                raise TensorError(f"{nbytes} bytes follow a frame without a tensor")
            return None
        dtype, shape, size = check_header(frame.tensor, self.max_tensor_bytes)
        if size != nbytes or frame.tensor.n_chunks > 1:
            raise TensorError(f"a tensor of {size} bytes in one chunk was declared, but {nbytes} bytes in chunk "
                              f"{frame.tensor.chunk} of {frame.tensor.n_chunks} follow")
        self.budget.take(size)  # before allocating: every stream together stays within the budget
        try:
            buf = np.empty(size, dtype=np.uint8)
            reader.read_into(memoryview(buf))
        finally:
            self.budget.release(size)
        self.counters["bytes_in"] += size
        frame.ClearField("tensor")
        return buf.view(dtype).reshape(shape)

    def _refuse_if_unloaded(self, frame) -> None:
        """Refuse the start of a message this shard cannot use: with no model, nothing would ever answer it."""
        if self.layout is None and frame.kind not in (Kind.END, Kind.ERROR):
            raise TensorError(f"no model is loaded here (it was restarted or its Load failed), so its "
                              f"{_kind_name(frame.kind)} frame was dropped: load the plan again")

    def _where(self) -> str:
        if self.layout is None:
            return f"{self.node} ({self.address}, no model loaded)"
        return f"rank {self.rank} (stage {self.layout.stage_of(self.rank)}, {self.node}, {self.address})"

    def Generate(self, request, context):
        if self.layout is None:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"{self.node}: no model loaded")
        if self.rank != 0:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          f"{self.node} is rank {self.rank}; requests go to rank 0 ({self.layout.ranks[0]})")
        cfg = self.compute.config
        prompt = list(request.prompt)
        problem = ""
        if not prompt:
            problem = "the prompt is empty (0 tokens)"
        elif min(prompt) < 0 or max(prompt) >= cfg.vocab_size:
            problem = f"token id outside the vocabulary of {cfg.vocab_size}"
        elif len(prompt) >= cfg.max_context:
            problem = f"the prompt is {len(prompt)} tokens; the model's context is {cfg.max_context}"
        elif request.max_new_tokens < 1:
            problem = f"max_new_tokens must be >= 1, got {request.max_new_tokens}"
        elif not 0 <= request.sampling.temperature < math.inf or not 0 <= request.sampling.top_p <= 1:
            # NaN too: it passed 'temperature < 0' and failed in the sampler, after the request had started
            problem = "temperature must be a finite number >= 0 and top_p in (0, 1]"
        elif _step_timeout_problem(request.step_timeout_s):
            problem = _step_timeout_problem(request.step_timeout_s)
        elif len(request.request_id) > MAX_REQUEST_ID_CHARS:
            problem = f"request_id is {len(request.request_id):,} characters: at most {MAX_REQUEST_ID_CHARS}"
        if problem:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        rid = request.request_id or uuid.uuid4().hex
        q: queue.Queue = queue.Queue()
        with self._lock:
            if rid in self.head_requests or rid in self.sessions:
                context.abort(grpc.StatusCode.ALREADY_EXISTS, f"request {rid} is already running")
            self.head_requests[rid] = q
        self.counters["requests"] += 1
        step_timeout = request.step_timeout_s or self.step_timeout_s
        start = pb.Frame(kind=Kind.START, request_id=rid, step=0, src_rank=0, tokens=prompt,
                         sampling=request.sampling, max_new_tokens=request.max_new_tokens,
                         stop_ids=request.stop_ids, return_logits=request.return_logits,
                         step_timeout_s=step_timeout)
        failed = True
        try:
            yield from self._stream_tokens(q, start, step_timeout, context, rid)
            failed = False
        except _ClientGone:
            pass  # the client cancelled or its deadline passed: nobody to tell
        finally:
            if failed:
                self.counters["requests_failed"] += 1
            with self._lock:
                self.head_requests.pop(rid, None)
            self.send(range(self.layout.size), pb.Frame(kind=Kind.END, request_id=rid, src_rank=0))

    def _stream_tokens(self, q, start, step_timeout, context, rid):
        """Start the request on stage 0 and yield its tokens as the last stage draws them."""
        self.send(self.layout.stage_ranks(0), start)
        t_prev = time.perf_counter()
        index = 0
        while True:
            frame, array = self._next_token(q, step_timeout, context, rid, index)
            if frame.kind == Kind.ERROR:
                context.abort(grpc.StatusCode.ABORTED, frame.error)
            now = time.perf_counter()
            event = pb.TokenEvent(index=index, token=frame.tokens[0], done=frame.done,
                                  stop_reason=frame.stop_reason, cycle_s=now - t_prev, timings=frame.timings)
            if array is not None:
                event.logits.CopyFrom(encode(array, chunk_bytes=1 << 40)[0])
            t_prev = now
            index += 1
            yield event
            if frame.done:
                return

    def _next_token(self, q, step_timeout, context, rid, index):
        deadline = time.monotonic() + step_timeout
        while True:
            try:
                return q.get(timeout=POLL_S)
            except queue.Empty:
                pass
            if not context.is_active():
                raise _ClientGone()
            if time.monotonic() > deadline:
                context.abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                              f"token {index} of request {rid} did not come within {step_timeout:g} s"
                              f"{self._diagnosis()}")

    def _diagnosis(self, timeout_s: float = 1.0) -> str:
        """Which ranks do not answer a health check from here (in parallel, ``timeout_s`` each)."""
        others = [r for r in range(self.layout.size) if r != self.rank]

        def probe(r):
            link = self.links.get(self.layout.ranks[r])
            try:
                link.stub.Health(pb.HealthRequest(), timeout=timeout_s)
                return ""
            except grpc.RpcError as err:
                return f"rank {r} ({link.address}) {err.code().name}"
        with futures.ThreadPoolExecutor(max_workers=max(1, len(others))) as pool:
            bad = [b for b in pool.map(probe, others) if b]
        return "; not answering the head: " + ", ".join(bad) if bad else " (every rank answers the head)"

    def Health(self, request, context):
        with self._lock:
            n = len(self.sessions)
        return pb.HealthReply(address=self.address, node=self.node, loaded=self.layout is not None,
                              rank=self.rank, sessions=n, uptime_s=time.monotonic() - self.started,
                              pid=os.getpid(), data_port=self.data_server.port if self.data_server else 0)

    def Metrics(self, request, context):
        out = dict(self.counters, node=self.node, address=self.address, rank=self.rank,
                   links=self.links.stats(), load=self.load_info, transit=self.transit.rows(),
                   arrival=self.arrival.rows(),
                   # a device model's waits: how late the host woke from them in all (paid back from later ones)
                   device_late_s=getattr(getattr(self.compute, "clock", None), "late_s", None))
        return pb.MetricsReply(json=json.dumps(out))

    # -- frames ----------------------------------------------------------------------------------
    def send(self, ranks, meta, array=None) -> None:
        """Send one message to each of ``ranks`` (to this shard itself without the network)."""
        message = None
        for r in ranks:
            if r == self.rank:
                self.deliver(meta, array)
                continue
            if message is None:
                meta.sent_clock_s = time.monotonic()  # the receiver's transit time starts here
                message = Message(meta, array)  # encoded once, for every peer
            self.links.get(self.layout.ranks[r]).send(message)

    def deliver(self, frame, array, reader: bool = False) -> None:
        """Route an incoming frame to the head's request queue and/or the request's session.

        ``reader``: the caller is the data-plane thread of the frame's connection, which may run the frame's
        pass itself (:meth:`Session.run_here`) when the frame comes from another stage and no other request
        is here (two requests' passes on two ranks' readers could each wait for the other's pieces).
        """
        rid, kind = frame.request_id, frame.kind
        if frame.sent_clock_s and frame.src_rank != self.rank:
            self.arrival.add(frame.src_rank, _kind_name(kind), time.monotonic() - frame.sent_clock_s)
        head_q = self.head_requests.get(rid) if kind in (Kind.TOKEN, Kind.ERROR) else None
        if kind == Kind.ERROR or (kind == Kind.TOKEN and (self.layout is None
                                                          or self.layout.stage_of(self.rank) != 0)):
            if head_q is not None:
                head_q.put((frame, array))
            return
        try:
            session = self._session(rid, create=kind not in (Kind.END,))
            if session is None:
                self.counters["dropped_frames"] += 1
            elif kind == Kind.REDUCE:
                session.put_piece(frame, array)
            else:
                # a token's next pass first: its thread, once woken, hands the token on for the head to stream
                # (woken here at once, the stream's thread would race the pass for the interpreter)
                lay = self.layout
                if not (reader and len(self.sessions) == 1 and lay is not None
                        and lay.stage_of(frame.src_rank) != lay.stage_of(self.rank)
                        and session.run_here(frame, array, then=head_q)):
                    session.put(frame, array, then=head_q)
                head_q = None
        finally:
            if head_q is not None:
                head_q.put((frame, array))

    def _session(self, rid: str, create: bool) -> Session | None:
        with self._lock:
            s = self.sessions.get(rid)
            if s is not None or not create or rid in self.ended or self.layout is None:
                return s
            if len(self.sessions) >= self.max_sessions:
                return None  # a flood of request ids must not become a flood of threads
            s = self.sessions[rid] = Session(self, rid, idle_timeout_s=max(30.0, 3 * self.step_timeout_s))
            self.counters["sessions"] += 1
        s.start()
        return s

    def session_ended(self, rid: str) -> None:
        with self._lock:
            self.sessions.pop(rid, None)
            self.ended[rid] = True
            while len(self.ended) > 4096:
                self.ended.popitem(last=False)

    def report_error(self, rid: str, message: str) -> None:
        self.send([0], pb.Frame(kind=Kind.ERROR, request_id=rid, src_rank=self.rank,
                                error=f"{self._where()}: {message}"))

    def fail_request(self, rid: str, message: str) -> None:
        """End the request here and tell the head ``message`` (already saying where it happened)."""
        with self._lock:
            layout = self.layout
        if layout is None:
            return
        s = self._session(rid, create=False)
        if s is not None:
            s.put(pb.Frame(kind=Kind.END), None)
        self.send([0], pb.Frame(kind=Kind.ERROR, request_id=rid, src_rank=self.rank, error=message))

    def _refused_by_peer(self, rid: str, error: str) -> None:
        """A peer refused a frame this shard sent: fail that request with the peer's reason, not a timeout."""
        self.counters["refused_by_peers"] += 1
        self.fail_request(rid, error)

    def close(self) -> None:
        with self._lock:
            running = self._loader
        if running is not None:
            running.stop("the shard is shutting down", grpc.StatusCode.UNAVAILABLE)
        if self.data_server is not None:
            self.data_server.close()
        self.links.close()


def _step_timeout_problem(step_timeout_s: float) -> str:
    """Why a request's step timeout cannot be used ('' when it can; 0 means the shard's own).

    NaN never times out (a hang when a peer dies) and past ~292 years a wait overflows the clock's C type.

    >>> _step_timeout_problem(0.0), _step_timeout_problem(float("nan"))
    ('', "step_timeout_s must be 0 (the shard's default) or within (0, 86400] s, got nan")
    """
    if step_timeout_s == 0 or 0 < step_timeout_s <= MAX_STEP_TIMEOUT_S:
        return ""
    return (f"step_timeout_s must be 0 (the shard's default) or within (0, {MAX_STEP_TIMEOUT_S:g}] s, "
            f"got {step_timeout_s:g}")


def _check_frame(frame) -> None:
    """Refuse the start of a peer's message whose fields no shard could have sent."""
    if len(frame.request_id) > MAX_REQUEST_ID_CHARS:
        # request ids key the session table and the 4,096 ended requests kept: 4 MB ids would fill memory
        raise TensorError(f"request id of {len(frame.request_id):,} characters (at most {MAX_REQUEST_ID_CHARS})")
    if frame.kind == Kind.START and (problem := _step_timeout_problem(frame.step_timeout_s)):
        raise TensorError(problem)


def _kind_name(kind: int) -> str:
    return Kind.Name(kind) if kind in Kind.values() else f"kind {kind}"  # proto3 enums let any number in


class _ClientGone(Exception):
    """The client cancelled or its deadline passed: stop the request quietly."""


def _load_budget_s(time_remaining_s: float | None) -> float | None:
    """How long a Load may build its model: up to a little before the client's deadline, so that the
    reply saying why it stopped still reaches the client (None: the client set no deadline).

    >>> _load_budget_s(None), _load_budget_s(2.0), round(_load_budget_s(300.0), 3)
    (None, 1.6, 299.5)
    """
    if time_remaining_s is None:
        return None
    return max(0.0, time_remaining_s - min(0.5, 0.2 * time_remaining_s))


class _LoadStopped(BaseException):
    """Raised inside a loading thread to stop it; a BaseException, so no ``except Exception`` on the way keeps it."""


class Loader:
    """Runs ``fn`` (building a model) in its own thread, so that the Load can stop it at its deadline.

    Python cannot kill a thread, and the model builders have no cancel hook, so :meth:`stop` raises
    :class:`_LoadStopped` inside the thread (``PyThreadState_SetAsyncExc``). It lands at the next Python
    instruction, i.e. after the numpy call in progress, and unwinding the builder's frames frees every
    array made so far. At most one stop is ever sent, and only while ``fn`` runs.
    """

    def __init__(self, fn):
        self._fn = fn
        self._lock = threading.Lock()
        self._running = True
        self.result = None
        self.error: BaseException | None = None
        self.stopped = ""  # why it was stopped
        self.stopped_code = grpc.StatusCode.ABORTED
        self.thread = threading.Thread(target=self._run, name="load", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            try:
                self.result = self._fn()
            finally:
                with self._lock:
                    self._running = False
        except _LoadStopped:
            self.result = None
        except BaseException as err:  # noqa: BLE001 - handed to the Load, which turns it into a status
            self.error = err

    def wait(self, timeout_s: float) -> bool:
        """True once the thread has ended."""
        self.thread.join(timeout_s)
        return not self.thread.is_alive()

    def stop(self, why: str, code: grpc.StatusCode) -> None:
        """Stop the build; the Load then answers ``code`` with ``why``. Nothing happens once ``fn`` returned."""
        with self._lock:
            if not self._running or self.stopped:
                return
            self.stopped, self.stopped_code = why, code
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self.thread.ident),
                                                       ctypes.py_object(_LoadStopped))


# -- the process ------------------------------------------------------------------------------
def die_with_parent() -> None:
    """SIGTERM this process when the process that started it exits.

    Not PR_SET_PDEATHSIG: that fires when the *thread* that started the child exits, and a spare shard is
    started on whichever thread noticed the loss (a request's, which ends with its request). A pidfd of the
    parent becomes readable when the parent exits; where there is none (Linux < 5.3), getppid() is polled.
    """
    ppid = os.getppid()
    try:
        fd = os.pidfd_open(ppid)
    except (AttributeError, OSError):
        fd = None

    def watch():
        if fd is not None:
            select.select([fd], [], [])
        else:
            while os.getppid() == ppid:
                time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
    if os.getppid() != ppid:  # it exited before the watch began
        os.kill(os.getpid(), signal.SIGTERM)


def parse_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise InputError(f"bad address {text!r}: expected IP:PORT")
    return host.strip("[]"), int(port)


def check_bindable(host: str, port: int) -> None:
    """Raise a one-line :class:`InputError` if ``host:port`` cannot be listened on."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError as err:
            why = {errno.EADDRINUSE: "port in use", errno.EADDRNOTAVAIL: "no such address on this node",
                   errno.EACCES: "permission denied"}.get(err.errno, err.strerror)
            raise InputError(f"cannot listen on {host}:{port}: {why}") from None


def serve(bind: str, node: str = "", *, step_timeout_s: float = DEFAULT_STEP_TIMEOUT_S,
          max_tensor_bytes: int = MAX_TENSOR_BYTES, workers: int = 64, data_plane: str | None = None):
    """Start a shard server on ``bind`` and its data plane beside it; return ``(server, shard, address)``.

    ``data_plane``: "tcp" (default, or ``$MESHEMU_DATA_PLANE``) or "grpc" (frames on ``Exchange`` only).
    """
    if not 0 < step_timeout_s <= MAX_STEP_TIMEOUT_S:
        raise InputError(f"--step-timeout must be a positive number of seconds, at most {MAX_STEP_TIMEOUT_S:g}, "
                         f"got {step_timeout_s}")
    if not 1 <= max_tensor_bytes < 2**62:
        raise InputError(f"--max-tensor-mb must be positive and below 2^42 MiB, got {max_tensor_bytes / 2**20:g} MiB")
    host, port = parse_address(bind)
    check_bindable(host, port)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), options=SERVER_OPTIONS)
    try:
        bound = server.add_insecure_port(f"{host}:{port}" if ":" not in host else f"[{host}]:{port}")
    except RuntimeError as err:
        raise InputError(f"cannot listen on {host}:{port}: {err}") from None
    if not bound:
        raise InputError(f"cannot listen on {host}:{port}")
    address = f"{host}:{bound}"
    shard = Shard(address, node, max_tensor_bytes=max_tensor_bytes, step_timeout_s=step_timeout_s,
                  data_plane=data_plane)
    try:
        shard.start_data_plane(host)
    except OSError as err:
        raise InputError(f"cannot listen for the data plane on {host}: {err.strerror}") from None
    pb_grpc.add_ShardServicer_to_server(shard, server)
    server.start()
    return server, shard, address


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m meshemu.serving.shard", description=__doc__.split("\n")[0])
    parser.add_argument("--bind", required=True, metavar="IP:PORT", help="address to listen on (port 0: any)")
    parser.add_argument("--node", default="", help="name of the node it runs on, for records")
    parser.add_argument("--step-timeout", type=float, default=DEFAULT_STEP_TIMEOUT_S, metavar="S",
                        help="longest wait for a peer (default %(default)s s)")
    parser.add_argument("--max-tensor-mb", type=float, default=MAX_TENSOR_BYTES / 2**20, metavar="MB",
                        help="largest tensor accepted (default %(default)s MiB)")
    parser.add_argument("--data-plane", choices=("tcp", "grpc"), default=None,
                        help="how frames between shards travel: tcp (a data plane beside gRPC, the default; "
                             "$MESHEMU_DATA_PLANE) or grpc (Exchange streams only)")
    args = parser.parse_args(argv)
    die_with_parent()
    try:
        if not math.isfinite(args.max_tensor_mb):
            raise InputError(f"--max-tensor-mb must be a finite number of MiB, got {args.max_tensor_mb}")
        server, shard, address = serve(args.bind, args.node, step_timeout_s=args.step_timeout,
                                       max_tensor_bytes=int(args.max_tensor_mb * 2**20),
                                       data_plane=args.data_plane)
    except MeshemuError as err:
        print(f"meshemu-shard: error: {err}", file=sys.stderr, flush=True)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    print(f"READY {address}", flush=True)
    stop.wait()
    # A Load or a request may still be computing in a worker thread, and the interpreter would wait for it
    # at exit (the executor joins its threads): stop serving, then leave at once so SIGTERM ends a shard
    # within a second whatever it was doing.
    threading.Timer(1.0, lambda: os._exit(0)).start()
    shard.close()  # first: a Load in progress is stopped, and its client told why within the grace below
    server.stop(0.5).wait()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
