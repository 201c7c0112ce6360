"""The shape of a decoder-only transformer: one frozen dataclass.

Both loaders (GGUF and Hugging Face) reduce a checkpoint's metadata to a
:class:`ModelConfig`; everything downstream (the forward pass, the partition
into shards, the KV cache) reads only this.

>>> cfg = smollm2_135m_config()
>>> cfg.n_heads // cfg.n_kv_heads, cfg.q_width, cfg.kv_width
(3, 576, 192)
>>> cfg.n_params / 1e6
134.515008
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from meshemu.errors import InputError

#: Architectures the forward pass implements. Qwen3 is Llama plus a per-head
#: RMSNorm on q and k before RoPE and an explicit head_dim.
ARCHITECTURES = ("llama", "qwen3")


@dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of a Llama-family decoder.

    Attributes
    ----------
    arch : str
        ``"llama"`` or ``"qwen3"``.
    vocab_size : int
        Rows of the embedding and columns of the LM head.
    hidden_size : int
        Residual stream width C.
    n_layers : int
        Transformer blocks.
    n_heads, n_kv_heads : int
        Query heads and key/value heads (grouped-query attention); ``n_heads``
        must be a multiple of ``n_kv_heads``.
    head_dim : int
        Width of one head (explicit in Qwen3, ``hidden_size // n_heads`` in Llama).
    ffn_size : int
        Width of the SwiGLU hidden layer.
    rope_theta : float
        RoPE base frequency.
    rms_eps : float
        RMSNorm epsilon.
    tie_embeddings : bool
        The LM head is the transposed token embedding.
    qk_norm : bool
        Per-head RMSNorm on q and k before RoPE (Qwen3).
    max_context : int
        Longest sequence in tokens (prompt plus generated).
    bos_token_id : int or None
        Beginning-of-sequence token, when the vocabulary has one.
    eos_token_ids : tuple of int
        Tokens that end generation.
    name : str
        A human label (the checkpoint's name), not used in computation.
    """

    arch: str
    vocab_size: int
    hidden_size: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn_size: int
    rope_theta: float = 10000.0
    rms_eps: float = 1e-5
    tie_embeddings: bool = True
    qk_norm: bool = False
    max_context: int = 2048
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    name: str = ""

    def __post_init__(self):
        if self.arch not in ARCHITECTURES:
            raise InputError(
                f"unsupported architecture {self.arch!r} (supported: {', '.join(ARCHITECTURES)})"
            )
        for field in ("vocab_size", "hidden_size", "n_layers", "n_heads", "n_kv_heads",
                      "head_dim", "ffn_size", "max_context"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise InputError(f"must be a positive integer, got {value!r}", field=field)
        if self.n_heads % self.n_kv_heads:
            raise InputError(
                f"{self.n_heads} query heads are not a multiple of {self.n_kv_heads} kv heads",
                field="n_kv_heads",
            )
        if self.head_dim % 2:
            raise InputError(f"RoPE needs an even head_dim, got {self.head_dim}", field="head_dim")
        if not self.rope_theta > 0 or not self.rms_eps > 0:
            raise InputError(f"rope_theta {self.rope_theta} and rms_eps {self.rms_eps} must be > 0")
        object.__setattr__(self, "eos_token_ids", tuple(int(t) for t in self.eos_token_ids))

    @property
    def group_size(self) -> int:
        """Query heads that share one kv head."""
        return self.n_heads // self.n_kv_heads

    @property
    def q_width(self) -> int:
        """Columns of the q projection: ``n_heads * head_dim``."""
        return self.n_heads * self.head_dim

    @property
    def kv_width(self) -> int:
        """Columns of the k (and of the v) projection: ``n_kv_heads * head_dim``."""
        return self.n_kv_heads * self.head_dim

    @property
    def n_params(self) -> int:
        """Parameter count (the tied LM head counted once)."""
        c = self.hidden_size
        attn = c * (self.q_width + 2 * self.kv_width) + self.q_width * c
        mlp = 3 * c * self.ffn_size
        norms = 2 * c + (2 * self.head_dim if self.qk_norm else 0)
        head = 0 if self.tie_embeddings else self.vocab_size * c
        return self.vocab_size * c + self.n_layers * (attn + mlp + norms) + c + head

    def to_dict(self) -> dict:
        """Plain values, to save next to results."""
        return dataclasses.asdict(self)


def smollm2_135m_config() -> ModelConfig:
    """The configuration of SmolLM2-135M-Instruct (as its GGUF file states it)."""
    return ModelConfig(
        arch="llama", vocab_size=49152, hidden_size=576, n_layers=30, n_heads=9, n_kv_heads=3,
        head_dim=64, ffn_size=1536, rope_theta=100000.0, rms_eps=1e-5, tie_embeddings=True,
        max_context=8192, bos_token_id=1, eos_token_ids=(2,), name="SmolLM2-135M-Instruct",
    )
