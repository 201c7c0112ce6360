"""The prediction for the network alone: roofline compute, no per-message cost, bytes at the link rate."""

import math
from types import SimpleNamespace

import numpy as np
import pytest

from meshemu.experiments.network import link_bytes_per_s, network_prediction, roofline_stage_s
from meshemu.serving.compute import DEVICES, PRESETS
from meshemu.serving.report import RunContext

QWEN3_32B, H100 = PRESETS["qwen3-32b"], DEVICES["h100"]


def series(rates_bps, is_gsl):
    return SimpleNamespace(link_rates_bps=lambda: np.asarray(rates_bps, float), is_gsl=np.asarray(is_gsl))


def test_the_slowest_isl_rate_in_bytes_and_none_is_infinite():
    assert link_bytes_per_s(series([1.6e12, 0.8e12, 1e6], [False, False, True])) == 1e11
    assert link_bytes_per_s(series([np.nan, np.nan], [False, True])) == math.inf


def test_pipeline_stages_share_the_whole_models_time():
    whole = roofline_stage_s(QWEN3_32B, H100, tp=1, pp=1, new_tokens=1, context=8)
    stages = roofline_stage_s(QWEN3_32B, H100, tp=1, pp=8, new_tokens=1, context=8)
    assert len(stages) == 8 and sum(stages) == pytest.approx(whole[0], rel=1e-9)
    # bandwidth-bound: 32.8 G bf16 parameters (65.5 GB) at 3.35 TB/s, ~20 ms a token
    assert whole[0] == pytest.approx(0.0196, rel=0.05)


def test_tp_8_in_a_formation_costs_its_compute_and_128_all_reduces_over_short_links():
    one_way_s = 110 / 299_792_458  # every pair of ranks one 110 m hop apart
    ranks = [f"r{j}" for j in range(8)]
    ctx = RunContext(tp=8, pp=1, algorithm="direct", layers=[64], rank_nodes=ranks, client_node="gs",
                     activation_bytes=QWEN3_32B.hidden_size * 2, overhead_s=0.22e-3,
                     one_way_at=lambda step: (lambda a, b: one_way_s))
    p = network_prediction(ctx, series([1.6e12], [False]), QWEN3_32B, H100, {"prompt_tokens": 1, "tokens": 8}, 0)
    compute_s = roofline_stage_s(QWEN3_32B, H100, tp=8, pp=1, new_tokens=1, context=5)[0]
    allreduce_s = one_way_s + 7 * (10240 / 2e11)  # direct: alpha + (t - 1) n/B, o = 0
    assert p.compute_s == pytest.approx(compute_s)
    assert p.collectives_s == pytest.approx(128 * allreduce_s, rel=1e-6)
    assert p.tpot_s < 0.0035  # against ~0.25 s with this host's 0.22 ms a message
    assert network_prediction(ctx, series([1.6e12], [False]), QWEN3_32B, None, {}, 0) is None  # real compute
