"""The view: a web page of the moving mesh, its routes and its shards; it reads series and results, changes nothing.

- :func:`build_scene` (``scene.py``): what to draw, worked out from a link series;
- :func:`render_page` / :func:`export_page` (``page.py``): one self-contained HTML file;
- :class:`ViewServer`, :class:`LiveFeed` (``server.py``): replay and live serving on 127.0.0.1;
- :func:`open_source` (``sources.py``): a results folder or a ``.npz`` series, read for viewing;
- ``live.py`` (``meshemu emulate --view``, ``--out`` for ``view --attach``) and ``live_run.py``
  (:class:`~meshemu.view.live_run.RunView`, ``meshemu run --view``): the live page's feeds.
"""

from meshemu.view.page import export_page, render_page
from meshemu.view.scene import FIBRE_SPEED_FRACTION, Placement, build_scene, great_circle_m
from meshemu.view.server import LiveFeed, ViewServer
from meshemu.view.sources import open_source

__all__ = ["FIBRE_SPEED_FRACTION", "LiveFeed", "Placement", "ViewServer", "build_scene", "export_page",
           "great_circle_m", "open_source", "render_page"]
