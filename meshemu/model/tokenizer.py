"""Text to token ids and back, with the `tokenizers` library, and ChatML prompts.

A GGUF file carries a GPT-2 style byte-level BPE vocabulary (tokens, merges,
token types, a pre-tokenizer name); :func:`tokenizer_from_gguf_vocab` rebuilds
the Hugging Face tokenizer from them. A Hugging Face checkpoint directory has
``tokenizer.json``, read as is by :func:`tokenizer_from_hf_dir`.

Chat prompts: the checkpoints carry a Jinja chat template, but jinja2 is not a
dependency here. :class:`ChatML` renders the ``<|im_start|>role\\n...<|im_end|>``
format used by SmolLM2 and Qwen after recognising it in the template, including
a default system prompt the template inserts (SmolLM2 does); other template
families are refused with a message suggesting ``--no-chat-template``.

>>> ChatML(default_system="Be brief.").render("Hi")
'<|im_start|>system\\nBe brief.<|im_end|>\\n<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n'
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from meshemu.errors import InputError

# GGUF token types (llama.cpp's llama_token_type).
TOKEN_NORMAL, TOKEN_CONTROL, TOKEN_USER_DEFINED = 1, 3, 4

# Split patterns of the pre-tokenizers llama.cpp names in ``tokenizer.ggml.pre``.
_LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                   r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
                  r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# Tokens that end a turn or a document in the vocabularies we know.
_STOP_TOKENS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>")


def _pre_tokenizer(pre: str):
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in ("smollm", "starcoder", "refact"):
        # Every digit on its own, then GPT-2 splitting (the HF SmolLM2 tokenizer.json).
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    if pre in ("gpt2", "default"):
        return byte_level
    patterns = {"llama-bpe": _LLAMA3_PATTERN, "qwen2": _QWEN2_PATTERN}
    if pre in patterns:
        return pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(patterns[pre]), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    raise InputError(f"unsupported pre-tokenizer {pre!r} "
                     "(supported: smollm, starcoder, refact, gpt2, default, llama-bpe, qwen2)",
                     field="tokenizer.ggml.pre")


@dataclass(frozen=True)
class ChatML:
    """The ChatML prompt format; ``default_system`` is added when no system prompt is given."""

    default_system: str | None = None

    def render(self, user: str, *, system: str | None = None) -> str:
        """One user turn followed by the assistant's opening, ready for generation."""
        system = self.default_system if system is None else system
        text = f"<|im_start|>system\n{system}<|im_end|>\n" if system else ""
        return text + f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"


def chat_format(template: str | None) -> ChatML | None:
    """Recognise the format a Jinja chat template renders; ``None`` when there is no template.

    >>> chat_format("{{'<|im_start|>system\\nYou are kind<|im_end|>\\n'}}...<|im_start|>...")
    ChatML(default_system='You are kind')
    """
    if template is None:
        return None
    if "<|im_start|>" in template:
        # A quoted literal system turn is the default system prompt (SmolLM2,
        # Qwen2.5); its newline may be written raw or escaped as \n.
        found = re.search(r"'<\|im_start\|>system(?:\n|\\n)([^'<]+)<\|im_end\|>", template)
        return ChatML(found.group(1).replace("\\n", "\n") if found else None)
    raise InputError("the model's chat template is not ChatML, the only format rendered here; "
                     "pass --no-chat-template and write the prompt in the model's format")


@dataclass(frozen=True, eq=False)
class TextTokenizer:
    """A `tokenizers` tokenizer with the model's special ids and chat format.

    ``encode`` adds a BOS token exactly when the checkpoint asks for it (its
    post-processor does); SmolLM2 does not.
    """

    backend: Tokenizer
    bos_token_id: int | None
    eos_token_ids: tuple[int, ...]
    chat_template: str | None

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``; special tokens written in the text are recognised."""
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids, *, skip_special_tokens: bool = True) -> str:
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    @property
    def chat(self) -> ChatML | None:
        """The chat format, or ``None`` when the checkpoint has no template."""
        return chat_format(self.chat_template)

    def encode_chat(self, user: str, *, system: str | None = None) -> list[int]:
        """Ids of a one-turn chat prompt (the template supplies every special token)."""
        chat = self.chat
        if chat is None:
            raise InputError("the model has no chat template; pass --no-chat-template")
        return self.encode(chat.render(user, system=system), add_special_tokens=False)

    def stop_ids(self) -> frozenset[int]:
        """Tokens that end generation: the checkpoint's EOS ids and the usual end-of-turn tokens."""
        ids = set(self.eos_token_ids)
        ids.update(i for i in map(self.token_to_id, _STOP_TOKENS) if i is not None)
        return frozenset(ids)


