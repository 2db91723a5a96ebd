"""A tutor's greedy answers, prompted exactly as its training data was rendered.

Validation, the base-model evaluation, the run report's samples, `answer` and the reply cache all
answer through these two functions, so every number the project reports comes from one decoding path.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from src.data.chat_format import ChatFormatter
from src.data.collate import PromptCollator
from src.data.conversation import Message
from src.models.generation import generate_greedy


def batch_replies(
    model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, formatter: ChatFormatter, batch: dict[str, Any],
    max_new_tokens: int,
) -> list[str]:
    """Replies to a collated prompt batch (left-padded `input_ids` and `attention_mask`)."""
    device = next(model.parameters()).device
    return generate_greedy(
        model, tokenizer, batch["input_ids"].to(device), batch["attention_mask"].to(device), max_new_tokens,
        formatter.end_of_turn_ids,
    )


def conversation_replies(
    model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, formatter: ChatFormatter,
    conversations: Sequence[list[Message]], max_new_tokens: int, batch_size: int = 16,
) -> list[str]:
    """Replies to conversations that end with a user turn, `batch_size` at a time, in eval mode."""
    collate = PromptCollator(tokenizer.pad_token_id)
    was_training = model.training
    model.eval()
    replies: list[str] = []
    try:
        for start in range(0, len(conversations), batch_size):
            items = [
                {"prompt_ids": tokenizer(formatter.prompt_text(c), add_special_tokens=False)["input_ids"],
                 "question": c[-1]["content"], "expected": None, "kind": None}
                for c in conversations[start : start + batch_size]
            ]
            replies.extend(batch_replies(model, tokenizer, formatter, collate(items), max_new_tokens))
    finally:
        model.train(was_training)
    return replies
