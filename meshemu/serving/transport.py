"""gRPC plumbing tuned for links that go down and come back, and one-way frame streams between shards.

gRPC's defaults suit a data centre: no keepalive, reconnect backoff growing
to two minutes, no deadlines. Over satellite links a dead path must be noticed
in seconds and a path that comes back must be used again at once, so every
channel pings every second (1 s to answer), reconnects after 100 ms to 1 s,
and every call carries a deadline. Message sizes are capped on both ends at
:data:`~meshemu.serving.tensors.MAX_MESSAGE_BYTES`; larger tensors are chunked.

A :class:`PeerLink` is one persistent bidirectional ``Exchange`` stream to a
peer, used one way: frames put on it arrive in order. When the stream breaks
(the peer died, keepalive gave up on a dead path) the next send opens a new
one; frames lost with the old stream are the application's to notice (every
wait has a timeout). A frame the peer refuses (a malformed or oversized
tensor, no model loaded there) comes back as an :class:`Ack` naming the
request and why, and is handed to ``on_refused(request_id, error)`` so the
sender fails that request at once instead of waiting for a timeout.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

import grpc

from meshemu.serving.rpc import shard_pb2 as pb
from meshemu.serving.rpc import shard_pb2_grpc as pb_grpc
from meshemu.serving.tensors import MAX_MESSAGE_BYTES, encode

KEEPALIVE_MS = 1000
KEEPALIVE_TIMEOUT_MS = 1000

CHANNEL_OPTIONS = (
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", KEEPALIVE_MS),
    ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.enable_retries", 0),
    # Each PeerLink is its own connection, even to the same address.
    ("grpc.use_local_subchannel_pool", 1),
)

SERVER_OPTIONS = (
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", KEEPALIVE_MS),
    ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", KEEPALIVE_MS // 2),
    ("grpc.http2.min_ping_interval_without_data_ms", KEEPALIVE_MS // 2),
    ("grpc.http2.max_ping_strikes", 0),
    ("grpc.http2.max_pings_without_data", 0),
    # Two servers must never share a port silently.
    ("grpc.so_reuseport", 0),
)


def channel(address: str) -> grpc.Channel:
    return grpc.insecure_channel(address, options=CHANNEL_OPTIONS)


def stub(address: str) -> tuple[grpc.Channel, pb_grpc.ShardStub]:
    ch = channel(address)
    return ch, pb_grpc.ShardStub(ch)


def frames(meta: pb.Frame, array=None) -> list:
    """``meta`` with ``array`` attached: one frame, or one frame per chunk of a large tensor."""
    if array is None:
        return [meta]
    parts = encode(array)
    meta.tensor.CopyFrom(parts[0])
    out = [meta]
    for part in parts[1:]:
        out.append(pb.Frame(kind=meta.kind, request_id=meta.request_id, step=meta.step, seq=meta.seq,
                            phase=meta.phase, src_rank=meta.src_rank, tensor=part))
    return out


#: Told of each frame a peer refused: ``(request_id, error)``; runs on the link's reader thread.
OnRefused = Callable[[str, str], None]


class PeerLink:
    """A persistent one-way stream of :class:`Frame` messages to the shard at ``address``."""

    def __init__(self, address: str, on_refused: OnRefused | None = None):
        self.address = address
        self.on_refused = on_refused
        self.channel, self.stub = stub(address)
        self._lock = threading.Lock()
        self._queue = None
        self.last_error = ""
        self.frames_sent = 0
        self.bytes_sent = 0
        self.refused = 0

    def send(self, batch: list) -> None:
        """Queue ``batch`` (frames of one message, kept together) on the stream; never blocks on the network."""
        with self._lock:
            if self._queue is None:
                self._open()
            for f in batch:
                self._queue.put(f)
            self.frames_sent += len(batch)
            self.bytes_sent += sum(len(f.tensor.data) for f in batch)

    def connect(self, timeout_s: float) -> bool:
        """Connect now and open the stream, so the first frame pays no handshake; False if not in time."""
        try:
            grpc.channel_ready_future(self.channel).result(timeout=timeout_s)
        except grpc.FutureTimeoutError:
            return False
        with self._lock:
            if self._queue is None:
                self._open()
        return True

    def _open(self) -> None:
        q = queue.SimpleQueue()

        def requests():
            while True:
                item = q.get()
                if item is None:
                    return
                yield item

        # wait_for_ready: while the path is down, frames wait for the channel to reconnect.
        call = self.stub.Exchange(requests(), wait_for_ready=True)
        self._queue = q
        threading.Thread(target=self._drain, args=(call, q), name=f"link-{self.address}", daemon=True).start()

    def _drain(self, call, q) -> None:
        error = ""
        try:
            for ack in call:
                if ack.error:
                    self._refused(ack)
        except grpc.RpcError as err:
            error = f"{err.code().name}: {err.details()}"
        with self._lock:
            if self._queue is q:
                self._queue = None
                self.last_error = error
        q.put(None)

    def _refused(self, ack) -> None:
        self.refused += 1
        self.last_error = ack.error
        if self.on_refused is None:
            return
        try:
            self.on_refused(ack.request_id, ack.error)
        except Exception as err:  # noqa: BLE001 - the reader must outlive a failing handler, or the link dies
            self.last_error = f"handling a refusal failed: {type(err).__name__}: {err}"

    def close(self) -> None:
        with self._lock:
            if self._queue is not None:
                self._queue.put(None)
                self._queue = None
        self.channel.close()


class Links:
    """One :class:`PeerLink` per peer address, made on first use."""

    def __init__(self, on_refused: OnRefused | None = None):
        self.on_refused = on_refused
        self._links: dict[str, PeerLink] = {}
        self._lock = threading.Lock()

    def get(self, address: str) -> PeerLink:
        with self._lock:
            link = self._links.get(address)
            if link is None:
                link = self._links[address] = PeerLink(address, self.on_refused)
            return link

    def send(self, address: str, meta: pb.Frame, array=None) -> None:
        self.get(address).send(frames(meta, array))

    def stats(self) -> dict:
        with self._lock:
            return {a: {"frames_sent": link.frames_sent, "bytes_sent": link.bytes_sent, "refused": link.refused,
                        "last_error": link.last_error} for a, link in self._links.items()}

    def close(self) -> None:
        with self._lock:
            for link in self._links.values():
                link.close()
            self._links.clear()
