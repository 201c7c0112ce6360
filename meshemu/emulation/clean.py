"""``meshemu clean``: remove what an interrupted run left, and only that.

Everything meshemu makes lives in namespaces named ``<prefix>.<node>``:
interfaces, addresses, routes, qdiscs and iptables rules go with them.
Processes are the exception: shells and tools started inside a namespace,
and the delay-line helper, are found and stopped first; a helper killed
before it could clean up leaves a shared-memory block, removed last.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from meshemu.emulation.mesh import existing_namespaces, run_ip_batch
from meshemu.emulation.naming import DEFAULT_PREFIX
from meshemu.emulation.netlink import NETNS_RUN_DIR


def _pids_in(namespace: str) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _helper_pids(prefix: str) -> list[int]:
    """Delay-line helpers of ours (they run in the root namespace)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if b"meshemu.emulation.delayline_daemon" in argv and b"--namespaces" in argv:
            tag = argv[argv.index(b"--namespaces") + 1] if argv.index(b"--namespaces") + 1 < len(argv) else b""
            if tag == prefix.encode() or tag.startswith(prefix.encode() + b"."):
                pids.append(int(entry))
    return pids


def _stale_shared_memory() -> list[Path]:
    """Delay-matrix blocks (``/dev/shm/meshemu-dl-<pid>-*``) whose owner is gone."""
    stale = []
    for block in Path("/dev/shm").glob("meshemu-dl-*"):
        parts = block.name.split("-")
        if len(parts) >= 3 and parts[2].isdigit() and not os.path.exists(f"/proc/{parts[2]}"):
            stale.append(block)
    return stale


def clean(prefix: str = DEFAULT_PREFIX) -> dict:
    """Stop processes in our namespaces and our helpers, then delete the namespaces."""
    namespaces = existing_namespaces(prefix)
    pids = sorted({p for ns in namespaces for p in _pids_in(ns)} | set(_helper_pids(prefix)))
    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = []
        for pid in pids:
            try:
                os.kill(pid, sig)
                alive.append(pid)
            except ProcessLookupError:
                pass
        if not alive:
            break
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline and any(os.path.exists(f"/proc/{p}") for p in alive):
            time.sleep(0.05)
        pids = [p for p in alive if os.path.exists(f"/proc/{p}")]
    run_ip_batch([f"netns del {ns}" for ns in namespaces], "removing namespaces")
    for block in _stale_shared_memory():
        block.unlink(missing_ok=True)
    stale = [ns for ns in existing_namespaces(prefix) if not os.path.exists(f"{NETNS_RUN_DIR}/{ns}")]
    return {"namespaces": len(namespaces), "processes": len(set(pids)), "stale": len(stale)}
