"""What a shard computes with: the real numpy model, or a device model that only keeps time.

:class:`RealCompute` runs this shard's slice of the weights. :class:`DeviceCompute`
holds no weights: it passes synthetic activations of the real sizes (float16,
as a bf16 model would send) and waits, layer by layer, the time a configured
accelerator would take, ``max(flops / peak_flops, bytes / peak_bandwidth)``,
so Qwen3-8B or -32B can be served across a mesh without their weights.

>>> cfg = PRESETS["qwen3-8b"]
>>> from meshemu.model.weights import full_spec
>>> spec = full_spec(cfg)
>>> t_attn, t_mlp = layer_times_s(cfg, spec, DEVICES["h100"], batch=1, new_tokens=1, context=128)
>>> round((t_attn + t_mlp) * 1e6)      # one decode token through one layer: bandwidth-bound, microseconds
115
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from meshemu.errors import InputError
from meshemu.model import gguf, hf
from meshemu.model.config import ModelConfig, smollm2_135m_config
from meshemu.model.load import default_model_path, load_model
from meshemu.model.partition import pipeline_ranges, shard_spec, slice_weights
from meshemu.model.sampling import Sampler
from meshemu.model.tiny import random_weights, tiny_config
from meshemu.model.transformer import Transformer
from meshemu.model.weights import ShardSpec
from meshemu.resources import memory_problem


def _qwen3(name, hidden, layers, heads, kv, ffn, tied) -> ModelConfig:
    return ModelConfig(arch="qwen3", vocab_size=151936, hidden_size=hidden, n_layers=layers, n_heads=heads,
                       n_kv_heads=kv, head_dim=128, ffn_size=ffn, rope_theta=1e6, rms_eps=1e-6,
                       tie_embeddings=tied, qk_norm=True, max_context=40960, bos_token_id=None,
                       eos_token_ids=(151645, 151643), name=name)


#: Model shapes to study without weights (``--model preset:NAME``), from their ``config.json``.
PRESETS = {
    "smollm2-135m": smollm2_135m_config(),
    "qwen3-0.6b": _qwen3("Qwen3-0.6B", 1024, 28, 16, 8, 3072, True),
    "qwen3-8b": _qwen3("Qwen3-8B", 4096, 36, 32, 8, 12288, False),
    "qwen3-32b": _qwen3("Qwen3-32B", 5120, 64, 64, 8, 25600, False),
}


@dataclass(frozen=True)
class Device:
    """An accelerator as a roofline: dense bf16 FLOP/s and memory bandwidth."""

    name: str
    peak_flops: float
    peak_bandwidth_Bps: float
    weight_bytes: int = 2  # bf16 weights and KV cache

    def __post_init__(self):
        # before: a NaN peak made every wait NaN, and DeviceClock.settle spun on it for ever
        for name in ("peak_flops", "peak_bandwidth_Bps"):
            value = getattr(self, name)
            if not 0 < value < float("inf"):
                raise InputError(f"device {self.name}: {name} must be a finite number greater than 0, got {value}")

    def seconds(self, flops: float, nbytes: float) -> float:
        return max(flops / self.peak_flops, nbytes / self.peak_bandwidth_Bps)


#: Dense bf16 peaks from the vendors' data sheets (no sparsity).
DEVICES = {
    "h100": Device("H100 SXM", 989e12, 3.35e12),
    "h200": Device("H200 SXM", 989e12, 4.8e12),
    "a100": Device("A100 SXM 80GB", 312e12, 2.04e12),
    "l4": Device("L4", 121e12, 0.3e12),
    "orin": Device("Jetson AGX Orin 64GB", 85e12, 0.2048e12),
}


def parse_compute(text: str, peak_flops: float = 0.0, peak_bandwidth_Bps: float = 0.0) -> Device | None:
    """``"real"`` -> None; ``"device:h100"`` -> that device, peaks overridden where given."""
    if text in ("", "real"):
        return None
    kind, _, name = text.partition(":")
    if kind != "device" or name not in DEVICES:
        raise InputError(f"unknown compute {text!r}: use real or device:NAME with NAME one of "
                         f"{', '.join(DEVICES)}")
    d = DEVICES[name]
    return Device(d.name, peak_flops or d.peak_flops, peak_bandwidth_Bps or d.peak_bandwidth_Bps, d.weight_bytes)


def layer_times_s(config: ModelConfig, spec: ShardSpec, device: Device, *, batch: int, new_tokens: int,
                  context: int) -> tuple[float, float]:
    """Device time of one layer's attention half and MLP half on ``spec``'s heads and columns.

    ``context`` is the number of tokens held after this pass (the new ones included).
    """
    c, hd, wb = config.hidden_size, config.head_dim, device.weight_bytes
    nq, nkv, f = len(spec.q_heads), len(spec.kv_heads), spec.ffn_size
    bt = batch * new_tokens
    attn_params = c * (nq + 2 * nkv) * hd + nq * hd * c
    mean_seen = context - (new_tokens - 1) / 2          # causal: token t sees start + t + 1 keys
    attn_flops = 2 * bt * attn_params + 4 * bt * nq * hd * mean_seen
    attn_bytes = attn_params * wb + 2 * batch * nkv * hd * context * wb + 2 * bt * c * wb
    mlp_params = 3 * c * f
    return (device.seconds(attn_flops, attn_bytes),
            device.seconds(2 * bt * mlp_params, mlp_params * wb + 2 * bt * c * wb))


def head_time_s(config: ModelConfig, device: Device, batch: int) -> float:
    """Device time of the final norm and LM head for one token per sequence."""
    params = config.hidden_size * config.vocab_size
    return device.seconds(2 * batch * params, params * device.weight_bytes)


def check_weights_fit(n_params: int, model: str,
                      advice: str = "give a smaller model, or compute device:NAME to model it without weights") -> None:
    """InputError when ``n_params`` float32 weights (and a second copy while they are converted and cut into
    shards) would not fit in memory: refused before the first array is made, so a shard is never left swapping."""

    problem = memory_problem(n_params * 4 * 2, f"{model} ({n_params / 1e9:.3g} G parameters, float32)", advice)
    if problem:
        raise InputError(problem)


def checkpoint_elements(path) -> int | None:
    """Weights in a checkpoint (a Hugging Face directory or a GGUF file), from its header; None if absent."""
    if path.is_dir():
        return hf.tensor_elements(path)
    if path.is_file():
        return gguf.tensor_elements(path)
    return None  # load_model says what is missing


#: The integer fields of :class:`ModelConfig` that ``tiny:ARCH:SEED:FIELD=N`` may change.
TINY_SETTINGS = ("vocab_size", "hidden_size", "n_layers", "n_heads", "n_kv_heads", "head_dim", "ffn_size",
                 "max_context", "bos_token_id")


def load_source(model: str):
    """``(config, whole-model weights or None)`` for a model source string.

    ``tiny:ARCH:SEED[:FIELD=N...]`` is a random tiny model (tests; fields of
    :class:`ModelConfig` may be changed), ``preset:NAME`` a shape
    from :data:`PRESETS` without weights, anything else a checkpoint path
    (empty: the default SmolLM2).
    """
    if model.startswith("tiny:"):
        parts = model.split(":")
        arch = parts[1] if len(parts) > 1 and parts[1] else "llama"
        if len(parts) > 2 and not parts[2].isdigit() and parts[2]:
            raise InputError(f"bad tiny-model seed {parts[2]!r} in {model!r}: write tiny:ARCH:SEED, SEED 0 or more")
        seed = int(parts[2]) if len(parts) > 2 and parts[2] else 0
        changes = {}
        for item in parts[3:]:  # tiny:llama:0:hidden_size=576:n_layers=4
            key, _, value = item.partition("=")
            if not value.lstrip("-").isdigit():
                raise InputError(f"bad tiny-model setting {item!r}: expected NAME=INTEGER")
            if key not in TINY_SETTINGS:
                # before: Python's own words ('__init__() got an unexpected keyword argument'), or, for a
                # text field such as name=1, a TypeError deep in the shard
                raise InputError(f"unknown tiny-model setting {key!r} in {model!r} (settable: "
                                 f"{', '.join(TINY_SETTINGS)})")
            changes[key] = int(value)
        try:
            config = tiny_config(arch, **changes)
        except (TypeError, ValueError) as err:
            raise InputError(f"bad tiny-model setting in {model!r}: {err}") from None
        check_weights_fit(config.n_params, model)
        return config, random_weights(config, seed=seed)
    if model.startswith("preset:"):
        name = model.partition(":")[2]
        if name not in PRESETS:
            raise InputError(f"unknown preset {name!r} (known: {', '.join(PRESETS)})")
        return PRESETS[name], None

    path = Path(model) if model else default_model_path()
    n_params = checkpoint_elements(path)
    if n_params is not None:  # every weight is read whole into float32, whatever the file stores
        check_weights_fit(n_params, str(path), "give a smaller model, or its shape as preset:NAME with compute "
                                               "device:NAME to model it without weights")
    weights = load_model(path).weights
    return weights.config, weights


class DeviceClock:
    """Owed device time, paid by sleeping (the last fraction of a millisecond by spinning).

    A sleep on a busy host wakes late, which the device it stands for would not: what a wait overshot its
    due time by is kept as credit and taken off the next waits (never below zero), so a shard's device time
    adds up to the roofline's wherever later waits can absorb the host's lateness, not to the roofline plus
    every late wake-up (with 8 shards on 2 cores, 128 waits a token came out 6-10x the roofline). Time owed
    is never paid early: a shard is never faster than its device.

    >>> c = DeviceClock(); c.owe(0.002); c.settle(); c.late_s >= 0, c.credit_s == c.late_s
    (True, True)
    """

    SPIN_S = 2e-4

    def __init__(self):
        self._due = 0.0
        self.credit_s = 0.0  # overshoot not yet taken off a later wait
        self.late_s = 0.0  # all overshoot so far

    def owe(self, seconds: float) -> None:
        now = time.perf_counter()
        paid = min(self.credit_s, seconds) if seconds > 0 else 0.0
        self.credit_s -= paid
        self._due = max(self._due, now) + seconds - paid

    def settle(self) -> None:
        waited = False
        while True:
            left = self._due - time.perf_counter()
            if not left > 0:  # NaN too: a wait that cannot be told is no wait
                break
            waited = True
            if left > self.SPIN_S:
                time.sleep(left - self.SPIN_S)
        if waited:  # only a wait's own overshoot: a due time long past (the network was slower) is no lateness
            late = time.perf_counter() - self._due
            if late > 0:
                self.credit_s += late
                self.late_s += late


class SyntheticCache:
    """A KV cache that only counts tokens (device compute keeps no keys or values)."""

    def __init__(self, n_layers: int, capacity: int):
        self.lengths = [0] * n_layers
        self.capacity = capacity

    @property
    def length(self) -> int:
        return self.lengths[0] if self.lengths else 0

    def advance(self, layer: int, tokens: int) -> int:
        stop = self.lengths[layer] + tokens
        if stop > self.capacity:
            raise InputError(f"context full: {stop} tokens do not fit the cache of {self.capacity} tokens")
        self.lengths[layer] = stop
        return stop


class RealCompute:
    """This shard's slice of a real model, run in numpy."""

    kind = "real"
    dtype = np.dtype(np.float32)

    def __init__(self, config: ModelConfig, weights, spec: ShardSpec):
        self.config, self.spec = config, spec
        self.model = Transformer(slice_weights(weights, spec))
        self.weight_bytes = self.model.weights.nbytes
        self.n_layers = len(self.model.layers)

    def new_cache(self, batch: int, capacity: int):
        # keys and values, float32, for this shard's layers and kv heads: a long context is GiB per request
        nbytes = 2 * 4 * batch * capacity * self.n_layers * len(self.spec.kv_heads) * self.config.head_dim
        problem = memory_problem(nbytes, f"the KV cache of {batch} x {capacity:,} tokens",
                                 "ask for fewer new tokens or fewer requests at once")
        if problem:
            raise InputError(problem)
        return self.model.new_cache(batch, capacity)

    def embed(self, tokens: np.ndarray) -> np.ndarray:
        return self.model.embed(tokens)

    def layer(self, i: int, x: np.ndarray, cache, reduce) -> np.ndarray:
        return self.model.block(i, x, cache, reduce)

    def draw(self, x: np.ndarray, sampler: Sampler, step: int) -> tuple[int, np.ndarray]:
        """The next token from hidden states ``(1, T, C)``, and its logits ``(V,)``."""
        logits = self.model.logits(x[:, -1:])[:, -1]
        return int(sampler.sample(logits)[0]), logits[0]

    def settle(self) -> None:
        """Nothing owed: real compute has already taken its time."""


