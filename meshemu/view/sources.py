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
    prompts_per_step: dict | None = None  # step -> requests whose first token came then

    def scene(self, extra_pairs=()) -> dict:
        pairs = tuple(extra_pairs) + tuple(p for p in self.pairs if p not in extra_pairs)
        return build_scene(self.series, pairs=pairs, placement=self.placement, title=self.title,
                           source=str(self.path), tokens_per_step=self.tokens_per_step,
                           prompts_per_step=self.prompts_per_step)


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
    placement = Placement(ranks, spec.parallelism.tp, spec.parallelism.pp, meta.get("client") or spec.ground_station,
                          spec.parallelism.allreduce, _layers(meta, len(ranks))) if ranks else None
    pairs = []
    if (folder / "routes.csv").exists():
        with open(folder / "routes.csv") as f:
            for row in csv.DictReader(f):
                pair = (row["src"], row["dst"])
                if pair not in pairs:
                    pairs.append(pair)
    pairs += [tuple(p) for p in spec.probes if tuple(p) not in pairs]
    tokens, prompts = _tokens_per_step(folder / "requests.jsonl")
    return ViewSource(series, tuple(pairs), placement, spec.name, folder, tokens, prompts)


def _rank_nodes(meta: dict) -> tuple[str, ...]:
    """Rank -> node from run.json: ``rank_nodes`` (a list), or an older folder's ``placement`` mapping."""
    if isinstance(meta.get("rank_nodes"), list):
        return tuple(str(n) for n in meta["rank_nodes"])
    old = meta.get("placement")
    if isinstance(old, dict) and all(str(k).isdigit() for k in old):
        return tuple(str(old[k]) for k in sorted(old, key=int))
    return ()


def _layers(meta: dict, n_ranks: int) -> tuple[tuple[int, int], ...]:
    """Each rank's [start, stop) layers, from the shards' answers to Load that run.json keeps (``load``)."""
    by_rank = {int(r["rank"]): tuple(r["layers"]) for r in meta.get("load") or []
               if isinstance(r, dict) and "rank" in r and len(r.get("layers") or ()) == 2}
    if sorted(by_rank) != list(range(n_ranks)):
        return ()
    return tuple((int(by_rank[r][0]), int(by_rank[r][1])) for r in range(n_ranks))


def _tokens_per_step(path: Path) -> tuple[dict[int, int], dict[int, int]]:
    """Tokens generated, and requests begun (their first token), at each step of the series.

    Token rows of ``requests.jsonl`` carry the step in force when they arrived.
    """
    tokens: dict[int, int] = {}
    prompts: dict[int, int] = {}
    if not path.exists():
        return tokens, prompts
    with open(path) as f:
        for line in f:
            row = json.loads(line)
            if row.get("kind") == "token" and row.get("step") is not None:
                k = int(row["step"])
                tokens[k] = tokens.get(k, 0) + 1
                if row.get("index") == 0:
                    prompts[k] = prompts.get(k, 0) + 1
    return tokens, prompts
