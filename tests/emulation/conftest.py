"""A hand-made link series small enough to reason about, for the emulation tests."""

import os

import numpy as np
import pytest

from meshemu.links import LinkSeries


def square_series() -> LinkSeries:
    """Four satellites in a square (0-1-2-3-0) and two stations: A on 0, B on 1 (and on 2 at step 3).

    step 0: all up, A-0-1-B is shortest
    step 1: link 0-1 down: A-0-3-2-1-B
    step 2: B's link goes down: B unreachable
    step 3: 0-1 back, B reaches 2 only: A-0-1-2-B
    """
    km = 1000.0
    links = np.array([[0, 1], [1, 2], [2, 3], [0, 3], [0, 4], [1, 5], [2, 5]], dtype=np.int32)
    nan = np.nan
    length = np.array([
        [1000, 1000, 1000, 1000, 600, 600, nan],
        [nan, 1000, 1000, 1000, 600, 600, nan],
        [nan, 1000, 1000, 1000, 600, nan, nan],
        [1000, 1000, 1000, 1000, 600, nan, 700],
    ], dtype=np.float32) * km
    places = np.array([[0, 0, 0], [0, 0, 1], [0, 1, 1], [0, 1, 0]], dtype=np.int32)
    pos = np.zeros((4, 6, 3), dtype=np.float32)
    return LinkSeries("square", "2026-01-01T00:00:00Z", np.arange(4, dtype=float),
                      ("q-p00-s00", "q-p00-s01", "q-p01-s01", "q-p01-s00", "Alpha", "Beta"), 4, links,
                      length, pos, False, places)


@pytest.fixture
def square():
    return square_series()


@pytest.fixture
def test_shaper():
    """The backend the path and link tests run under: none here; tools/vm.sh forces netem in its VM."""
    return os.environ.get("MESHEMU_TEST_SHAPER", "none")


def require_netem(caps):
    """Skip without sch_netem, with the reason; where netem is expected (the VM), fail instead."""
    if caps.netem:
        return
    reason = (f"this kernel ({caps.kernel}) has no sch_netem: netem runs where it exists "
              "(the Vagrant box, tools/vm.sh test); its netlink messages are checked in test_netlink.py")
    if os.environ.get("MESHEMU_EXPECT_NETEM"):
        pytest.fail(f"MESHEMU_EXPECT_NETEM is set but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def netem_caps():
    """This kernel's capabilities, for a test that needs netem (see require_netem)."""
    from meshemu.emulation import kernel

    caps = kernel.probe(prefix=f"mtcaps{os.getpid()}")
    require_netem(caps)
    return caps
