"""All-reduce over the network between the tensor-parallel ranks of one stage: ring or direct.

Each rank calls the same :class:`AllReduce` with its partial sum; pieces go to
peers through ``send(peer_index, phase, array)`` (a gRPC frame in a shard) and
come back through a :class:`Mailbox` keyed by ``(seq, phase, sender)``, where
``seq`` counts the collectives of one request in the same order on every rank.

- ``ring``: reduce-scatter then all-gather around the ring, 2 (t - 1) rounds of
  n / t bytes to the right-hand neighbour: cost 2 (t-1) alpha + 2 (t-1)/t n/B.
- ``direct``: every rank sends its whole partial to every other rank in one
  round and sums what it gets: alpha + (t-1) n/B.

Both give every rank bitwise the same sum (ring: each chunk is summed once
and copied; direct: every rank adds the partials in rank order), so every
rank's next layer sees the same input.

>>> import threading, numpy as np
>>> boxes = [Mailbox() for _ in range(3)]
>>> def sender(i):
...     return lambda j, phase, a, seq: boxes[j].put((seq, phase, i), np.array(a))
>>> parts = [np.full((1, 1, 4), float(i + 1), np.float32) for i in range(3)]
>>> out = [None] * 3
>>> def rank(i):
...     out[i] = AllReduce("ring", 3, i, sender(i), boxes[i], timeout_s=5)(parts[i], seq=0)
>>> threads = [threading.Thread(target=rank, args=(i,)) for i in range(3)]
>>> _ = [t.start() for t in threads]; _ = [t.join() for t in threads]
>>> [o.ravel().tolist() for o in out]
[[6.0, 6.0, 6.0, 6.0], [6.0, 6.0, 6.0, 6.0], [6.0, 6.0, 6.0, 6.0]]
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np

from meshemu.errors import MeshemuError
from meshemu.serving.tensors import TensorError, expect

ALGORITHMS = ("ring", "direct")


class CollectiveError(MeshemuError):
    """A peer's piece did not come within the timeout, or the request was aborted."""


class Mailbox:
    """Pieces that arrived for one request, waited for by key; bounded in count.

    A piece may carry when and by whom it was sent (``sent_clock_s`` on the host's monotonic clock, ``src``):
    a taker that had to wait for it tells ``on_wait(src, sent_clock_s, waiting_since_s)``, which is how a
    shard measures what one message costs on the critical path.
    """

    def __init__(self, max_items: int = 4096):
        self._items: dict = {}
        self._cond = threading.Condition()
        self._closed = ""
        self.max_items = max_items
        self.on_wait: Callable[[int, float, float], None] | None = None

    def put(self, key, array: np.ndarray, sent_clock_s: float = 0.0, src: int = -1) -> None:
        with self._cond:
            if len(self._items) >= self.max_items:
                raise TensorError(f"{len(self._items)} all-reduce pieces waiting: refusing more")
            self._items[key] = (array, sent_clock_s, src)
            self._cond.notify_all()

    def take(self, key, timeout_s: float, what: str = "") -> np.ndarray:
        with self._cond:
            since = time.monotonic() if key not in self._items else None
            if not self._cond.wait_for(lambda: key in self._items or self._closed, timeout_s):
                raise CollectiveError(f"no all-reduce piece {what or key} within {timeout_s:g} s")
            if key not in self._items:
                raise CollectiveError(self._closed)
            array, sent_clock_s, src = self._items.pop(key)
        if since is not None and sent_clock_s and self.on_wait is not None:
            self.on_wait(src, sent_clock_s, since)
        return array

    def close(self, reason: str) -> None:
        """Wake every waiter with ``reason`` (the request ended or failed)."""
        with self._cond:
            self._closed = reason or "aborted"
            self._items.clear()
            self._cond.notify_all()


Send = Callable[[int, int, np.ndarray, int], None]  # (peer index, phase, array, seq)


class AllReduce:
    """Sums a ``(B, T, C)`` partial across ``size`` ranks; this is rank ``index``.

    Parameters
    ----------
    algorithm : {"ring", "direct"}
    size, index : int
        Ranks in the group and this one's place in it.
    send : callable
        ``send(peer_index, phase, array, seq)``: deliver a piece to a peer's mailbox.
    mailbox : Mailbox
        Where peers' pieces for this rank arrive.
    timeout_s : float
        Longest wait for one piece.
    names : list of str, optional
        Peers' names for error messages (addresses).
    """

    def __init__(self, algorithm: str, size: int, index: int, send: Send, mailbox: Mailbox, *,
                 timeout_s: float, names=None):
        if algorithm not in ALGORITHMS:
            raise MeshemuError(f"unknown all-reduce {algorithm!r}: use {' or '.join(ALGORITHMS)}")
        self.algorithm, self.size, self.index = algorithm, size, index
        self.send, self.mailbox, self.timeout_s = send, mailbox, timeout_s
        self.names = list(names) if names else [f"rank {j}" for j in range(size)]
        self.bytes_sent = 0

    def __call__(self, partial: np.ndarray, seq: int) -> np.ndarray:
        if self.size == 1:
            return partial
        if self.algorithm == "ring":
            return self._ring(partial, seq)
        return self._direct(partial, seq)

    def _take(self, seq: int, phase: int, src: int, shape, dtype) -> np.ndarray:
        got = self.mailbox.take((seq, phase, src), self.timeout_s,
                                f"#{seq}.{phase} from {self.names[src]}")
        return expect(got, shape, dtype, f"all-reduce piece from {self.names[src]}")

    def _ring(self, partial: np.ndarray, seq: int) -> np.ndarray:
        t, i = self.size, self.index
        buf = np.array(partial, copy=True).reshape(-1)
        bounds = np.linspace(0, buf.size, t + 1).round().astype(int)
        chunk = [slice(bounds[c], bounds[c + 1]) for c in range(t)]
        right, left = (i + 1) % t, (i - 1) % t
        for s in range(t - 1):  # reduce-scatter: rank i ends holding chunk (i + 1) % t summed
            out_c, in_c = (i - s) % t, (i - s - 1) % t
            self.send(right, s, buf[chunk[out_c]], seq)
            self.bytes_sent += buf[chunk[out_c]].nbytes
            buf[chunk[in_c]] += self._take(seq, s, left, (chunk[in_c].stop - chunk[in_c].start,), buf.dtype)
        for s in range(t - 1):  # all-gather: pass the summed chunks on
            out_c, in_c = (i + 1 - s) % t, (i - s) % t
            self.send(right, t - 1 + s, buf[chunk[out_c]], seq)
            self.bytes_sent += buf[chunk[out_c]].nbytes
            buf[chunk[in_c]] = self._take(seq, t - 1 + s, left, (chunk[in_c].stop - chunk[in_c].start,), buf.dtype)
        return buf.reshape(partial.shape)

    def _direct(self, partial: np.ndarray, seq: int) -> np.ndarray:
        t, i = self.size, self.index
        for j in range(t):
            if j != i:
                self.send(j, 0, partial, seq)
                self.bytes_sent += partial.nbytes
        total = None
        for j in range(t):  # rank order on every rank: the same float sums everywhere
            part = partial if j == i else self._take(seq, 0, j, partial.shape, partial.dtype)
            total = np.array(part, copy=True) if total is None else np.add(total, part, out=total)
        return total
