"""Fixtures shared across layers: small scenarios, Hypatia-format input files, and root-only tests."""

import os
import shutil

import pytest

from meshemu.constellation import TimeGrid, default_ground_stations, load_constellation
from meshemu.constellation.tle import format_tle
from meshemu.links import compute_link_series


@pytest.fixture(scope="session", autouse=True)
def weight_cache(tmp_path_factory):
    """The run's own weight cache (MESHEMU_CACHE), inherited by the shards tests start.

    Never the user's ~/.cache: a test must not read entries another checkout wrote,
    nor leave half a gigabyte behind; one run shares it, so SmolLM2 is dequantized once.
    """
    folder = tmp_path_factory.mktemp("weight-cache")
    before = os.environ.get("MESHEMU_CACHE")
    os.environ["MESHEMU_CACHE"] = str(folder)
    yield folder
    if before is None:
        os.environ.pop("MESHEMU_CACHE", None)
    else:
        os.environ["MESHEMU_CACHE"] = before
    shutil.rmtree(folder, ignore_errors=True)  # pytest keeps three runs' tmp folders; not these 540 MB


@pytest.fixture(scope="session")
def demo():
    return load_constellation("demo")


@pytest.fixture(scope="session")
def demo_series(demo):
    """The demo shell and all 100 cities over 10 minutes at 10 s steps."""
    grid = TimeGrid.from_window(demo.epoch_utc, start_s=0, duration_s=600, step_s=10)
    return compute_link_series(demo, default_ground_stations(), grid)


def write_hypatia_starlink(folder, planes=72, per_plane=22):
    """Hypatia's Starlink-550 inputs, written the way its generator lays them out.

    72 x 22 at 53 deg, mean motion 15.19 rev/day, eccentricity 1e-7, RAAN of plane
    i = i * 360 / 72, odd planes shifted by half a slot, epoch 2000-01-01 00:00 UTC.
    """
    lines = [f"{planes} {per_plane}"]
    for i in range(planes):
        for j in range(per_plane):
            sid = i * per_plane + j
            anomaly = (j + (0.5 if i % 2 else 0.0)) * 360.0 / per_plane
            l1, l2 = format_tle(sid + 1, 2000, 1.0, 53.0, i * 360.0 / planes, 1e-7, 0.0, anomaly, 15.19)
            lines += [f"Starlink-550 {sid}", l1, l2]
    (folder / "tles.txt").write_text("\n".join(lines) + "\n")
    isls = []
    for i in range(planes):
        for j in range(per_plane):
            a = i * per_plane + j
            isls.append((a, i * per_plane + (j + 1) % per_plane))
            isls.append((a, ((i + 1) % planes) * per_plane + j))
    (folder / "isls.txt").write_text("".join(f"{min(a, b)} {max(a, b)}\n" for a, b in isls))
    gs = default_ground_stations()
    (folder / "ground_stations.txt").write_text(
        "".join(f"{k},{s.name},{s.latitude_deg},{s.longitude_deg},0.0\n" for k, s in enumerate(gs)))
    return folder


@pytest.fixture(scope="session")
def hypatia_dir(tmp_path_factory):
    return write_hypatia_starlink(tmp_path_factory.mktemp("hypatia"))


def pytest_collection_modifyitems(config, items):
    """Tests marked root are skipped, with the reason, where we are not root."""
    if os.geteuid() == 0 and shutil.which("ip") and shutil.which("nsenter"):
        return
    skip = pytest.mark.skip(reason="needs root, iproute2 and nsenter (network namespaces); CI runs as root")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


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


@pytest.fixture(scope="session")
def tiny_reference():
    """``reference(arch, prompt, n, **sampling)``: tokens and logits of the whole tiny model."""
    models = {}

    from meshemu.model import Transformer, generate
    from meshemu.model.sampling import SamplingParams
    from meshemu.model.tiny import random_weights, tiny_config

    def reference(arch, prompt, n, temperature=0.0, top_p=1.0, seed=0, **changes):
        key = (arch, tuple(sorted(changes.items())))  # e.g. max_context=1024, as in tiny:llama:0:max_context=1024
        if key not in models:
            models[key] = Transformer(random_weights(tiny_config(arch, **changes), seed=0))
        model = models[key]
        seen = []
        orig = model.forward

        def forward(inputs, cache, reduce=None, **kw):
            out = orig(inputs, cache, **kw)
            seen.append(out[0, -1].copy())
            return out
        model.forward = forward
        try:
            res = generate(model, list(prompt), max_new_tokens=n,
                           sampling=SamplingParams(temperature=temperature, top_p=top_p, seed=seed))
        finally:
            model.forward = orig
        return list(res.new_tokens), seen

    return reference
