"""Faults carried out on a running deployment, and the deployment's side of recovery.

The player's thread fires each fault at its step: a dark or resetting
satellite's shard is killed (SIGKILL: a satellite that loses power says no
goodbye); its links go down with the series the run plays. When a fault ends,
a reset satellite, or a dark one whose rank was not moved, gets a fresh,
empty shard (started from the main thread: a shard dies with the thread that
started it). The client, in its station's namespace, asks when it has lost
ranks; :meth:`Failover.answer` decides: a spare satellite by the placement's
rule (never one that is down), or waiting for the satellite's return when
``wait`` is the policy and that is sooner, or, when the client's own station
is dark, waiting for it. A modelled uplink of the weights (``weights:
uplink``) waits the shard's bytes over the uplink rate before answering.
"""

from __future__ import annotations

import queue
import signal
import threading
import time

import numpy as np

from meshemu.deployment.faults import FaultSchedule


class Failover:
    """Faults and recoveries of one deployment (see the module doc)."""

    def __init__(self, dep, schedule: FaultSchedule, emu, procs, log):
        self.dep, self.schedule, self.emu, self.procs, self.log = dep, schedule, emu, procs, log
        self.run = dep.run
        self.recovery = self.run.job.recovery
        self.rank_nodes = list(dep.rank_nodes)
        self.addresses: list[str] = []
        self.shards: dict[str, object] = {}  # node -> its shard process
        self.actions: queue.Queue = queue.Queue()  # work for the main thread: ("restart", node)
        self.returned: dict[str, threading.Event] = {}
        self.decisions: list[dict] = []
        self.shard_start_s = 0.0  # how long starting the first shards took
        self.single_shard_start_s = 0.0  # one shard process started alone: what a replacement's start costs

    # -- shards ------------------------------------------------------------------------------------
    def start(self, nodes) -> list[str]:
        """Start a shard on each of ``nodes`` at once (main thread); their addresses."""
        t0 = time.monotonic()
        ids = [self.emu.plan.node(n) for n in nodes]
        self.emu.reach(*ids)  # a spare the routes did not lead to yet: now they do (and the client's answers)
        first = len(self.procs.procs)
        addrs = self.procs.start_shards([f"{self.emu.plan.addresses[i]}:0" for i in ids], nodes=list(nodes),
                                        prefixes=[self.emu.command_prefix(i) for i in ids],
                                        step_timeout_s=self.run.job.step_timeout_s)
        for node, proc in zip(nodes, self.procs.procs[first:]):
            self.shards[node] = proc
        if not self.addresses:
            self.shard_start_s = time.monotonic() - t0
        return addrs

    def start_ranks(self) -> list[str]:
        self.addresses = self.start(self.rank_nodes)
        if self.run.faults and self.recovery.enabled:
            self._calibrate()
        return self.addresses

    def _calibrate(self) -> None:
        """Time one shard process started alone (in the client's station, then stopped): the prediction of a
        replacement's start, which the first shards, started together on shared cores, overstate."""
        gs = self.emu.plan.node(self.dep.client_node)
        first = len(self.procs.procs)
        t0 = time.monotonic()
        self.procs.start_shards([f"{self.emu.plan.addresses[gs]}:0"], nodes=["calibration"],
                                prefixes=[self.emu.command_prefix(gs)], step_timeout_s=self.run.job.step_timeout_s)
        self.single_shard_start_s = time.monotonic() - t0
        for proc in self.procs.procs[first:]:
            proc.terminate()
            proc.wait()

    # -- the player's thread -----------------------------------------------------------------------
    def at_step(self, rec, clock_s: float) -> None:
        """Fire the faults due by this step and end those over (the series already carries their links)."""
        sched, names = self.schedule, self.dep.series.short_names
        for i in sched.starting(rec.step):
            f = sched.faults[i]
            node = sched.node_of(f, self.rank_nodes) if f.link is None else None
            sched.fired[i] = {"step": rec.step, "clock_s": clock_s, "node": node}
            if node is not None:
                self.returned[names[node]] = threading.Event()
            if f.kind in ("dark", "reboot"):
                proc = self.shards.pop(names[node], None)
                if proc is not None and proc.poll() is None:
                    proc.send_signal(signal.SIGKILL)
            self.log(f"fault {i}: {f.kind} of {f.target}" + (f" ({names[node]})" if node is not None else "")
                     + f" at {f.at_s:g} s" + (f" for {f.end_after_s:g} s" if np.isfinite(f.end_after_s) else ""))
        for i in sched.ending(rec.step):
            f = sched.faults[i]
            sched.ended[i] = {"step": rec.step, "clock_s": clock_s}
            node = sched.fired[i]["node"]
            if f.kind in ("dark", "reboot") and names[node] in self.rank_nodes:
                self.actions.put(("restart", names[node]))  # its rank was not moved: a fresh shard awaits it
            elif node is not None and names[node] in self.returned:
                self.returned[names[node]].set()
            self.log(f"fault {i} over: {f.target} back")

    # -- the main thread -----------------------------------------------------------------------------
    def work(self, timeout_s: float = 0.0) -> None:
        """Do what the player's thread asked (restart shards), waiting up to ``timeout_s`` for some."""
        try:
            kind, node = self.actions.get(timeout=timeout_s) if timeout_s > 0 else self.actions.get_nowait()
        except queue.Empty:
            return
        if kind == "restart" and node in self.rank_nodes:
            [addr] = self.start([node])
            self.addresses[self.rank_nodes.index(node)] = addr
        self.returned.setdefault(node, threading.Event()).set()

    def answer(self, event: dict) -> dict:
        """The answer to the client's ``lost`` event: the plan's addresses now."""
        t0 = time.monotonic()
        lost = [int(r) for r in event["ranks"]]
        sched, series, names = self.schedule, self.dep.series, self.dep.series.short_names
        gs = series.short_index(self.dep.client_node)
        waited = 0.0
        decision = {"clock_s": event["clock_s"], "lost_ranks": lost,
                    "lost_nodes": [self.rank_nodes[r] for r in lost], "moves": {}}
        if gs in sched.dark_nodes(self.emu.step):  # the client's own sky is gone: nothing to replace
            decision["decision"] = "wait for the station"
            waited += self._wait_for(self.dep.client_node)
        moved = []
        for r in lost:
            node = self.rank_nodes[r]
            self.work()  # a restart the player asked for meanwhile
            if node in self.returned and self.returned[node].is_set():
                decision.setdefault("decision", "back already")  # it came back with a fresh shard: keep it
                continue
            back_at = sched.end_time_s(series.short_index(node))
            if self.recovery.policy == "wait" and back_at is not None and self._sooner_to_wait(back_at):
                decision.setdefault("decision", "wait")
                waited += self._wait_for(node)
                continue
            spare = self._spare(r)
            if spare is None:
                decision["decision"] = "no spare"
                continue
            [addr] = self.start([spare])
            self.rank_nodes[r], self.addresses[r] = spare, addr
            decision["moves"][r] = spare
            decision.setdefault("decision", "replace")
            moved.append(spare)
        if moved:
            from_step = min(self.emu.step + 2, series.n_steps)  # the player has the next step prepared
            sched.remap(self.rank_nodes, from_step)
            self.dep.routes.invalidate(from_step)
            self.dep.routes.watch([series.short_index(n) for n in moved])
            self.dep.rank_history.append((event["clock_s"], tuple(self.rank_nodes)))
        uplink_s = self._uplink_s([r for r in lost if r in decision["moves"]])
        if uplink_s:
            time.sleep(uplink_s)  # the modelled uplink of the new shards' weights
        decision.update(place_s=time.monotonic() - t0, waited_s=waited, uplink_s=uplink_s,
                        decision=decision.get("decision", "same plan (the path came back)"))
        self.decisions.append(decision)
        self.log(f"recovery: {decision['decision']}" + "".join(f"; rank {r} -> {n}" for r, n in decision["moves"].items()))
        return {"event": "recover", "ranks": list(self.addresses), "nodes": list(self.rank_nodes),
                "place_s": decision["place_s"], "waited_s": waited, "note": decision["decision"]}

    def _wait_for(self, node: str) -> float:
        t0 = time.monotonic()
        ev = self.returned.setdefault(node, threading.Event())
        deadline = t0 + self.run.job.timeout_s
        while not ev.is_set() and time.monotonic() < deadline:
            self.work(timeout_s=0.05)
        return time.monotonic() - t0

    def _sooner_to_wait(self, back_at_s: float) -> bool:
        """Whether the satellite is back (in wall time) before a replacement would be loaded."""
        now_s = float(self.dep.series.times_s[self.emu.step] - self.dep.series.times_s[0])
        wait_s = max(0.0, back_at_s - now_s) / self.run.time_scale
        load = [r.get("load_s", 0.0) for r in self.dep.load_replies()] or [0.0]
        return wait_s < (self.single_shard_start_s or self.shard_start_s) + max(load)

    def _spare(self, r: int) -> str | None:
        """A satellite for rank ``r``: up, holding no rank, nearest by routed path to the rank's neighbours.

        The anchor is what the rank talks to: another rank of its stage (tensor parallel), else the
        stage before, else the client; with placement ``nearest``, always the client.
        """
        series, sched, tp = self.dep.series, self.schedule, self.run.job.plan.tp
        n_sat = series.n_satellites
        stage = r // tp
        peers = [k for k in range(stage * tp, stage * tp + tp) if k != r]
        if self.run.placement == "nearest" or r == 0:
            anchor = self.dep.client_node
        elif peers:
            anchor = self.rank_nodes[peers[0]]
        else:
            anchor = self.rank_nodes[r - tp]
        dark = sched.dark_nodes(self.emu.step)
        taken = {series.short_index(n) for n in self.rank_nodes} | dark
        dist = np.array(self.dep.routes.distances_from(self.emu.step, series.short_index(anchor))[:n_sat],
                        dtype=float)
        dist[list(v for v in taken if v < n_sat)] = np.inf
        if not np.isfinite(dist).any():
            return None
        return series.short_names[int(np.argmin(dist))]

    def _uplink_s(self, ranks) -> float:
        if self.recovery.weights != "uplink" or not ranks:
            return 0.0
        by_rank = {row["rank"]: row.get("weight_bytes", 0) for row in self.dep.load_replies()}
        return sum(by_rank.get(r, 0) for r in ranks) * 8 / (self.recovery.uplink_rate_mbps * 1e6)
