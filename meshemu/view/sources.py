"""What the view can be pointed at: a link series ``.npz`` or a results folder of ``meshemu run``.

A results folder holds ``series.npz`` (the runner saves the series it played),
or else the series is rebuilt from ``config.yaml`` exactly as the runner built
it; ``run.json`` gives the placement (rank -> satellite) and the client, and
``routes.csv`` the pairs whose routes were followed. Nothing here writes.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from meshemu.errors import InputError
from meshemu.experiments.plan import build_series
from meshemu.experiments.spec import load_experiment
from meshemu.links import LinkSeries
from meshemu.view.scene import Placement, build_scene

SERIES_FILE = "series.npz"


@dataclass(frozen=True)
class ViewSource:
    series: LinkSeries
    pairs: tuple[tuple[str, str], ...]
    placement: Placement | None
    title: str
    path: Path
    tokens_per_step: dict | None = None  # step -> tokens generated then (results folders)

    def scene(self, extra_pairs=()) -> dict:
        pairs = tuple(extra_pairs) + tuple(p for p in self.pairs if p not in extra_pairs)
        return build_scene(self.series, pairs=pairs, placement=self.placement, title=self.title,
                           source=str(self.path), tokens_per_step=self.tokens_per_step)


def open_source(path) -> ViewSource:
    """A results folder or a ``.npz`` link series, read for viewing (one-line errors when neither)."""
    path = Path(path)
    if not path.exists():
        raise InputError("no such results folder or link series file", file=path)
    if path.is_file():
        series = LinkSeries.load(path)
        return ViewSource(series, (), None, f"{series.constellation} ({path.name})", path)
    return _results_folder(path)


def _results_folder(folder: Path) -> ViewSource:
    config, run_json = folder / "config.yaml", folder / "run.json"
    if not config.exists():
        subs = sorted(p.parent.name for p in folder.glob("*/config.yaml"))
        hint = f"; a sweep: view one of its runs, e.g. {folder / subs[0]}" if subs else ""
        raise InputError(f"not a meshemu results folder (no config.yaml){hint}", file=folder)

    spec = load_experiment(config)
    if (folder / SERIES_FILE).exists():
        series = LinkSeries.load(folder / SERIES_FILE)
    else:
        series = build_series(spec)
    meta = json.loads(run_json.read_text()) if run_json.exists() else {}
    ranks = _rank_nodes(meta)
    placement = Placement(ranks, spec.parallelism.tp, spec.parallelism.pp,
                          meta.get("client") or spec.ground_station) if ranks else None
    pairs = []
    if (folder / "routes.csv").exists():
        with open(folder / "routes.csv") as f:
            for row in csv.DictReader(f):
                pair = (row["src"], row["dst"])
                if pair not in pairs:
                    pairs.append(pair)
    pairs += [tuple(p) for p in spec.probes if tuple(p) not in pairs]
    return ViewSource(series, tuple(pairs), placement, spec.name, folder, _tokens_per_step(folder / "requests.jsonl"))


def _rank_nodes(meta: dict) -> tuple[str, ...]:
    """Rank -> node from run.json: ``rank_nodes`` (a list), or an older folder's ``placement`` mapping."""
    if isinstance(meta.get("rank_nodes"), list):
        return tuple(str(n) for n in meta["rank_nodes"])
    old = meta.get("placement")
    if isinstance(old, dict) and all(str(k).isdigit() for k in old):
        return tuple(str(old[k]) for k in sorted(old, key=int))
    return ()


def _tokens_per_step(path: Path) -> dict[int, int]:
    """Tokens generated at each step of the series (token rows of ``requests.jsonl`` carry the step in force)."""
    counts: dict[int, int] = {}
    if not path.exists():
        return counts
    with open(path) as f:
        for line in f:
            row = json.loads(line)
            if row.get("kind") == "token" and row.get("step") is not None:
                counts[int(row["step"])] = counts.get(int(row["step"]), 0) + 1
    return counts