class DeviceCompute:
    """No weights: synthetic float16 activations and the time ``device`` would take."""

    kind = "device"
    dtype = np.dtype(np.float16)

    def __init__(self, config: ModelConfig, spec: ShardSpec, device: Device):
        self.config, self.spec, self.device = config, spec, device
        self.n_layers = spec.n_layers
        self.clock = DeviceClock()
        nq, nkv, f, c, hd = len(spec.q_heads), len(spec.kv_heads), spec.ffn_size, config.hidden_size, config.head_dim
        self.weight_bytes = device.weight_bytes * spec.n_layers * (c * (nq + 2 * nkv) * hd + nq * hd * c + 3 * c * f)

    def new_cache(self, batch: int, capacity: int) -> SyntheticCache:
        if capacity > self.config.max_context:
            raise InputError(f"{capacity} tokens exceed the model's context of {self.config.max_context} tokens")
        return SyntheticCache(self.n_layers, capacity)

    def embed(self, tokens: np.ndarray) -> np.ndarray:
        tokens = np.asarray(tokens)
        if tokens.size and (tokens.min() < 0 or tokens.max() >= self.config.vocab_size):
            raise InputError(f"token id outside the vocabulary of {self.config.vocab_size}")
        return np.zeros(tokens.shape + (self.config.hidden_size,), self.dtype)

    def layer(self, i: int, x: np.ndarray, cache: SyntheticCache, reduce) -> np.ndarray:
        B, T, _ = x.shape
        context = cache.advance(i, T)
        t_attn, t_mlp = layer_times_s(self.config, self.spec, self.device, batch=B, new_tokens=T, context=context)
        self.clock.owe(t_attn)
        h = x + reduce(np.zeros_like(x))
        self.clock.owe(t_mlp)
        return h + reduce(np.zeros_like(x))

    def draw(self, x: np.ndarray, sampler: Sampler, step: int) -> tuple[int, None]:
        """A made-up token (never a stop token), after the LM head's device time."""
        self.clock.owe(head_time_s(self.config, self.device, x.shape[0]))
        self.clock.settle()
        stops = set(self.config.eos_token_ids)
        token = (1000 + 7919 * step) % self.config.vocab_size
        while token in stops:
            token = (token + 1) % self.config.vocab_size
        return token, None

    def settle(self) -> None:
        self.clock.settle()


def make_compute(model: str, compute: str = "real", *, stage: int = 0, n_stages: int = 1, tp_rank: int = 0,
                 tp_size: int = 1, peak_flops: float = 0.0, peak_bandwidth_Bps: float = 0.0):
    """The compute of one shard: load (or only describe) the model and cut out the shard's part.

    The shard is tensor rank ``tp_rank`` of ``tp_size`` in pipeline stage
    ``stage`` of ``n_stages`` (layer ranges from :func:`~meshemu.model.partition.pipeline_ranges`).
    """
    device = parse_compute(compute, peak_flops, peak_bandwidth_Bps)
    config, weights = load_source(model)
    if n_stages > config.n_layers:
        raise InputError(f"{n_stages} pipeline stages for a model of {config.n_layers} layers")
    start, stop = pipeline_ranges(config.n_layers, n_stages)[stage]
    spec = shard_spec(config, layer_start=start, layer_stop=stop, tp_rank=tp_rank, tp_size=tp_size)
    if device is not None:
        return DeviceCompute(config, spec, device)
    if weights is None:
        raise InputError(f"{model} has no weights: serve it with compute device:NAME")
    return RealCompute(config, weights, spec)
