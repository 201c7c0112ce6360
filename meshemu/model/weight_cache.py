"""An on-disk cache of dequantized GGUF checkpoints, so that a shard starts in well under a second.

Parsing and dequantizing SmolLM2's GGUF file takes seconds in every shard
process of every run. The first load writes exactly what
:func:`~meshemu.model.gguf.load_gguf` returns (float32 arrays in the forward
pass's layout, the configuration and the tokenizer) into one safetensors file
named by the SHA-256 of the GGUF file's bytes; later loads memory-map it.

Where: ``$MESHEMU_CACHE/weights``, else ``$XDG_CACHE_HOME/meshemu/weights``, else
``~/.cache/meshemu/weights``; ``MESHEMU_CACHE=off`` turns the cache off.

Shards start together, so one process builds an entry under an ``flock`` while
the others wait and then read it; the entry appears by ``os.replace`` of a
finished temporary file, never half-written. An entry is trusted only when its
header names the same source hash and loader code, and every tensor the
configuration implies is there with its shape and byte size; anything else is
rebuilt. A cache that cannot be written (read-only, full) costs one warning
line and the uncached load, never the load itself.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import mmap
import os
import struct
import sys
import tempfile
import time
from functools import lru_cache
from pathlib import Path

import numpy as np

from meshemu.model.config import ModelConfig
from meshemu.model.gguf import load_gguf, read_gguf
from meshemu.model.naming import gguf_model_name
from meshemu.model.tokenizer import TextTokenizer
from meshemu.model.weights import LayerWeights, ModelWeights, full_spec

ENV = "MESHEMU_CACHE"
OFF_VALUES = ("off", "0", "no", "false", "none")
LOCK_WAIT_S = 600.0  # a builder takes seconds; past this it is stuck, and we load without it
_POLL_S = 0.05
# The modules whose code decides the entry's contents: an edit to any of them invalidates entries.
_LOADER_MODULES = ("config", "gguf", "naming", "tokenizer", "weights", "weight_cache")
_warned = False


def cache_folder() -> Path | None:
    """The folder of weight entries, or ``None`` when ``MESHEMU_CACHE`` turns the cache off."""
    root = os.environ.get(ENV, "")
    if root.strip().lower() in OFF_VALUES:
        return None
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME", "")
        root = Path(xdg) / "meshemu" if xdg else Path.home() / ".cache" / "meshemu"
    return Path(root) / "weights"


def _warn(message: str) -> None:
    global _warned
    if not _warned:  # one line per process: every load of a run would say the same
        print(f"meshemu: weight cache not used: {message}", file=sys.stderr)
        _warned = True


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def source_digest(path: Path, folder: Path) -> str:
    """SHA-256 of ``path``'s bytes, remembered by (device, inode, size, mtime) to skip rehashing."""
    st = path.stat()
    memo = folder / "sources" / f"{st.st_dev}-{st.st_ino}-{st.st_size}-{st.st_mtime_ns}"
    try:
        known = memo.read_text().strip()
        if len(known) == 64 and all(c in "0123456789abcdef" for c in known):
            return known
    except OSError:
        pass
    digest = _sha256(path)
    try:  # best effort: a memo that cannot be written only costs a rehash next time
        memo.parent.mkdir(parents=True, exist_ok=True)
        _replace_with(memo, lambda tmp: Path(tmp).write_text(digest))
    except OSError:
        pass
    return digest


@lru_cache(maxsize=1)
def _loader_fingerprint() -> str:
    from importlib import import_module
    from importlib.metadata import version

    digest = hashlib.sha256()
    for name in _LOADER_MODULES:
        digest.update(Path(import_module(f"meshemu.model.{name}").__file__).read_bytes())
    for package in ("gguf", "tokenizers"):  # dequantization and tokenizer serialisation
        digest.update(f"{package}={version(package)}".encode())
    return digest.hexdigest()


