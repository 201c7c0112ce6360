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

    def __init__(self, max_bytes: int = MAX_TENSOR_BYTES):
        self.max_bytes = max_bytes
        self._head = None
        self._buf = None
        self._filled = 0
        self._chunk = 0

    @property
    def busy(self) -> bool:
        return self._head is not None

    def reset(self) -> None:
        self._head, self._buf, self._filled, self._chunk = None, None, 0, 0

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


def expect(array: np.ndarray, shape: tuple, dtype, what: str) -> np.ndarray:
    """Raise :class:`TensorError` unless ``array`` has ``shape`` (None: any size) and ``dtype``."""
    ok = array.ndim == len(shape) and all(s is None or s == d for s, d in zip(shape, array.shape))
    if not ok or array.dtype != np.dtype(dtype):
        want = "x".join("?" if s is None else str(s) for s in shape)
        raise TensorError(f"{what}: expected {np.dtype(dtype).name} ({want}), got "
                          f"{array.dtype.name} {tuple(array.shape)}")
    return array
