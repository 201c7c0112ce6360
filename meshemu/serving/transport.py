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

Between shards the frames go on a *data plane* beside gRPC when the peer has
one (``HealthReply.data_port``): a plain TCP connection to the peer's address,
each message one fixed :data:`HEADER` (magic, bytes of the frame, bytes of the
tensor), the :class:`Frame` without its tensor's bytes, then the bytes whole,
written by the sending thread itself in one ``sendmsg`` (no queue, no thread
hop, no copy into a protobuf). The receiver checks the declared sizes before it
allocates anything and reads the tensor straight into its array; a frame it
refuses comes back on the same connection as an :class:`Ack`. gRPC stays the
control plane (Load, Generate, Health, Metrics) and the fallback: a peer
without a data port, a connection that broke (until the next
:meth:`PeerLink.connect`, which every Load makes) or ``MESHEMU_DATA_PLANE=grpc``
sends over ``Exchange``.
"""

from __future__ import annotations

import os
import queue
import socket
import struct
import threading
from collections.abc import Callable

import grpc
import numpy as np

from meshemu.serving.rpc import shard_pb2 as pb
from meshemu.serving.rpc import shard_pb2_grpc as pb_grpc
from meshemu.errors import InputError
from meshemu.serving.tensors import DTYPES, MAX_MESSAGE_BYTES, TensorError, encode

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


# -- the data plane: frames on a plain TCP connection ---------------------------------------------------
#: Which way shards send frames to each other: "tcp" (the data plane, gRPC where a peer has none) or "grpc".
DATA_PLANE_ENV = "MESHEMU_DATA_PLANE"
DATA_PLANES = ("tcp", "grpc")
#: One message on the data plane: magic, bytes of the serialized Frame that follows, bytes of its tensor.
HEADER = struct.Struct("!4sIQ")
FRAME_MAGIC = b"MEF1"
ACK_MAGIC = b"MEA1"
#: The largest Frame (without its tensor's bytes) either end takes: gRPC's message limit.
MAX_META_BYTES = MAX_MESSAGE_BYTES
#: A path that stops answering fails the connection after this long (gRPC's keepalive gives up after ~2 s).
USER_TIMEOUT_MS = 2 * (KEEPALIVE_MS + KEEPALIVE_TIMEOUT_MS)
READ_BUFFER_BYTES = 256 << 10


def data_plane_mode(value: str | None = None) -> str:
    """The data plane asked for (``value`` or ``$MESHEMU_DATA_PLANE``, default "tcp").

    >>> data_plane_mode("grpc"), data_plane_mode("")
    ('grpc', 'tcp')
    """
    mode = (os.environ.get(DATA_PLANE_ENV, "") if value is None else value) or "tcp"
    if mode not in DATA_PLANES:
        raise InputError(f"{DATA_PLANE_ENV}={mode!r}: use {' or '.join(DATA_PLANES)}")
    return mode


class ProtocolError(TensorError):
    """A data-plane connection carried bytes no shard sends (a bad header): it is answered and closed."""


def tensor_header(array: np.ndarray) -> pb.Tensor:
    """``array``'s dtype, shape and size as a one-chunk :class:`Tensor` without its bytes."""
    name = array.dtype.name
    if name not in DTYPES:
        raise TensorError(f"cannot send dtype {name} (supported: {', '.join(DTYPES)})")
    return pb.Tensor(dtype=name, shape=array.shape, chunk=0, n_chunks=1, total_bytes=array.nbytes)


_HEADERS: dict = {}
_MAX_HEADERS = 1024


def tensor_header_bytes(array: np.ndarray) -> bytes:
    """The serialized ``Frame(tensor=tensor_header(array))``, made once per dtype and shape: a decode step sends
    the same shape every time, and building the message costs more than the rest of a send (6 of ~9 us here).

    >>> a = np.zeros((1, 1, 4), np.float32)
    >>> pb.Frame.FromString(tensor_header_bytes(a)).tensor == tensor_header(a)
    True
    """
    key = (array.dtype, array.shape)
    got = _HEADERS.get(key)
    if got is None:
        got = pb.Frame(tensor=tensor_header(array)).SerializeToString()
        if len(_HEADERS) >= _MAX_HEADERS:  # prefill shapes vary with the prompt: keep the table bounded
            _HEADERS.clear()
        _HEADERS[key] = got
    return got


