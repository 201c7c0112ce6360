"""Starting shard processes: on loopback, or wherever a caller's command prefix puts them.

Both run ``python -m meshemu.serving.shard --bind IP:0`` and read back the
``READY IP:PORT`` line. The deployment puts a shard inside a satellite's
namespace by giving the command prefix that enters it, and binds the node's
own address (the one routes carry); serving itself knows nothing of
namespaces. Children get ``OPENBLAS_NUM_THREADS=1`` and die with the process that
started them (they watch a pidfd of their parent: any thread may start them), and
:meth:`ShardProcesses.close` stops them in a ``finally``. While any runs, the host's
CPUs are asked not to sleep deeply (:mod:`~meshemu.cpu_latency`): waking
from deep idle is most of one frame's cost on a virtual machine.
"""

from __future__ import annotations

import os
import selectors
import subprocess
import sys
import tempfile
import time

from meshemu.cpu_latency import CpuLatency
from meshemu.errors import CapabilityError, InputError


def shard_env() -> dict:
    env = dict(os.environ)
    env.update(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               GRPC_VERBOSITY=env.get("GRPC_VERBOSITY", "ERROR"), PYTHONUNBUFFERED="1")
    return env


class ShardProcesses:
    """Shard (and client) processes this process started; :meth:`close` stops them all."""

    def __init__(self):
        self.procs: list[subprocess.Popen] = []
        self.cpu_latency = CpuLatency()  # held from the first spawn to close: say its status where a run reports

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def spawn(self, argv: list[str], *, prefix=(), **popen) -> subprocess.Popen:
        """Start ``prefix + argv`` (a prefix such as ``nsenter --net=...``); a file given as ``stderr`` stays readable."""
        prefix = list(prefix)
        popen.setdefault("env", shard_env())
        self.cpu_latency.hold()
        err_file = popen.get("stderr")
        proc = subprocess.Popen(prefix + argv, **popen)
        proc.stderr_file = err_file if hasattr(err_file, "seek") else None
        self.procs.append(proc)
        return proc

    def start_shards(self, binds: list[str], *, nodes=None, prefixes=None, step_timeout_s: float = 10.0,
                     timeout_s: float = 60.0, extra_args=()) -> list[str]:
        """Start one shard per ``binds`` entry (``IP:0``), all at once, each behind its command prefix
        (``prefixes[k]``); return their addresses."""
        procs = []
        for k, bind in enumerate(binds):
            argv = [sys.executable, "-m", "meshemu.serving.shard", "--bind", bind,
                    "--step-timeout", str(step_timeout_s), *extra_args]
            if nodes:
                argv += ["--node", nodes[k]]
            # stderr to a file: a pipe nobody reads would block the shard once it filled.
            procs.append(self.spawn(argv, prefix=prefixes[k] if prefixes else (),
                                    stdout=subprocess.PIPE, stderr=tempfile.TemporaryFile("w+"), text=True))  # noqa: SIM115 - closed in close()
        return [self._ready(p, bind, timeout_s) for p, bind in zip(procs, binds)]

    @staticmethod
    def _ready(proc: subprocess.Popen, bind: str, timeout_s: float) -> str:
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if sel.select(timeout=0.2):
                line = proc.stdout.readline()
                if line.startswith("READY "):
                    sel.close()
                    return line.split()[1]
                if line == "":  # exited
                    break
            if proc.poll() is not None:
                break
        sel.close()
        if proc.poll() is None:
            proc.kill()
            raise CapabilityError(f"the shard for {bind} did not start within {timeout_s:g} s")
        err = stderr_text(proc).strip().splitlines()
        raise InputError(err[-1].removeprefix("meshemu-shard: error: ") if err
                         else f"the shard for {bind} exited with status {proc.returncode}")

    def close(self, grace_s: float = 3.0) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        deadline = time.monotonic() + grace_s
        for p in self.procs:
            try:
                p.wait(timeout=max(0.05, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for p in self.procs:
            for stream in (p.stdout, p.stderr, p.stdin, getattr(p, "stderr_file", None)):
                if stream is not None:
                    stream.close()
        self.procs.clear()
        self.cpu_latency.release()


def stderr_text(proc: subprocess.Popen) -> str:
    """What a process wrote to stderr (its file, or its pipe once it has exited)."""
    f = getattr(proc, "stderr_file", None)
    if f is not None:
        f.seek(0)
        return f.read()
    return proc.stderr.read() if proc.stderr is not None else ""


def start_loopback(procs: ShardProcesses, n: int, **kwargs) -> list[str]:
    """``n`` shards on 127.0.0.1, ports chosen by the kernel."""
    return procs.start_shards(["127.0.0.1:0"] * n, nodes=[f"loopback{k}" for k in range(n)], **kwargs)
