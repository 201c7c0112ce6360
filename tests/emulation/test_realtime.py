"""SCHED_FIFO for one block of one thread, restored after; nothing changes where it is not allowed."""

import os
import threading

import pytest

from meshemu.emulation import realtime
from meshemu.emulation.realtime import PROBE_PRIORITY, realtime_thread


def test_a_probe_ranks_below_the_delay_line():
    assert 0 < realtime.PROBE_PRIORITY < realtime.DAEMON_PRIORITY


def test_not_allowed_changes_nothing(monkeypatch):
    def refuse(*args):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(realtime.os, "sched_setscheduler", refuse)
    before = os.sched_getscheduler(0)
    with realtime_thread() as on:
        assert on is False and os.sched_getscheduler(0) == before
    assert os.sched_getscheduler(0) == before


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: SCHED_FIFO")
def test_fifo_for_the_block_and_the_calling_thread_only():
    seen = {}

    def probe():
        with realtime_thread() as on:
            seen["inside"] = (on, os.sched_getscheduler(0), os.sched_getparam(0).sched_priority,
                              os.sched_getscheduler(main_tid))
        seen["after"] = os.sched_getscheduler(0)

    main_tid = threading.get_native_id()
    t = threading.Thread(target=probe)
    t.start()
    t.join()
    assert seen["inside"] == (True, os.SCHED_FIFO, PROBE_PRIORITY, os.SCHED_OTHER)
    assert seen["after"] == os.SCHED_OTHER
