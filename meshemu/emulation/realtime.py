"""Real-time scheduling for the moments that are timed: the delay line's releases, a probe's stamps.

On the 2-core development VM a process at normal priority that wakes for a
packet waits behind whatever else runs (the model's shards, a test suite, a
VM). Measured there with the delay line's trace
(``experiments/bench/delayline_breakdown.py``), the delay line released the probes'
packets within ~0.1 ms of their deadlines (p99), while the probe's receive
side (release -> the probe stamps the answer) had a p99 of 4.5 ms beside the
quickstart's shards and a VM, and 49 ms beside a VM and a test suite; with the
probe's timed section under SCHED_FIFO: 0.25 and 0.44 ms. So whatever
*measures* the delay line must wake as promptly as the delay line releases:
:func:`realtime_thread` runs the calling thread under SCHED_FIFO for one block
and restores what it had after.

On an idle machine the wake-up itself is the cost: a vCPU that halted for
~100 ms takes 0.1-0.4 ms to run the woken probe (the median error of the
122 ms path rose to 0.35-0.5 ms there, with or without SCHED_FIFO); a probe
that busy-polls its socket once the answer is due (as the daemon busy-waits
its deadlines) measured 0.13-0.19 ms medians and 0.23-0.68 ms p99s per path.

Priorities: the delay line's daemon runs at :data:`DAEMON_PRIORITY`, a probe
below it (:data:`PROBE_PRIORITY`), so a probe never delays a release, and a
probe preempts every normal process.
"""

from __future__ import annotations

import contextlib
import os

DAEMON_PRIORITY = 10
PROBE_PRIORITY = 5


def set_fifo(priority: int) -> bool:
    """Put the calling thread under SCHED_FIFO at ``priority``; False where that is not allowed (not root)."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))  # pid 0: this thread (Linux)
        return True
    except (OSError, AttributeError):
        return False


@contextlib.contextmanager
def realtime_thread(priority: int = PROBE_PRIORITY):
    """SCHED_FIFO for the calling thread inside the block (nothing changes where it is not allowed).

    Keep the block short and blocking (waiting on sockets): a real-time thread
    that computes holds its CPU against every normal process.

    Yields whether the thread runs real-time.
    """
    try:
        policy, param = os.sched_getscheduler(0), os.sched_getparam(0)
    except (OSError, AttributeError):
        yield False
        return
    if policy == os.SCHED_FIFO and param.sched_priority >= priority:
        yield True  # already at least this urgent: leave it
        return
    on = set_fifo(priority)
    try:
        yield on
    finally:
        if on:
            try:
                os.sched_setscheduler(0, policy, param)
            except OSError:
                pass
