"""Greedy generation: left-padded batches answer exactly as single prompts do, and each row stops at
its end-of-turn token with nothing decoded after it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from src.data.collate import PromptCollator
from src.data.conversation import Message
from src.models.generation import generate_greedy
from src.training.tutor_module import TutorModule

MAX_NEW_TOKENS = 8


CONVERSATIONS: list[list[Message]] = [
    [{"role": "user", "content": "¿Cuánto es 2 + 2?"}],
    [{"role": "user", "content": "Calcula 12 + 30 y luego 3 × 4, por favor, paso a paso."}],
    [
        {"role": "user", "content": "Hola"},
        {"role": "assistant", "content": "¡Hola!"},
        {"role": "user", "content": "¿Y 5 - 3, o 7 + 1?"},
    ],
]


@pytest.fixture(scope="module")
def tutor(tiny_model_dir: Path) -> TutorModule:
    module = TutorModule(
        model_name=str(tiny_model_dir), lora={"r": 4, "alpha": 8, "dropout": 0.0},
        generation={"max_new_tokens": MAX_NEW_TOKENS},
    )
    module.configure_model()
    return module


def prompt_batch(tutor: TutorModule, conversations: list[list[Message]]) -> dict:
    items = [
        {"prompt_ids": tutor.tokenizer(tutor.formatter.prompt_text(c), add_special_tokens=False)["input_ids"],
         "question": c[-1]["content"], "expected": None, "kind": None}
        for c in conversations
    ]
    return PromptCollator(tutor.tokenizer.pad_token_id)(items)


@torch.no_grad()
def argmax_tokens(tutor: TutorModule, conversation: list[Message], steps: int) -> list[int]:
    """Greedy decoding the slow way: a full forward per token, no cache, no padding."""
    ids = tutor.tokenizer(tutor.formatter.prompt_text(conversation), add_special_tokens=False)["input_ids"]
    ids = torch.tensor([ids])
    new: list[int] = []
    for _ in range(steps):
        token = int(tutor.model(input_ids=ids).logits[0, -1].argmax())
        new.append(token)
        ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    return new


def test_prompts_have_different_lengths(tutor: TutorModule) -> None:
    batch = prompt_batch(tutor, CONVERSATIONS)
    lengths = batch["attention_mask"].sum(dim=1).tolist()
    assert len(set(lengths)) == 3
    assert batch["attention_mask"][:, 0].tolist() == [0, 0, 0]  # every row is left-padded


def test_batched_replies_equal_one_at_a_time(tutor: TutorModule) -> None:
    batched = tutor.answerer.reply(CONVERSATIONS)
    single = [tutor.answerer.reply([conversation])[0] for conversation in CONVERSATIONS]
    assert batched == single
    assert all(reply for reply in batched)  # a random model emits text, not an immediate stop


def test_greedy_generation_is_the_argmax_continuation(tutor: TutorModule) -> None:
    tutor.model.eval()
    batch = prompt_batch(tutor, CONVERSATIONS)
    replies = generate_greedy(
        tutor.model, tutor.tokenizer, batch["input_ids"], batch["attention_mask"], MAX_NEW_TOKENS,
        tutor.formatter.end_of_turn_ids,
    )
    expected = [tutor.tokenizer.decode(argmax_tokens(tutor, c, MAX_NEW_TOKENS), skip_special_tokens=True)
                for c in CONVERSATIONS]
    assert replies == expected


def test_generation_stops_at_the_end_of_turn_token(tutor: TutorModule) -> None:
    # The random model never chooses <|im_end|> in 8 steps, so declare its 3rd new token of the
    # first prompt the end of turn: that row must stop there while the others run on.
    tutor.model.eval()
    tokens = argmax_tokens(tutor, CONVERSATIONS[0], MAX_NEW_TOKENS)
    stop = next(k for k in range(2, MAX_NEW_TOKENS) if tokens[k] not in tokens[:k])
    batch = prompt_batch(tutor, CONVERSATIONS)
    replies = generate_greedy(
        tutor.model, tutor.tokenizer, batch["input_ids"], batch["attention_mask"], MAX_NEW_TOKENS, {tokens[stop]}
    )
    decode = tutor.tokenizer.decode
    assert replies[0] == decode(tokens[: stop + 1], skip_special_tokens=True)
    assert replies[0] != decode(tokens, skip_special_tokens=True)  # text would have followed
    # The rows padded after stopping decode to nothing: the pad id is <|im_end|>, a special token.
    assert tutor.tokenizer.pad_token_id in tutor.formatter.end_of_turn_ids


def test_end_of_turn_ids_of_the_tutor_are_im_end(tutor: TutorModule) -> None:
    assert tutor.formatter.end_of_turn_ids == {tutor.tokenizer.convert_tokens_to_ids("<|im_end|>")} == {2}


def test_replies_restore_training_mode(tutor: TutorModule) -> None:
    tutor.model.train()
    tutor.answerer.reply(CONVERSATIONS[:1])
    assert tutor.model.training