class Message:
    """One frame and its tensor, encoded once (lazily, for each way it is sent) for every peer it goes to.

    >>> m = Message(pb.Frame(kind=pb.Frame.STEP, request_id="r"), np.zeros((1, 1, 4), np.float32))
    >>> head, data = m.wire()
    >>> magic, meta_bytes, data_bytes = HEADER.unpack_from(head)
    >>> magic, data_bytes, len(data), pb.Frame.FromString(head[HEADER.size:]).tensor.shape
    (b'MEF1', 16, 16, [1, 1, 4])
    """

    __slots__ = ("meta", "array", "_wire", "_frames")

    def __init__(self, meta: pb.Frame, array: np.ndarray | None = None):
        self.meta = meta
        self.array = None if array is None else np.ascontiguousarray(array)
        self._wire = None
        self._frames = None

    @property
    def nbytes(self) -> int:
        return 0 if self.array is None else self.array.nbytes

    def wire(self) -> tuple[bytes, memoryview | bytes]:
        """The data plane's bytes: header and frame, then the tensor's own memory (not copied)."""
        if self._wire is None:
            meta = self.meta.SerializeToString()
            data = b""
            if self.array is not None:
                # a serialized message followed by another is their merge: the frame gains its tensor header
                meta += tensor_header_bytes(self.array)
                data = memoryview(self.array.reshape(-1).view(np.uint8)) if self.array.nbytes else b""
            self._wire = (HEADER.pack(FRAME_MAGIC, len(meta), len(data)) + meta, data)
        return self._wire

    def frames(self) -> list:
        """The gRPC stream's frames: chunked, each a copy of the frame with its part of the bytes."""
        if self._frames is None:
            wire = pb.Frame()
            wire.CopyFrom(self.meta)
            self._frames = frames(wire, self.array)
        return self._frames


def send_parts(sock: socket.socket, parts) -> None:
    """Write every part of ``parts`` (bytes-like) to ``sock``, in one ``sendmsg`` when the kernel takes it all."""
    parts = [memoryview(p).cast("B") for p in parts if len(p)]
    total = sum(len(p) for p in parts)
    sent = sock.sendmsg(parts)
    while sent < total:  # the send buffer was full: write the rest as it drains
        total -= sent
        while sent >= len(parts[0]):
            sent -= len(parts.pop(0))
        parts[0] = parts[0][sent:]
        sent = sock.sendmsg(parts)


def tune_socket(sock: socket.socket) -> None:
    """No Nagle delay; a dead path fails the connection within :data:`USER_TIMEOUT_MS`, as gRPC's keepalive would."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", KEEPALIVE_MS // 1000), ("TCP_KEEPINTVL", KEEPALIVE_MS // 1000),
                        ("TCP_KEEPCNT", 2), ("TCP_USER_TIMEOUT", USER_TIMEOUT_MS)):
        if hasattr(socket, name):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), max(1, value))


class Reader:
    """Buffered reads of whole messages from a connection: one ``recv`` takes many small frames at once."""

    def __init__(self, sock: socket.socket, size: int = READ_BUFFER_BYTES):
        self.sock = sock
        self._buf = bytearray(size)
        self._view = memoryview(self._buf)
        self._pos = self._end = 0

    def _fill(self, need: int) -> None:
        if need > len(self._buf):  # a frame larger than the buffer (a long prompt's tokens): a larger buffer
            buf = bytearray(need)
            buf[:self._end - self._pos] = self._view[self._pos:self._end]
            self._buf, self._view = buf, memoryview(buf)
            self._end, self._pos = self._end - self._pos, 0
        elif self._pos + need > len(self._buf):
            left = self._end - self._pos
            self._view[:left] = self._buf[self._pos:self._end]
            self._pos, self._end = 0, left
        while self._end - self._pos < need:
            n = self.sock.recv_into(self._view[self._end:])
            if n == 0:
                raise EOFError("the peer closed the connection")
            self._end += n

    def take(self, n: int) -> memoryview:
        """The next ``n`` bytes (a view valid until the next read)."""
        self._fill(n)
        out = self._view[self._pos:self._pos + n]
        self._pos += n
        return out

    def head(self, magic: bytes, max_meta_bytes: int = MAX_META_BYTES) -> tuple[memoryview, int]:
        """The next message's serialized frame and the bytes of tensor that follow it."""
        got, meta_bytes, data_bytes = HEADER.unpack(self.take(HEADER.size))
        if got != magic:
            raise ProtocolError(f"not a data-plane message (header {bytes(got)!r}, expected {magic!r})")
        if meta_bytes > max_meta_bytes:
            raise ProtocolError(f"a frame of {meta_bytes:,} bytes exceeds the limit of {max_meta_bytes:,} bytes")
        return self.take(meta_bytes), data_bytes

    def read_into(self, out: memoryview) -> None:
        """Fill ``out`` with the next ``len(out)`` bytes: what is buffered, then straight from the socket."""
        k = min(len(out), self._end - self._pos)
        out[:k] = self._view[self._pos:self._pos + k]
        self._pos += k
        while k < len(out):
            n = self.sock.recv_into(out[k:])
            if n == 0:
                raise EOFError("the peer closed the connection")
            k += n

    def skip(self, n: int) -> None:
        """Read past ``n`` bytes (a refused tensor's) without keeping them."""
        k = min(n, self._end - self._pos)
        self._pos += k
        n -= k
        while n:
            self._pos = self._end = 0
            got = self.sock.recv_into(self._view[:min(n, len(self._buf))])
            if got == 0:
                raise EOFError("the peer closed the connection")
            n -= got


