"""The analytic prediction of a sharded run, from the same inputs the run had.

Inputs: where each rank runs and the one-way path delay between any two
nodes (from the link series' step in force), the model's shape, the measured
compute time of each stage, the all-reduce algorithm, and two constants of the
software: the overhead of one message (``overhead_s``, measured on loopback by
``meshemu bench serving``) and the bytes/s one stream carries (``bandwidth_Bps``).

Per decode token (one trip round the ring of stages; FIELD.md's cost model)::

    cycle  = sum_s [compute_s + 2 L_s allreduce_s] + sum_s hop(s -> s+1 mod p)
    ring   allreduce = 2 (t-1) (alpha + o) + 2 (t-1)/t n/B
    direct allreduce =         alpha + (t-1) (o + n/B)
    hop    = max_j delay(rank (s, j) -> rank (s+1, j)) + o + n/B

(the direct form is FIELD.md's alpha + (t-1) n/B with the per-message overhead
counted like the bytes: a rank's t - 1 sends go out one after another), where
alpha is the slowest pair's one-way delay among the pairs the algorithm
uses (ring: neighbours; direct: all pairs), L_s the stage's layers and n the
bytes of one activation. TTFT = uplink + the prefill's cycle + downlink; TPOT
is the decode cycle. A prompt's messages leave idle connections: one larger
than TCP's initial window pays a round trip per slow-start doubling. With m requests in flight (micro-batches) the pipeline
finishes a batch of m in (m + p - 1) tau, tau the slowest stage's time, and
decodes min(m / cycle, 1 / tau) tokens/s.

>>> p = Prediction.of(tp=2, pp=2, algorithm="ring", layers=[15, 15], stage_compute_s=[0.01, 0.01],
...                   rank_nodes=["a", "b", "c", "d"], client_node="g", one_way_s=lambda x, y: 0.005,
...                   activation_bytes=2304, overhead_s=0.0, bandwidth_Bps=float("inf"))
>>> round(p.allreduce_s, 4), round(p.hops_s, 4), round(p.tpot_s, 4)   # 60 all-reduces x 2 steps x 5 ms
(0.01, 0.01, 0.63)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

#: Software cost of one message between shard processes (Python, framing, the kernel's loopback, waking the
#: receiving thread), seconds. Measured on loopback by ``meshemu bench serving`` on the 2-core development
#: machine with another benchmark beside it: 0.20-0.25 ms median per hop on the TCP data plane (0.37-0.42 ms
#: on gRPC Exchange streams, where it was 0.6 ms before).
DEFAULT_OVERHEAD_S = 0.22e-3
#: TCP's initial window (10 segments of 1448 B): a larger message sent after idle needs more round trips.
INITIAL_WINDOW_BYTES = 10 * 1448
#: Bytes/s one gRPC stream carries between Python processes (FIELD.md: ~500 MiB/s with 1 MiB chunks).
DEFAULT_BANDWIDTH_BPS = 400e6


def slow_start_rounds(nbytes: float, window_bytes: float = INITIAL_WINDOW_BYTES) -> int:
    """Round trips beyond the first that TCP slow start needs to send ``nbytes`` from an idle start.

    >>> slow_start_rounds(2304), slow_start_rounds(20_000), slow_start_rounds(200_000)
    (0, 1, 3)
    """
    rounds, sent, window = 1, window_bytes, window_bytes
    while sent < nbytes:
        window *= 2
        sent += window
        rounds += 1
    return rounds - 1


def allreduce_s(algorithm: str, t: int, alpha_s: float, nbytes: float, overhead_s: float,
                bandwidth_Bps: float) -> float:
    """One all-reduce of ``nbytes`` over ``t`` ranks, slowest pair ``alpha_s`` one way.

    >>> round(allreduce_s("ring", 4, 0.005, 4096, 0.0, float("inf")), 4)   # FIELD.md: 6 steps of 5 ms
    0.03
    >>> round(allreduce_s("direct", 4, 0.005, 4096, 0.0, float("inf")), 4)
    0.005
    """
    if t <= 1:
        return 0.0
    if algorithm == "ring":
        return 2 * (t - 1) * (alpha_s + overhead_s) + 2 * (t - 1) / t * nbytes / bandwidth_Bps
    # The t - 1 sends leave one after another: each costs the software overhead as well as its bytes.
    return alpha_s + (t - 1) * (overhead_s + nbytes / bandwidth_Bps)


def allreduce_messages_per_token(tp: int, algorithm: str, layers) -> int:
    """All-reduce messages on one rank's critical path per decode token (2 all-reduces a layer): ring 2(t-1)
    steps each, direct t-1 sends. Collective time over these is what one message cost in a run: its floor.

    >>> allreduce_messages_per_token(8, "direct", [64]), allreduce_messages_per_token(8, "ring", [64])
    (896, 1792)
    >>> allreduce_messages_per_token(3, "ring", [30]), allreduce_messages_per_token(1, "ring", [15, 15])
    (240, 0)
    """
    if tp <= 1:
        return 0
    per_allreduce = 2 * (tp - 1) if algorithm == "ring" else tp - 1
    return sum(2 * n * per_allreduce for n in layers)


def ring_allreduce_s(link_s, nbytes: float, overhead_s: float, bandwidth_Bps: float) -> float:
    """A ring all-reduce over links of unequal delay (``link_s[j]``: rank j to rank j+1, one way).

    The ring is not lock-step: rank j starts step i as soon as its predecessor's
    piece of step i-1 has arrived, so a long link delays the pieces that cross
    it, not every step of every rank. Finish times follow
    ``r_i[j] = max(r_{i-1}[j], r_{i-1}[j-1] + link_s[j-1] + o + (n/t)/B)`` over
    2(t-1) steps; with equal links this is the textbook 2(t-1)(alpha + o) + 2(t-1)/t n/B.

    >>> round(ring_allreduce_s([0.005] * 4, 4096, 0.0, float("inf")), 4)
    0.03
    >>> round(ring_allreduce_s([0.005, 0.005, 0.005, 0.020], 4096, 0.0, float("inf")), 4)  # not 6 x 20 ms
    0.06
    """
    t = len(link_s)
    if t <= 1:
        return 0.0
    step = [d + overhead_s + nbytes / t / bandwidth_Bps for d in link_s]
    ready = [0.0] * t
    for _ in range(2 * (t - 1)):
        ready = [max(ready[j], ready[j - 1] + step[j - 1]) for j in range(t)]
    return max(ready)


@dataclass(frozen=True)
class Prediction:
    """Predicted time of one token, and of the first, with its parts."""

    tpot_s: float
    ttft_s: float
    compute_s: float       # per decode token, all stages
    collectives_s: float   # per decode token, all stages (2 per layer)
    allreduce_s: float     # one all-reduce (the slowest stage's)
    hops_s: float          # per decode token, round the ring of stages
    uplink_s: float
    downlink_s: float
    tau_s: float           # the slowest stage's time per token
    n_stages: int

    def tokens_per_s(self, m: int = 1) -> float:
        """Decode tokens/s with ``m`` requests in flight."""
        return min(m / self.tpot_s, 1 / self.tau_s if self.tau_s > 0 else float("inf"))

    def batch_s(self, m: int) -> float:
        """One pass of ``m`` micro-batches through the pipeline: (m + p - 1) tau."""
        return (m + self.n_stages - 1) * self.tau_s

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def of(cls, *, tp: int, pp: int, algorithm: str, layers, stage_compute_s, rank_nodes, client_node,
           one_way_s: Callable[[str, str], float], activation_bytes: float, prompt_tokens: int = 1,
           prefill_compute_s=None, overhead_s: float = DEFAULT_OVERHEAD_S,
           bandwidth_Bps: float = DEFAULT_BANDWIDTH_BPS) -> Prediction:
        """Predict from the placement (``rank_nodes``, global rank order), delays and measured compute.

        ``stage_compute_s[s]`` is stage s's compute for one decode token (its
        tensor rank 0's), ``prefill_compute_s[s]`` for the prompt.
        """
        def node(stage, j):
            return rank_nodes[stage * tp + j]

        def delay(a, b):
            return 0.0 if a == b else one_way_s(a, b)

        def stage_allreduce(s, nbytes, idle):
            if tp == 1:
                return 0.0
            if algorithm == "ring":
                links = [delay(node(s, j), node(s, (j + 1) % tp)) for j in range(tp)]
                alpha, piece, messages = max(links), nbytes / tp, 2 * (tp - 1)
                base = ring_allreduce_s(links, nbytes, overhead_s, bandwidth_Bps)
            else:
                alpha = max(delay(node(s, i), node(s, j)) for i in range(tp) for j in range(tp) if i != j)
                piece, messages = nbytes, 1
                base = allreduce_s(algorithm, tp, alpha, nbytes, overhead_s, bandwidth_Bps)
            extra = 2 * alpha * slow_start_rounds(piece) * messages if idle else 0.0
            return base + extra

        def hop(s, nbytes, idle):
            """Stage s hands on to s+1; the last stage hands its token to every rank of stage 0."""
            if s < pp - 1:
                pairs = [(node(s, j), node(s + 1, j)) for j in range(tp)]
                size = nbytes
            else:
                pairs = [(node(s, 0), node(0, j)) for j in range(tp) if not (pp == 1 and j == 0)]
                size = 8
            if not pairs:
                return 0.0  # a single shard: the token stays in the process
            alpha = max(delay(a, b) for a, b in pairs)
            extra = 2 * alpha * slow_start_rounds(size) if idle else 0.0
            return alpha + overhead_s + size / bandwidth_Bps + extra

        def cycle(compute, tokens):
            # A prompt's large messages leave idle connections: TCP slow start adds round trips.
            nbytes, idle = activation_bytes * tokens, tokens > 1
            ar = [stage_allreduce(s, nbytes, idle) for s in range(pp)]
            coll = [2 * layers[s] * ar[s] for s in range(pp)]
            hops = [hop(s, nbytes, idle) for s in range(pp)]
            return sum(compute) + sum(coll) + sum(hops), coll, hops, ar

        tpot, coll, hops, ar = cycle(stage_compute_s, 1)
        prefill = prefill_compute_s if prefill_compute_s is not None else stage_compute_s
        first, *_ = cycle(prefill, prompt_tokens)
        head = rank_nodes[0]
        up = delay(client_node, head) + overhead_s
        down = delay(head, client_node) + overhead_s
        tau = max(stage_compute_s[s] + coll[s] for s in range(pp))
        return cls(tpot_s=tpot, ttft_s=up + first + down, compute_s=sum(stage_compute_s),
                   collectives_s=sum(coll), allreduce_s=max(ar), hops_s=sum(hops), uplink_s=up,
                   downlink_s=down, tau_s=tau, n_stages=pp)
