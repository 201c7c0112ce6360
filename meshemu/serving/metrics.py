"""What a request measured: TTFT, TPOT, inter-token latencies, tokens/s, and where each token's time went.

Definitions as vLLM's: TTFT is the time from sending the request to receiving
the first token, TPOT = (end-to-end - TTFT) / (tokens - 1), ITL the gaps
between streamed tokens. Each token also carries the breakdown the shards
measured on its way round the ring: compute and collective time per stage
(tensor rank 0's), and the rest of the head's cycle, which is pipeline hops
(network and software).

>>> rec = RequestRecord("r1", prompt_tokens=3)
>>> for i, t in enumerate([0.10, 0.15, 0.20, 0.25]):
...     rec.add_token(i, 7, t, cycle_s=0.05, compute_s=0.03, collective_s=0.01)
>>> s = rec.summary()
>>> round(s["ttft_s"], 3), round(s["tpot_s"], 3), round(s["tokens_per_s"], 1), round(s["hop_s_per_token"], 3)
(0.1, 0.05, 16.0, 0.01)
"""

from __future__ import annotations

import itertools
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from meshemu.errors import InputError


@dataclass
class TokenRecord:
    index: int
    token: int
    arrival_s: float      # since the request was sent (client clock)
    cycle_s: float        # head: since the previous token (first: since the request reached the head)
    compute_s: float      # summed over stages
    collective_s: float   # summed over stages
    clock_s: float = 0.0  # time.monotonic() at arrival: the clock the player steps by (one per host)

    @property
    def hop_s(self) -> float:
        """The cycle less compute and collectives: pipeline hops, in flight and in software."""
        return max(0.0, self.cycle_s - self.compute_s - self.collective_s)


@dataclass
class RequestRecord:
    request_id: str
    prompt_tokens: int
    tokens: list = field(default_factory=list)
    stop_reason: str = ""
    error: str = ""
    sent_clock_s: float = 0.0  # time.monotonic() when sent
    stage_compute_s: list = field(default_factory=list)  # per token: [stage0, stage1, ...]
    recoveries: list = field(default_factory=list)  # one dict per lost rank recovered (serving.recovery)

    def add_token(self, index, token, arrival_s, *, cycle_s, compute_s, collective_s, clock_s=0.0,
                  stage_compute_s=None) -> None:
        self.tokens.append(TokenRecord(index, int(token), arrival_s, cycle_s, compute_s, collective_s, clock_s))
        if stage_compute_s is not None:
            self.stage_compute_s.append(list(stage_compute_s))

    @property
    def token_ids(self) -> list[int]:
        return [t.token for t in self.tokens]

    def summary(self) -> dict:
        """One flat row: the request's latencies and the mean per-token breakdown of decode."""
        n = len(self.tokens)
        out = {"request_id": self.request_id, "prompt_tokens": self.prompt_tokens, "tokens": n,
               "stop_reason": self.stop_reason, "error": self.error}
        if n == 0:
            return out
        arrivals = [t.arrival_s for t in self.tokens]
        ttft, e2e = arrivals[0], arrivals[-1]
        # the first token after a recovery waited for the recovery: its gap is recovery time, not decoding
        resumed = {r["tokens_before"] for r in self.recoveries}
        itl = [b - a for (a, b), t in zip(itertools.pairwise(arrivals), self.tokens[1:]) if t.index not in resumed]
        gaps = sum(b - a for (a, b), t in zip(itertools.pairwise(arrivals), self.tokens[1:]) if t.index in resumed)
        decode = [t for t in self.tokens[1:] if t.index not in resumed]
        n_decode = len(decode)
        out.update({
            "ttft_s": ttft, "e2e_s": e2e,
            "tpot_s": (e2e - ttft - gaps) / n_decode if n_decode else None,
            "itl_s": itl, "itl_p50_s": statistics.median(itl) if itl else None,
            "itl_p99_s": sorted(itl)[min(len(itl) - 1, int(0.99 * len(itl)))] if itl else None,
            "tokens_per_s": n / e2e if e2e > 0 else None,
            "decode_tokens_per_s": n_decode / (e2e - ttft - gaps) if n_decode and e2e - ttft - gaps > 0 else None,
            "prefill_compute_s": self.tokens[0].compute_s,
            "prefill_collective_s": self.tokens[0].collective_s,
        })
        if decode:
            m = len(decode)
            out.update({
                "cycle_s_per_token": sum(t.cycle_s for t in decode) / m,
                "compute_s_per_token": sum(t.compute_s for t in decode) / m,
                "collective_s_per_token": sum(t.collective_s for t in decode) / m,
                "hop_s_per_token": sum(t.hop_s for t in decode) / m,
            })
        if self.recoveries:
            out["recovered"] = True
            out["recoveries"] = self.recoveries
        if len(self.stage_compute_s) > 1:
            per_stage = list(zip(*self.stage_compute_s[1:]))
            out["stage_compute_s_per_token"] = [statistics.median(s) for s in per_stage]
        return out

    def token_rows(self) -> list[dict]:
        return [{"index": t.index, "token": t.token, "arrival_s": t.arrival_s, "cycle_s": t.cycle_s,
                 "compute_s": t.compute_s, "collective_s": t.collective_s, "hop_s": t.hop_s,
                 "clock_s": t.clock_s} for t in self.tokens]


