"""Batch padding: right-padded training batches and left-padded generation prompts; packed rows.

`DataCollatorForSeq2Seq` pads labels with -100 too, but it pads every field to the same side; the
generation batches need left padding while carrying non-tensor metadata (expected answer, kind),
so both collators are a few lines here. Packed (padding-free) batches come from transformers'
`DataCollatorWithFlattening`.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import DataCollatorWithFlattening

from src.data.chat_format import IGNORE_INDEX


def padded_length(longest: int, multiple: int) -> int:
    """Round up to a multiple of `multiple`, so kernels see few distinct shapes."""
    return -(-longest // multiple) * multiple


class TrainCollator:
    """Right-pads `input_ids`/`labels`; padding never carries a label, whatever its token id."""

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int = 8) -> None:
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        length = padded_length(max(len(e["input_ids"]) for e in examples), self.pad_to_multiple_of)
        input_ids = torch.full((len(examples), length), self.pad_token_id, dtype=torch.long)  # (B, T)
        labels = torch.full((len(examples), length), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(examples), length), dtype=torch.long)
        for row, example in enumerate(examples):
            n = len(example["input_ids"])
            input_ids[row, :n] = torch.tensor(example["input_ids"])
            labels[row, :n] = torch.tensor(example["labels"])
            attention_mask[row, :n] = 1
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        if "replay" in examples[0]:  # (B,) bool: the rows that replay the base model's own replies
            batch["replay"] = torch.tensor([bool(e["replay"]) for e in examples])
        return batch


class PromptCollator:
    """Left-pads prompts so every row's next token is at the same position for batched `generate`."""

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int = 8) -> None:
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        length = padded_length(max(len(i["prompt_ids"]) for i in items), self.pad_to_multiple_of)
        input_ids = torch.full((len(items), length), self.pad_token_id, dtype=torch.long)  # (B, T)
        attention_mask = torch.zeros((len(items), length), dtype=torch.long)
        for row, item in enumerate(items):
            n = len(item["prompt_ids"])
            input_ids[row, length - n :] = torch.tensor(item["prompt_ids"])
            attention_mask[row, length - n :] = 1
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "question": [i["question"] for i in items],
            "expected": [i["expected"] for i in items],
            "kind": [i["kind"] for i in items],
        }


def packing_collator() -> DataCollatorWithFlattening:
    """All examples of a batch concatenated into one row (1, ΣT): no padding at all.

    `position_ids` restart at 0 for each example, which is how transformers finds the boundaries
    attention must not cross (see src/models/packing.py); each example's first label becomes -100,
    so no position learns to predict the next example's first token.
    """
    return DataCollatorWithFlattening(return_tensors="pt", return_position_ids=True, separator_id=IGNORE_INDEX)


def count_tokens_and_examples(batch: dict[str, torch.Tensor]) -> tuple[int, int]:
    """(real tokens, examples) of a padded or a packed batch: padding is not a token, a packed row is many examples."""
    if "position_ids" in batch:  # packed: no padding, and every example starts again at position 0
        return batch["input_ids"].numel(), int((batch["position_ids"] == 0).sum())
    return int(batch["attention_mask"].sum()), len(batch["input_ids"])
