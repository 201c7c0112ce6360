"""A serving job, typed: the model and its layout, where the shards are, the requests and their deadlines.

It is built once (from an experiment file or the command line), checked once,
and handed down unchanged: to the deployment, which fills in the shards'
addresses, and as JSON to the client in a ground station's namespace, which
reads it back with the same schema (every key present, none unknown).

>>> job = ServingJob(ServingPlan("tiny:llama:0", tp=2), (Request((1, 2, 3), request_id="r0"),))
>>> placed = job.placed(["10.100.0.1:5000", "10.100.0.2:5000"], ["p00s00", "p00s01"])
>>> ServingJob.from_json(placed.to_json()) == placed
True
>>> ServingJob.from_json('{"plan": {}}')
Traceback (most recent call last):
...
meshemu.errors.InputError: <serving job>: plan.model: missing required key
"""

from __future__ import annotations

import json
import math
import re
import uuid
from dataclasses import asdict, dataclass, field, replace
from typing import Literal

import numpy as np

from meshemu.config import from_mapping
from meshemu.errors import InputError

# Limits of the wire (proto3 uint32, uint64 and int64 fields): a value past them is a ValueError deep in
# the client, so a request is refused where it is made.
_UINT32, _UINT64, _INT64 = 1 << 32, 1 << 64, 1 << 63
# A request id is a key of every shard's session table (and of the last 4,096 ended there): keep it short.
MAX_REQUEST_ID_CHARS = 128
# Requests in flight at once: the client runs each in a thread of its own.
MAX_CONCURRENCY = 1024
# Any wait (a gap, a deadline) past a week is a typo; past ~292 years it overflows the clock's C type.
MAX_WAIT_S = 7 * 86400.0
# The longest wait for one token or one peer: a shard refuses more (its peers wait this long on each step).
MAX_STEP_TIMEOUT_S = 86400.0
_ADDRESS = re.compile(r"\[?[^\s\[\]]+\]?:\d{1,5}")


def check_wait_s(name: str, value: float, *, zero_ok: bool = False, most_s: float = MAX_WAIT_S) -> None:
    """InputError unless ``value`` is a number of seconds in (0, MAX_WAIT_S] ([0, ...] with ``zero_ok``).

    >>> check_wait_s("gap_s", 1e300)
    Traceback (most recent call last):
    ...
    meshemu.errors.InputError: gap_s must be at most 604,800 s (a week), got 1e+300 s
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise InputError(f"{name} must be a number of seconds, got {value!r}")
    if not (value >= 0 if zero_ok else value > 0):
        raise InputError(f"{name} must be {'0 s or more' if zero_ok else 'greater than 0 s'}, got {value}")
    if value > most_s:
        raise InputError(f"{name} must be at most {most_s:,.0f} s ({'a week' if most_s == MAX_WAIT_S else 'a day'}), "
                         f"got {value:g} s")


def check_model_compute(model: str, compute: str) -> None:
    """A shape without weights (``preset:NAME``) can only be served by a device model."""
    if model.startswith("preset:") and compute in ("", "real"):
        raise InputError(f"{model} has no weights: serve it with compute device:NAME")


@dataclass(frozen=True)
class ServingPlan:
    """What to serve where: the model, the parallel layout, and every rank's address once the shards run."""

    model: str
    ranks: tuple[str, ...] = ()  # shard addresses, rank order (global rank = stage x tp + tensor rank)
    tp: int = 1
    pp: int = 1
    allreduce: Literal["ring", "direct"] = "ring"
    compute: str = "real"
    peak_flops: float = 0.0
    peak_bandwidth_Bps: float = 0.0
    nodes: tuple[str, ...] = ()  # where each rank runs (a satellite's name, or loopbackN)

    def __post_init__(self):
        object.__setattr__(self, "ranks", tuple(self.ranks))
        object.__setattr__(self, "nodes", tuple(self.nodes))
        if self.tp < 1 or self.pp < 1:
            raise InputError(f"tp and pp must be at least 1, got tp {self.tp}, pp {self.pp}")
        if self.ranks and len(self.ranks) != self.tp * self.pp:
            raise InputError(f"{len(self.ranks)} shard addresses for tp {self.tp} x pp {self.pp}")
        bad = next((a for a in self.ranks if not _ADDRESS.fullmatch(a) or int(a.rpartition(":")[2]) > 65535), None)
        if bad is not None:
            raise InputError(f"shard address {bad!r} is not IP:PORT")
        if self.nodes and self.ranks and len(self.nodes) != len(self.ranks):
            raise InputError(f"{len(self.nodes)} node names for {len(self.ranks)} shard addresses")
        for name in ("peak_flops", "peak_bandwidth_Bps"):
            value = getattr(self, name)
            if not 0 <= value < math.inf:
                raise InputError(f"{name} must be a finite number, 0 or more (0: the device's own), got {value}")
        check_model_compute(self.model, self.compute)

    @property
    def n_ranks(self) -> int:
        return self.tp * self.pp


