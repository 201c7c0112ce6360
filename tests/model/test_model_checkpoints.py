"""GGUF and Hugging Face checkpoints: write tiny random ones, read them back."""

import dataclasses
import json
import struct

import numpy as np
import pytest

from meshemu.errors import InputError
from meshemu.model import load_model
from meshemu.model.gguf import load_gguf, permute_qk, unpermute_qk
from meshemu.model.hf import load_hf
from meshemu.model.tiny import tiny_tokenizer, write_gguf, write_hf
from meshemu.model.weights import hf_tensors_from_weights


def same_config(got, want):
    return dataclasses.replace(got, name=want.name) == want  # the name comes from the path


def assert_same_weights(got, want, **tol):
    assert same_config(got.config, want.config)
    a, b = hf_tensors_from_weights(got), hf_tensors_from_weights(want)
    assert a.keys() == b.keys()
    for name in a:
        if tol:
            np.testing.assert_allclose(a[name], b[name], err_msg=name, **tol)
        else:
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)


class TestGGUF:
    def test_unpermute_inverts_permute(self):
        w = np.random.default_rng(0).standard_normal((3 * 16, 5))
        assert not np.array_equal(permute_qk(w, 3), w)
        np.testing.assert_array_equal(unpermute_qk(permute_qk(w, 3), 3), w)

    def test_llama_round_trip_through_permuted_rows(self, tiny_llama, tmp_path):
        import gguf

        path = tmp_path / "tiny.gguf"
        write_gguf(tiny_llama, tiny_tokenizer(), path)
        # The file holds llama.cpp's order, not ours ...
        stored = {t.name: t for t in gguf.GGUFReader(path).tensors}
        q = hf_tensors_from_weights(tiny_llama)["model.layers.0.self_attn.q_proj.weight"]
        raw = np.asarray(stored["blk.0.attn_q.weight"].data).reshape(q.shape)
        assert not np.array_equal(raw, q)
        np.testing.assert_array_equal(raw, permute_qk(q, tiny_llama.config.n_heads))
        # ... and loading un-permutes it back exactly.
        weights, tok = load_gguf(path)
        assert_same_weights(weights, tiny_llama)
        assert tok.encode("What is the capital of France?") == \
            tiny_tokenizer().encode("What is the capital of France?")

    def test_qwen3_round_trip(self, tiny_qwen3, tmp_path):
        path = tmp_path / "tiny-qwen3.gguf"
        write_gguf(tiny_qwen3, tiny_tokenizer(), path)
        weights, _ = load_gguf(path)
        assert weights.config.qk_norm and weights.config.head_dim == 32
        assert_same_weights(weights, tiny_qwen3)

    def test_q8_0_blocks_dequantize(self, tiny_llama, tmp_path):
        path = tmp_path / "tiny-q8.gguf"
        write_gguf(tiny_llama, tiny_tokenizer(), path, quantize="Q8_0")
        weights, _ = load_gguf(path)
        # Q8_0: 8-bit steps of max|w|/127 per 32 values; weights ~N(0, 1/C) and
        # embeddings ~N(0, 1) stay within a few % of their largest value.
        assert_same_weights(weights, tiny_llama, atol=0.03, rtol=0)

    def test_not_a_gguf_file(self, tmp_path):
        path = tmp_path / "junk.gguf"
        path.write_bytes(b"GARBAGE" * 100)
        with pytest.raises(InputError, match="junk.gguf: not a readable GGUF file"):
            load_gguf(path)

    def test_truncated_file(self, tiny_llama, tmp_path):
        path = tmp_path / "cut.gguf"
        write_gguf(tiny_llama, tiny_tokenizer(), path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        with pytest.raises(InputError, match="cut.gguf"):
            load_gguf(path)


class TestHF:
    def test_round_trip(self, tiny_weights, tmp_path):
        write_hf(tiny_weights, tiny_tokenizer(), tmp_path)
        weights, tok = load_hf(tmp_path)
        assert_same_weights(weights, tiny_weights)
        assert tok.decode(tok.encode("orbit 42")) == "orbit 42"
        assert tok.chat.default_system == "You are a tiny test model."

    def test_without_tokenizer(self, tiny_llama, tmp_path):
        write_hf(tiny_llama, None, tmp_path)
        weights, tok = load_hf(tmp_path)
        assert tok is None and same_config(weights.config, tiny_llama.config)

    def test_bfloat16_is_widened_exactly(self, tiny_llama, tmp_path):
        write_hf(tiny_llama, None, tmp_path)
        tensors = hf_tensors_from_weights(tiny_llama)
        # Rewrite the checkpoint in bfloat16 (the top 16 bits of each float32).
        header, blobs, offset = {}, [], 0
        for name, array in tensors.items():
            blob = (array.astype(np.float32).view(np.uint32) >> 16).astype("<u2").tobytes()
            header[name] = {"dtype": "BF16", "shape": list(array.shape),
                            "data_offsets": [offset, offset + len(blob)]}
            blobs.append(blob)
            offset += len(blob)
        meta = json.dumps(header).encode()
        (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", len(meta)) + meta + b"".join(blobs))
        weights, _ = load_hf(tmp_path)
        for name, got in hf_tensors_from_weights(weights).items():
            truncated = (tensors[name].view(np.uint32) & 0xFFFF0000).view(np.float32)
            np.testing.assert_array_equal(got, truncated, err_msg=name)

    def test_generation_config_adds_eos_ids(self, tiny_qwen3, tmp_path):
        write_hf(tiny_qwen3, None, tmp_path)
        (tmp_path / "generation_config.json").write_text('{"eos_token_id": [2, 0]}')
        weights, _ = load_hf(tmp_path)
        assert weights.config.eos_token_ids == (2, 0)

    def test_unsupported_architecture(self, tiny_llama, tmp_path):
        write_hf(tiny_llama, None, tmp_path)
        config = json.loads((tmp_path / "config.json").read_text())
        config["architectures"] = ["MixtralForCausalLM"]
        (tmp_path / "config.json").write_text(json.dumps(config))
        with pytest.raises(InputError, match="unsupported architecture 'MixtralForCausalLM'"):
            load_hf(tmp_path)

    def test_missing_tensor(self, tiny_llama, tmp_path):
        from safetensors.numpy import save_file

        write_hf(tiny_llama, None, tmp_path)
        tensors = hf_tensors_from_weights(tiny_llama)
        del tensors["model.layers.1.mlp.up_proj.weight"]
        save_file(tensors, str(tmp_path / "model.safetensors"))
        with pytest.raises(InputError, match="missing tensor model.layers.1.mlp.up_proj.weight"):
            load_hf(tmp_path)

    def test_bias_is_refused(self, tiny_llama, tmp_path):
        from safetensors.numpy import save_file

        write_hf(tiny_llama, None, tmp_path)
        tensors = hf_tensors_from_weights(tiny_llama)
        tensors["model.layers.0.self_attn.q_proj.bias"] = np.zeros(96, np.float32)
        save_file(tensors, str(tmp_path / "model.safetensors"))
        with pytest.raises(InputError, match="unexpected tensor model.layers.0.self_attn.q_proj.bias"):
            load_hf(tmp_path)

    def test_corrupt_safetensors(self, tiny_llama, tmp_path):
        write_hf(tiny_llama, None, tmp_path)
        (tmp_path / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
        with pytest.raises(InputError, match="not a readable safetensors file"):
            load_hf(tmp_path)


def test_load_model_dispatches_on_the_path(tiny_llama, tmp_path):
    write_gguf(tiny_llama, tiny_tokenizer(), tmp_path / "m.gguf")
    write_hf(tiny_llama, tiny_tokenizer(), tmp_path / "hf")
    for path in (tmp_path / "m.gguf", tmp_path / "hf"):
        loaded = load_model(path)
        assert same_config(loaded.weights.config, tiny_llama.config) and loaded.tokenizer
    with pytest.raises(InputError, match="no such file or directory"):
        load_model(tmp_path / "nothing")
