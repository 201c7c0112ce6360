import os
import shutil

import numpy as np
import pytest

from meshemu.links import LinkSeries


def pytest_collection_modifyitems(config, items):
    """Tests marked root are skipped, with the reason, where we are not root."""
    if os.geteuid() == 0 and shutil.which("ip"):
        return
    skip = pytest.mark.skip(reason="needs root and iproute2 (network namespaces); CI runs as root")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


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
def prefix():
    """A namespace prefix of this test run's own, and a check that nothing is left after the test."""
    from meshemu.emulation.clean import clean
    from meshemu.emulation.mesh import existing_namespaces

    p = f"mt{os.getpid()}"
    yield p
    left = existing_namespaces(p)
    clean(p)
    assert not left, f"the test left namespaces behind: {left}"
