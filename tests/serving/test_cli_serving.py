"""``meshemu generate --tp/--pp --loopback`` and ``meshemu bench serving`` through ``meshemu.cli.main``."""

import json

import pytest

from meshemu.cli import main
from meshemu.model.tiny import random_weights, tiny_config, tiny_tokenizer, write_gguf

PROMPT = "What is the capital of France?"


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "tiny.gguf"
    write_gguf(random_weights(tiny_config("llama"), seed=3), tiny_tokenizer(), path)
    return path


def test_sharded_text_equals_unsharded_and_metrics_are_written(tiny_gguf, tmp_path, capsys):
    args = ["generate", "--model", str(tiny_gguf), "--max-new-tokens", "8", PROMPT]
    assert main(args) == 0
    whole = capsys.readouterr().out
    metrics = tmp_path / "m.jsonl"
    assert main(args + ["--tp", "2", "--pp", "2", "--allreduce", "direct", "--loopback",
                        "--metrics", str(metrics)]) == 0
    out, err = capsys.readouterr()
    assert out == whole                      # stdout is the text alone, and the same text
    assert "TPOT" in err and "predicted" in err
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    kinds = [r["kind"] for r in rows]
    assert kinds[0] == "run" and kinds.count("request") == 1 and kinds.count("token") == 8
    req = next(r for r in rows if r["kind"] == "request")
    for key in ("ttft_s", "tpot_s", "itl_s", "tokens_per_s", "e2e_s", "compute_s_per_token",
                "collective_s_per_token", "hop_s_per_token", "predicted_tpot_s", "predicted_ttft_s"):
        assert req[key] is not None, key
    assert req["tpot_s"] == pytest.approx((req["e2e_s"] - req["ttft_s"]) / 7)
    run = rows[0]
    assert run["tp"] == 2 and run["pp"] == 2 and len(run["load"]) == 4 and run["mode"] == "loopback"


def test_concurrent_requests_and_device_compute(tmp_path, capsys):
    metrics = tmp_path / "m.jsonl"
    assert main(["generate", "--model", "preset:qwen3-0.6b", "--compute", "device:h100", "--pp", "2",
                 "--tp", "2", "--loopback", "--requests", "2", "--max-new-tokens", "4", "--metrics", str(metrics),
                 "hello"]) == 0
    out, err = capsys.readouterr()
    assert len(out.split()) == 4              # no vocabulary: token ids
    assert "2 requests at once" in err
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert sum(r["kind"] == "request" for r in rows) == 2


def test_sharding_needs_a_place_to_run(capsys):
    rc = main(["generate", "--model", "tiny:llama:0", "--tp", "2", "hello"])
    _, err = capsys.readouterr()
    assert rc == 2 and err.strip().splitlines() == [
        "meshemu: error: sharded serving needs --loopback (local processes) or --constellation NAME (a mesh)"]


def test_a_preset_needs_device_compute(capsys):
    rc = main(["generate", "--model", "preset:qwen3-8b", "--loopback", "hello"])
    _, err = capsys.readouterr()
    assert rc == 2 and "has no weights: serve it with compute device:NAME" in err
    assert "Traceback" not in err


def test_bench_serving_quick(capsys):
    assert main(["bench", "serving", "--model", "tiny:llama:0", "--tokens", "4", "--hop-tokens", "6",
                 "--layouts", "1x2,2x1:direct", "--concurrency", "2"]) == 0
    out = capsys.readouterr().out
    assert "per pipeline hop" in out and "2x1 direct" in out and "m=2" in out
