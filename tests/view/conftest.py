"""Fixtures for the view: a headless Chromium (skipped, with the reason, where there is none) and small inputs."""

import json
import os
from pathlib import Path

import pytest
import yaml

from meshemu.view.browser import Browser, find_chromium
from meshemu.view.page import vendor_bundle_path

# Where the tests leave their screenshots: a temporary folder, or docs/figures for the README
# (MESHEMU_FIGURES=docs/figures pytest tests/view).
FIGURES_ENV = "MESHEMU_FIGURES"


def _need_page():
    if not vendor_bundle_path().exists():
        pytest.skip(f"the view's libraries are not built ({vendor_bundle_path()}): run tools/setup.sh "
                    "(npm ci && npm run build in meshemu/view/web)")


@pytest.fixture(scope="session")
def page_assets():
    _need_page()


@pytest.fixture(scope="session")
def chromium(page_assets):
    if find_chromium() is None:
        pytest.skip("no chromium on this machine (apt-get install -y chromium; tools/setup.sh installs it)")
    with Browser(1280, 800) as b:
        yield b


@pytest.fixture
def browser(chromium):
    """The session's browser, with this test's own record of errors and requests."""
    chromium.exceptions.clear()
    chromium.console_errors.clear()
    chromium.requests.clear()
    chromium.open("about:blank")
    chromium.wait_for("document.URL === 'about:blank'")
    yield chromium


@pytest.fixture
def figures(tmp_path):
    folder = Path(os.environ.get(FIGURES_ENV) or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def write_results_folder(folder: Path, series, *, client="Paris", ranks=("p00s01", "p00s02"), probes=(("Paris", "Moscow"),),
                         tp=1, pp=2, tokens_at_steps=(10, 10, 10, 11)):
    """A results folder as 'meshemu run' lays it out (config.yaml, run.json, routes.csv), for a series already made.

    The run itself needs root and a model; the view reads only these files, so
    they are written here with the runner's own key names.
    """
    from meshemu.experiments.spec import as_dict, load_experiment
    from dataclasses import replace

    from meshemu.experiments.spec import Parallelism, Window

    spec = load_experiment(Path(__file__).parents[2] / "experiments" / "quickstart.yaml")
    step_s = float(series.times_s[1] - series.times_s[0])
    spec = replace(spec, ground_station=client, probes=tuple(tuple(p) for p in probes),
                   parallelism=Parallelism(tp=tp, pp=pp),
                   window=Window(start_s=float(series.times_s[0]), duration_s=step_s * series.n_steps, step_s=step_s))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(as_dict(spec), sort_keys=False))
    layers = [(r * 3 // len(ranks), (r + 1) * 3 // len(ranks)) for r in range(len(ranks))]  # a 3-layer model
    (folder / "run.json").write_text(json.dumps({"experiment": spec.name, "placement": dict(enumerate(ranks)),
                                                 "client": client,
                                                 "load": [{"rank": r, "stage": r // tp, "tp_rank": r % tp,
                                                           "layers": list(layers[r])} for r in range(len(ranks))]}))
    rows = ["t_s,step,src,dst,rtt_ms,hops,path"]
    for k, t in enumerate(series.times_s):
        rows.append(f"{t},{k},{client},{ranks[0]},,,")
        for a, b in probes:
            rows.append(f"{t},{k},{a},{b},,,")
    (folder / "routes.csv").write_text("\n".join(rows) + "\n")
    # token rows as the runner writes them (serving.report.analyse): the step in force when each arrived
    with open(folder / "requests.jsonl", "w") as f:
        f.write(json.dumps({"kind": "request", "request": 0, "tokens": len(tokens_at_steps)}) + "\n")
        for i, k in enumerate(tokens_at_steps):
            f.write(json.dumps({"kind": "token", "request": 0, "index": i, "step": k}) + "\n")
    return folder


@pytest.fixture
def make_results_folder():
    return write_results_folder
