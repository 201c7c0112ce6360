"""The model's name as people read it: model, then number format in parentheses."""

import json

import pytest

from meshemu.model.gguf import load_gguf
from meshemu.model.hf import load_hf
from meshemu.model.naming import gguf_model_name
from meshemu.model.tiny import tiny_tokenizer, write_gguf, write_hf


def test_smollm2_is_named_as_its_file_not_its_munged_metadata(smollm2):
    assert smollm2.weights.config.name == "SmolLM2-135M-Instruct (Q4_1)"


class TestGGUF:
    @pytest.mark.parametrize("quantize, label", [(None, "F32"), ("Q8_0", "Q8_0")])
    def test_format_of_most_weights_without_a_file_type(self, tiny_llama, tmp_path, quantize, label):
        path = tmp_path / "x.gguf"
        write_gguf(tiny_llama, tiny_tokenizer(), path, quantize=quantize)  # 1-D norms stay F32
        assert load_gguf(path)[0].config.name == f"tiny-llama ({label})"

    def test_the_file_name_when_it_names_the_model(self, tiny_llama, tmp_path):
        path = tmp_path / "Tiny-Llama-1K-Chat-q8_0.gguf"
        write_gguf(tiny_llama, tiny_tokenizer(), path, general={"basename": "tiny-llama"})
        assert load_gguf(path)[0].config.name == "Tiny-Llama-1K-Chat (F32)"

    @pytest.mark.parametrize("fields, name", [
        ({"name": "Llama 3 8B Instruct", "basename": "llama-3"}, "Llama 3 8B Instruct (Q4_K_M)"),
        ({"basename": "llama-3", "size_label": "8B", "finetune": "Instruct"}, "llama-3-8B-Instruct (Q4_K_M)"),
        ({}, "ggml-model (Q4_K_M)"),
    ])
    def test_metadata_when_the_file_name_is_generic(self, fields, name):
        assert gguf_model_name(stem="ggml-model-Q4_K_M", quantization="Q4_K_M", **fields) == name


class TestHF:
    def test_the_folder_name_and_dtype(self, tiny_llama, tmp_path):
        write_hf(tiny_llama, None, tmp_path / "my-llama")
        assert load_hf(tmp_path / "my-llama")[0].config.name == "my-llama (F32)"

    def test_name_or_path_wins(self, tiny_llama, tmp_path):
        write_hf(tiny_llama, None, tmp_path)
        config = json.loads((tmp_path / "config.json").read_text())
        config |= {"_name_or_path": "HuggingFaceTB/Tiny-Chat", "torch_dtype": "bfloat16"}
        (tmp_path / "config.json").write_text(json.dumps(config))
        assert load_hf(tmp_path)[0].config.name == "Tiny-Chat (BF16)"

    def test_a_hub_snapshot_is_named_by_its_repository(self, tiny_llama, tmp_path):
        folder = tmp_path / "models--org--Tiny-Llama" / "snapshots" / "0123abcd"
        write_hf(tiny_llama, None, folder)
        assert load_hf(folder)[0].config.name == "Tiny-Llama (F32)"
