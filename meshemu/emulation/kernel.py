"""What this machine can do, found out at start in a throwaway namespace.

>>> Capabilities(root=True, netem=False, nfqueue=True, mininet=True, kernel="6.1").shaper("auto")
'delayline'
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import asdict, dataclass

from meshemu.emulation import netlink as nl
from meshemu.emulation.mesh import run_ip_batch
from meshemu.errors import CapabilityError

SHAPERS = ("netem", "delayline", "none")


@dataclass(frozen=True)
class Capabilities:
    root: bool
    netem: bool
    nfqueue: bool
    mininet: bool
    kernel: str

    def as_dict(self) -> dict:
        return asdict(self)

    def shaper(self, requested: str = "auto") -> str:
        """The shaping backend to run: netem wherever it exists, else the NFQUEUE delay line."""
        if requested not in ("auto",) + SHAPERS:
            raise CapabilityError(f"unknown shaper {requested!r}: use auto, netem, delayline or none")
        if requested == "netem" and not self.netem:
            raise CapabilityError(f"this kernel ({self.kernel}) has no sch_netem: use --shaper delayline, "
                                  "or install the kernel's extra modules (e.g. linux-modules-extra-$(uname -r))")
        if requested == "delayline" and not self.nfqueue:
            raise CapabilityError("iptables cannot queue to NFQUEUE here (xt_NFQUEUE / nfnetlink_queue missing): "
                                  "use --shaper netem or load the modules")
        if requested != "auto":
            return requested
        if self.netem:
            return "netem"
        if self.nfqueue:
            return "delayline"
        raise CapabilityError("no delay backend works here: neither sch_netem nor NFQUEUE is available")


def require_root() -> None:
    if os.geteuid() != 0:
        raise CapabilityError("emulation needs root (network namespaces, links, routes): run it with sudo")


def probe(prefix: str = "meshemu") -> Capabilities:
    """Try netem and NFQUEUE in a throwaway namespace, and look for Mininet."""

    require_root()
    if not shutil.which("ip"):
        raise CapabilityError("the 'ip' command is missing: install iproute2 (sudo bash tools/setup.sh)")
    name = f"{prefix}.probe-{os.getpid()}"
    run_ip_batch([f"netns add {name}"], "probing the kernel")
    try:
        with nl.enter_netns(name):
            sock = nl.RtSocket()
        try:
            lo = sock.dump_links()["lo"]
            sock.send_messages([nl.link_updown(lo, True)], "probe")
            try:
                sock.send_messages([nl.netem_qdisc(lo, nl.NetemParams(delay_s=0.001), create=True)], "probe")
                netem = True
            except nl.NetlinkError:
                netem = False
        finally:
            sock.close()
        nfqueue = shutil.which("iptables") is not None and subprocess.run(
            ["nsenter", f"--net={nl.NETNS_RUN_DIR}/{name}", "iptables", "-w", "-t", "raw", "-A", "PREROUTING",
             "-d", "127.0.0.2/32", "-j", "NFQUEUE", "--queue-num", "0"], capture_output=True).returncode == 0
    finally:
        run_ip_batch([f"netns del {name}"], "removing the probe namespace")
    try:
        import mininet.node  # noqa: F401

        mininet = shutil.which("mnexec") is not None
    except ImportError:
        mininet = False
    return Capabilities(root=True, netem=netem, nfqueue=nfqueue, mininet=mininet, kernel=os.uname().release)
