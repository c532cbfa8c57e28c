"""Teacher throughput of the project's own transformers backend (``LocalBackend``), per decode mode.

What it measures: requests/min and decode tokens/s when N separate callers (threads) each
send one request of P prompt and G new tokens (default 512 and 256) at the same moment. The
backend must gather them into one batch on its own. Variants, all in one process and one run:

* ``dynamic``: the default decode loop (DynamicCache; finished rows leave the batch), eager;
* ``static``: ``cache="static"``: KV cache preallocated per batch bucket and P+G tokens, one
  shape for every decode step, eager;
* ``compiled``: ``cache="static", compile=True``: the decode step under
  ``torch.compile(mode="reduce-overhead")`` (CUDA graphs). CUDA only. Its first call at each
  batch bucket compiles; that call is timed on its own row ("first call") and the bucket is
  then timed again;
* ``generate``: stock ``model.generate`` on a ready-made batch (the eager reference of
  shared/design/GPU.md: 2.8 requests/min at batch 1, 208 at batch 64 on one H100).

The model has ATLAS-8B's published shape (Qwen3-8B: hidden 4096, 36 layers, 32 heads, 8 KV
heads, intermediate 12288, vocab 151936) with random bf16 weights: real timings, no
download. The tokenizer is a synthetic word-level one (one word, one token), so the script
needs no files and prompts are exactly P tokens.

What one GPU run does, in this order (about 7-8 minutes on one H100: an estimate, it has never
run on a GPU; eager runs about 20 s per level from GPU.md, a compile about a minute per bucket
from transformers' 66 s compiling first call):

1. exactness gate: a small Qwen3 (2 layers, fp32, large random weights so greedy choices are
   not near-ties) answers 8 concurrent calls (prompts of 16-128 tokens, caps of 8-32) through
   every variant; each must give exactly the dynamic variant's tokens ("ok" or "FAILED");
2. the 8B model: the same 8 calls through every variant, compared with dynamic. bf16 on
   random weights has near-ties, so a late divergence can be rounding, not a bug; reported
   as identical rows and the token where each other row first differs (information). The
   compiled variant compiles its 8-row bucket here (its "first call" row for 8);
3. timing, largest level first so that a slow compile costs the least useful rows: for N in
   64, 8, 32, 1: dynamic, compiled (first call, then timed); static at 64; generate at 64;
4. ``--budget-s`` (default 450 s from the start): an item that would not finish in the time
   left (estimated: 25 s an eager run, 80 s a compiling call) is skipped and listed.

    python bench/teacher_throughput.py --out result.json   # the real run: a CUDA GPU, ~50 GB
    python bench/teacher_throughput.py --quick             # seconds on CPU: tiny model, same code path

On the GPU machine the repository is not installed: the script puts its own checkout on
``sys.path``; ``atlas_middleware`` then needs pydantic (see docs/benchmarks.md for the wheels
to carry). It prints one table last and, with ``--out``, writes the figures as JSON after
every row (a run cut short keeps what it measured).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # compile workers fork after tokenizing
try:
    import atlas_middleware  # noqa: F401
except ImportError:  # a bare checkout (the GPU machine): use it
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

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
# The exactness gate's model: the real vocabulary, 2 layers, large weights (well-separated logits).
EXACT_SHAPE = dict(
    hidden_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    intermediate_size=512, vocab_size=151936, head_dim=64, max_position_embeddings=4096,
    tie_word_embeddings=False, initializer_range=0.5,
)
CHECK_PROMPTS = [16, 40, 64, 96, 128, 24, 80, 112]  # prompt tokens of the 8 check calls
CHECK_CAPS = [32, 8, 24, 16, 32, 12, 28, 20]  # their max_tokens
VARIANTS = ("dynamic", "static", "compiled", "generate")
OPTIONS = {"dynamic": {}, "static": {"cache": "static"}, "compiled": {"cache": "static", "compile": True}}


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


def make_backend(model: Any, tokenizer: Any, variant: str, max_batch: int, max_len: int) -> Any:
    from atlas_middleware.backends.local import LocalBackend, LocalOptions

    # A level's batch starts as soon as its N calls are queued (``batcher.max_batch_size`` is
    # set to N per run); the long wait only matters if the callers are slow to submit.
    options = LocalOptions(max_batch_size=max_batch, batch_wait_ms=2000, max_queue=4 * max_batch,
                           static_max_len=max_len, **OPTIONS[variant])
    return LocalBackend(model, tokenizer, name=f"local/bench-{variant}", options=options)


def call_together(backend: Any, requests: list[Any]) -> tuple[float, list[Any], list[int]]:
    """Wall seconds, responses and batch sizes of ``requests`` sent at once from threads."""
    backend.batcher.max_batch_size = len(requests)
    before = len(backend.batcher.batch_sizes)
    started = time.perf_counter()
    with ThreadPoolExecutor(len(requests)) as pool:
        responses = list(pool.map(backend.complete, requests))
    return time.perf_counter() - started, responses, backend.batcher.batch_sizes[before:]


def bench_requests(n: int, prompt_tokens: int, new_tokens: int, salt: int = 0) -> list[Any]:
    from atlas_middleware.messages import ChatRequest

    return [ChatRequest(model="local/bench", messages=[{"role": "user", "content": prompt_text(prompt_tokens, salt + i)}],
                        params={"max_tokens": new_tokens, "ignore_eos": True}) for i in range(n)]


def check_requests() -> list[Any]:
    from atlas_middleware.messages import ChatRequest

    return [ChatRequest(model="local/bench", messages=[{"role": "user", "content": prompt_text(p, 1000 + i)}],
                        params={"max_tokens": cap, "ignore_eos": True})
            for i, (p, cap) in enumerate(zip(CHECK_PROMPTS, CHECK_CAPS, strict=True))]


def run_backend(backend: Any, n: int, prompt_tokens: int, new_tokens: int, salt: int = 0) -> tuple[float, list[int]]:
    wall, responses, batches = call_together(backend, bench_requests(n, prompt_tokens, new_tokens, salt))
    for r in responses:  # every request did its full work, counted by the tokenizer
        assert r.usage.prompt_tokens == prompt_tokens, r.usage
        assert r.usage.completion_tokens == new_tokens, r.usage
    return wall, batches


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


def compare(reference: list[Any], answers: list[Any]) -> dict[str, Any]:
    """How far ``answers`` agree with ``reference``, token by token (one word is one token)."""
    identical, diverge_at, count_mismatches = 0, [], 0
    for ref, got in zip(reference, answers, strict=True):
        a, b = ref.content.split(), got.content.split()
        if a != b:  # the first token that differs
            diverge_at.append(next((k for k, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))))
        elif ref.usage != got.usage or ref.finish_reason != got.finish_reason:
            count_mismatches += 1  # same text, different counts: a bug, never rounding
        else:
            identical += 1
    return {"identical_rows": identical, "rows": len(reference), "diverge_at": diverge_at,
            "count_mismatches": count_mismatches}


def describe(check: dict[str, Any]) -> str:
    verdict = f"{check['result']}: " if "result" in check else ""
    text = f"{verdict}{check['identical_rows']}/{check['rows']} rows identical to dynamic"
    if check["diverge_at"]:
        text += f"; the others first differ at token {sorted(check['diverge_at'])}"
    if check["count_mismatches"]:
        text += f"; {check['count_mismatches']} with the same text but different counts (a bug)"
    return text


class Bench:
    """One run: the settings, the schedule and its time budget, the rows (saved after each)."""

    def __init__(self, args: argparse.Namespace) -> None:
        import torch
        import transformers

        self.torch = torch
        if args.quick:
            self.shape, self.device, self.dtype = TINY_SHAPE, "cpu", torch.float32
            levels, prompt_tokens, new_tokens = [4, 1], 32, 8
        else:
            self.shape, self.device, self.dtype = QWEN3_8B_SHAPE, "cuda", torch.bfloat16
            levels, prompt_tokens, new_tokens = [64, 8, 32, 1], 512, 256
        self.levels = [int(x) for x in args.concurrency.split(",")] if args.concurrency else levels
        self.prompt_tokens = args.prompt_tokens or prompt_tokens
        self.new_tokens = args.new_tokens or new_tokens
        self.variants = [v for v in VARIANTS if v in args.variants.split(",")]
        self.static_levels = ([int(x) for x in args.static_levels.split(",")] if args.static_levels
                              else [max(self.levels)])
        self.max_len = max(self.prompt_tokens + self.new_tokens, max(CHECK_PROMPTS) + max(CHECK_CAPS))
        self.max_batch = max([*self.levels, len(CHECK_PROMPTS)])
        self.eager_cost = 8.0 if args.quick else 25.0  # seconds, for the budget
        self.gpu = (torch.cuda.get_device_name(0) if self.device == "cuda"
                    else platform.processor() or platform.machine())
        self.meta: dict[str, Any] = {
            "date": datetime.now(UTC).isoformat(timespec="seconds"), "device": self.gpu,
            "torch": torch.__version__, "transformers": transformers.__version__,
            "prompt_tokens": self.prompt_tokens, "new_tokens": self.new_tokens, "static_max_len": self.max_len,
            "quick": args.quick,
        }
        self.t0 = time.perf_counter()
        self.budget_s = args.budget_s
        self.out = args.out
        self.rows: list[dict[str, Any]] = []
        self.checks: list[dict[str, Any]] = []
        self.skipped: list[str] = []
        self.tokenizer = synthetic_tokenizer(self.shape["vocab_size"])
        self.model: Any = None
        self.backends: dict[str, Any] = {}
        self.compiled_buckets: set[int] = set()

    # -- schedule ------------------------------------------------------------------------------

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def fits(self, what: str, cost_s: float) -> bool:
        if self.elapsed() + cost_s <= self.budget_s:
            return True
        self.skip(f"{what} (time budget: {self.elapsed():.0f} s used of {self.budget_s:.0f})")
        return False

    def skip(self, why: str) -> None:
        if why not in self.skipped:
            self.skipped.append(why)
            print(f"not run: {why}", flush=True)
            self.save()

    def guarded(self, what: str, fn: Callable[[], None]) -> bool:
        """Run one item; a failure is recorded and the run goes on."""
        try:
            fn()
            return True
        except Exception as exc:  # one variant failing must not lose the others' figures
            print(traceback.format_exc()[-3000:], flush=True)
            self.skip(f"FAILED {what}: {type(exc).__name__}: {exc}"[:500])
            return False

    def add(self, kind: str, row: dict[str, Any]) -> None:
        (self.checks if kind == "check" else self.rows).append(row)
        print(json.dumps(row), flush=True)
        self.save()

    def save(self) -> None:
        if self.out:
            with open(self.out, "w", encoding="utf-8") as f:
                json.dump({"meta": self.meta, "checks": self.checks, "rows": self.rows, "skipped": self.skipped},
                          f, indent=2)

    # -- the steps -------------------------------------------------------------------------------

    def backends_for(self, model: Any) -> dict[str, Any]:
        made: dict[str, Any] = {}
        for variant in self.variants:
            if variant == "generate":
                continue
            try:
                made[variant] = make_backend(model, self.tokenizer, variant, self.max_batch, self.max_len)
            except Exception as exc:  # compile on CPU: refused at construction, by design
                self.skip(f"{variant}: {type(exc).__name__}: {exc}"[:300])
        return made

    def bucket_of(self, n: int) -> int:
        return next(b for b in self.backends["compiled"]._generator.buckets if b >= n)

    def check(self, label: str, backends: dict[str, Any], gate: bool) -> None:
        """The 8 check calls through every variant, compared with the first (dynamic)."""
        reference: list[Any] = []
        for variant, backend in backends.items():
            def one(variant: str = variant, backend: Any = backend) -> None:
                wall, answers, batches = call_together(backend, check_requests())
                reference[:] = reference or answers
                row = {"check": label, "variant": variant, **compare(reference, answers), "wall_s": round(wall, 2),
                       "batches": batches}
                if gate:
                    row["result"] = "ok" if row["identical_rows"] == row["rows"] else "FAILED"
                self.add("check", row)
                if variant == "compiled" and backends is self.backends:
                    self.compiled_buckets.add(self.bucket_of(len(CHECK_PROMPTS)))
                    self.add("row", {"variant": "compiled, first call", "concurrency": len(CHECK_PROMPTS),
                                     "wall_s": round(wall, 2), "batches": batches,
                                     "note": "compiles the bucket; the 8 check calls "
                                             f"({max(CHECK_PROMPTS)} prompt / {max(CHECK_CAPS)} new tokens at most)"})

            if variant != "compiled" or self.fits(f"{label} check, compiled", 80):
                self.guarded(f"{label} check, {variant}", one)

    def exactness_gate(self) -> None:
        model = build_model(EXACT_SHAPE, self.device, self.torch.float32)
        backends = self.backends_for(model)
        self.check("exact (2-layer fp32)", backends, gate=True)
        for backend in backends.values():
            backend.close()

    def build(self) -> None:
        t0 = time.perf_counter()
        self.model = build_model(self.shape, self.device, self.dtype)
        params = sum(p.numel() for p in self.model.parameters())
        self.meta["params_b"] = round(params / 1e9, 2)
        print(f"model: {params / 1e9:.2f}B params, {self.dtype}, {self.device}; "
              f"built in {time.perf_counter() - t0:.1f} s", flush=True)
        self.backends = self.backends_for(self.model)
        if "dynamic" in self.backends:  # kernels, allocator, lazy initialisation
            run_backend(self.backends["dynamic"], 1, min(self.prompt_tokens, 16), 2)

    def timed(self, variant: str, n: int, label: str | None = None, salt: int = 0) -> None:
        if variant == "generate":
            wall = run_generate(self.model, self.tokenizer, n, self.prompt_tokens, self.new_tokens)
            batches = [n]
        else:
            wall, batches = run_backend(self.backends[variant], n, self.prompt_tokens, self.new_tokens, salt)
        row = {"variant": label or variant, "concurrency": n, "wall_s": round(wall, 2),
               "decode_tok_s": round(n * self.new_tokens / wall, 1), "requests_per_min": round(n / wall * 60, 1),
               "batches": batches}
        if self.device == "cuda":
            row["max_gpu_mem_gb"] = round(self.torch.cuda.max_memory_allocated() / 1e9, 1)
        self.add("row", row)

    def timing(self) -> None:
        """Largest level first: a slow compile costs the least useful rows."""
        for n in self.levels:
            if "dynamic" in self.backends and self.fits(f"dynamic at {n}", self.eager_cost):
                self.guarded(f"dynamic at {n}", lambda n=n: self.timed("dynamic", n))
            if "compiled" in self.backends:
                self.time_compiled(n)
            if "static" in self.backends and n in self.static_levels and self.fits(f"static at {n}", self.eager_cost):
                self.guarded(f"static at {n}", lambda n=n: self.timed("static", n))
        top = max(self.levels)
        if "generate" in self.variants and self.fits(f"generate at {top}", self.eager_cost):
            self.guarded(f"generate at {top}", lambda: self.timed("generate", top))

    def time_compiled(self, n: int) -> None:
        bucket = self.bucket_of(n)
        if bucket not in self.compiled_buckets:
            if not self.fits(f"compiled first call at {n}", 80 + self.eager_cost / 2):
                return
            self.compiled_buckets.add(bucket)
            if not self.guarded(f"compiled first call at {n}",
                                lambda: self.timed("compiled", n, "compiled, first call", salt=500)):
                return
        if self.fits(f"compiled at {n}", 15):
            self.guarded(f"compiled at {n}", lambda: self.timed("compiled", n))

    def report(self) -> None:
        if "compiled" in self.backends:
            from torch._dynamo.utils import counters

            self.meta["dynamo_graph_breaks"] = sum(counters["graph_break"].values())
            self.meta["dynamo_unique_graphs"] = counters["stats"].get("unique_graphs", 0)
            # Non-zero: the compiled step ran without CUDA graphs, or re-recorded them (slow).
            self.meta["cudagraph_skips"] = counters["inductor"].get("cudagraph_skips", 0)
            self.meta["cudagraph_non_static_rerecords"] = counters["inductor"].get(
                "cudagraph_recorded_non_static_inputs", 0)
        self.meta["total_s"] = round(self.elapsed(), 1)
        self.save()
        m = self.meta
        print(f"\n{m['date']}  {self.gpu}  torch {m['torch']}  transformers {m['transformers']}  "
              f"{m.get('params_b')}B params  {self.prompt_tokens} prompt + {self.new_tokens} new tokens per request  "
              f"{m['total_s']} s in all")
        for c in self.checks:
            print(f"check {c['check']}, {c['variant']}: {describe(c)}")
        if "dynamo_graph_breaks" in m:
            print(f"compile: {m['dynamo_graph_breaks']} graph breaks, {m['dynamo_unique_graphs']} graphs, "
                  f"{m['cudagraph_skips']} CUDA-graph skips, {m['cudagraph_non_static_rerecords']} "
                  "re-recordings for non-static inputs (all but graphs should be 0 on a GPU)")
        for why in self.skipped:
            print(f"not run: {why}")
        print("| variant | concurrent calls | wall s | decode tok/s | requests/min | batches run |")
        print("|---|---|---|---|---|---|")
        for r in self.rows:
            print(f"| {r['variant']} | {r['concurrency']} | {r['wall_s']} | {r.get('decode_tok_s', '')} | "
                  f"{r.get('requests_per_min', '')} | {r['batches']} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny random model on CPU; runs in seconds")
    parser.add_argument("--concurrency", default=None,
                        help="comma list, run in this order (default 64,8,32,1; quick 4,1)")
    parser.add_argument("--prompt-tokens", type=int, default=None)
    parser.add_argument("--new-tokens", type=int, default=None)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="any of " + ",".join(VARIANTS))
    parser.add_argument("--static-levels", default=None,
                        help="levels the eager static variant runs at (default: the largest only)")
    parser.add_argument("--budget-s", type=float, default=450.0, help="skip items that would end past this")
    parser.add_argument("--out", default=None, help="write the results as JSON here (after every row)")
    args = parser.parse_args(argv)

    import torch

    if not args.quick and not torch.cuda.is_available():
        print("the full run needs a CUDA GPU; use --quick on CPU", file=sys.stderr)
        return 2
    bench = Bench(args)
    bench.exactness_gate()  # 1. a small fp32 model: every variant gives the dynamic tokens exactly
    bench.build()  # 2. the 8B-shaped model (tiny with --quick)
    bench.check(f"agreement ({bench.meta['params_b']}B {str(bench.dtype).removeprefix('torch.')})",
                bench.backends, gate=False)
    bench.timing()  # 3. largest level first, within the budget
    for backend in bench.backends.values():
        backend.close()
    bench.report()  # the table last
    return 0


if __name__ == "__main__":
    sys.exit(main())
