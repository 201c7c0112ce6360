"""The player's clock, with a fake clock and a fake emulation (no root, no sleeping)."""

import numpy as np
import pytest

from meshemu.emulation.emulation import StepChanges
from meshemu.emulation.player import PlayReport, Player


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now

    def sleep(self, s):
        assert s > 0
        self.now += s


class FakeEmulation:
    """Applying step k takes ``cost_s[k]`` of the fake clock."""

    def __init__(self, clock, times_s, cost_s):
        self.clock, self.cost_s, self.applied, self.prepared = clock, cost_s, [], []
        self.series = type("S", (), {"times_s": np.asarray(times_s, float), "n_steps": len(times_s)})()

    def prepare(self, k):
        self.prepared.append((k, self.clock.now))

    def apply_step(self, k):
        self.applied.append((k, self.clock.now))
        self.clock.now += self.cost_s[k]
        return StepChanges(k, route_changes=k, apply_s=self.cost_s[k])


def play(times, costs, scale=1.0, n=None, catch_up="jump"):
    clock = FakeClock()
    emu = FakeEmulation(clock, times, costs)
    report = Player(emu, time_scale=scale, catch_up=catch_up, clock=clock, sleep=clock.sleep).play(0, n or len(times))
    return emu, report


def test_steps_are_applied_when_due():
    emu, report = play([0, 1, 2, 3], [0, 0.01, 0.01, 0.01])
    assert [round(t - 100.0, 9) for _, t in emu.applied] == [1.0, 2.0, 3.0]
    assert all(r.late_s == pytest.approx(0) for r in report.records)


def test_time_scale_compresses_the_schedule():
    emu, _ = play([0, 10, 20], [0, 0.0, 0.0], scale=10)
    assert [round(t - 100.0, 9) for _, t in emu.applied] == [1.0, 2.0]


def test_routes_are_prepared_before_the_step_is_due():
    emu, _ = play([0, 1, 2], [0, 0.01, 0.01])
    for (k_prep, t_prep), (k_app, t_app) in zip(emu.prepared, emu.applied):
        assert k_prep == k_app and t_prep <= t_app


def test_lateness_is_measured_not_hidden():
    # step 1 takes 2.5 s to apply: steps 2 and 3 are due at 2 s and 3 s but start at 3.5 s and 3.6 s
    emu, report = play([0, 1, 2, 3], [0, 2.5, 0.1, 0.1], catch_up="replay")
    late = [r.late_s for r in report.records]
    assert late[1] == pytest.approx(0) and late[2] == pytest.approx(1.5) and late[3] == pytest.approx(0.6)
    s = PlayReport(report.records).summary()
    assert s["late_max_ms"] == pytest.approx(1500) and s["apply_max_ms"] == pytest.approx(2500)
    assert len(emu.applied) == 3  # nothing skipped


def test_stops_at_the_end_of_the_series():
    emu, report = play([0, 1, 2], [0, 0, 0], n=10)
    assert len(report.records) == 3 and report.records[-1].step == 2


def test_time_scale_must_be_positive():
    with pytest.raises(ValueError, match="positive"):
        Player(object(), time_scale=0)


def test_stop_ends_play_after_the_step_in_hand():
    clock = FakeClock()
    emu = FakeEmulation(clock, [0, 1, 2, 3], [0, 0, 0, 0])
    player = Player(emu, clock=clock, sleep=clock.sleep)
    real_apply = emu.apply_step

    def apply_then_stop(k):
        player.stop()
        return real_apply(k)

    emu.apply_step = apply_then_stop
    report = player.play(0, 4)
    assert [r.step for r in report.records] == [0, 1]


def test_a_player_far_behind_jumps_to_the_step_due_now():
    # step 1 takes 3.5 s: when it is done, steps 2, 3 and 4 are due; the player goes to 4
    clock = FakeClock()
    emu = FakeEmulation(clock, [0, 1, 2, 3, 4, 5], [0, 3.5, 0.1, 0.1, 0.1, 0.1])
    report = Player(emu, clock=clock, sleep=clock.sleep).play(0, 6)
    assert [r.step for r in report.records] == [0, 1, 4, 5]
    assert report.records[2].skipped == 2 and report.summary()["skipped_steps"] == 2


def test_replay_applies_every_step_late():
    clock = FakeClock()
    emu = FakeEmulation(clock, [0, 1, 2, 3], [0, 3.5, 0.1, 0.1])
    report = Player(emu, catch_up="replay", clock=clock, sleep=clock.sleep).play(0, 4)
    assert [r.step for r in report.records] == [0, 1, 2, 3] and report.records[2].late_s > 1
