"""A tutor's greedy answers, prompted exactly as its training data was rendered.

Validation, the base-model evaluation, the run report's samples, `answer` and the reply cache all
answer through these two functions, so every number the project reports comes from one decoding path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Answerer:
    """A model with the tokenizer, prompt format and reply budget it answers with: what validation, the
    callbacks and the tools ask questions through, so the training module need not carry an inference API."""

    model: torch.nn.Module
    tokenizer: PreTrainedTokenizerBase
    formatter: ChatFormatter
    max_new_tokens: int

    def answer_batch(self, batch: dict[str, Any]) -> list[str]:
        """Greedy replies to a collated prompt batch, within `max_new_tokens`."""
        return batch_replies(self.model, self.tokenizer, self.formatter, batch, self.max_new_tokens)

    def reply(self, conversations: Sequence[list[Message]], batch_size: int = 16) -> list[str]:
        """Greedy answers to conversations ending with a user turn, in eval mode."""
        return conversation_replies(
            self.model, self.tokenizer, self.formatter, conversations, self.max_new_tokens, batch_size
        )
