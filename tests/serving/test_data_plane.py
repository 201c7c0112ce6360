"""The data plane beside gRPC: frames on a plain TCP connection, refused ones answered on it, gRPC as fallback."""

import socket
import threading
import time

import numpy as np
import pytest

from meshemu.serving.pipeline import Kind
from meshemu.serving.rpc import shard_pb2 as pb
from meshemu.serving.shard import serve
from meshemu.serving.transport import (ACK_MAGIC, HEADER, Message, PeerLink, Reader, data_plane_mode, send_parts,
                                       stub)


@pytest.fixture
def shard():
    server, shard, address = serve("127.0.0.1:0", step_timeout_s=1.0, max_tensor_bytes=1 << 16)
    channel, s = stub(address)
    s.Load(pb.LoadRequest(model="tiny:llama:0", ranks=[address], rank=0, tp_size=1, n_stages=1), timeout=20)
    yield address, s, shard
    channel.close()
    server.stop(0)
    shard.close()


def dial(s, address):
    port = s.Health(pb.HealthRequest(), timeout=5).data_port
    assert port > 0
    sock = socket.create_connection((address.rpartition(":")[0], port), timeout=5)
    return sock, Reader(sock)


def ack_of(reader):
    body, nbytes = reader.head(ACK_MAGIC)
    assert nbytes == 0
    return pb.Ack.FromString(body)


def test_a_tensor_over_the_limit_is_refused_unread_and_the_sender_told(shard):
    address, s, sh = shard
    sock, reader = dial(s, address)
    big = Message(pb.Frame(kind=Kind.STEP, request_id="big", step=1, src_rank=3), np.zeros(1 << 15, np.float32))
    send_parts(sock, big.wire())
    ack = ack_of(reader)
    assert ack.request_id == "big"
    assert "rejected a tensor from rank 3 (request big)" in ack.error
    assert "tensor of 131072 bytes exceeds the limit of 65536 bytes" in ack.error
    # the refused bytes were skipped: the next message on the connection is read as one
    again = Message(pb.Frame(kind=Kind.STEP, request_id="two", src_rank=3), np.zeros(1 << 15, np.float32))
    send_parts(sock, again.wire())
    assert ack_of(reader).request_id == "two"
    assert sh.budget.in_flight == 0
    sock.close()


def test_a_declared_size_that_does_not_match_the_bytes_is_refused(shard):
    address, s, _ = shard
    sock, reader = dial(s, address)
    meta = pb.Frame(kind=Kind.REDUCE, request_id="lie", src_rank=1,
                    tensor=pb.Tensor(dtype="float32", shape=[4], n_chunks=1, total_bytes=16)).SerializeToString()
    sock.sendall(HEADER.pack(b"MEF1", len(meta), 8) + meta + bytes(8))
    ack = ack_of(reader)
    assert ack.request_id == "lie" and "16 bytes in one chunk was declared, but 8 bytes" in ack.error
    sock.close()


def test_bytes_that_are_no_message_close_the_connection_with_a_reason(shard):
    address, s, sh = shard
    sock, reader = dial(s, address)
    sock.sendall(b"GET / HTTP/1.1\r\n\r\n")
    ack = ack_of(reader)
    assert "not a data-plane message" in ack.error
    assert sock.recv(1) == b""  # closed
    huge = socket.create_connection(sock.getpeername(), timeout=5)
    huge.sendall(HEADER.pack(b"MEF1", 1 << 30, 0))
    assert "exceeds the limit of 4,194,304 bytes" in ack_of(Reader(huge)).error
    sock.close()
    huge.close()
    assert sh.counters["rejected_tensors"] >= 2


def test_a_link_uses_the_data_plane_and_hands_refusals_to_the_sender(shard):
    address, s, sh = shard
    refused, got = [], threading.Event()
    link = PeerLink(address, on_refused=lambda rid, err: (refused.append((rid, err)), got.set()))
    try:
        assert link.connect(5) and link.on_data_plane
        link.send(Message(pb.Frame(kind=Kind.END, request_id="x", src_rank=0)))
        link.send(Message(pb.Frame(kind=Kind.STEP, request_id="r", src_rank=0), np.zeros(1 << 15, np.float32)))
        assert got.wait(5)
        assert refused[0][0] == "r" and "exceeds the limit" in refused[0][1]
        assert link.frames_grpc == 0 and sh.counters["frames_in_data_plane"] == 2
    finally:
        link.close()


def test_a_broken_connection_falls_back_to_grpc_and_the_next_connect_dials_again(shard):
    address, s, sh = shard
    link = PeerLink(address)
    try:
        assert link.connect(5) and link.on_data_plane
        sh.data_server.close()  # the peer's data plane goes away; gRPC stays
        deadline = time.monotonic() + 5
        while link.on_data_plane and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not link.on_data_plane and "data plane" in link.last_error
        link.send(Message(pb.Frame(kind=Kind.END, request_id="x", src_rank=0)))
        assert link.frames_grpc == 1
        sh.data_server = None
        port = sh.start_data_plane("127.0.0.1")
        assert port and link.connect(5) and link.on_data_plane
    finally:
        link.close()


def test_a_grpc_only_shard_has_no_data_port_and_links_use_exchange():
    server, sh, address = serve("127.0.0.1:0", data_plane="grpc")
    link = PeerLink(address)
    try:
        assert link.connect(5) and not link.on_data_plane
        link.send(Message(pb.Frame(kind=Kind.END, request_id="x", src_rank=0)))
        assert link.frames_grpc == 1
        assert link.stub.Health(pb.HealthRequest(), timeout=5).data_port == 0
    finally:
        link.close()
        server.stop(0)
        sh.close()


def test_the_data_plane_is_asked_for_by_name():
    with pytest.raises(Exception, match="use tcp or grpc"):
        data_plane_mode("udp")
