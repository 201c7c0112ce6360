"""Where every satellite is at every step: SGP4 over a whole time grid at once.

One :class:`TimeGrid` is built per run and passed everywhere. Propagation uses
``sgp4``'s vectorised ``SatrecArray`` (all satellites x all times in one C
call), then rotates TEME to the Earth-fixed frame (ITRS) by Greenwich mean
sidereal time from Skyfield, so the hot path has no Python loop over
satellites or steps. Polar motion (~10 m) is ignored, as Skyfield does by
default.

>>> grid = TimeGrid.from_window("2000-01-01T00:00:00Z", start_s=0, duration_s=3, step_s=1)
>>> grid.offsets_s
array([0., 1., 2.])
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache

import numpy as np
from sgp4.api import SatrecArray
from skyfield.sgp4lib import theta_GMST1982

from meshemu.constants import SECONDS_PER_DAY
from meshemu.constellation.tle import sgp4_error_text
from meshemu.errors import InputError, MeshemuError
from meshemu.resources import memory_problem

SECONDS_PER_YEAR = 365.25 * SECONDS_PER_DAY
# SGP4 is good for days around an element set's epoch; past a few centuries the calendar
# arithmetic underneath (Skyfield's, numpy's) stops being exact, so refuse rather than mislead.
MAX_OFFSET_S = 200 * SECONDS_PER_YEAR
# A step costs its offset plus Skyfield's Time arrays and the Earth-rotation angles (measured ~140 B).
BYTES_PER_STEP = 200


@lru_cache(maxsize=1)
def timescale():
    """Skyfield's timescale from the data files it ships (never downloads)."""
    from skyfield.api import load

    return load.timescale(builtin=True)


def parse_utc(text) -> datetime:
    """An ISO 8601 instant as an aware UTC datetime ('Z' or an offset; naive means UTC)."""
    if isinstance(text, datetime):
        value = text
    else:
        try:
            value = datetime.fromisoformat(str(text).strip().replace("Z", "+00:00"))
        except ValueError:
            raise InputError(f"{text!r} is not an ISO 8601 time such as 2026-01-01T00:00:00Z",
                             field="epoch") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


@dataclass(frozen=True, eq=False)
class TimeGrid:
    """Steps at ``epoch + offsets_s`` (UTC), offsets in seconds.

    ``ut1_equals_utc`` turns the Earth by UTC instead of UT1 (the two differ by
    under 0.9 s): PyEphem, and so Hypatia, do that.
    """

    epoch_utc: datetime
    offsets_s: np.ndarray
    ut1_equals_utc: bool = False
    _times: object = field(default=None, repr=False, compare=False)

    @classmethod
    def from_window(cls, epoch, *, start_s: float, duration_s: float, step_s: float,
                    ut1_equals_utc: bool = False) -> "TimeGrid":
        """Steps ``start_s, start_s + step_s, ...`` strictly before ``start_s + duration_s``.

        >>> TimeGrid.from_window("2000-01-01", start_s=0, duration_s=float("inf"), step_s=1)
        Traceback (most recent call last):
        ...
        meshemu.errors.InputError: duration: must be a finite number of seconds, got inf
        """
        for name, value in (("start", start_s), ("duration", duration_s), ("step", step_s)):
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise InputError(f"must be a finite number of seconds, got {value}", field=name)
        if not step_s > 0:
            raise InputError(f"step must be positive, got {step_s} s", field="step")
        if not duration_s > 0:
            raise InputError(f"the window has no steps (duration {duration_s} s, step {step_s} s): "
                             "give a duration longer than zero", field="duration")
        for name, value in (("start", start_s), ("duration", start_s + duration_s)):
            if abs(value) > MAX_OFFSET_S:
                raise InputError(f"the window reaches {value:g} s from the epoch, beyond the "
                                 f"{MAX_OFFSET_S / SECONDS_PER_YEAR:g} years SGP4 element sets are "
                                 "propagated for here: give a later --epoch or a smaller --start/--duration",
                                 field=name)
        n_float = round(duration_s / step_s, 9)
        problem = memory_problem(n_float * BYTES_PER_STEP,
                                 f"the time grid of {n_float:.3g} steps ({duration_s:g} s in steps of {step_s:g} s)",
                                 "give a shorter duration or a longer step")
        if problem:
            raise InputError(problem, field="duration")
        n = max(1, math.ceil(n_float))
        offsets = start_s + step_s * np.arange(n, dtype=np.float64)
        return cls(parse_utc(epoch), offsets, ut1_equals_utc)

    def __len__(self) -> int:
        return len(self.offsets_s)

    @property
    def times(self):
        """The steps as one Skyfield ``Time`` array (UTC via Skyfield's timescale)."""
        if self._times is None:
            e = self.epoch_utc
            seconds = e.second + e.microsecond * 1e-6 + self.offsets_s
            object.__setattr__(self, "_times", timescale().utc(e.year, e.month, e.day, e.hour, e.minute, seconds))
        return self._times

    def julian_utc(self) -> tuple[np.ndarray, np.ndarray]:
        """(whole, fraction) Julian dates in UTC, the form SGP4 takes."""
        t = self.times
        whole = np.broadcast_to(t.whole, self.offsets_s.shape)
        return np.ascontiguousarray(whole, dtype=np.float64), np.asarray(t.tai_fraction - t._leap_seconds() / SECONDS_PER_DAY, dtype=np.float64)

    def earth_rotation_rad(self) -> np.ndarray:
        """Greenwich mean sidereal angle at each step (IAU 1982, as SGP4's TEME expects)."""
        t = self.times
        whole, utc_fraction = self.julian_utc()
        ut1_fraction = utc_fraction if self.ut1_equals_utc else t.ut1_fraction
        theta, _ = theta_GMST1982(whole, ut1_fraction)
        return np.asarray(theta, dtype=np.float64)


