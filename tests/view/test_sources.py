"""Reading a results folder or a link series for the view."""

import numpy as np
import pytest

from meshemu.errors import InputError
from meshemu.view.sources import open_source


class TestOpenSource:
    def test_series_file(self, demo_series, tmp_path):
        path = demo_series.save(tmp_path / "demo.npz")
        src = open_source(path)
        assert src.series.n_steps == demo_series.n_steps and src.placement is None

    def test_results_folder_rebuilds_the_series_from_its_config(self, demo_series, tmp_path, make_results_folder):
        folder = make_results_folder(tmp_path / "run", demo_series, ranks=("p00s01", "p00s02"))
        src = open_source(folder)
        assert src.series.n_steps == demo_series.n_steps
        assert np.allclose(src.series.positions_m, demo_series.positions_m)
        assert src.placement.rank_nodes == ("p00s01", "p00s02") and src.placement.client == "Paris"
        assert src.pairs == (("Paris", "p00s01"), ("Paris", "Moscow"))
        scene = src.scene()
        assert [r["label"] for r in scene["routes"]] == ["Paris - p00s01", "Paris - Moscow"]

    def test_results_folder_prefers_the_series_the_runner_saved(self, demo_series, tmp_path, make_results_folder):
        folder = make_results_folder(tmp_path / "run", demo_series)
        # a saved series with fewer steps than config.yaml's window: only the file can give it
        from meshemu.links import LinkSeries

        s = demo_series
        short = LinkSeries(s.constellation, s.epoch_utc, s.times_s[:5], s.node_names, s.n_satellites, s.links,
                           s.length_m[:5], s.positions_m[:5], s.ut1_equals_utc, s.satellite_places)
        short.save(folder / "series.npz")
        assert open_source(folder).series.n_steps == 5

    def test_missing_path(self, tmp_path):
        with pytest.raises(InputError, match="no such results folder"):
            open_source(tmp_path / "nope")

    def test_folder_without_config(self, tmp_path):
        (tmp_path / "sweep" / "plane").mkdir(parents=True)
        (tmp_path / "sweep" / "plane" / "config.yaml").write_text("name: x\n")
        with pytest.raises(InputError, match="view one of its runs"):
            open_source(tmp_path / "sweep")

    def test_file_that_is_not_a_series(self, tmp_path):
        (tmp_path / "x.npz").write_text("hello")
        with pytest.raises(InputError, match="not a meshemu link series"):
            open_source(tmp_path / "x.npz")
