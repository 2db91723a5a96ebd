"""The greedy loop that drops finished rows answers exactly as greedy `generate` does: same tokens for
every row, whichever step each row stops at, with left padding, several end-of-turn ids and a LoRA
adapter that changes the outputs (non-zero B)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoTokenizer, LlamaForCausalLM

from src.models.generation import (
    adds_logits_processors,
    generate_greedy,
    greedy_tokens,
    until_end_of_turn,
)

MAX_NEW_TOKENS = 12
PROMPTS = [
    "<|im_start|>user\n¿Cuánto es 2 + 2?<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\nCalcula 12 + 30 y luego 3 × 4, por favor, paso a paso.<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\nHola<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\n¿Y 5 - 3, o 7 + 1? Dime los dos.<|im_end|>\n<|im_start|>assistant\n",
]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):
    return AutoTokenizer.from_pretrained(tiny_model_dir, padding_side="left")


@pytest.fixture(scope="module")
def model(tiny_model_dir: Path, tiny_adapter_dir: Path) -> PeftModel:
    lora = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(tiny_model_dir), tiny_adapter_dir).eval()
    assert any(p.abs().sum() > 0 for n, p in lora.named_parameters() if "lora_B" in n)
    return lora


@pytest.fixture(scope="module")
def batch(tokenizer) -> dict[str, torch.Tensor]:
    encoded = tokenizer(PROMPTS, padding=True, add_special_tokens=False, return_tensors="pt")
    assert len(set(encoded["attention_mask"].sum(dim=1).tolist())) == len(PROMPTS)  # different lengths...
    assert encoded["attention_mask"][:, 0].sum() < len(PROMPTS)  # ...so all but the longest are left-padded
    return encoded


@torch.no_grad()
def generate_reference(model, tokenizer, batch, stops: set[int], max_new_tokens: int = MAX_NEW_TOKENS) -> list[list[int]]:
    """The plain loop: greedy `model.generate` on the whole batch, each row cut after its first stop."""
    output = model.generate(
        **batch, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=sorted(stops),
        pad_token_id=tokenizer.pad_token_id, temperature=None, top_p=None, top_k=None,
    )
    return [until_end_of_turn(row, stops) for row in output[:, batch["input_ids"].shape[1] :].tolist()]


@pytest.fixture(scope="module")
def stops(model, tokenizer, batch) -> set[int]:
    """Two end-of-turn ids picked from the free-running replies, so rows stop at different steps."""
    free = generate_reference(model, tokenizer, batch, {tokenizer.pad_token_id})
    return {free[0][2], free[1][6]}


def test_rows_stop_at_different_steps_and_one_runs_to_the_budget(model, tokenizer, batch, stops) -> None:
    lengths = [len(row) for row in generate_reference(model, tokenizer, batch, stops)]
    assert len(set(lengths)) >= 3
    assert max(lengths) == MAX_NEW_TOKENS and min(lengths) < MAX_NEW_TOKENS


def test_dropping_finished_rows_gives_generate_tokens(model, tokenizer, batch, stops) -> None:
    expected = generate_reference(model, tokenizer, batch, stops)
    assert greedy_tokens(model, batch["input_ids"], batch["attention_mask"], MAX_NEW_TOKENS, stops) == expected


def test_replies_are_the_decoded_generate_tokens(model, tokenizer, batch, stops) -> None:
    expected = tokenizer.batch_decode(generate_reference(model, tokenizer, batch, stops), skip_special_tokens=True)
    replies = generate_greedy(model, tokenizer, batch["input_ids"], batch["attention_mask"], MAX_NEW_TOKENS, stops)
    assert replies == expected


@pytest.mark.parametrize("budget", [1, 2])
def test_short_budgets_match_generate(model, tokenizer, batch, stops, budget: int) -> None:
    expected = generate_reference(model, tokenizer, batch, stops, max_new_tokens=budget)
    assert greedy_tokens(model, batch["input_ids"], batch["attention_mask"], budget, stops) == expected


def test_every_row_stopping_at_once_ends_the_loop(model, tokenizer, batch) -> None:
    first = {row[0] for row in generate_reference(model, tokenizer, batch, {tokenizer.pad_token_id})}
    tokens = greedy_tokens(model, batch["input_ids"], batch["attention_mask"], MAX_NEW_TOKENS, first)
    assert all(len(row) == 1 for row in tokens)


def test_a_repetition_penalty_in_the_generation_config_is_honoured(model, tokenizer, batch, stops) -> None:
    # The fast loop does not apply logits processors, so such a config must take generate's path.
    base = model.get_base_model()
    base.generation_config.repetition_penalty = 3.0
    try:
        assert adds_logits_processors(model)
        expected = tokenizer.batch_decode(generate_reference(model, tokenizer, batch, stops), skip_special_tokens=True)
        replies = generate_greedy(model, tokenizer, batch["input_ids"], batch["attention_mask"], MAX_NEW_TOKENS, stops)
        assert replies == expected
        plain = greedy_tokens(model, batch["input_ids"], batch["attention_mask"], MAX_NEW_TOKENS, stops)
        assert tokenizer.batch_decode(plain, skip_special_tokens=True) != expected  # the penalty did change them
    finally:
        base.generation_config.repetition_penalty = 1.0
    assert not adds_logits_processors(model)


def test_the_lm_head_sees_one_compact_row_per_prompt_in_the_prefill(model, batch, stops) -> None:
    # A (B, 1, H) slice of the prompt's hidden states keeps the prompt's strides, and `matmul` then runs the
    # LM head as a batched product over B copies of its weight (gigabytes in bf16 for a real vocabulary).
    seen: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
    head = model.get_base_model().get_output_embeddings()
    hook = head.register_forward_pre_hook(lambda module, args: seen.append((tuple(args[0].shape), args[0].stride())))
    try:
        greedy_tokens(model, batch["input_ids"], batch["attention_mask"], 2, stops)
    finally:
        hook.remove()
    shape, stride = seen[0]
    assert shape == (len(PROMPTS), 1, head.in_features)
    assert stride == torch.empty(shape).stride()
