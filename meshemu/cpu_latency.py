"""Asking the host's CPUs not to sleep deeply while a run is up: a PM QoS request on ``/dev/cpu_dma_latency``.

A pipeline stage idles for milliseconds between its passes, a tensor-parallel
rank between its all-reduce pieces, and the delay line between the packets it
holds. An idle CPU halts; on a virtual machine the halted vCPU goes back to the
hypervisor, and waking it costs more than the work it wakes for. Measured here
(2-vCPU microVM, haltpoll idle driver): a bare loopback echo costs 39-44 us one
way when the CPUs may halt and 12-16 us while a request of 0 us is held; an
all-reduce piece from send to the rank that waits for it 0.25-0.28 ms against
0.13-0.15 ms; the delay line's RTT error median 0.1-0.37 ms against -0.03-0.27.
Shards (:class:`~meshemu.serving.launch.ShardProcesses`) and an emulation
(:class:`~meshemu.emulation.emulation.Emulation`) each hold one while they run.

The request is the kernel's own interface (what tuned's latency-performance
profile writes): while a process keeps the file open with a value written, no CPU
enters an idle state whose exit latency exceeds that value. It costs power (idle
CPUs poll instead of halting) and nothing else, and it ends when the file is
closed, which the kernel also does when the process dies: nothing is left behind.

``$MESHEMU_CPU_LATENCY`` chooses: ``0`` (the default) or any whole number of
microseconds to hold, ``off`` to leave the CPUs alone.

>>> import tempfile
>>> with tempfile.NamedTemporaryFile() as f:
...     with CpuLatency("25", path=f.name) as held:  # doctest: +ELLIPSIS
...         print(held.status)
...     print(open(f.name, "rb").read())
held at 25 us (PM QoS request on ...)
b'\\x19\\x00\\x00\\x00'
>>> CpuLatency("off").status
'not held (MESHEMU_CPU_LATENCY=off)'
"""

from __future__ import annotations

import os
import struct

from meshemu.errors import InputError

CPU_LATENCY_ENV = "MESHEMU_CPU_LATENCY"
PM_QOS_PATH = "/dev/cpu_dma_latency"
_MAX_US = 2_000_000_000  # the file takes a signed 32-bit count of microseconds


def cpu_latency_setting(value: str | None = None) -> int | None:
    """The wake latency to hold in microseconds (``value`` or ``$MESHEMU_CPU_LATENCY``, default 0); None: off.

    >>> cpu_latency_setting(""), cpu_latency_setting("10"), cpu_latency_setting("off")
    (0, 10, None)
    """
    text = (os.environ.get(CPU_LATENCY_ENV, "") if value is None else value).strip()
    if text.lower() == "off":
        return None
    if not text:
        return 0
    if not text.isdigit() or int(text) > _MAX_US:
        raise InputError(f"{CPU_LATENCY_ENV}={text!r}: give a whole number of microseconds (0 keeps the CPUs "
                         "from sleeping deeply) or 'off'")
    return int(text)


def enforced_us(path: str = PM_QOS_PATH) -> int | None:
    """The wake latency the kernel enforces now (the strictest request anyone holds), in us; None: unreadable."""
    try:
        with open(path, "rb") as f:
            return struct.unpack("=i", f.read(4))[0]
    except (OSError, struct.error):
        return None


class CpuLatency:
    """Holds a CPU wake-latency request from :meth:`hold` to :meth:`release`; :attr:`status` says what happened.

    Holding never fails: without the file or the right to write it (not root, a container), the run goes on
    as before and the status says why.
    """

    def __init__(self, value: str | None = None, path: str = PM_QOS_PATH):
        self.latency_us = cpu_latency_setting(value)
        self.path = path
        self._fd: int | None = None
        self.status = f"not held ({CPU_LATENCY_ENV}=off)" if self.latency_us is None else "not held yet"

    @property
    def held(self) -> bool:
        return self._fd is not None

    def hold(self) -> "CpuLatency":
        if self.latency_us is None or self._fd is not None:
            return self
        try:
            fd = os.open(self.path, os.O_WRONLY)
        except OSError as err:
            self.status = f"not held: {self.path}: {err.strerror} (run as root for the lowest floor)"
            return self
        try:
            os.write(fd, struct.pack("=i", self.latency_us))
        except OSError as err:
            os.close(fd)
            self.status = f"not held: writing {self.path}: {err.strerror}"
            return self
        self._fd = fd
        self.status = f"held at {self.latency_us} us (PM QoS request on {self.path})"
        return self

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # the kernel drops the request with the file

    def __enter__(self):
        return self.hold()

    def __exit__(self, *exc):
        self.release()
        return False
