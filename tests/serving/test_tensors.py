"""Tensors on the wire: round trips, chunking, and malformed input rejected before allocation."""

import numpy as np
import pytest

from meshemu.serving.rpc import shard_pb2 as pb
from meshemu.serving.tensors import Assembler, TensorError, decode, encode, expect


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.int64, np.int32])
def test_round_trip_every_dtype(dtype):
    a = (np.arange(24) - 7).astype(dtype).reshape(2, 3, 4)
    [msg] = encode(a)
    out = decode(msg)
    assert out.dtype == a.dtype and out.shape == a.shape
    np.testing.assert_array_equal(out, a)


def test_chunked_round_trip_in_order():
    a = np.random.default_rng(0).standard_normal((3, 1000), dtype=np.float32)
    parts = encode(a, chunk_bytes=1000)
    assert len(parts) == 12 and all(len(p.data) <= 1000 for p in parts)
    asm = Assembler()
    outs = [asm.feed(p) for p in parts]
    assert all(o is None for o in outs[:-1])
    np.testing.assert_array_equal(outs[-1], a)
    assert not asm.busy


def test_unknown_dtype_rejected():
    with pytest.raises(TensorError, match="unknown dtype 'float64'"):
        decode(pb.Tensor(dtype="float64", shape=[1], data=b"\0" * 8, n_chunks=1, total_bytes=8))
    with pytest.raises(TensorError, match="cannot send dtype"):
        encode(np.zeros(2, np.complex64))


def test_declared_size_must_match_shape():
    with pytest.raises(TensorError, match="12 bytes, but 16 are declared"):
        decode(pb.Tensor(dtype="float32", shape=[3], data=b"\0" * 16, n_chunks=1, total_bytes=16))


def test_data_must_match_declared_size():
    with pytest.raises(TensorError, match="expected one chunk of 12 bytes"):
        decode(pb.Tensor(dtype="float32", shape=[3], data=b"\0" * 8, n_chunks=1, total_bytes=12))


def test_huge_declared_tensor_refused_without_allocating():
    # 2**40 float32 would be 4 TiB: refused by the header check, nothing allocated.
    msg = pb.Tensor(dtype="float32", shape=[2**20, 2**20], data=b"\0" * 4, chunk=0, n_chunks=3,
                    total_bytes=4 * 2**40)
    with pytest.raises(TensorError, match="exceeds the limit"):
        Assembler(max_bytes=1 << 20).feed(msg)


def test_negative_or_too_many_dimensions():
    with pytest.raises(TensorError, match="bad shape"):
        decode(pb.Tensor(dtype="int32", shape=[-1, 4], data=b"", n_chunks=1, total_bytes=0))
    with pytest.raises(TensorError, match="bad shape"):
        decode(pb.Tensor(dtype="int32", shape=[1] * 9, data=b"\0" * 4, n_chunks=1, total_bytes=4))


def test_chunks_out_of_order_or_overflowing():
    parts = encode(np.zeros(100, np.float32), chunk_bytes=100)
    asm = Assembler()
    with pytest.raises(TensorError, match="arrived first"):
        asm.feed(parts[1])
    asm.feed(parts[0])
    with pytest.raises(TensorError, match="does not continue"):
        asm.feed(parts[2])
    assert not asm.busy
    bad = pb.Tensor()
    bad.CopyFrom(parts[1])
    bad.data = b"\0" * 400
    asm.feed(parts[0])
    with pytest.raises(TensorError, match="overflows"):
        asm.feed(bad)


def test_expect_checks_shape_and_dtype():
    a = np.zeros((1, 5, 8), np.float32)
    assert expect(a, (1, None, 8), np.float32, "x") is a
    with pytest.raises(TensorError, match=r"x: expected float32 \(1x\?x9\), got float32 \(1, 5, 8\)"):
        expect(a, (1, None, 9), np.float32, "x")
    with pytest.raises(TensorError, match="got float16"):
        expect(a.astype(np.float16), (1, None, 8), np.float32, "x")
