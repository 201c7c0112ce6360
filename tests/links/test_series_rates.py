"""Each link's rate in the link series: from the constellation's rules, saved and loaded, checked."""

import dataclasses

import numpy as np
import pytest

from meshemu.constellation import GslRules, IslRules, TimeGrid, default_ground_stations, load_constellation
from meshemu.errors import InputError
from meshemu.links import compute_link_series
from meshemu.links.series import LinkSeries


@pytest.fixture(scope="module")
def demo_series():
    c = load_constellation("demo").with_rules(isl=IslRules(rate_gbps=100), gsl=GslRules(min_elevation_deg=10,
                                                                                         rate_gbps=0.5))
    grid = TimeGrid.from_window(c.epoch_utc, start_s=0, duration_s=3, step_s=1)
    return compute_link_series(c, default_ground_stations()[:10], grid)


def test_isls_and_gsls_get_their_rules_rates(demo_series):
    rates = demo_series.link_rates_bps()
    assert rates.shape == (len(demo_series.links),)
    assert np.all(rates[~demo_series.is_gsl] == 100e9) and np.all(rates[demo_series.is_gsl] == 0.5e9)


def test_a_constellation_without_rates_gives_none():
    c = load_constellation("demo")
    s = compute_link_series(c, default_ground_stations()[:2], TimeGrid.from_window(c.epoch_utc, start_s=0,
                                                                                   duration_s=1, step_s=1))
    assert np.isnan(s.link_rates_bps()).all()


def test_a_series_saved_before_rates_loads_without_them(demo_series, tmp_path):
    path = demo_series.save(tmp_path / "s.npz")
    with np.load(path) as z:
        old = {k: z[k] for k in z.files if k != "rate_bps"}
    np.savez_compressed(tmp_path / "old.npz", **old)
    again = LinkSeries.load(tmp_path / "old.npz")
    assert again.rate_bps is None and np.isnan(again.link_rates_bps()).all()
    assert np.array_equal(LinkSeries.load(path).link_rates_bps(), demo_series.link_rates_bps())


def test_rates_of_the_wrong_shape_or_sign_are_not_a_series(demo_series, tmp_path):
    bad = dataclasses.replace(demo_series, rate_bps=-demo_series.link_rates_bps())
    with pytest.raises(InputError, match="rate_bps"):
        LinkSeries.load(bad.save(tmp_path / "bad.npz"))
