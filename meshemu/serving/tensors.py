"""Tensors on the wire: bytes + dtype + shape, cut into chunks, checked before anything is allocated.

>>> import numpy as np
>>> parts = encode(np.arange(6, dtype=np.float32).reshape(2, 3), chunk_bytes=16)
>>> len(parts), parts[0].total_bytes
(2, 24)
>>> a = Assembler(max_bytes=1 << 20)
>>> a.feed(parts[0]) is None, a.feed(parts[1]).tolist()
(True, [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]])
>>> Assembler(max_bytes=16).feed(parts[0])
Traceback (most recent call last):
...
meshemu.serving.tensors.TensorError: tensor of 24 bytes exceeds the limit of 16 bytes
"""

from __future__ import annotations

import math
import threading

import numpy as np

from meshemu.errors import InputError
from meshemu.serving.rpc import shard_pb2 as pb

DTYPES = {"float32": np.dtype(np.float32), "float16": np.dtype(np.float16),
          "int64": np.dtype(np.int64), "int32": np.dtype(np.int32)}
#: One chunk's payload; a gRPC message stays well under :data:`MAX_MESSAGE_BYTES`.
CHUNK_BYTES = 1 << 20
#: The message size limit both ends set (a chunk plus the frame around it).
MAX_MESSAGE_BYTES = 4 * CHUNK_BYTES
#: The largest whole tensor a shard accepts by default (a 32k-token prefill of a 5120-wide model in float16).
MAX_TENSOR_BYTES = 512 << 20
MAX_DIMS = 6


class TensorError(InputError):
    """A tensor on the wire is malformed or too large (the request that sent it fails)."""


def encode(array: np.ndarray, chunk_bytes: int = CHUNK_BYTES) -> list:
    """``array`` as one or more :class:`Tensor` messages of at most ``chunk_bytes`` payload each."""
    array = np.ascontiguousarray(array)
    name = array.dtype.name
    if name not in DTYPES:
        raise TensorError(f"cannot send dtype {name} (supported: {', '.join(DTYPES)})")
    data = array.tobytes()
    n = max(1, math.ceil(len(data) / chunk_bytes))
    shape = list(array.shape)
    if n == 1:
        return [pb.Tensor(dtype=name, shape=shape, data=data, chunk=0, n_chunks=1, total_bytes=len(data))]
    return [pb.Tensor(dtype=name, shape=shape, data=data[i * chunk_bytes:(i + 1) * chunk_bytes],
                      chunk=i, n_chunks=n, total_bytes=len(data)) for i in range(n)]


def check_header(msg, max_bytes: int) -> tuple[np.dtype, tuple[int, ...], int]:
    """Validate a tensor's declared dtype, shape and size; return them. Allocates nothing."""
    dtype = DTYPES.get(msg.dtype)
    if dtype is None:
        raise TensorError(f"unknown dtype {msg.dtype!r} (supported: {', '.join(DTYPES)})")
    shape = tuple(int(d) for d in msg.shape)
    if len(shape) > MAX_DIMS or any(d < 0 for d in shape):
        raise TensorError(f"bad shape {shape} (at most {MAX_DIMS} non-negative dimensions)")
    nbytes = math.prod(shape) * dtype.itemsize  # Python ints: no overflow
    if nbytes != msg.total_bytes:
        raise TensorError(f"shape {shape} of {msg.dtype} is {nbytes} bytes, but {msg.total_bytes} are declared")
    if nbytes > max_bytes:
        raise TensorError(f"tensor of {nbytes} bytes exceeds the limit of {max_bytes} bytes")
    return dtype, shape, nbytes


def decode(msg, max_bytes: int = MAX_TENSOR_BYTES) -> np.ndarray:
    """A single-chunk tensor message as a read-only array (no copy)."""
    dtype, shape, nbytes = check_header(msg, max_bytes)
    if msg.n_chunks > 1 or len(msg.data) != nbytes:
        raise TensorError(f"expected one chunk of {nbytes} bytes, got chunk {msg.chunk} of "
                          f"{msg.n_chunks} with {len(msg.data)} bytes")
    return np.frombuffer(msg.data, dtype=dtype).reshape(shape)


