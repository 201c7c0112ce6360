"""How much memory a request would take, checked before it is allocated.

Every large allocation in meshemu (a time grid, a constellation, a link
series, a model's weights) first estimates its size and asks
:func:`memory_problem`, so that a mistyped ``--step 1e-9`` is one line saying
how big the request is and what to change, not a MemoryError (or the kernel's
OOM killer) minutes later.

>>> memory_problem(1 << 20, "a 1 MiB test", "nothing") is None
True
>>> memory_problem(1 << 60, "the test", "ask for less", available_bytes=2 << 30)
'the test needs about 1.0 EiB of memory, 2.0 GiB is available: ask for less'
"""

from __future__ import annotations

import os
import resource

# Leave room for the interpreter, numpy temporaries and the rest of the machine.
USABLE_FRACTION = 0.8


def format_bytes(n: float) -> str:
    """``1536`` -> ``'1.5 KiB'``.

    >>> format_bytes(3 * 2**30)
    '3.0 GiB'
    """
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024:
            return f"{n:.0f} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} EiB"


def available_memory_bytes() -> int:
    """What this process may still allocate: the least of MemAvailable, the cgroup's room and RLIMIT_AS."""
    limits = []
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    limits.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            cap = f.read().strip()
        if cap != "max":
            with open("/sys/fs/cgroup/memory.current") as f:
                limits.append(int(cap) - int(f.read().strip()))
    except (OSError, ValueError):
        pass
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        try:
            with open("/proc/self/statm") as f:
                used = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError):
            used = 0
        limits.append(soft - used)
    return max(0, min(limits)) if limits else 1 << 62


def memory_problem(nbytes: float, what: str, advice: str, *, available_bytes: int | None = None) -> str | None:
    """None when ``nbytes`` fits; otherwise the one-line message (``what`` needs ..., ``advice``)."""
    available = available_memory_bytes() if available_bytes is None else available_bytes
    if nbytes <= available * USABLE_FRACTION:
        return None
    return f"{what} needs about {format_bytes(nbytes)} of memory, {format_bytes(available)} is available: {advice}"
