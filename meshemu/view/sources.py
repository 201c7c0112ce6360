"""What the view can be pointed at: a link series ``.npz`` or a results folder of ``meshemu run``.

A results folder holds ``series.npz`` (the runner saves the series it played),
or else the series is rebuilt from ``config.yaml`` exactly as the runner built
it; ``run.json`` gives the placement (rank -> satellite) and the client, and
``routes.csv`` the pairs whose routes were followed. Nothing here writes.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

from meshemu.config import read_text
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
    meta = _run_json(run_json) if run_json.exists() else {}
    ranks = _rank_nodes(meta)
    for n in ranks + ((meta["client"],) if meta.get("client") else ()):
        try:
            series.short_index(n)
        except InputError:
            raise InputError(f"names node {n!r}, which the run's series does not have", file=run_json) from None
    placement = Placement(ranks, spec.parallelism.tp, spec.parallelism.pp, meta.get("client") or spec.ground_station,
                          spec.parallelism.allreduce, _layers(meta, len(ranks))) if ranks else None
    pairs = []
    routes = folder / "routes.csv"
    if routes.exists():
        reader = csv.DictReader(io.StringIO(read_text(routes)))
        if not {"src", "dst"} <= set(reader.fieldnames or ()):
            raise InputError("has no src and dst columns: not a meshemu routes.csv", file=routes)
        for row in reader:
            pair = (row["src"], row["dst"])
            if pair not in pairs:
                pairs.append(pair)
    pairs += [tuple(p) for p in spec.probes if tuple(p) not in pairs]
    tokens, prompts = _tokens_per_step(folder / "requests.jsonl")
    return ViewSource(series, tuple(pairs), placement, spec.name, folder, tokens, prompts)


def _run_json(path: Path) -> dict:
    """run.json as a mapping, or an InputError naming the file."""
    try:
        meta = json.loads(read_text(path))
    except ValueError as err:
        raise InputError(f"not JSON ({err})", file=path) from None
    if not isinstance(meta, dict):
        raise InputError(f"expected a JSON object, got {type(meta).__name__}", file=path)
    return meta


def _rank_nodes(meta: dict) -> tuple[str, ...]:
    """Rank -> node from run.json: ``rank_nodes`` (a list), or an older folder's ``placement`` mapping."""
    if isinstance(meta.get("rank_nodes"), list) and all(isinstance(n, str) for n in meta["rank_nodes"]):
        return tuple(meta["rank_nodes"])
    old = meta.get("placement")
    if isinstance(old, dict) and all(str(k).isdigit() for k in old):
        return tuple(str(old[k]) for k in sorted(old, key=int))
    return ()


def _layers(meta: dict, n_ranks: int) -> tuple[tuple[int, int], ...]:
    """Each rank's [start, stop) layers, from the shards' answers to Load that run.json keeps (``load``)."""
    load = meta.get("load") if isinstance(meta.get("load"), list) else []
    by_rank = {r["rank"]: tuple(r["layers"]) for r in load
               if isinstance(r, dict) and isinstance(r.get("rank"), int) and isinstance(r.get("layers"), list)
               and len(r["layers"]) == 2 and all(isinstance(x, int) for x in r["layers"])}
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
    for n, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as err:
            raise InputError(f"not a JSON line ({err})", file=path, line=n) from None
        if isinstance(row, dict) and row.get("kind") == "token" and row.get("step") is not None:
            if not isinstance(row["step"], int):
                raise InputError(f"step {row['step']!r} is not a step number", file=path, line=n)
            k = row["step"]
            tokens[k] = tokens.get(k, 0) + 1
            if row.get("index") == 0:
                prompts[k] = prompts.get(k, 0) + 1
    return tokens, prompts
