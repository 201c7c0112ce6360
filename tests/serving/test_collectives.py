"""Ring and direct all-reduce, in threads with in-memory mailboxes."""

import threading

import numpy as np
import pytest

from meshemu.serving.collectives import AllReduce, CollectiveError, Mailbox


def run_group(algorithm, parts, seq=0, timeout_s=5.0, skip=()):
    t = len(parts)
    boxes = [Mailbox() for _ in range(t)]
    out, errors = [None] * t, [None] * t

    def send(i):
        return lambda j, phase, a, s: boxes[j].put((s, phase, i), np.array(a, copy=True))

    def rank(i):
        try:
            out[i] = AllReduce(algorithm, t, i, send(i), boxes[i], timeout_s=timeout_s)(parts[i], seq=seq)
        except CollectiveError as err:
            errors[i] = err
    threads = [threading.Thread(target=rank, args=(i,)) for i in range(t) if i not in skip]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return out, errors


@pytest.mark.parametrize("algorithm", ["ring", "direct"])
@pytest.mark.parametrize("t", [1, 2, 3, 4, 5])
def test_every_rank_gets_the_same_sum(algorithm, t):
    rng = np.random.default_rng(t)
    parts = [rng.standard_normal((1, 3, 7), dtype=np.float32) for _ in range(t)]  # 21 values: uneven chunks
    out, errors = run_group(algorithm, parts)
    assert errors == [None] * t
    expected = np.sum(np.stack(parts).astype(np.float64), axis=0)
    for o in out:
        assert o.shape == parts[0].shape and o.dtype == np.float32
        np.testing.assert_allclose(o, expected, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(o, out[0])  # bitwise: next layers see the same input


def test_fewer_values_than_ranks():
    parts = [np.full((1, 1, 2), i, np.float32) for i in range(4)]
    out, _ = run_group("ring", parts)
    assert [o.ravel().tolist() for o in out] == [[6.0, 6.0]] * 4


def test_float16_partials_stay_float16():
    parts = [np.ones((1, 1, 8), np.float16) for _ in range(3)]
    out, _ = run_group("ring", parts)
    assert out[0].dtype == np.float16 and out[0].ravel()[0] == 3


@pytest.mark.parametrize("algorithm", ["ring", "direct"])
def test_missing_peer_times_out_with_a_message(algorithm):
    parts = [np.ones((1, 1, 4), np.float32) for _ in range(3)]
    _, errors = run_group(algorithm, parts, timeout_s=0.3, skip=(2,))
    assert all(isinstance(e, CollectiveError) for e in errors[:2])
    assert "within 0.3 s" in str(errors[0]) or "within 0.3 s" in str(errors[1])


def test_closing_the_mailbox_wakes_waiters():
    box = Mailbox()
    threading.Timer(0.05, box.close, args=("request ended",)).start()
    with pytest.raises(CollectiveError, match="request ended"):
        box.take((0, 0, 1), timeout_s=5)


def test_a_piece_counts_its_trip_only_when_the_taker_waited_for_it():
    """What a message costs on the critical path: a piece that was already there when its taker came
    (the taker was late) tells nothing about the link, a piece sent while the taker waited does."""
    import time

    box, seen = Mailbox(), []
    box.on_wait = lambda src, sent, since: seen.append((src, sent >= since))
    box.put((0, 0, 1), np.zeros(1), time.monotonic(), src=5)
    box.take((0, 0, 1), timeout_s=1)
    assert seen == []
    threading.Timer(0.05, lambda: box.put((0, 1, 1), np.zeros(1), time.monotonic(), src=7)).start()
    box.take((0, 1, 1), timeout_s=5)
    assert seen == [(7, True)]
