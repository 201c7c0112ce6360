"""Generated gRPC code for ``proto/shard.proto``: ``shard_pb2`` and ``shard_pb2_grpc``.

Do not edit them; run ``python -m meshemu.serving.rpc.regenerate`` after changing the proto
(a test fails when they drift).
"""