class JsonLines:
    """Appends one JSON object a line to a file (or nowhere when ``path`` is None)."""

    def __init__(self, path=None):
        self.path = Path(path) if path else None
        self._f = None
        if self.path is not None:
            try:
                self._f = self.path.open("a")
            except OSError as err:
                raise InputError(f"cannot write: {err.strerror}", file=self.path) from None

    def write(self, row: dict) -> None:
        if self._f is not None:
            self._f.write(json.dumps(row, default=_plain) + "\n")
            self._f.flush()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


def _plain(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    return str(value)


class Transit:
    """Send-to-use times of the frames a shard received, per (sender rank, frame kind).

    Every process of a run reads one clock (CLOCK_MONOTONIC is one clock for all namespaces of a host), so
    a frame stamped by its sender (``Frame.sent_clock_s``) tells the thread that waited for it what its trip
    cost: the path's delay plus the emulator's software time (framing, the kernel, the delay line's lateness,
    waking the receiving threads on busy cores). Only frames sent while that thread already waited count, so
    a rank that came late to a collective does not add its own lateness. With the path's delay taken off
    (the runner knows it), what is left is the per-message floor under the run's own load, not an idle
    calibration. The latest ``keep`` samples per key are kept for the quantiles.

    >>> t = Transit()
    >>> for s in (0.004, 0.001, 0.002):
    ...     t.add(1, "REDUCE", s)
    >>> [(r["src_rank"], r["kind"], r["n"], r["median_s"]) for r in t.rows()]
    [(1, 'REDUCE', 3, 0.002)]
    """

    def __init__(self, keep: int = 4096):
        self.keep = keep
        self._samples: dict[tuple[int, str], list] = {}
        self._count: dict[tuple[int, str], int] = {}

    def add(self, src_rank: int, kind: str, seconds: float) -> None:
        key = (int(src_rank), kind)
        ring = self._samples.setdefault(key, [])
        n = self._count.get(key, 0)
        if len(ring) < self.keep:
            ring.append(seconds)
        else:
            ring[n % self.keep] = seconds
        self._count[key] = n + 1

    def rows(self) -> list[dict]:
        out = []
        for (src, kind), ring in sorted(self._samples.items()):
            s = sorted(ring)
            out.append({"src_rank": src, "kind": kind, "n": self._count[(src, kind)], "median_s": s[len(s) // 2],
                        "p10_s": s[len(s) // 10], "p90_s": s[(9 * len(s)) // 10]})
        return out
