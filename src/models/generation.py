"""Batched greedy answers from left-padded prompts, each row stopping at its end-of-turn token.

`generate` keeps every row of the batch in each forward until the last row stops, padding the
finished ones; the validation replies differ widely in length (a bare "7" next to a worked answer
that runs to the token budget), so most of those rows are wasted work. The loop here is greedy
`generate`'s own arithmetic (same prefill, position ids, mask growth, cache, argmax) with one
change: a row leaves the batch, and the KV cache (`DynamicCache.batch_select_indices`), as soon as
it emits an end-of-turn token. Rows of a batch never mix in a forward, so the answers are
`generate`'s; tests/unit/models/test_generation_fast.py checks that against `generate` itself. (It also
hands the LM head each prompt's last position as one compact tensor, which `generate` does not: see the prefill.)
"""

from __future__ import annotations

import inspect

import torch
from transformers import DynamicCache, PreTrainedTokenizerBase

LOGITS_PROCESSOR_FIELDS: dict[str, object] = {
    "repetition_penalty": 1.0, "encoder_repetition_penalty": 1.0, "no_repeat_ngram_size": 0,
    "encoder_no_repeat_ngram_size": 0, "bad_words_ids": None, "min_length": 0, "min_new_tokens": 0,
    "forced_bos_token_id": None, "forced_eos_token_id": None, "suppress_tokens": None,
    "begin_suppress_tokens": None, "sequence_bias": None, "exponential_decay_length_penalty": None,
    "renormalize_logits": False, "guidance_scale": 1.0, "watermarking_config": None,
}
"""`GenerationConfig` fields that make greedy `generate` change the logits before its argmax, each with the value
that leaves them alone (transformers 5.23 defaults them all to None, earlier versions to these values)."""


@torch.no_grad()
def generate_greedy(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    max_new_tokens: int,
    end_of_turn_ids: set[int],
) -> list[str]:
    """Decode only the new tokens of each row, the end-of-turn token included (special tokens are skipped)."""
    if adds_logits_processors(model):
        tokens = generate_tokens(model, tokenizer, input_ids, attention_mask, max_new_tokens, end_of_turn_ids)
    else:
        tokens = greedy_tokens(model, input_ids, attention_mask, max_new_tokens, end_of_turn_ids)
    return tokenizer.batch_decode(tokens, skip_special_tokens=True)


def adds_logits_processors(model: torch.nn.Module) -> bool:
    """Whether the model's generation config would have greedy `generate` alter the logits (penalties, bans)."""
    config = getattr(model, "generation_config", None)
    if config is None:
        return False
    return any(getattr(config, name, None) not in (None, neutral) for name, neutral in LOGITS_PROCESSOR_FIELDS.items())


def generate_tokens(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    max_new_tokens: int,
    end_of_turn_ids: set[int],
) -> list[list[int]]:
    """Plain greedy `generate`: every row stays in the batch; finished rows are padded and trimmed here."""
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
    return [until_end_of_turn(row, end_of_turn_ids) for row in output[:, input_ids.shape[1] :].tolist()]


def until_end_of_turn(tokens: list[int], end_of_turn_ids: set[int]) -> list[int]:
    """The tokens up to and including the first end-of-turn token (all of them if there is none)."""
    for index, token in enumerate(tokens):
        if token in end_of_turn_ids:
            return tokens[: index + 1]
    return tokens


def greedy_tokens(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    max_new_tokens: int,
    end_of_turn_ids: set[int],
) -> list[list[int]]:
    """Greedy `generate` that drops each row from the batch once it has emitted an end-of-turn token.

    Hand-written because `generate` has no way to shrink the batch as rows finish.
    """
    batch_size = input_ids.shape[0]
    new_tokens: list[list[int]] = [[] for _ in range(batch_size)]
    if max_new_tokens <= 0:
        return new_tokens
    stops = torch.tensor(sorted(end_of_turn_ids), device=input_ids.device)
    mask = attention_mask.long()  # (b, T + steps so far)
    # generate's position ids: count real tokens only, so left padding does not shift a row's positions.
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)  # (B, T)
    cache = DynamicCache(config=model.config)
    keeps_logits = supports_logits_to_keep(model)
    # The last position as an index tensor, not the int 1 that `generate` passes: slicing [:, -1:] leaves a
    # (B, 1, H) view whose strides stop `matmul` from folding it into one matrix product, so the LM head runs
    # as a batched product over B copies of its weight (in bf16 on the CPU a 2.8 GB copy for SmolLM2 at
    # B = 50, about as long as the rest of the batch's decoding). An index makes a compact (B, 1, H) tensor.
    prefill_keep = {"logits_to_keep": torch.tensor([input_ids.shape[1] - 1], device=input_ids.device)}
    logits = model(
        input_ids=input_ids, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True,
        **(prefill_keep if keeps_logits else {}),
    ).logits[:, -1]  # (B, V)
    keep_last = {"logits_to_keep": 1} if keeps_logits else {}
    rows = torch.arange(batch_size, device=input_ids.device)  # the input row of each row still decoding
    position = positions[:, -1:]  # (b, 1)
    for step in range(max_new_tokens):
        # generate's argmax is over float32 logits; the same values, and on the CPU far faster than a bf16 argmax.
        token = logits.float().argmax(dim=-1)  # (b,)
        for row, value in zip(rows.tolist(), token.tolist(), strict=True):
            new_tokens[row].append(value)
        done = torch.isin(token, stops)
        if step == max_new_tokens - 1 or bool(done.all()):
            break
        if bool(done.any()):
            keep = (~done).nonzero().squeeze(1)
            cache.batch_select_indices(keep)
            mask, position, token, rows = mask[keep], position[keep], token[keep], rows[keep]
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        position = position + 1
        logits = model(
            input_ids=token[:, None], attention_mask=mask, position_ids=position, past_key_values=cache,
            use_cache=True, **keep_last,
        ).logits[:, -1]
    return new_tokens


def supports_logits_to_keep(model: torch.nn.Module) -> bool:
    """Whether the (PEFT-wrapped) model's forward can skip the LM head for all but the last position."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters
