"""The emulated network in the kernel: namespaces, veth links, addresses, routes.

Built in bulk: ``ip -batch`` makes every namespace and every veth pair in one
process each (the kernel's own cost dominates: ~2 s for 1,700 namespaces and
3,400 links here), then one rtnetlink socket per namespace sets addresses,
states, permanent ARP entries and /32 routes in batches. A link that goes down
is set administratively down at both ends (no packet crosses it); the routes
that used it were re-pointed first.

The mesh knows nothing of orbits: it takes a :class:`~meshemu.emulation.naming.MeshPlan`,
which links are up, and forwarding-table changes.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from meshemu.emulation import netlink as nl
from meshemu.emulation.naming import MeshPlan
from meshemu.errors import CapabilityError, MeshemuError


# iproute2 (6.1 here) keeps open every namespace a batch line names with "netns NAME", for the life of the
# process: two descriptors per link. Past its open-file limit, the next "netns" is "Invalid netns value"
# (Starlink gen 1 has 11,391 links). A new process every this many lines keeps that well under any limit.
IP_BATCH_LINES = 2000


def run_ip_batch(lines: list[str], what: str) -> None:
    """Run ``ip -batch`` over ``lines`` (a process per :data:`IP_BATCH_LINES`); one clear error if any line fails."""
    for start in range(0, len(lines), IP_BATCH_LINES):
        _run_ip_batch(lines[start:start + IP_BATCH_LINES], what)


def _run_ip_batch(lines: list[str], what: str) -> None:
    if not lines:
        return
    with tempfile.NamedTemporaryFile("w", suffix=".ip", delete=False) as f:
        f.write("\n".join(lines) + "\n")
    try:
        proc = subprocess.run(["ip", "-force", "-batch", f.name], capture_output=True, text=True)
    except FileNotFoundError:
        raise CapabilityError("the 'ip' command is missing: install iproute2") from None
    finally:
        os.unlink(f.name)
    if proc.returncode != 0:
        first = next((l for l in proc.stderr.splitlines() if l.strip()), "unknown error")
        if "netns add" in lines[0] and "No space left on device" in proc.stderr:  # ENOSPC: a namespace limit
            raise CapabilityError(f"{what} failed: the kernel refused a network namespace ({first.strip()}): "
                                  f"{namespaces_in_use()} exist and user.max_net_namespaces is "
                                  f"{_read_int('/proc/sys/user/max_net_namespaces')}: raise it with 'sysctl -w "
                                  f"user.max_net_namespaces=N', or remove old meshes ('meshemu clean --prefix P')")
        raise MeshemuError(f"{what} failed: {first}")


def _read_int(path: str) -> int | None:
    try:
        return int(Path(path).read_text())
    except (OSError, ValueError):
        return None


def namespaces_in_use() -> int:
    """Network namespaces that exist now: those of processes and those kept by a name in /run/netns."""
    seen = set()
    for p in Path("/proc").glob("[0-9]*/ns/net"):
        try:
            seen.add(os.readlink(p))
        except OSError:
            pass
    run_dir = Path(nl.NETNS_RUN_DIR)
    for p in run_dir.iterdir() if run_dir.is_dir() else ():
        try:
            seen.add(f"net:[{os.stat(p).st_ino}]")
        except OSError:
            pass
    return len(seen)


def existing_namespaces(prefix: str) -> list[str]:
    run_dir = Path(nl.NETNS_RUN_DIR)
    if not run_dir.is_dir():
        return []
    return sorted(p.name for p in run_dir.iterdir() if p.name.startswith(prefix + "."))


def check_namespace_limit(wanted: int, limit_file: str = "/proc/sys/user/max_net_namespaces") -> None:
    """Refuse, before making anything, a mesh larger than the kernel allows."""
    try:
        limit = int(Path(limit_file).read_text())
    except (OSError, ValueError):
        return
    if wanted > limit:
        in_use = namespaces_in_use()
        raise CapabilityError(f"{wanted} nodes need {wanted} network namespaces but the kernel allows {limit} "
                              f"({in_use} in use): raise it with "
                              f"'sysctl -w user.max_net_namespaces={wanted + in_use + 64}'")


def ifindex_of(link: int, end: int) -> int:
    """An interface index unique across the whole mesh, so no veth end shares its index with its peer.

    The kernel's link watcher takes a veth whose index equals its peer's (likely when both
    namespaces number from 2) for a device of its own kind and handles its carrier "when
    convenient", up to a second or more later; until then the link drops what it is given.
    Distinct indices make every carrier change urgent: handled within milliseconds.
    """
    return 1000 + 2 * int(link) + int(end)


def mac_of(link: int, end: int) -> bytes:
    """Locally administered, unique per link end: 02:LL:LL:LL:LL:0E."""
    return bytes([0x02]) + int(link).to_bytes(4, "big") + bytes([end])


class Mesh:
    """Namespaces and links of one plan; ``build`` makes them, ``destroy`` removes them."""

    def __init__(self, plan: MeshPlan):
        self.plan = plan
        self.sockets = nl.NamespaceSockets()
        self.ifindex = np.zeros((len(plan.links), 2), dtype=np.int32)  # per link end
        self.link_up = np.zeros(len(plan.links), dtype=bool)
        self._built = False
        self.phases_s: dict[str, float] = {}  # what building took, by part (seconds)
        links = plan.links.astype(np.int64)
        n = len(plan.node_names)
        key = np.minimum(links[:, 0], links[:, 1]) * n + np.maximum(links[:, 0], links[:, 1])
        self._order = np.argsort(key)
        self._keys = key[self._order]
        self._node_addr = plan.address_int()
        self._link_addr = plan.link_address_int()

    # -- build and teardown ---------------------------------------------------------------
    def build(self, initially_up: np.ndarray) -> None:
        plan = self.plan
        leftovers = existing_namespaces(plan.prefix)
        if leftovers:
            raise MeshemuError(f"{len(leftovers)} namespaces of an earlier run exist (e.g. {leftovers[0]}): "
                               f"run 'meshemu clean' first")
        check_namespace_limit(len(plan.node_names))
        nl.raise_fd_limit(len(plan.node_names) + 1024)
        self._built = True  # from here on, destroy() has something to undo
        t = time.perf_counter()
        run_ip_batch([f"netns add {ns}" for ns in plan.namespaces], "creating namespaces")
        self.phases_s["namespaces"] = time.perf_counter() - t
        t = time.perf_counter()
        self._set_sysctls()  # before the links: their devices inherit the defaults (no IPv6 on them at all)
        self.phases_s["sysctls"] = time.perf_counter() - t
        ns = plan.namespaces
        lines = []
        for l, (a, b) in enumerate(plan.links):
            name_a, name_b = plan.ifname[l]
            lines.append(f"link add {name_a} index {ifindex_of(l, 0)} address {_mac_text(mac_of(l, 0))} netns {ns[a]} "
                         f"type veth peer name {name_b} index {ifindex_of(l, 1)} address {_mac_text(mac_of(l, 1))} "
                         f"netns {ns[b]}")
        t = time.perf_counter()
        run_ip_batch(lines, "creating links")
        self.phases_s["links"] = time.perf_counter() - t
        t = time.perf_counter()
        self._configure_nodes()
        self.phases_s["addresses"] = time.perf_counter() - t
        t = time.perf_counter()
        up = np.flatnonzero(initially_up)
        self.set_links(up, np.zeros(0, dtype=int))
        self.wait_carrier(up)
        self.phases_s["links up"] = time.perf_counter() - t

    def _set_sysctls(self) -> None:
        """Per-namespace settings, made while a namespace has only its loopback (each costs least then, and
        IPv6 is off before any veth could start its addrconf: no link-local addresses, DAD or MLD)."""
        plan = self.plan
        for node, netns in enumerate(plan.namespaces):
            satellite = node < plan.n_satellites
            with nl.enter_netns(netns):
                # "default" and not "all" for IPv6: every veth is made after this, so none has IPv6; writing
                # "all" costs 2.5 ms a namespace at 4,500 of them (a kernel walk that grows with their number)
                for key, value in (("net/ipv4/ip_forward", "1" if satellite else "0"),  # stations never relay
                                   ("net/ipv6/conf/default/disable_ipv6", "1"),
                                   ("net/ipv4/icmp_ratelimit", "0"),  # traceroute answers at every step
                                   # long fat paths: a 4 MiB cap holds TCP to ~0.5 Gbit/s at 60 ms RTT
                                   ("net/ipv4/tcp_rmem", "4096 131072 33554432"),
                                   ("net/ipv4/tcp_wmem", "4096 16384 33554432"),
                                   ("net/ipv4/conf/all/rp_filter", "0"),
                                   ("net/ipv4/conf/default/rp_filter", "0")):
                    with open(f"/proc/sys/{key}", "w") as f:
                        f.write(value)

    def _configure_nodes(self) -> None:
        plan = self.plan
        ends = [[] for _ in plan.node_names]  # per node: (link, end)
        for l, (a, b) in enumerate(plan.links):
            ends[a].append((l, 0))
            ends[b].append((l, 1))
        for node, netns in enumerate(plan.namespaces):
            sock = self.sockets[netns]
            index = sock.dump_links()
            msgs = [nl.link_updown(index["lo"], True), nl.address_add(index["lo"], int(self._node_addr[node]), 32)]
            for l, end in ends[node]:
                i = self.ifindex[l, end] = index[plan.ifname[l][end]]
                msgs.append(nl.address_add(i, int(self._link_addr[l, end]), 31))
            sock.send_messages(msgs, f"configuring {plan.node_names[node]}")

    def destroy(self) -> None:
        """Remove every namespace of this plan (their links, routes and rules go with them)."""
        self.sockets.close()
        if not self._built:
            return
        present = set(existing_namespaces(self.plan.prefix))
        run_ip_batch([f"netns del {ns}" for ns in self.plan.namespaces if ns in present], "removing namespaces")
        self._built = False

    # -- changes ------------------------------------------------------------------------------
    def set_links(self, went_up: np.ndarray, went_down: np.ndarray) -> int:
        """Bring links up (with their ARP entries) or down, at both ends. Returns the change count."""
        per_ns: dict[str, list[bytes]] = {}
        ns = self.plan.namespaces
        for l in went_up:
            for end in (0, 1):
                peer = 1 - end
                node = ns[self.plan.links[l, end]]
                per_ns.setdefault(node, []).append(nl.link_updown(int(self.ifindex[l, end]), True))
                per_ns[node].append(nl.neighbour_add(int(self.ifindex[l, end]), int(self._link_addr[l, peer]),
                                                     mac_of(l, peer)))
        for l in went_down:
            for end in (0, 1):
                per_ns.setdefault(ns[self.plan.links[l, end]], []).append(
                    nl.link_updown(int(self.ifindex[l, end]), False))
        for netns, msgs in per_ns.items():
            self.sockets[netns].send_messages(msgs, f"setting links in {netns}")
        self.link_up[went_up] = True
        self.link_up[went_down] = False
        return len(went_up) + len(went_down)

    def wait_carrier(self, links: np.ndarray, timeout_s: float = 5.0) -> float:
        """Wait until both ends of ``links`` carry traffic; returns the seconds waited.

        A veth set up is not yet usable: its carrier comes up and its queue is
        attached a few milliseconds later, by the kernel's link watcher, and until
        then whatever is sent over it is dropped (the path probes saw the first echo
        over a fresh link lost in half the meshes). So routes move onto a link only
        once the kernel reports it operationally up.
        """
        t0 = time.perf_counter()
        waiting: dict[str, set[int]] = {}
        for l in links:
            for end in (0, 1):
                waiting.setdefault(self.plan.namespaces[self.plan.links[l, end]], set()).add(int(self.ifindex[l, end]))
        while waiting:
            for netns in list(waiting):
                states = self.sockets[netns].operstates()
                waiting[netns] = {i for i in waiting[netns] if states.get(i) != nl.IF_OPER_UP}
                if not waiting[netns]:
                    del waiting[netns]
            if waiting and time.perf_counter() - t0 > timeout_s:
                netns = next(iter(waiting))
                raise MeshemuError(f"{sum(map(len, waiting.values()))} link end(s) set up did not come up within "
                                   f"{timeout_s:g} s (e.g. in {netns}): the kernel's link watcher is stalled")
            if waiting:
                time.sleep(0.0005)  # the link watcher runs in a kernel worker: give it the CPU
        return time.perf_counter() - t0

    def link_between(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Link ids joining node pairs (a[i], b[i]); -1 where none."""
        n = len(self.plan.node_names)
        key = np.minimum(a, b).astype(np.int64) * n + np.maximum(a, b)
        pos = np.clip(np.searchsorted(self._keys, key), 0, len(self._keys) - 1)
        found = self._keys[pos] == key
        return np.where(found, self._order[pos], -1)

    def apply_routes(self, node: np.ndarray, destination: np.ndarray, next_hop: np.ndarray) -> int:
        """Install forwarding-table entries: a next hop per (node, destination), -1 to remove."""
        if len(node) == 0:
            return 0
        order = np.argsort(node, kind="stable")
        node, destination, next_hop = node[order], destination[order], next_hop[order]
        bounds = np.flatnonzero(np.diff(node)) + 1
        for start, stop in zip(np.r_[0, bounds], np.r_[bounds, len(node)]):
            u = int(node[start])
            d, h = destination[start:stop], next_hop[start:stop]
            sock = self.sockets[self.plan.namespaces[u]]
            via = h >= 0
            if via.any():
                link = self.link_between(np.full(int(via.sum()), u), h[via])
                if (link < 0).any():
                    raise MeshemuError(f"route from {self.plan.node_names[u]} via a node it has no link to")
                end = (self.plan.links[link, 0] != u).astype(int)  # which end of the link is u
                records = nl.routes_replace(self._node_addr[d[via]], self._link_addr[link, 1 - end],
                                            self.ifindex[link, end], int(self._node_addr[u]))
                sock.send_records(records, f"routes in {self.plan.node_names[u]}")
            if (~via).any():
                try:
                    sock.send_records(nl.routes_delete(self._node_addr[d[~via]]), "")
                except nl.NetlinkError:
                    pass  # already gone: the kernel drops routes of a link set down
        return len(node)


def _mac_text(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)