def tokenizer_from_gguf_vocab(tokens, token_types, merges, *, model: str, pre: str,
                              bos_token_id=None, eos_token_id=None, add_bos: bool = False,
                              chat_template: str | None = None) -> TextTokenizer:
    """Build the tokenizer a GGUF file describes.

    Parameters
    ----------
    tokens : list of str
        ``tokenizer.ggml.tokens`` (byte-level strings such as ``"Ġthe"``).
    token_types : list of int
        ``tokenizer.ggml.token_type``: 3 marks control (special) tokens.
    merges : list of str
        ``tokenizer.ggml.merges``, each ``"left right"``.
    model, pre : str
        ``tokenizer.ggml.model`` (must be ``"gpt2"``) and ``tokenizer.ggml.pre``.
    bos_token_id, eos_token_id : int, optional
    add_bos : bool
        ``tokenizer.ggml.add_bos_token``: prepend BOS when encoding plain text.
    chat_template : str, optional
    """
    if model != "gpt2":
        raise InputError(f"unsupported tokenizer model {model!r} (supported: gpt2 byte-level BPE)",
                         field="tokenizer.ggml.model")
    vocab = {token: i for i, token in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise InputError("the vocabulary repeats tokens", field="tokenizer.ggml.tokens")
    pairs = []
    for merge in merges:
        left, sep, right = merge.partition(" ")
        if not sep:
            raise InputError(f"merge {merge!r} is not two tokens", field="tokenizer.ggml.merges")
        pairs.append((left, right))
    backend = Tokenizer(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False, byte_fallback=False))
    if pre == "qwen2":
        backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = _pre_tokenizer(pre)
    backend.decoder = decoders.ByteLevel()
    added = [AddedToken(t, special=kind == TOKEN_CONTROL, normalized=False)
             for t, kind in zip(tokens, token_types) if kind in (TOKEN_CONTROL, TOKEN_USER_DEFINED)]
    backend.add_tokens(added)  # keeps their ids: they are already in the vocabulary
    if add_bos and bos_token_id is not None:
        bos = tokens[bos_token_id]
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_token_id)])
    eos = () if eos_token_id is None else (int(eos_token_id),)
    return TextTokenizer(backend, bos_token_id, eos, chat_template)


def _special_id(backend: Tokenizer, value) -> int | None:
    # tokenizer_config.json names tokens as strings or {"content": ...} objects.
    if isinstance(value, dict):
        value = value.get("content")
    return backend.token_to_id(value) if isinstance(value, str) else None


def tokenizer_from_hf_dir(directory, *, bos_token_id=None, eos_token_ids=()) -> TextTokenizer:
    """Read ``tokenizer.json`` (and the chat template) from a Hugging Face checkpoint directory.

    Raises
    ------
    InputError
        When ``tokenizer.json`` is missing or unreadable.
    """
    directory = Path(directory)
    path = directory / "tokenizer.json"
    if not path.is_file():
        raise InputError("no tokenizer.json (the model's tokenizer is needed for text)", file=directory)
    try:
        backend = Tokenizer.from_file(str(path))
    except Exception as err:  # the Rust library raises a bare Exception
        raise InputError(f"cannot read tokenizer: {str(err).splitlines()[0]}", file=path) from None
    config, template = {}, None
    config_path = directory / "tokenizer_config.json"
    if config_path.is_file():
        try:
            config = json.loads(config_path.read_text())
        except (OSError, ValueError) as err:
            raise InputError(f"not valid JSON: {err}", file=config_path) from None
        template = config.get("chat_template")
        if isinstance(template, list):  # named templates: take the default one
            template = next((t["template"] for t in template if t.get("name") == "default"), None)
    jinja_path = directory / "chat_template.jinja"
    if template is None and jinja_path.is_file():
        template = jinja_path.read_text()
    bos = _special_id(backend, config.get("bos_token"))
    bos = bos_token_id if bos is None else bos
    eos = list(eos_token_ids)
    extra = _special_id(backend, config.get("eos_token"))
    if extra is not None and extra not in eos:
        eos.append(extra)
    return TextTokenizer(backend, bos, tuple(eos), template)