def ack_bytes(ack: pb.Ack) -> bytes:
    body = ack.SerializeToString()
    return HEADER.pack(ACK_MAGIC, len(body), 0) + body


#: Serves one accepted data-plane connection until it ends (runs on a thread of its own).
OnConnection = Callable[[socket.socket, tuple], None]


class DataPlaneServer:
    """Listens for peers' data-plane connections on ``host`` (port 0: the kernel picks), a thread per peer."""

    def __init__(self, host: str, on_connection: OnConnection, port: int = 0):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        self._sock.bind((host, port))
        self._sock.listen(64)
        self.port = self._sock.getsockname()[1]
        self.on_connection = on_connection
        self._conns: set = set()
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, name=f"data-plane-{self.port}", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, peer = self._sock.accept()
            except OSError:
                return  # closed
            tune_socket(conn)
            with self._lock:
                if self._closed:
                    conn.close()
                    return
                self._conns.add(conn)
            threading.Thread(target=self._serve, args=(conn, peer), name=f"data-in-{peer[0]}:{peer[1]}",
                             daemon=True).start()

    def _serve(self, conn, peer) -> None:
        try:
            self.on_connection(conn, peer)
        finally:
            with self._lock:
                self._conns.discard(conn)
            conn.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            conns, self._conns = list(self._conns), set()
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        for c in conns:
            _shut(c)


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked reading it
    except OSError:
        pass
    sock.close()


def split_address(address: str) -> tuple[str, int]:
    """``IP:PORT`` (``[v6]:PORT``) as ``(ip, port)``.

    >>> split_address("10.0.0.1:5000"), split_address("[::1]:7")
    (('10.0.0.1', 5000), ('::1', 7))
    """
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


#: Told of each frame a peer refused: ``(request_id, error)``; runs on the link's reader thread.
OnRefused = Callable[[str, str], None]


