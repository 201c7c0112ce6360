"""Tokenizers rebuilt from GGUF vocabularies, Hugging Face ones, and ChatML rendering."""

import json

import pytest

from meshemu.errors import InputError
from meshemu.model.tiny import CHAT_TEMPLATE, tiny_tokenizer
from meshemu.model.tokenizer import ChatML, chat_format, tokenizer_from_gguf_vocab

TEXTS = [
    "What is the capital of France?",
    "  leading spaces, trailing\ttab\n and newlines\n\n",
    "digits 0123456789 and 3.14159",
    "unicode: héllo wörld, 日本語, emoji 🛰️",
    "",
]


def rebuilt_from_vocab(tok):
    """The tiny tokenizer rebuilt the way the GGUF loader does, from tokens and merges."""
    model = json.loads(tok.backend.to_str())["model"]
    tokens = sorted(model["vocab"], key=model["vocab"].get)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    types = [3 if t.startswith("<|") else 1 for t in tokens]
    return tokenizer_from_gguf_vocab(tokens, types, merges, model="gpt2", pre="smollm",
                                     bos_token_id=1, eos_token_id=2, chat_template=CHAT_TEMPLATE)


class TestTiny:
    @pytest.mark.parametrize("text", TEXTS)
    def test_round_trip(self, text):
        tok = tiny_tokenizer()
        assert tok.decode(tok.encode(text)) == text

    @pytest.mark.parametrize("text", TEXTS)
    def test_gguf_rebuild_encodes_like_the_original(self, text):
        assert rebuilt_from_vocab(tiny_tokenizer()).encode(text) == tiny_tokenizer().encode(text)

    def test_special_tokens_are_single_ids_and_skipped_on_decode(self):
        tok = rebuilt_from_vocab(tiny_tokenizer())
        ids = tok.encode("<|im_start|>user\nhi<|im_end|>")
        assert ids[0] == 1 and ids[-1] == 2
        assert tok.decode(ids) == "user\nhi"
        assert tok.stop_ids() == {0, 2}

    def test_bos_only_when_the_file_asks(self):
        tok = tiny_tokenizer()
        model = json.loads(tok.backend.to_str())["model"]
        tokens = sorted(model["vocab"], key=model["vocab"].get)
        merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
        with_bos = tokenizer_from_gguf_vocab(tokens, [1] * len(tokens), merges, model="gpt2",
                                             pre="smollm", bos_token_id=1, add_bos=True)
        assert with_bos.encode("hi")[0] == 1 and tok.encode("hi")[0] != 1

    def test_unsupported_tokenizer_model(self):
        with pytest.raises(InputError, match="unsupported tokenizer model 'llama'"):
            tokenizer_from_gguf_vocab(["a"], [1], [], model="llama", pre="default")


class TestChat:
    def test_smollm2_default_system_prompt_is_found(self):
        assert chat_format(CHAT_TEMPLATE) == ChatML("You are a tiny test model.")

    def test_template_without_default_system(self):
        qwen_like = ("{%- for message in messages %}{{- '<|im_start|>' + message.role + '\\n' + "
                     "message.content + '<|im_end|>' + '\\n' }}{%- endfor %}")
        chat = chat_format(qwen_like)
        assert chat == ChatML(None)
        assert chat.render("hi") == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"

    def test_other_template_families_are_refused(self):
        with pytest.raises(InputError, match="--no-chat-template"):
            chat_format("{{ bos_token }}[INST] {{ message }} [/INST]")

    def test_encode_chat_has_no_stray_bos(self):
        tok = tiny_tokenizer()
        ids = tok.encode_chat("hi", system="sys")
        assert tok.decode(ids, skip_special_tokens=False) == \
            "<|im_start|>system\nsys<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.slow
class TestSmolLM2:
    """The real vocabulary of 49,152 tokens (shares the session's loaded model)."""

    @pytest.mark.parametrize("text", TEXTS)
    def test_round_trip(self, smollm2, text):
        tok = smollm2.tokenizer
        assert tok.decode(tok.encode(text)) == text

    def test_special_tokens_and_digits(self, smollm2):
        tok = smollm2.tokenizer
        assert (tok.token_to_id("<|endoftext|>"), tok.token_to_id("<|im_start|>"),
                tok.token_to_id("<|im_end|>")) == (0, 1, 2)
        assert tok.vocab_size == 49152
        assert tok.encode("Paris")[0] != 1  # the GGUF says add_bos_token = false
        assert len(tok.encode("2024")) == 4  # SmolLM2 splits digits one by one
        assert tok.stop_ids() == {0, 2}

    def test_chat_prompt(self, smollm2):
        tok = smollm2.tokenizer
        text = tok.chat.render("What is the capital of France?")
        assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, "
                               "trained by Hugging Face<|im_end|>\n<|im_start|>user\n")
        ids = tok.encode_chat("What is the capital of France?")
        assert ids[:1] == [1] and ids[-4:] == tok.encode("<|im_start|>assistant\n")