class Assembler:
    """Puts a chunked tensor back together; chunks must arrive in order on one stream.

    The buffer is allocated only after the first chunk's header passed
    :func:`check_header`; every later chunk must repeat the header and fit.
    """

    def __init__(self, max_bytes: int = MAX_TENSOR_BYTES, budget: "Budget | None" = None):
        self.max_bytes = max_bytes
        self.budget = budget
        self._head = None
        self._buf = None
        self._filled = 0
        self._chunk = 0
        self._reserved = 0

    @property
    def busy(self) -> bool:
        return self._head is not None

    def reset(self) -> None:
        if self._reserved and self.budget is not None:
            self.budget.release(self._reserved)
        self._head, self._buf, self._filled, self._chunk, self._reserved = None, None, 0, 0, 0

    def feed(self, msg) -> np.ndarray | None:
        """Take one chunk; return the whole array when this was the last, else None."""
        if msg.n_chunks <= 1 and self._head is None:
            return decode(msg, self.max_bytes)
        if self._head is None:
            dtype, shape, nbytes = check_header(msg, self.max_bytes)
            if msg.chunk != 0:
                raise TensorError(f"chunk {msg.chunk} of {msg.n_chunks} arrived first")
            if msg.n_chunks > max(1, nbytes):
                raise TensorError(f"{msg.n_chunks} chunks for {nbytes} bytes")
            if self.budget is not None:
                self.budget.take(nbytes)
                self._reserved = nbytes
            self._head = (msg.dtype, tuple(msg.shape), msg.n_chunks, nbytes, dtype, shape)
            self._buf = np.empty(nbytes, dtype=np.uint8)
            self._filled, self._chunk = 0, 0
        name, raw_shape, n_chunks, nbytes, dtype, shape = self._head
        expected = self._chunk
        if (msg.dtype, tuple(msg.shape), msg.n_chunks, msg.total_bytes) != (name, raw_shape, n_chunks, nbytes) \
                or msg.chunk != expected:
            self.reset()
            raise TensorError(f"chunk {msg.chunk} does not continue the tensor being received "
                              f"(expected chunk {expected} of {n_chunks}, {name} {list(shape)})")
        size = len(msg.data)
        if size == 0 or self._filled + size > nbytes:
            self.reset()
            raise TensorError(f"chunk {msg.chunk} of {size} bytes overflows the declared {nbytes} bytes")
        self._buf[self._filled:self._filled + size] = np.frombuffer(msg.data, dtype=np.uint8)
        self._filled += size
        self._chunk = expected + 1
        if self._chunk < n_chunks:
            return None
        if self._filled != nbytes:
            self.reset()
            raise TensorError(f"chunks hold {self._filled} bytes, {nbytes} were declared")
        out = self._buf.view(dtype).reshape(shape)
        self.reset()
        return out


class Budget:
    """Bytes of tensors being received at once, over all streams: each stream may declare up to the
    per-tensor limit, so without a shared cap 16 streams would ask for 16 times that.

    >>> b = Budget(100)
    >>> b.take(60); b.take(50)
    Traceback (most recent call last):
    ...
    meshemu.serving.tensors.TensorError: a tensor of 50 bytes would make 110 bytes in flight, over this shard's budget of 100 bytes: send smaller tensors or fewer at once
    """

    def __init__(self, limit_bytes: int):
        self.limit_bytes = int(limit_bytes)
        self.in_flight = 0
        self._lock = threading.Lock()

    def take(self, nbytes: int) -> None:
        with self._lock:
            if self.in_flight + nbytes > self.limit_bytes:
                raise TensorError(f"a tensor of {nbytes} bytes would make {self.in_flight + nbytes} bytes in flight, "
                                  f"over this shard's budget of {self.limit_bytes} bytes: send smaller tensors or "
                                  "fewer at once")
            self.in_flight += nbytes

    def release(self, nbytes: int) -> None:
        with self._lock:
            self.in_flight = max(0, self.in_flight - nbytes)


def expect(array: np.ndarray, shape: tuple, dtype, what: str) -> np.ndarray:
    """Raise :class:`TensorError` unless ``array`` has ``shape`` (None: any size) and ``dtype``."""
    ok = array.ndim == len(shape) and all(s is None or s == d for s, d in zip(shape, array.shape))
    if not ok or array.dtype != np.dtype(dtype):
        want = "x".join("?" if s is None else str(s) for s in shape)
        raise TensorError(f"{what}: expected {np.dtype(dtype).name} ({want}), got "
                          f"{array.dtype.name} {tuple(array.shape)}")
    return array