class PeerLink:
    """A persistent one-way stream of :class:`Frame` messages to the shard at ``address``.

    On the data plane when the peer has one and :meth:`connect` reached it, else on gRPC's ``Exchange``.
    """

    def __init__(self, address: str, on_refused: OnRefused | None = None, data_plane: str | None = None):
        self.address = address
        self.on_refused = on_refused
        self.data_plane = data_plane_mode(data_plane)
        self.channel, self.stub = stub(address)
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()  # one message's bytes at a time on the socket
        self._queue = None
        self._sock: socket.socket | None = None
        self.last_error = ""
        self.frames_sent = 0
        self.bytes_sent = 0
        self.refused = 0
        self.frames_grpc = 0  # of frames_sent, those that went on the gRPC stream

    @property
    def on_data_plane(self) -> bool:
        return self._sock is not None

    def send(self, message: Message | list) -> None:
        """Send one message (or a list of gRPC frames of one message, kept together); never waits for the peer.

        On the data plane the sending thread writes it; only a full socket buffer (a large tensor on a slow
        path) holds it until the bytes drain. A connection that broke hands this and later messages to gRPC.
        """
        if isinstance(message, list):
            self._send_frames(message)
            return
        sock = self._sock
        if sock is not None:
            head, data = message.wire()
            try:
                with self._send_lock:
                    send_parts(sock, (head, data))
                    self.frames_sent += 1
                    self.bytes_sent += message.nbytes
                return
            except OSError as err:
                self._drop(sock, f"data plane to {self.address}: {err}")
        self._send_frames(message.frames())

    def _send_frames(self, batch: list) -> None:
        with self._lock:
            if self._queue is None:
                self._open()
            for f in batch:
                self._queue.put(f)
            self.frames_sent += len(batch)
            self.frames_grpc += len(batch)
            self.bytes_sent += sum(len(f.tensor.data) for f in batch)

    def connect(self, timeout_s: float) -> bool:
        """Connect now (the data plane where the peer has one, else the gRPC stream), so the first frame pays
        no handshake; False if not in time. A broken data-plane connection is dialled again here."""
        try:  # waits for the channel, and says where the peer's data plane is
            health = self.stub.Health(pb.HealthRequest(), timeout=timeout_s, wait_for_ready=True)
        except grpc.RpcError as err:
            self.last_error = f"connecting to {self.address}: {err.code().name}"
            return False
        if self.data_plane == "tcp" and self._sock is None and health.data_port and \
                self._dial(health.data_port, timeout_s):
            return True
        with self._lock:
            if self._queue is None:
                self._open()
        return True

    def _dial(self, port: int, timeout_s: float) -> bool:
        host, _ = split_address(self.address)
        try:
            sock = socket.create_connection((host, port), timeout=timeout_s)
        except OSError as err:
            self.last_error = f"data plane to {host}:{port}: {err}"
            return False
        sock.settimeout(None)
        tune_socket(sock)
        with self._lock:
            old, self._sock = self._sock, sock
        if old is not None:
            _shut(old)
        threading.Thread(target=self._read_acks, args=(sock,), name=f"data-out-{self.address}", daemon=True).start()
        return True

    def _read_acks(self, sock) -> None:
        reader = Reader(sock, size=4096)
        try:
            while True:
                body, _ = reader.head(ACK_MAGIC)
                ack = pb.Ack.FromString(body)
                if ack.error:
                    self._refused(ack)
        except (OSError, EOFError, TensorError, ValueError) as err:
            self._drop(sock, f"data plane to {self.address}: {type(err).__name__}: {err}")

    def _drop(self, sock, error: str) -> None:
        with self._lock:
            if self._sock is not sock:
                return
            self._sock = None
            self.last_error = error
        _shut(sock)

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
            sock, self._sock = self._sock, None
        if sock is not None:
            _shut(sock)
        self.channel.close()


class Links:
    """One :class:`PeerLink` per peer address, made on first use."""

    def __init__(self, on_refused: OnRefused | None = None, data_plane: str | None = None):
        self.on_refused = on_refused
        self.data_plane = data_plane_mode(data_plane)
        self._links: dict[str, PeerLink] = {}
        self._lock = threading.Lock()

    def get(self, address: str) -> PeerLink:
        with self._lock:
            link = self._links.get(address)
            if link is None:
                link = self._links[address] = PeerLink(address, self.on_refused, self.data_plane)
            return link

    def send(self, address: str, meta: pb.Frame, array=None) -> None:
        self.get(address).send(Message(meta, array))

    def stats(self) -> dict:
        with self._lock:
            return {a: {"frames_sent": link.frames_sent, "bytes_sent": link.bytes_sent, "refused": link.refused,
                        "frames_grpc": link.frames_grpc, "data_plane": link.on_data_plane,
                        "last_error": link.last_error} for a, link in self._links.items()}

    def close(self) -> None:
        with self._lock:
            for link in self._links.values():
                link.close()
            self._links.clear()