@dataclass(frozen=True)
class Request:
    prompt: tuple[int, ...]
    max_new_tokens: int = 16
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    stop_ids: tuple[int, ...] = ()
    return_logits: bool = False
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def __post_init__(self):
        for what in ("prompt", "stop_ids"):
            ids = tuple(getattr(self, what))
            bad = next((t for t in ids if isinstance(t, (bool, np.bool_)) or not isinstance(t, (int, np.integer))
                        or not 0 <= t < _INT64), None)
            if bad is not None:
                raise InputError(f"request {what}: token id {bad!r} is not a whole number in [0, 2^63)")
            object.__setattr__(self, what, tuple(int(t) for t in ids))
        if not 1 <= self.max_new_tokens < _UINT32:
            raise InputError(f"max_new_tokens must be at least 1 and below 2^32, got {self.max_new_tokens}")
        if not 0 <= self.temperature < math.inf:
            raise InputError(f"temperature must be a finite number, 0 (greedy) or more, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise InputError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0 <= self.seed < _UINT64:
            raise InputError(f"seed must be a whole number in [0, 2^64), got {self.seed}")
        if len(self.request_id) > MAX_REQUEST_ID_CHARS:
            raise InputError(f"request_id is {len(self.request_id):,} characters: at most {MAX_REQUEST_ID_CHARS}")


@dataclass(frozen=True)
class Recovery:
    """What the client does when a rank is lost mid-request.

    ``fail`` ends the request with the error (as serving always did);
    ``replace`` has the deployment start the rank's shard on a spare satellite;
    ``wait`` waits for the lost satellite to come back when that is sooner than
    a replacement. Either way the client reloads the plan and re-prefills the
    prompt and the tokens generated so far, so greedy tokens are unchanged.
    ``weights`` says what a replacement's load stands for: ``on_board`` (every
    satellite carries the weights) or ``uplink`` (the shard's weights are sent
    up at ``uplink_rate_mbps`` first, modelled as a wait of its size over that rate).
    """

    policy: Literal["fail", "replace", "wait"] = "fail"
    detect_timeout_s: float = 2.0  # no token for this long: the client looks for a lost rank
    weights: Literal["on_board", "uplink"] = "on_board"
    uplink_rate_mbps: float | None = None

    def __post_init__(self):
        if not self.detect_timeout_s > 0:
            raise InputError(f"recovery.detect_timeout_s must be greater than 0 s, got {self.detect_timeout_s}")
        check_wait_s("recovery.detect_timeout_s", self.detect_timeout_s, most_s=MAX_STEP_TIMEOUT_S)
        if self.weights == "uplink" and not (self.uplink_rate_mbps or 0) > 0:
            raise InputError("recovery.weights uplink needs uplink_rate_mbps greater than 0 (the GSL's rate)")

    @property
    def enabled(self) -> bool:
        return self.policy != "fail"


@dataclass(frozen=True)
class ServingJob:
    """The requests a client sends to a plan's shards: ``concurrency`` at a time, ``gap_s`` apart."""

    plan: ServingPlan
    requests: tuple[Request, ...]
    concurrency: int = 1
    gap_s: float = 0.0  # pause between batches, to let the constellation move
    timeout_s: float = 600.0  # deadline of each request
    step_timeout_s: float = 10.0  # longest wait for one token or one peer
    connect_timeout_s: float = 30.0
    load_timeout_s: float = 300.0
    recovery: Recovery = Recovery()

    def __post_init__(self):
        object.__setattr__(self, "requests", tuple(self.requests))
        if not 1 <= self.concurrency <= MAX_CONCURRENCY:
            raise InputError(f"concurrency must be within [1, {MAX_CONCURRENCY:,}] requests in flight, "
                             f"got {self.concurrency:,}")
        check_wait_s("gap_s", self.gap_s, zero_ok=True)
        for name in ("timeout_s", "connect_timeout_s", "load_timeout_s"):
            check_wait_s(name, getattr(self, name))
        check_wait_s("step_timeout_s", self.step_timeout_s, most_s=MAX_STEP_TIMEOUT_S)
        seen = {}
        for i, r in enumerate(self.requests):
            if r.request_id and seen.setdefault(r.request_id, i) != i:
                # the head refuses the second as 'already running', or mixes up their records
                raise InputError(f"requests[{i}] has the request_id of requests[{seen[r.request_id]}] "
                                 f"({r.request_id!r}): give each its own")

    def placed(self, ranks, nodes) -> "ServingJob":
        """This job with the shards' addresses (and the nodes they run on) filled in."""
        return replace(self, plan=replace(self.plan, ranks=tuple(ranks), nodes=tuple(nodes)))

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "ServingJob":
        """The job :meth:`to_json` wrote; a key missing or unknown is an InputError naming it."""
        try:
            data = json.loads(text)
        except ValueError as err:
            raise InputError(f"not JSON ({err})", file="<serving job>") from None
        except RecursionError:
            raise InputError("is nested too deeply to be a serving job", file="<serving job>") from None
        return from_mapping(cls, data, file="<serving job>", strict=True)