def _layout(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Entry tensor name -> shape: the arrays of a whole model's :class:`ModelWeights`."""
    c, f, hd = config.hidden_size, config.ffn_size, config.head_dim
    block = {"attn_norm": (c,), "wqkv": (c, config.q_width + 2 * config.kv_width), "wo": (config.q_width, c),
             "mlp_norm": (c,), "w_gate_up": (c, 2 * f), "w_down": (f, c)}
    if config.qk_norm:
        block |= {"q_norm": (hd,), "k_norm": (hd,)}
    shapes = {"embedding": (config.vocab_size, c), "final_norm": (c,)}
    if not config.tie_embeddings:  # tied: the head is the embedding's transposed view
        shapes["lm_head"] = (c, config.vocab_size)
    for i in range(config.n_layers):
        shapes |= {f"layers.{i}.{field}": shape for field, shape in block.items()}
    return shapes


def _arrays(weights: ModelWeights) -> dict[str, np.ndarray]:
    out = {"embedding": weights.embedding, "final_norm": weights.final_norm}
    if not weights.config.tie_embeddings:
        out["lm_head"] = weights.lm_head
    for i, layer in enumerate(weights.layers):
        out |= {f"layers.{i}.{k}": v for k, v in vars(layer).items() if v is not None}
    return out


def _weights(config: ModelConfig, arrays: dict[str, np.ndarray]) -> ModelWeights:
    fields = [f.name for f in dataclasses.fields(LayerWeights)]
    layers = tuple(LayerWeights(**{k: arrays.get(f"layers.{i}.{k}") for k in fields})
                   for i in range(config.n_layers))
    embedding = arrays["embedding"]
    lm_head = embedding.T if config.tie_embeddings else arrays["lm_head"]
    return ModelWeights(config, full_spec(config), layers, embedding, arrays["final_norm"], lm_head)


def _replace_with(target: Path, write) -> None:
    """Write through ``write(temporary path)`` in ``target``'s folder, then rename over ``target``."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f"{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        # after writing: not mkstemp's 0600 (nor that of a writer that makes the file anew, as safetensors
        # does), since a shard run as another user reads the entry too
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)  # atomic: readers see the old entry or the whole new one
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_entry(entry: Path, digest: str, weights: ModelWeights, tokenizer: TextTokenizer,
                name_fields: dict) -> None:
    """Store what :func:`~meshemu.model.gguf.read_gguf` returned as the entry of the GGUF file whose
    SHA-256 is ``digest``."""
    from safetensors import SafetensorError
    from safetensors.numpy import save_file

    bos = tokenizer.bos_token_id
    meta = {"source_sha256": digest, "loader": _loader_fingerprint(),
            "config": json.dumps(weights.config.to_dict()), "name_fields": json.dumps(name_fields),
            "tokenizer": json.dumps({"backend": tokenizer.backend.to_str(),
                                     "bos_token_id": None if bos is None else int(bos),
                                     "eos_token_ids": [int(i) for i in tokenizer.eos_token_ids],
                                     "chat_template": tokenizer.chat_template})}
    try:
        _replace_with(entry, lambda tmp: save_file(_arrays(weights), tmp, metadata=meta))
    except SafetensorError as err:  # the Rust writer reports a full disk this way
        raise OSError(str(err)) from None


def read_entry(entry: Path, digest: str, stem: str) -> tuple[ModelWeights, TextTokenizer] | None:
    """The weights and tokenizer of a valid entry (memory-mapped, copy-on-write), else ``None``.

    ``stem`` is the GGUF file's name without ``.gguf``: the model is named as
    this file, whichever copy of the bytes built the entry.
    """
    from tokenizers import Tokenizer

    try:
        with open(entry, "rb") as f:
            size_B = os.fstat(f.fileno()).st_size
            (header_B,) = struct.unpack("<Q", f.read(8))
            if header_B > size_B - 8:
                return None
            header = json.loads(f.read(header_B))
            meta = header.pop("__metadata__")
            if meta["source_sha256"] != digest or meta["loader"] != _loader_fingerprint():
                return None  # another file's, or written by other loader code
            name = gguf_model_name(stem=stem, **json.loads(meta["name_fields"]))
            config = dataclasses.replace(ModelConfig(**json.loads(meta["config"])), name=name)
            shapes = _layout(config)
            data_start, data_stop = 8 + header_B, 8 + header_B
            for name, shape in shapes.items():
                start, stop = header[name]["data_offsets"]
                if (header[name]["dtype"] != "F32" or tuple(header[name]["shape"]) != shape
                        or stop - start != 4 * int(np.prod(shape)) or start % 4):
                    return None
                data_stop = max(data_stop, data_start + stop)
            if set(header) != set(shapes) or data_stop != size_B:
                return None  # truncated, padded or holding tensors we would not use
            # ACCESS_COPY: pages are shared between processes until one writes.
            buffer = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        arrays = {name: np.frombuffer(buffer, "<f4", int(np.prod(shape)),  # safetensors is little-endian
                                      data_start + header[name]["data_offsets"][0]).reshape(shape)
                  for name, shape in shapes.items()}
        tok = json.loads(meta["tokenizer"])
        tokenizer = TextTokenizer(Tokenizer.from_str(tok["backend"]), tok["bos_token_id"],
                                  tuple(tok["eos_token_ids"]), tok["chat_template"])
    except Exception:  # noqa: BLE001 - missing, or any damage (bad JSON, keys, Rust errors): rebuild
        return None
    return _weights(config, arrays), tokenizer


def _lock(f) -> bool:
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() > deadline:
                return False
            time.sleep(_POLL_S)


def load_gguf_cached(path) -> tuple[ModelWeights, TextTokenizer, str]:
    """:func:`~meshemu.model.gguf.load_gguf` through the cache.

    Returns
    -------
    weights, tokenizer
        Bit for bit what ``load_gguf(path)`` returns.
    how : str
        ``"hit"`` (read from the cache), ``"built"`` (this call wrote the
        entry) or ``"off"`` (the cache is off or unusable: loaded directly).

    Raises
    ------
    InputError
        As :func:`~meshemu.model.gguf.load_gguf`.
    """
    path = Path(path)
    folder = cache_folder()
    try:
        digest = None if folder is None else source_digest(path, folder)
    except OSError:
        digest = None
    if digest is None:  # off, or a missing or unreadable file, which load_gguf names
        return (*load_gguf(path), "off")
    entry = folder / f"{digest}.safetensors"
    if (found := read_entry(entry, digest, path.stem)) is not None:
        return (*found, "hit")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = open(folder / f"{digest}.lock", "a")
    except OSError as err:
        _warn(f"cannot write {folder} ({err.strerror or err})")
        return (*load_gguf(path), "off")
    with lock:
        if not _lock(lock):
            _warn(f"{lock.name} held for over {LOCK_WAIT_S:.0f} s")
            return (*load_gguf(path), "off")
        if (found := read_entry(entry, digest, path.stem)) is not None:  # built while we waited
            return (*found, "hit")
        for stale in folder.glob(f"{entry.name}.*.tmp"):  # left by a builder that died; we hold the lock
            stale.unlink(missing_ok=True)
        weights, tokenizer, name_fields = read_gguf(path)
        try:
            write_entry(entry, digest, weights, tokenizer, name_fields)
        except OSError as err:
            _warn(f"cannot write {entry} ({err.strerror or err})")
            return weights, tokenizer, "off"
    # Serve from the file, like every other process: the pages are shared and this copy is freed.
    found = read_entry(entry, digest, path.stem)
    return (*found, "built") if found else (weights, tokenizer, "built")
