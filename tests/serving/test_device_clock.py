"""The device clock pays owed time by sleeping; a host that wakes late does not make the device slower."""

import time

import pytest

from meshemu.serving import compute
from meshemu.serving.compute import DeviceClock


class LateHost:
    """time.perf_counter and time.sleep of a host whose every sleep wakes ``late_s`` after it should."""

    def __init__(self, late_s: float):
        self.now, self.late_s = 100.0, late_s

    def perf_counter(self) -> float:
        self.now += 1e-6  # reading the clock costs a little
        return self.now

    def sleep(self, s: float) -> None:
        self.now += s + self.late_s


@pytest.fixture
def host(monkeypatch):
    h = LateHost(late_s=0.5e-3)
    monkeypatch.setattr(compute, "time", h)
    return h


def test_the_late_wake_ups_of_many_waits_do_not_add_up(host):
    clock = DeviceClock()
    t0 = host.now
    for _ in range(128):  # a token of a 64-layer model: a wait before each of its 128 all-reduces
        clock.owe(2e-3)
        clock.settle()
    elapsed = host.now - t0
    assert elapsed >= 128 * 2e-3  # never faster than the device
    assert elapsed < 128 * 2e-3 + 2e-3  # one late wake-up at the end, not 128 (which would be +64 ms)
    assert 0 < clock.late_s <= 128 * (0.5e-3 + 1e-5)  # the host was late, and the clock knows by how much


def test_a_due_time_long_past_is_no_lateness(host):
    clock = DeviceClock()
    clock.owe(1e-3)
    host.now += 5e-3  # the network took longer than the compute owed: nothing to wait for
    clock.settle()
    assert clock.late_s == 0 and clock.credit_s == 0


def test_credit_never_makes_a_wait_negative(host):
    clock = DeviceClock()
    clock.credit_s = 10e-3
    t0 = host.now
    clock.owe(1e-3)
    clock.settle()
    assert host.now - t0 < 1e-4 and clock.credit_s == pytest.approx(9e-3)


def test_on_this_host_a_real_wait_lasts_at_least_what_was_owed():
    clock = DeviceClock()
    t0 = time.perf_counter()
    clock.owe(5e-3)
    clock.settle()
    assert time.perf_counter() - t0 >= 5e-3
