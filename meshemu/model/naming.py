"""The name a person reads for a checkpoint: ``SmolLM2-135M-Instruct (Q4_1)``.

A GGUF file's ``general.name`` is often munged by the converter (SmolLM2's is
``Smollm2 135M 8k Lc100K Mix1 Ep2``), while its file name is the uploader's
own spelling. So the metadata decides whether the file name names the model
(``general.basename`` appears in it) and the file name supplies the spelling;
otherwise the name is built from the metadata, and the file stem is the last
resort. The number format (the weights' quantization or dtype) goes in
parentheses, since it changes what the model answers.

>>> gguf_model_name(stem="SmolLM2-135M-Instruct.Q4_1", name="Smollm2 135M 8k Lc100K Mix1 Ep2",
...                 basename="smollm2", size_label="135M", quantization="Q4_1")
'SmolLM2-135M-Instruct (Q4_1)'
>>> gguf_model_name(stem="ggml-model-f16", basename="llama-3", size_label="8B", finetune="Instruct",
...                 quantization="F16")
'llama-3-8B-Instruct (F16)'
>>> hf_model_name("HuggingFaceTB/SmolLM2-135M-Instruct", "main", dtype="bfloat16")
'SmolLM2-135M-Instruct (BF16)'
"""

from __future__ import annotations

import re
from pathlib import Path

# A trailing number-format label in a file name: ".Q4_1", "-q4_k_m", "_IQ3_XS", "-f16", "-BF16".
_FORMAT_SUFFIX = re.compile(r"[.\-_ ]+(?:I?Q\d\w*|B?F(?:P)?(?:16|32)|TQ\d\w*)$", re.IGNORECASE)
# torch_dtype in config.json -> the label GGUF uses for the same format.
_HF_DTYPES = {"bfloat16": "BF16", "float16": "F16", "float32": "F32", "float64": "F64"}


def _letters(text: str) -> str:
    return re.sub(r"[^0-9a-z]", "", text.lower())


def labelled(model: str, number_format: str | None) -> str:
    """``model (FORMAT)``, or ``model`` alone when the format is unknown.

    >>> labelled("tiny-llama", "F32"), labelled("tiny-llama", None)
    ('tiny-llama (F32)', 'tiny-llama')
    """
    return f"{model} ({number_format})" if number_format else model


def gguf_model_name(*, stem: str = "", name: str = "", basename: str = "", size_label: str = "",
                    finetune: str = "", quantization: str | None = None) -> str:
    """The readable name of a GGUF checkpoint from its file stem and ``general.*`` metadata.

    Parameters
    ----------
    stem : str
        The file name without ``.gguf``.
    name, basename, size_label, finetune : str
        ``general.name``, ``general.basename``, ``general.size_label``, ``general.finetune``.
    quantization : str, optional
        The file's number format, e.g. ``Q4_1`` (see :func:`meshemu.model.gguf.quantization`).
    """
    model = _FORMAT_SUFFIX.sub("", stem)
    if not (basename and _letters(basename) in _letters(model)):
        parts = [basename, size_label, finetune] if basename else []
        model = name or "-".join(p for p in parts if p) or model
    return labelled(model or "unnamed", quantization)


def hf_model_name(name_or_path: str, directory_name: str, *, dtype: str | None = None) -> str:
    """The readable name of a Hugging Face checkpoint.

    ``_name_or_path`` from ``config.json`` (its last component: a hub id's model
    part, or the folder it was saved from) wins over the directory's name, which
    in a hub cache is a commit hash.

    >>> hf_model_name("", "my-llama", dtype=None)
    'my-llama'
    """
    model = name_or_path.rstrip("/").rsplit("/", 1)[-1] or directory_name
    return labelled(model, _HF_DTYPES.get(str(dtype)))


def folder_model_name(directory) -> str:
    """The model a checkpoint folder holds, by its name; in a hub cache, the repository's name.

    >>> folder_model_name("hub/models--HuggingFaceTB--SmolLM2-135M/snapshots/12ab34cd")
    'SmolLM2-135M'
    >>> folder_model_name("checkpoints/my-llama")
    'my-llama'
    """
    directory = Path(directory)
    if directory.parent.name == "snapshots" and directory.parent.parent.name.startswith("models--"):
        return directory.parent.parent.name.rsplit("--", 1)[-1]
    return directory.name
