"""Logits against Hugging Face transformers (optional: needs torch and transformers).

Skipped with a reason where they are not installed (``pip install meshemu[compare]``).
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (optional: meshemu[compare])")
transformers = pytest.importorskip("transformers",
                                   reason="transformers is not installed (optional: meshemu[compare])")

from meshemu.model import Transformer, load_model  # noqa: E402
from meshemu.model.tiny import hf_config_dict, tiny_config  # noqa: E402

TOKENS = [1, 17, 42, 99, 3, 250, 7, 7, 128, 64]


def ours(weights, tokens):
    model = Transformer(weights)
    return model.forward(np.array([tokens]), model.new_cache(1, len(tokens)), all_logits=True)[0]


def theirs(model, tokens):
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0].float().numpy()


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_random_transformers_checkpoint(arch, tmp_path):
    """transformers initialises and saves a tiny model; we load its files and agree on logits."""
    settings = hf_config_dict(tiny_config(arch))
    for key in ("architectures", "model_type", "torch_dtype"):
        settings.pop(key)
    config_class = {"llama": transformers.LlamaConfig, "qwen3": transformers.Qwen3Config}[arch]
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config_class(**settings)).float().eval()
    model.save_pretrained(tmp_path)  # safetensors, as transformers writes them
    want = theirs(model, TOKENS)
    got = ours(load_model(tmp_path).weights, TOKENS)
    # Both float32; only the order of sums differs.
    np.testing.assert_allclose(got, want, atol=1e-4 * float(np.abs(want).max()))


@pytest.mark.slow
def test_smollm2_gguf_against_transformers(smollm2):
    """transformers' own GGUF reader (it dequantizes and un-permutes too) on the real file."""
    path = smollm2.path
    model = transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name).float().eval()
    tokens = [1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198]
    want = theirs(model, tokens)
    got = ours(smollm2.weights, tokens)
    # 30 float32 blocks: rounding grows to ~1e-4 of the logit range.
    np.testing.assert_allclose(got, want, atol=1e-3 * float(np.abs(want).max()))
    assert (got.argmax(-1) == want.argmax(-1)).all()
