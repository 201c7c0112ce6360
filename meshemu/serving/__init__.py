"""The serving layer: a model cut into shards that talk gRPC, on loopback or inside the emulated mesh.

Front door::

    from meshemu.serving.launch import ShardProcesses, start_loopback
    from meshemu.serving.client import Request, ServingClient, ServingPlan
    with ShardProcesses() as procs:
        addrs = start_loopback(procs, 4)
        with ServingClient(ServingPlan("tiny:llama:0", addrs, tp=2, pp=2, allreduce="ring")) as client:
            client.load()
            record = client.generate(Request((1, 5, 9), max_new_tokens=8))

Modules, in data-flow order: :mod:`~meshemu.serving.rpc` (generated from
``proto/shard.proto``), :mod:`~meshemu.serving.tensors` (bytes + dtype + shape,
chunked, checked), :mod:`~meshemu.serving.transport` (channel options for
links that fail, one-way frame streams), :mod:`~meshemu.serving.compute`
(real numpy or a device's time), :mod:`~meshemu.serving.collectives` (ring and
direct all-reduce), :mod:`~meshemu.serving.pipeline` (ranks, stages, the
per-request worker), :mod:`~meshemu.serving.shard` (the server process),
:mod:`~meshemu.serving.job` (the typed job a client runs), :mod:`~meshemu.serving.client`,
:mod:`~meshemu.serving.launch` (processes), :mod:`~meshemu.serving.placement`
(ranks to satellites), :mod:`~meshemu.serving.metrics`, :mod:`~meshemu.serving.predict`
and :mod:`~meshemu.serving.report` (measured beside predicted). Nothing here
imports the emulation: :mod:`meshemu.deployment` puts these programs into a mesh.
"""
