"""Deployment: a serving plan put onto an emulated mesh (shards in satellites' namespaces, the client at a
ground station, the player, the probes), from one typed :class:`MeshRun`.

Serving knows shards, clients and placement; emulation knows namespaces,
links and routes; this layer is the only one that knows both.
"""

from meshemu.deployment.deploy import Deployment, deploy
from meshemu.deployment.plan import MeshRun

__all__ = ["Deployment", "MeshRun", "deploy"]
