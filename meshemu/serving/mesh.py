"""Serving inside the emulated mesh: shards in satellites' namespaces, the client at a ground station.

The shards and the client are the same programs as on loopback; only where
they start differs. Each shard binds its satellite's own address (the one the
mesh routes), so every frame between ranks crosses the emulated links along
the routed path. The player steps the links on the clock while requests run
(from the moment the model is loaded), and records when each step was
applied, so every token can be matched with the step and routes in force.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

from meshemu.emulation.naming import DEFAULT_PREFIX
from meshemu.errors import MeshemuError
from meshemu.serving.launch import ShardProcesses, stderr_text


@dataclass
class MeshRun:
    """What a run in the mesh did: placement, the shaping backend, step times and the client's events."""

    rank_nodes: list
    addresses: list
    client_node: str
    backend: str
    step_times: list = field(default_factory=list)   # (step, time.time() when applied)
    step_records: list = field(default_factory=list)  # the player's StepRecords
    events: list = field(default_factory=list)
    play_summary: dict = field(default_factory=dict)

    def step_at(self, wall_time: float) -> int:
        """The link-series step in force at ``wall_time`` (the first one before the player started)."""
        step = self.step_times[0][0] if self.step_times else 0
        for k, t in self.step_times:
            if t > wall_time:
                break
            step = k
        return step


def serve_in_mesh(series, job: dict, *, ground_station: str, rank_nodes: list, shaper: str = "auto",
                  prefix: str | None = None, start_step: int = 0, time_scale: float = 1.0,
                  step_timeout_s: float = 10.0, on_event=None, on_step=None, log=None) -> MeshRun:
    """Build the mesh, start a shard on each of ``rank_nodes`` and run ``job`` from ``ground_station``.

    ``job`` is a :func:`~meshemu.serving.client.run_job` job whose plan lacks
    ``ranks`` and ``nodes`` (filled in here). ``on_event(event)`` sees each of
    the client's events as it arrives; ``on_step(emulation, record)`` runs in the
    player's thread after each step is applied. Everything started is stopped on return.
    """
    from meshemu.emulation.emulation import Emulation
    from meshemu.emulation.kernel import require_root
    from meshemu.emulation.player import Player

    require_root()
    prefix = prefix or DEFAULT_PREFIX  # what meshemu clean removes after a kill -9
    with Emulation(series, shaper=shaper, prefix=prefix, log=log) as emu, ShardProcesses() as procs:
        emu_plan = emu.plan
        ids = [emu_plan.node(n) for n in rank_nodes]
        gs = emu_plan.node(ground_station)
        binds = [f"{emu_plan.addresses[i]}:0" for i in ids]
        addresses = procs.start_shards(binds, nodes=list(rank_nodes), step_timeout_s=step_timeout_s,
                                       namespaces=[emu_plan.namespaces[i] for i in ids])
        run = MeshRun(list(rank_nodes), addresses, emu_plan.node_names[gs], emu.backend)
        job = dict(job, plan=dict(job["plan"], ranks=addresses, nodes=list(rank_nodes)),
                   step_timeout_s=step_timeout_s)
        player = Player(emu, time_scale=time_scale)

        def stepped(rec):
            run.step_times.append((rec.step, time.time()))
            run.step_records.append(rec)
            if on_step is not None:
                on_step(emu, rec)

        def play():
            run.play_summary = player.play(start_step, series.n_steps - start_step, on_step=stepped).summary()

        player_thread = threading.Thread(target=play, name="player", daemon=True)
        client = procs.spawn([sys.executable, "-m", "meshemu.serving.client", "--job", "-"],
                             namespace=emu_plan.namespaces[gs], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=tempfile.TemporaryFile("w+"), text=True)  # noqa: SIM115 - closed by procs
        try:
            client.stdin.write(json.dumps(job))
            client.stdin.close()
            for line in client.stdout:
                event = json.loads(line)
                if event["event"] == "loaded" and not player_thread.is_alive():
                    player_thread.start()
                run.events.append(event)
                if on_event is not None:
                    on_event(event)
            client.wait()
        finally:
            # The player returns after the step in hand, even when it is running late and never sleeps;
            # the mesh must outlive it.
            player.stop()
            if player_thread.is_alive():
                player_thread.join()
        errors = [e["message"] for e in run.events if e["event"] == "error"]
        if errors:
            raise MeshemuError(errors[0])
        if client.returncode != 0:
            tail = stderr_text(client).strip().splitlines()
            raise MeshemuError(f"the client at {ground_station} exited with status {client.returncode}"
                               + (f": {tail[-1]}" if tail else ""))
        return run

