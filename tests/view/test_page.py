"""The exported page: self-contained (nothing to fetch), and the scene survives the trip through HTML."""

import json
import re

import pytest

from meshemu.errors import CapabilityError
from meshemu.view.page import render_page
from meshemu.view.scene import build_scene


def _scene_back(html):
    m = re.search(r'<script id="scene" type="application/json">(.*?)</script>', html, re.S)
    return json.loads(m.group(1))


class TestRenderPage:
    def test_nothing_is_loaded_from_anywhere(self, demo_series, page_assets):
        html = render_page(build_scene(demo_series), "export")
        # no element may point at a file or a server: the page must work from a USB stick
        assert not re.search(r"<(script|link|img|iframe)[^>]+(src|href)=\"(?!data:)", html, re.I)
        assert "THREE" in html and "WORLD_ATLAS" in html  # the libraries and the outline are inside

    def test_scene_survives_a_title_that_closes_the_script(self, demo_series, page_assets):
        scene = build_scene(demo_series, title="evil </script><script>alert(1)</script>")
        back = _scene_back(render_page(scene, "export"))
        assert back["title"] == scene["title"] and back["mode"] == "export"
        assert back["satellite_positions_b64"] == scene["satellite_positions_b64"]

    def test_mode_is_checked(self, demo_series, page_assets):
        with pytest.raises(ValueError, match="mode"):
            render_page(build_scene(demo_series), "cinema")

    def test_missing_libraries_say_how_to_build_them(self, demo_series, monkeypatch, tmp_path):
        monkeypatch.setenv("MESHEMU_VIEW_VENDOR", str(tmp_path / "absent.js"))
        with pytest.raises(CapabilityError, match="setup.sh"):
            render_page(build_scene(demo_series), "export")
