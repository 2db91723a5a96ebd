"""Batched greedy answers from left-padded prompts, each row stopping at its end-of-turn token."""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerBase


@torch.no_grad()
def generate_greedy(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    max_new_tokens: int,
    end_of_turn_ids: set[int],
) -> list[str]:
    """Decode only the new tokens of each row; finished rows are padded by `generate` itself."""
    output = model.generate(
        input_ids=input_ids,  # (B, T), left-padded so every row continues at position T
        attention_mask=attention_mask,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        use_cache=True,
        eos_token_id=sorted(end_of_turn_ids),
        pad_token_id=tokenizer.pad_token_id,
        # Sampling settings from the checkpoint's generation_config would only raise warnings here.
        temperature=None,
        top_p=None,
        top_k=None,
    )
    new_tokens = output[:, input_ids.shape[1] :]  # (B, ≤ max_new_tokens)
    return tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