def check_window(satrecs, grid: TimeGrid) -> None:
    """InputError when ``grid`` reaches further than :data:`MAX_OFFSET_S` from any element set's epoch
    (an --epoch centuries away gives positions, but not of anything real)."""
    if len(satrecs) == 0 or len(grid) == 0:
        return
    epochs_jd = np.array([s.jdsatepoch + s.jdsatepochF for s in satrecs])
    e = grid.epoch_utc
    grid_jd = 2440587.5 + (e.timestamp() + grid.offsets_s[[0, -1]]) / SECONDS_PER_DAY
    reach_s = float(np.abs(grid_jd[:, None] - epochs_jd[None, :]).max()) * SECONDS_PER_DAY
    if reach_s > MAX_OFFSET_S:
        raise InputError(f"the window lies {reach_s / SECONDS_PER_YEAR:,.0f} years from the element sets' epoch; "
                         f"SGP4 is propagated here for at most {MAX_OFFSET_S / SECONDS_PER_YEAR:g}: give an --epoch "
                         "near the constellation's", field="epoch")


def propagate_teme_m(satrecs, grid: TimeGrid, names=None) -> tuple[np.ndarray, np.ndarray]:
    """Positions (m) and velocities (m/s) in SGP4's quasi-inertial TEME frame, each (time, satellite, 3)."""
    if len(satrecs) == 0:
        raise InputError("the constellation has no satellites", field="satellites")
    check_window(satrecs, grid)
    whole, fraction = grid.julian_utc()
    errors, r_km, v_km_s = SatrecArray(list(satrecs)).sgp4(whole, fraction)  # (S, T), (S, T, 3), (S, T, 3)
    if errors.any() or not np.isfinite(r_km).all():
        s, k = np.argwhere(errors | ~np.isfinite(r_km).all(axis=-1))[0]
        who = names[s] if names is not None else f"satellite {s}"
        why = sgp4_error_text(satrecs[s], errors[s, k]) if errors[s, k] else "no finite position"
        raise MeshemuError(f"SGP4 cannot propagate {who} at t = {grid.offsets_s[k]:g} s: {why}; "
                           "end the window earlier or check the elements")
    return np.transpose(r_km, (1, 0, 2)) * 1e3, np.transpose(v_km_s, (1, 0, 2)) * 1e3  # (T, S, 3)


def teme_to_itrs_m(r_m: np.ndarray, grid: TimeGrid) -> np.ndarray:
    """TEME positions (time, satellite, 3) turned into the Earth-fixed frame by Greenwich mean sidereal time."""
    theta = grid.earth_rotation_rad()[:, None]  # (T, 1)
    c, s = np.cos(theta), np.sin(theta)
    x, y = r_m[..., 0], r_m[..., 1]
    out = np.empty_like(r_m)
    out[..., 0] = c * x + s * y
    out[..., 1] = -s * x + c * y
    out[..., 2] = r_m[..., 2]
    return out


def propagate_itrs_m(satrecs, grid: TimeGrid, names=None) -> np.ndarray:
    """Earth-fixed positions in metres, shaped (time, satellite, 3)."""
    r_m, _ = propagate_teme_m(satrecs, grid, names)
    return teme_to_itrs_m(r_m, grid)
