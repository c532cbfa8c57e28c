"""One batched decode loop over a transformers causal LM, with per-request settings.

Why not ``model.generate``: it takes one ``max_new_tokens``, one temperature and one set of
stop strings for the whole batch. Requests from different users differ in all three, so
this loop keeps them per row:

* prompts are left-padded; ``position_ids`` come from the attention mask, so a padded row
  sees exactly the positions it would see alone (greedy output equals one-by-one output);
* every row stops on its own end token, its own stop strings or its own token cap;
* finished rows leave the batch (``Cache.batch_select_indices``), so a long answer does
  not make short ones pay for its steps;
* so do abandoned rows (``GenerationJob.abandoned``, set when the caller stops waiting):
  checked before every step, a row abandoned during a forward pass is dropped right after
  it, with its KV rows, and a job abandoned before its batch starts is never prefilled;
* greedy rows take the argmax; sampled rows use their own temperature, top-p and seed.

``cache="static"`` (opt-in) keeps every decode step at one shape instead: a batch is padded
to a *bucket* (a power of two up to the batch cap) and runs on a transformers
``StaticCache`` preallocated for that bucket and ``max_len`` tokens per row, kept and reused
by later batches of the same bucket. The 2-D attention mask is ``max_len`` wide and built
once per batch (left padding zero, everything from the prompt's end on one: the causal mask
hides what is not written yet), so a step's inputs are ``(bucket, 1)`` token ids and
positions, the same mask and the same cache. Finished and abandoned rows are not removed:
they stay in the batch, idle (fed the pad token, their logits ignored), because removing
them would change the shapes. The loop ends when no row is left decoding. A batch whose
widest prompt plus largest token cap exceeds ``max_len`` runs as several smaller batches.
Greedy tokens equal the dynamic mode's (tested). With ``compiler`` (``torch.compile``,
``mode="reduce-overhead"``: CUDA graphs) the decode step, not the prefill, is compiled, once
per bucket.

torch is imported by the caller (``backend.py``) before this module, and only there.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

FinishReason = Literal["stop", "length", "abandoned"]
"""``abandoned``: the caller stopped waiting; the tokens are the ones made until then."""


@dataclass
class GenerationJob:
    """One request, already tokenized with the model's chat template."""

    prompt_ids: list[int]
    max_new_tokens: int
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    ignore_eos: bool = False  # benchmarks: always produce max_new_tokens
    abandoned: threading.Event = field(default_factory=threading.Event)
    """Set from any thread when nobody waits for the answer any more: the row leaves the
    batch before the next decode step."""


@dataclass
class GenerationResult:
    text: str
    finish_reason: FinishReason
    completion_tokens: int
    """Tokens the model generated for this request, an end token included: it was computed
    and is part of the answer's cost. Generation stops at the token that completes a stop
    string, so no token after one is generated or counted."""
    token_ids: list[int]


class _Row:
    """Decode state of one request inside a running batch."""

    def __init__(self, job: GenerationJob, device: torch.device) -> None:
        self.job = job
        self.tokens: list[int] = []
        self.finish: FinishReason | None = None
        self.stop_text: str | None = None  # the text cut before a matched stop string
        self.generator: torch.Generator | None = None
        if job.temperature > 0 and job.seed is not None:
            self.generator = torch.Generator(device=device).manual_seed(job.seed)


