"""The player: steps an emulation through its link series on a clock, and says how well it kept time.

Step k is due at ``start + (t_k - t_first) / time_scale`` on the monotonic
clock. Before sleeping until then, the player computes step k's routes, so
that at the due time only the kernel's work is left. It never slips silently:
each step's lateness (applied minus scheduled) is recorded. When it falls more
than a step behind (a mesh too large for the step, a busy host), by default it
jumps to the step due now, so the kernel shows the constellation of the
present, and records how many steps it passed over (``catch_up="replay"``
applies every step instead, late).
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class StepRecord:
    step: int
    t_s: float  # the series' time of this step
    scheduled_s: float  # when it was due, seconds after the player started
    applied_s: float  # when applying began
    apply_s: float  # how long applying took
    late_s: float  # applied_s - scheduled_s
    link_up: int
    link_down: int
    delay_changes: int
    route_changes: int
    skipped: int = 0  # steps passed over to catch up with the clock (catch_up="jump")

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class PlayReport:
    records: list

    def summary(self) -> dict:
        """Percentiles of apply time and lateness (steps after the first)."""
        recs = self.records[1:] or self.records
        apply = np.array([r.apply_s for r in recs])
        late = np.array([r.late_s for r in recs])
        pct = lambda a, q: float(np.percentile(a, q)) if len(a) else float("nan")  # noqa: E731
        return {"steps": len(self.records), "apply_p50_ms": pct(apply, 50) * 1e3,
                "apply_p99_ms": pct(apply, 99) * 1e3, "apply_max_ms": float(apply.max() * 1e3) if len(apply) else 0.0,
                "late_p50_ms": pct(late, 50) * 1e3, "late_p99_ms": pct(late, 99) * 1e3,
                "late_max_ms": float(late.max() * 1e3) if len(late) else 0.0,
                "link_changes": int(sum(r.link_up + r.link_down for r in self.records)),
                "delay_changes": int(sum(r.delay_changes for r in self.records)),
                "route_changes": int(sum(r.route_changes for r in self.records)),
                "skipped_steps": int(sum(r.skipped for r in self.records))}


class Player:
    """Plays ``emulation`` from ``first_step`` for ``n_steps`` steps at ``time_scale`` x real time."""

    def __init__(self, emulation, *, time_scale: float = 1.0, catch_up: str = "jump", clock=time.monotonic,
                 sleep=None):
        if time_scale <= 0:
            raise ValueError(f"time scale must be positive, got {time_scale}")
        if catch_up not in ("jump", "replay"):
            raise ValueError(f"catch_up must be 'jump' or 'replay', got {catch_up!r}")
        self.catch_up = catch_up
        self._stop = threading.Event()
        self.emu, self.time_scale, self.clock = emulation, time_scale, clock
        self.sleep = sleep or self._stop.wait  # a sleep that stop() cuts short
        self.started_at: float | None = None  # the clock's reading when play began: records count from it

    def stop(self) -> None:
        """Ask a ``play`` running in another thread to return after the step in hand."""
        self._stop.set()

    def play(self, first_step: int, n_steps: int, on_step=None) -> PlayReport:
        """Apply steps ``first_step + 1 ..`` on schedule (``first_step`` is what the emulation started at).

        ``on_step(record)`` runs after each step, e.g. to probe; its time counts
        against the next step's schedule like any other work.
        """
        series = self.emu.series
        last = min(first_step + n_steps, series.n_steps) - 1
        t_first = float(series.times_s[first_step])
        start = self.started_at = self.clock()
        records = [StepRecord(first_step, t_first, 0.0, 0.0, 0.0, 0.0, 0, 0, 0, 0)]
        if on_step:
            on_step(records[0])

        def due_of(j):
            return (float(series.times_s[j]) - t_first) / self.time_scale

        k = first_step
        while k < last:
            k, skipped = k + 1, 0
            if self.catch_up == "jump":  # already late for the next step too: go straight to the one due now
                while k < last and due_of(k + 1) <= self.clock() - start:
                    k, skipped = k + 1, skipped + 1
            due = due_of(k)
            self.emu.prepare(k)  # routes computed before the due time
            wait = due - (self.clock() - start)
            if wait > 0:
                self.sleep(wait)
            if self._stop.is_set():
                break
            applied = self.clock() - start
            ch = self.emu.apply_step(k)
            rec = StepRecord(k, float(series.times_s[k]), due, applied, ch.apply_s, applied - due,
                             ch.link_up, ch.link_down, ch.delay_changes, ch.route_changes, skipped)
            records.append(rec)
            if on_step:
                on_step(rec)
        return PlayReport(records)
