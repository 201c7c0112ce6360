"""The weight cache: bit-identical to dequantizing, built once by concurrent shards, never trusted blindly."""

import errno
import hashlib
import multiprocessing
import shutil
import time

import numpy as np
import pytest

from meshemu.model import load_model, weight_cache
from meshemu.model.gguf import load_gguf
from meshemu.model.tiny import random_weights, tiny_config, tiny_tokenizer, write_gguf
from meshemu.model.transformer import Transformer


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A cache of this test's own; returns its folder of entries."""
    monkeypatch.setenv("MESHEMU_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(weight_cache, "_warned", False)
    return tmp_path / "cache" / "weights"


@pytest.fixture
def gguf_path(tiny_llama, tmp_path):
    path = tmp_path / "tiny.gguf"
    write_gguf(tiny_llama, tiny_tokenizer(), path)
    return path


def entry_of(folder, path):
    return folder / f"{hashlib.sha256(path.read_bytes()).hexdigest()}.safetensors"


def assert_identical(got, want):
    """Same configuration, tokenizer and every array bit for bit (dtype, shape, bytes)."""
    (weights, tok), (want_weights, want_tok) = got, want
    assert weights.config == want_weights.config and weights.spec == want_weights.spec
    a, b = weight_cache._arrays(weights), weight_cache._arrays(want_weights)
    assert a.keys() == b.keys()
    for name in a:
        assert (a[name].dtype, a[name].shape) == (b[name].dtype, b[name].shape), name
        assert a[name].tobytes() == b[name].tobytes(), name
    assert weights.lm_head.tobytes() == want_weights.lm_head.tobytes()
    assert tok.backend.to_str() == want_tok.backend.to_str()
    assert (tok.bos_token_id, tok.eos_token_ids, tok.chat_template) == \
        (want_tok.bos_token_id, want_tok.eos_token_ids, want_tok.chat_template)


class TestHit:
    @pytest.mark.parametrize("arch, quantize", [("llama", None), ("llama", "Q8_0"), ("qwen3", None)])
    def test_second_load_reads_the_entry_bit_for_bit(self, cache, tmp_path, arch, quantize):
        weights = random_weights(tiny_config(arch), seed=3)
        path = tmp_path / "m.gguf"
        write_gguf(weights, tiny_tokenizer(), path, quantize=quantize)
        want = load_gguf(path)
        *first, how_first = weight_cache.load_gguf_cached(path)
        *second, how_second = weight_cache.load_gguf_cached(path)
        assert (how_first, how_second) == ("built", "hit")
        assert entry_of(cache, path).is_file()
        assert_identical(first, want)
        assert_identical(second, want)
        if weights.config.tie_embeddings:  # the head stays a view: the matrix is mapped once
            assert np.shares_memory(second[0].lm_head, second[0].embedding)

    def test_cached_weights_compute_the_same_logits(self, cache, gguf_path):
        tokens = np.array([[5, 17, 42, 7]])
        want = Transformer(load_gguf(gguf_path)[0])
        weight_cache.load_gguf_cached(gguf_path)
        got = Transformer(weight_cache.load_gguf_cached(gguf_path)[0])
        np.testing.assert_array_equal(got.forward(tokens, got.new_cache(1, 8)),
                                      want.forward(tokens, want.new_cache(1, 8)))

    def test_load_model_says_how_it_loaded(self, cache, gguf_path):
        assert [load_model(gguf_path).cache for _ in range(2)] == ["built", "hit"]

    def test_source_hash_is_remembered_until_the_file_changes(self, cache, gguf_path, monkeypatch, tiny_qwen3):
        weight_cache.load_gguf_cached(gguf_path)
        with monkeypatch.context() as patch:
            patch.setattr(weight_cache, "_sha256", lambda path: pytest.fail("rehashed an unchanged file"))
            assert weight_cache.load_gguf_cached(gguf_path)[2] == "hit"
        write_gguf(tiny_qwen3, tiny_tokenizer(), gguf_path)  # new bytes, same path
        weights, _, how = weight_cache.load_gguf_cached(gguf_path)
        assert how == "built" and weights.config.arch == "qwen3"

    def test_a_copy_is_named_as_its_own_file(self, cache, tiny_llama, tmp_path):
        path = tmp_path / "Tiny-1K-Chat.Q8_0.gguf"
        write_gguf(tiny_llama, tiny_tokenizer(), path, general={"basename": "tiny"})
        copy = tmp_path / "renamed.gguf"
        shutil.copy(path, copy)
        assert weight_cache.load_gguf_cached(path)[0].config.name == "Tiny-1K-Chat (F32)"
        weights, _, how = weight_cache.load_gguf_cached(copy)
        assert how == "hit" and weights.config == load_gguf(copy)[0].config
        assert weights.config.name == "tiny-llama (F32)"   # general.name: the stem lacks the basename


def _load_at_once(barrier, results, path):
    barrier.wait()
    results.put(weight_cache.load_gguf_cached(path)[2])


def test_concurrent_processes_build_the_entry_once(cache, gguf_path, monkeypatch):
    real = weight_cache.read_gguf

    def slow_read(path):  # long enough that the others are surely waiting on the lock
        time.sleep(0.5)
        return real(path)

    monkeypatch.setattr(weight_cache, "read_gguf", slow_read)
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")  # quiet its fork warning
    ctx = multiprocessing.get_context("fork")  # the children inherit the slow reader
    barrier, results = ctx.Barrier(3), ctx.Queue()
    procs = [ctx.Process(target=_load_at_once, args=(barrier, results, gguf_path)) for _ in range(3)]
    for p in procs:
        p.start()
    hows = sorted(results.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(timeout=10)
    assert hows == ["built", "hit", "hit"]
    assert [p.name for p in cache.iterdir() if p.suffix == ".tmp"] == []
    assert_identical(weight_cache.load_gguf_cached(gguf_path)[:2], load_gguf(gguf_path))


class TestDamage:
    @pytest.mark.parametrize("damage", [
        lambda data: data[:-100],                                  # truncated
        lambda data: data + b"\0" * 8,                             # padded
        lambda data: b"\x10" + b"\0" * 7 + b"{not json" + data[17:],  # garbled header
        lambda data: data[:8] + data[8:].replace(b'"F32"', b'"F16"', 1),  # a tensor of another type
        lambda data: b"",                                          # empty (a crash before the rename)
    ], ids=["truncated", "padded", "garbled", "dtype", "empty"])
    def test_a_damaged_entry_is_rebuilt(self, cache, gguf_path, damage):
        weight_cache.load_gguf_cached(gguf_path)
        entry = entry_of(cache, gguf_path)
        entry.write_bytes(damage(entry.read_bytes()))
        *got, how = weight_cache.load_gguf_cached(gguf_path)
        assert how == "built"
        assert_identical(got, load_gguf(gguf_path))
        assert weight_cache.load_gguf_cached(gguf_path)[2] == "hit"

    def test_another_files_entry_is_not_trusted(self, cache, gguf_path, tiny_qwen3, tmp_path):
        other = tmp_path / "other.gguf"
        write_gguf(tiny_qwen3, tiny_tokenizer(), other)
        weight_cache.load_gguf_cached(other)
        cache.mkdir(parents=True, exist_ok=True)
        shutil.copy(entry_of(cache, other), entry_of(cache, gguf_path))  # a foreign entry under our name
        *got, how = weight_cache.load_gguf_cached(gguf_path)
        assert how == "built" and got[0].config.arch == "llama"
        assert_identical(got, load_gguf(gguf_path))

    def test_entries_of_other_loader_code_are_rebuilt(self, cache, gguf_path, monkeypatch):
        weight_cache.load_gguf_cached(gguf_path)
        monkeypatch.setattr(weight_cache, "_loader_fingerprint", lambda: "edited gguf.py")
        assert weight_cache.load_gguf_cached(gguf_path)[2] == "built"


class TestFallback:
    def test_off_reads_the_file_and_writes_nothing(self, gguf_path, tmp_path, monkeypatch):
        monkeypatch.setenv("MESHEMU_CACHE", "off")
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
        monkeypatch.setenv("HOME", str(tmp_path / "home"))
        *got, how = weight_cache.load_gguf_cached(gguf_path)
        assert how == "off" and weight_cache.cache_folder() is None
        assert_identical(got, load_gguf(gguf_path))
        assert not (tmp_path / "xdg").exists() and not (tmp_path / "home").exists()

    def test_default_location_follows_xdg(self, tmp_path, monkeypatch):
        monkeypatch.delenv("MESHEMU_CACHE")
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
        assert weight_cache.cache_folder() == tmp_path / "meshemu" / "weights"
        monkeypatch.delenv("XDG_CACHE_HOME")
        monkeypatch.setenv("HOME", str(tmp_path))
        assert weight_cache.cache_folder() == tmp_path / ".cache" / "meshemu" / "weights"

    def test_an_unwritable_folder_costs_one_warning(self, gguf_path, tmp_path, monkeypatch, capsys):
        # Root writes anywhere, so "unwritable" is a folder that cannot be made: below a file.
        (tmp_path / "a-file").write_text("")
        monkeypatch.setenv("MESHEMU_CACHE", str(tmp_path / "a-file" / "cache"))
        monkeypatch.setattr(weight_cache, "_warned", False)
        hows = [weight_cache.load_gguf_cached(gguf_path)[2] for _ in range(2)]
        assert hows == ["off", "off"]
        lines = capsys.readouterr().err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("meshemu: weight cache not used: cannot write")
        assert_identical(weight_cache.load_gguf_cached(gguf_path)[:2], load_gguf(gguf_path))

    @pytest.mark.parametrize("rust", [False, True], ids=["OSError", "SafetensorError"])
    def test_a_full_disk_leaves_no_partial_entry(self, cache, gguf_path, monkeypatch, capsys, rust):
        import safetensors.numpy
        from safetensors import SafetensorError

        def full(*args, **kwargs):  # what safetensors raises on a full tmpfs, or Python's own
            if rust:
                raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(safetensors.numpy, "save_file", full)
        *got, how = weight_cache.load_gguf_cached(gguf_path)
        assert how == "off"
        assert_identical(got, load_gguf(gguf_path))
        assert "No space left on device" in capsys.readouterr().err
        assert sorted(p.suffix for p in cache.iterdir() if p.is_file()) == [".lock"]


@pytest.mark.slow
def test_smollm2_through_the_cache_is_bit_identical(smollm2):
    """Q4_1 and Q8_0 blocks, permuted Q/K rows: the real file, cached and not."""
    assert smollm2.cache in ("built", "hit")
    assert_identical((smollm2.weights, smollm2.tokenizer), load_gguf(smollm2.path))