class BatchGenerator:
    """Runs :class:`GenerationJob` batches through one loaded model. Not thread-safe: one
    batcher thread owns it (see ``local_batcher.Batcher``)."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        device: torch.device,
        *,
        cache: Literal["dynamic", "static"] = "dynamic",
        max_len: int | None = None,
        max_batch: int = 16,
        compiler: Callable[[Callable[..., torch.Tensor]], Callable[..., torch.Tensor]] | None = None,
    ) -> None:
        """``cache="static"`` needs ``max_len`` (tokens per row: prompt and answer) and
        ``max_batch`` (the largest bucket). ``compiler`` wraps the static decode step, e.g.
        ``lambda f: torch.compile(f, mode="reduce-overhead")``."""
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.end_ids = _end_token_ids(model, tokenizer)
        pad = getattr(tokenizer, "pad_token_id", None)
        self.pad_id = int(pad if pad is not None else min(self.end_ids or {0}))
        # transformers 5.24 renamed ``past_key_values`` to ``cache`` (the old name warns);
        # older 5.x releases only know ``past_key_values``.
        params = inspect.signature(type(model).forward).parameters
        self.cache_kw = "cache" if "cache" in params else "past_key_values"
        if cache not in ("dynamic", "static"):
            raise ValueError(f"cache must be 'dynamic' or 'static', got {cache!r}")
        if cache == "static" and (max_len is None or max_len < 2 or max_batch < 1):
            raise ValueError("a static cache needs max_len >= 2 and max_batch >= 1")
        if compiler is not None and cache != "static":
            raise ValueError("only the static cache's decode step can be compiled")
        self.cache_mode = cache
        self.max_len = max_len
        self.buckets = _buckets(max_batch)
        self._static_caches: dict[int, Any] = {}
        self._compiled = compiler(self._step) if compiler is not None else None
        self._static_decoding = False  # set between a static batch's prefill and its end

    def _new_cache(self) -> Any:
        from transformers import DynamicCache

        try:
            return DynamicCache(config=self.model.config)
        except TypeError:
            return DynamicCache()

    def _step(self, ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor, cache: Any) -> torch.Tensor:
        """One forward pass: the last position's logits, float32. What ``compiler`` wraps."""
        out = self.model(
            input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
            logits_to_keep=1, **{self.cache_kw: cache},
        )
        return out.logits[:, -1, :].float()  # type: ignore[no-any-return]

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor, cache: Any) -> torch.Tensor:
        """Every forward pass goes through here (tests count them): a compiled static decode
        step when there is one, else the model as it is (the prefill always)."""
        # The shape alone cannot tell: a prefill of one-token prompts is one wide too, and it
        # must run eagerly (the static cache allocates its tensors at the first prefill).
        if self._compiled is not None and self._static_decoding:
            # One call, one CUDA graph replay: its outputs are overwritten by the next, so copy.
            torch.compiler.cudagraph_mark_step_begin()  # type: ignore[no-untyped-call]
            return self._compiled(ids, mask, pos, cache).clone()
        return self._step(ids, mask, pos, cache)

    def release(self) -> None:
        """Free the preallocated static caches (they are made again when needed)."""
        self._static_caches.clear()

    def generate(self, jobs: list[GenerationJob]) -> list[GenerationResult]:
        rows = [_Row(job, self.device) for job in jobs]
        if self.cache_mode == "static":
            # no_grad, not inference_mode: the preallocated cache outlives this call and is
            # handed to torch.compile, as transformers' own static-cache ``generate`` does.
            with torch.no_grad():
                self._generate_static(rows)
        else:
            with torch.inference_mode():
                self._generate_dynamic(rows)
        return [self._result(row) for row in rows]

    def _generate_dynamic(self, rows: list[_Row]) -> None:
        jobs = [row.job for row in rows]
        # A job abandoned before its batch started is never prefilled.
        active = [i for i, row in enumerate(rows) if not self._abandoned(row)]  # batch row -> rows index
        if not active:
            return
        lengths = [len(jobs[i].prompt_ids) for i in active]
        width = max(lengths)
        ids = torch.full((len(active), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(active), width), dtype=torch.long)
        for k, i in enumerate(active):
            ids[k, width - lengths[k]:] = torch.tensor(jobs[i].prompt_ids, dtype=torch.long)
            mask[k, width - lengths[k]:] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        next_pos = torch.tensor(lengths, dtype=torch.long, device=self.device)

        cache = self._new_cache()
        logits = self._forward(ids, mask, pos, cache)
        while active:
            # Rows whose caller left while the last forward pass ran take no token.
            live = [k for k, i in enumerate(active) if not self._abandoned(rows[i])]
            if not live:
                break
            if len(live) < len(active):
                logits = logits[torch.tensor(live, dtype=torch.long, device=logits.device)]
            chosen = self._choose(logits, [rows[active[k]] for k in live])
            keep = [k for n, k in enumerate(live) if not self._advance(rows[active[k]], chosen[n])]
            if not keep:
                break
            if len(keep) < len(active):
                index = torch.tensor(keep, dtype=torch.long, device=self.device)
                cache.batch_select_indices(index)
                mask, next_pos = mask[index], next_pos[index]
                active = [active[k] for k in keep]
            step = torch.tensor([rows[i].tokens[-1] for i in active], dtype=torch.long, device=self.device)
            mask = torch.cat([mask, mask.new_ones((len(active), 1))], dim=1)
            logits = self._forward(step[:, None], mask, next_pos[:, None], cache)
            next_pos = next_pos + 1

    # -- static cache ------------------------------------------------------------------------

    def _generate_static(self, rows: list[_Row]) -> None:
        # A job abandoned before its batch started is never prefilled.
        waiting = [row for row in rows if not self._abandoned(row)]
        for group in self._static_groups(waiting):
            self._run_static(group)

    def _static_groups(self, rows: list[_Row]) -> list[list[_Row]]:
        """``rows`` in batches whose widest prompt plus largest token cap fit ``max_len``
        (first fit, in arrival order). ``LocalBackend.job`` caps every request so that it
        fits alone."""
        assert self.max_len is not None
        groups: list[tuple[list[_Row], int, int]] = []  # rows, widest prompt, largest cap
        for row in rows:
            width, cap = len(row.job.prompt_ids), row.job.max_new_tokens
            if width + cap > self.max_len:
                raise ValueError(f"a request of {width} prompt tokens and up to {cap} new ones does not fit "
                                 f"the static cache's {self.max_len} tokens")
            for k, (members, w, c) in enumerate(groups):
                if max(w, width) + max(c, cap) <= self.max_len and len(members) < self.buckets[-1]:
                    members.append(row)
                    groups[k] = (members, max(w, width), max(c, cap))
                    break
            else:
                groups.append(([row], width, cap))
        return [members for members, _, _ in groups]

    def _static_cache(self, bucket: int) -> Any:
        """The bucket's preallocated cache, emptied (same tensors: compiled graphs keep them)."""
        assert self.max_len is not None
        cache = self._static_caches.get(bucket)
        if cache is None:
            from transformers import StaticCache

            # Its tensors are allocated at the first prefill (transformers' lazy initialisation,
            # which also marks them as static addresses for CUDA graphs).
            cache = self._static_caches[bucket] = StaticCache(config=self.model.config, max_cache_len=self.max_len)
        else:
            cache.reset()
        return cache

    def _run_static(self, group: list[_Row]) -> None:
        assert self.max_len is not None
        count = len(group)
        bucket = next(b for b in self.buckets if b >= count)
        lengths = [len(row.job.prompt_ids) for row in group]
        width = max(lengths)
        ids = torch.full((bucket, width), self.pad_id, dtype=torch.long)
        # One mask for the whole batch: left padding 0, the rest 1 (positions not written yet
        # are hidden by the causal mask). Filler rows (bucket > count) see one pad token, so
        # no row is fully masked.
        mask = torch.ones((bucket, self.max_len), dtype=torch.long)
        mask[:, :width] = 0
        mask[count:, width - 1] = 1
        for k, row in enumerate(group):
            ids[k, width - lengths[k]:] = torch.tensor(row.job.prompt_ids, dtype=torch.long)
            mask[k, width - lengths[k]:width] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        pos = (mask[:, :width].cumsum(-1) - 1).clamp(min=0)
        next_pos = pos[:, -1:] + 1

        cache = self._static_cache(bucket)
        logits = self._forward(ids, mask, pos, cache)
        decoding = list(range(count))  # rows of the bucket still making tokens
        pad = torch.full((bucket,), self.pad_id, dtype=torch.long)
        self._static_decoding = True
        try:
            while decoding:
                # Rows whose caller left while the last forward pass ran take no token, and stay idle.
                live = [k for k in decoding if not self._abandoned(group[k])]
                if not live:
                    break
                picked = logits if len(live) == bucket else logits[torch.tensor(live, device=logits.device)]
                chosen = self._choose(picked, [group[k] for k in live])
                decoding = [k for n, k in enumerate(live) if not self._advance(group[k], chosen[n])]
                if not decoding:
                    break
                step = pad.clone()
                step[decoding] = torch.tensor([group[k].tokens[-1] for k in decoding], dtype=torch.long)
                logits = self._forward(step.to(self.device)[:, None], mask, next_pos, cache)
                next_pos = next_pos + 1
        finally:
            self._static_decoding = False

    @staticmethod
    def _abandoned(row: _Row) -> bool:
        """True (and the row finished) when its caller no longer waits for it."""
        if row.job.abandoned.is_set():
            row.finish = "abandoned"
            return True
        return False

    def _choose(self, logits: torch.Tensor, rows: list[_Row]) -> list[int]:
        greedy = logits.argmax(dim=-1).tolist()
        out = []
        for k, row in enumerate(rows):
            job = row.job
            if job.temperature <= 0:
                out.append(int(greedy[k]))
                continue
            probs = torch.softmax(logits[k] / job.temperature, dim=-1)
            if job.top_p < 1.0:
                sorted_p, order = probs.sort(descending=True)
                # Keep the smallest prefix whose mass reaches top_p (always the first token).
                drop = sorted_p.cumsum(-1) - sorted_p >= job.top_p
                sorted_p[drop] = 0.0
                probs = torch.zeros_like(probs).scatter(0, order, sorted_p)
            out.append(int(torch.multinomial(probs, 1, generator=row.generator).item()))
        return out

    def _advance(self, row: _Row, token: int) -> bool:
        """Add ``token`` to ``row``; True when the row is finished."""
        job = row.job
        row.tokens.append(token)
        if token in self.end_ids and not job.ignore_eos:
            row.finish = "stop"
        elif job.stop and self._hit_stop(row):
            row.finish = "stop"
        elif len(row.tokens) >= job.max_new_tokens:
            row.finish = "length"
        return row.finish is not None

    def _hit_stop(self, row: _Row) -> bool:
        text = self._decode(row.tokens)
        hits = [text.find(s) for s in row.job.stop if s and s in text]
        if not hits:
            return False
        row.stop_text = text[: min(hits)]
        return True

    def _decode(self, tokens: list[int]) -> str:
        return str(self.tokenizer.decode(tokens, skip_special_tokens=True))

    def _result(self, row: _Row) -> GenerationResult:
        assert row.finish is not None
        if row.stop_text is not None:
            text = row.stop_text
        else:
            ends = row.tokens and row.tokens[-1] in self.end_ids and not row.job.ignore_eos
            text = self._decode(row.tokens[:-1] if ends else row.tokens)
        return GenerationResult(text=text, finish_reason=row.finish, completion_tokens=len(row.tokens),
                                token_ids=list(row.tokens))


def _buckets(max_batch: int) -> list[int]:
    """Batch sizes a static cache is made for: powers of two below ``max_batch``, and it."""
    sizes, size = [], 1
    while size < max_batch:
        sizes.append(size)
        size *= 2
    return [*sizes, max_batch]


def _end_token_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    ids: set[int] = set()
    config = getattr(model, "generation_config", None)
    eos = getattr(config, "eos_token_id", None)
    if eos is None:
        eos = getattr(model.config, "eos_token_id", None)
    if isinstance(eos, int):
        ids.add(eos)
    elif isinstance(eos, (list, tuple)):
        ids.update(int(e) for e in eos)
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(int(tokenizer.eos_token_id))
    return frozenset(ids)
