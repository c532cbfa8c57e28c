"""A tiny random-weight model for tests of the in-process backend (extra ``local``).

Two layers, 64 wide, with the vocabulary of the tokenizer it is given (the embedded
SmolLM2's in the tests): fast on one CPU thread, and deterministic. Large random weights
(``initializer_range=0.5``) give well-separated logits, so greedy choices are no near-ties
and batched, static-cache and one-by-one decoding can be compared token for token.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def tiny_llama(tokenizer: Any, *, max_position_embeddings: int = 256, seed: int = 0) -> Any:
    """A ``LlamaForCausalLM`` in eval mode, built from ``seed`` (torch and transformers are
    imported here: this module is only for the ``local`` extra's tests)."""
    import torch
    import transformers

    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_position_embeddings,
        initializer_range=0.5, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model: Any = transformers.LlamaForCausalLM(config)
    return model.eval()


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run torch on one intra-op thread inside the block. Small models gain little from more,
    and on a busy shared CPU the extra threads spin against each other and make every step
    several times slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
