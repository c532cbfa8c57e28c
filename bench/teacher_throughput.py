"""Teacher throughput of the project's own transformers backend (``LocalBackend``).

What it measures: requests/min and decode tokens/s when N separate callers (threads) each
send one request of P prompt tokens and G new tokens at the same moment, for N in 1, 8,
32, 64. The backend must gather them into batches on its own. For reference, the same
model runs stock ``model.generate`` on a ready-made batch of N (the eager baseline of
shared/design/GPU.md: 2.8 requests/min at batch 1, 208 at batch 64 on one H100).

The model has ATLAS-8B's published shape (Qwen3-8B: hidden 4096, 36 layers, 32 heads, 8 KV
heads, intermediate 12288, vocab 151936) with random bf16 weights: real timings, no
download. The tokenizer is a synthetic word-level one over the same vocabulary, so the
script needs no files at all and prompts are exactly P tokens.

    python bench/teacher_throughput.py            # the real run: needs a CUDA GPU (~17 GB)
    python bench/teacher_throughput.py --quick    # seconds on CPU: a tiny model, same code path

It prints one table last and, with ``--out``, writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

QWEN3_8B_SHAPE = dict(
    hidden_size=4096, num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8,
    intermediate_size=12288, vocab_size=151936, head_dim=128, max_position_embeddings=40960,
    tie_word_embeddings=False,
)
TINY_SHAPE = dict(
    hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    intermediate_size=128, vocab_size=151936, head_dim=16, max_position_embeddings=4096,
    tie_word_embeddings=False,
)


def synthetic_tokenizer(vocab_size: int) -> Any:
    """Word-level tokenizer ``<pad> </s> t2 .. t{V-1}``: one word, one token; a plain chat
    template. (Special tokens must not be prefixes of words: added tokens match inside words.)"""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, **{f"t{i}": i for i in range(2, vocab_size)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<pad>", pad_token="<pad>", eos_token="</s>")
    fast.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    return fast


def build_model(shape: dict[str, Any], device: str, dtype: Any) -> Any:
    import torch
    from transformers import AutoModelForCausalLM, Qwen3Config

    config = Qwen3Config(**shape, eos_token_id=1, pad_token_id=0, bos_token_id=None)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


def prompt_text(n_tokens: int, salt: int) -> str:
    # Different prompts per request, so nothing is shared by accident.
    return " ".join(f"t{2 + (salt * 7919 + i * 104729) % 150000}" for i in range(n_tokens))


def run_backend(backend: Any, n: int, prompt_tokens: int, new_tokens: int) -> float:
    from atlas_middleware.messages import ChatRequest

    requests = [ChatRequest(model="local/bench", messages=[{"role": "user", "content": prompt_text(prompt_tokens, i)}],
                            params={"max_tokens": new_tokens, "ignore_eos": True}) for i in range(n)]
    started = time.perf_counter()
    with ThreadPoolExecutor(n) as pool:
        responses = list(pool.map(backend.complete, requests))
    wall = time.perf_counter() - started
    for r in responses:  # every request did its full work, counted by the tokenizer
        assert r.usage.prompt_tokens == prompt_tokens, r.usage
        assert r.usage.completion_tokens == new_tokens, r.usage
    return wall


def run_generate(model: Any, tokenizer: Any, n: int, prompt_tokens: int, new_tokens: int) -> float:
    import torch

    ids = torch.tensor([tokenizer(prompt_text(prompt_tokens, i))["input_ids"] for i in range(n)],
                       device=model.device)
    sync = torch.cuda.synchronize if ids.is_cuda else (lambda: None)
    sync()
    started = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, do_sample=False)
    sync()
    assert out.shape == (n, prompt_tokens + new_tokens)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny random model on CPU; runs in seconds")
    parser.add_argument("--concurrency", default=None, help="comma list (default 1,8,32,64; quick 1,4)")
    parser.add_argument("--prompt-tokens", type=int, default=None)
    parser.add_argument("--new-tokens", type=int, default=None)
    parser.add_argument("--variants", default="backend,generate", help="backend,generate")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)

    import torch

    from atlas_middleware.backends.local import LocalBackend, LocalOptions

    if args.quick:
        shape, device, dtype = TINY_SHAPE, "cpu", torch.float32
        levels, prompt_tokens, new_tokens = [1, 4], 32, 8
    else:
        if not torch.cuda.is_available():
            print("the full run needs a CUDA GPU; use --quick on CPU", file=sys.stderr)
            return 2
        shape, device, dtype = QWEN3_8B_SHAPE, "cuda", torch.bfloat16
        levels, prompt_tokens, new_tokens = [1, 8, 32, 64], 512, 256
    if args.concurrency:
        levels = [int(x) for x in args.concurrency.split(",")]
    prompt_tokens = args.prompt_tokens or prompt_tokens
    new_tokens = args.new_tokens or new_tokens
    variants = args.variants.split(",")

    t0 = time.perf_counter()
    model = build_model(shape, device, dtype)
    tokenizer = synthetic_tokenizer(shape["vocab_size"])
    params = sum(p.numel() for p in model.parameters())
    print(f"model: {params / 1e9:.2f}B params, {dtype}, {device}; built in {time.perf_counter() - t0:.1f} s",
          flush=True)
    backend = LocalBackend(model, tokenizer, name="local/bench",
                           options=LocalOptions(max_batch_size=max(levels), batch_wait_ms=50,
                                                max_queue=4 * max(levels)))
    # Warm-up: kernels, allocator, lazy initialisation.
    run_backend(backend, 1, min(prompt_tokens, 16), 2)

    rows = []
    for variant in variants:
        for n in levels:
            if variant == "backend":
                before = len(backend.batcher.batch_sizes)
                wall = run_backend(backend, n, prompt_tokens, new_tokens)
                batches = backend.batcher.batch_sizes[before:]
            else:
                wall, batches = run_generate(model, tokenizer, n, prompt_tokens, new_tokens), [n]
            row = {"variant": variant, "concurrency": n, "wall_s": round(wall, 2),
                   "decode_tok_s": round(n * new_tokens / wall, 1),
                   "requests_per_min": round(n / wall * 60, 1), "batches": batches}
            rows.append(row)
            print(json.dumps(row), flush=True)
    backend.close()

    gpu = torch.cuda.get_device_name(0) if device == "cuda" else platform.processor() or platform.machine()
    meta = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "device": gpu, "torch": torch.__version__,
            "prompt_tokens": prompt_tokens, "new_tokens": new_tokens, "params_b": round(params / 1e9, 2),
            "quick": args.quick}
    print(f"\n{meta['date']}  {gpu}  torch {torch.__version__}  {params / 1e9:.2f}B params  "
          f"{prompt_tokens} prompt + {new_tokens} new tokens per request")
    print("| variant | concurrent calls | wall s | decode tok/s | requests/min | batches run |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['concurrency']} | {r['wall_s']} | {r['decode_tok_s']} | "
              f"{r['requests_per_min']} | {r['batches']} |")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
