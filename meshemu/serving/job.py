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
import uuid
from dataclasses import asdict, dataclass, field, replace
from typing import Literal

from meshemu.config import from_mapping
from meshemu.errors import InputError


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
        object.__setattr__(self, "prompt", tuple(self.prompt))
        object.__setattr__(self, "stop_ids", tuple(self.stop_ids))


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
        if self.concurrency < 1:
            raise InputError(f"concurrency must be at least 1, got {self.concurrency}")
        if not self.gap_s >= 0:
            raise InputError(f"gap_s must be 0 s or more, got {self.gap_s}")
        for name in ("timeout_s", "step_timeout_s", "connect_timeout_s", "load_timeout_s"):
            if not getattr(self, name) > 0:
                raise InputError(f"{name} must be greater than 0 s, got {getattr(self, name)}")

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
        return from_mapping(cls, data, file="<serving job>", strict=True)
