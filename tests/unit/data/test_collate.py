"""Collators: training batches are right-padded, prompts left-padded, both to a multiple of 8, and
padding never carries a label even though the pad id is also the end-of-turn id; packed batches are
one row without padding whose positions restart per example; token counts never count padding."""

from __future__ import annotations

import pytest
import torch

from src.data.chat_format import IGNORE_INDEX
from src.data.collate import PromptCollator, TrainCollator, count_tokens_and_examples, packing_collator, padded_length

PAD = EOS = 2  # like SmolLM2 and the tiny tokenizer: <|im_end|> is both


@pytest.mark.parametrize("longest, multiple, expected", [(1, 8, 8), (8, 8, 8), (9, 8, 16), (17, 8, 24), (5, 1, 5)])
def test_padded_length_rounds_up_to_the_multiple(longest: int, multiple: int, expected: int) -> None:
    assert padded_length(longest, multiple) == expected


def train_examples() -> list[dict[str, list[int]]]:
    return [
        # prompt 10 11 | answer 12 EOS (labelled) | newline 13 (not labelled)
        {"input_ids": [10, 11, 12, EOS, 13], "labels": [IGNORE_INDEX, IGNORE_INDEX, 12, EOS, IGNORE_INDEX]},
        {"input_ids": [20, 21, 22, 23, 24, 25, 26, 27, 28, EOS], "labels": [IGNORE_INDEX] * 8 + [28, EOS]},
    ]


def train_batch() -> dict[str, torch.Tensor]:
    return TrainCollator(pad_token_id=PAD)(train_examples())


def test_train_batch_is_right_padded_to_a_multiple_of_eight() -> None:
    batch = train_batch()
    assert {key: tuple(value.shape) for key, value in batch.items()} == {
        "input_ids": (2, 16),
        "attention_mask": (2, 16),
        "labels": (2, 16),
    }
    assert batch["input_ids"].tolist() == [
        [10, 11, 12, EOS, 13] + [PAD] * 11,
        [20, 21, 22, 23, 24, 25, 26, 27, 28, EOS] + [PAD] * 6,
    ]
    assert batch["attention_mask"].tolist() == [[1] * 5 + [0] * 11, [1] * 10 + [0] * 6]


def test_train_padding_has_no_label_while_a_real_eos_keeps_its_label() -> None:
    batch = train_batch()
    padding = batch["attention_mask"] == 0
    assert (batch["labels"][padding] == IGNORE_INDEX).all()
    # Padding and the learned end of turn share the id; only the position tells them apart.
    assert (batch["input_ids"][padding] == EOS).all()
    assert batch["labels"].tolist() == [
        [IGNORE_INDEX, IGNORE_INDEX, 12, EOS, IGNORE_INDEX] + [IGNORE_INDEX] * 11,
        [IGNORE_INDEX] * 8 + [28, EOS] + [IGNORE_INDEX] * 6,
    ]
    assert batch["labels"].dtype == batch["input_ids"].dtype == torch.long


def test_train_batch_already_at_a_multiple_gets_no_padding() -> None:
    batch = TrainCollator(pad_token_id=PAD)([{"input_ids": list(range(3, 11)), "labels": list(range(3, 11))}])
    assert batch["input_ids"].tolist() == [list(range(3, 11))]
    assert batch["attention_mask"].tolist() == [[1] * 8]


def prompt_items() -> list[dict]:
    return [
        {"prompt_ids": [10, 11, 12], "question": "q1", "expected": "1", "kind": "add_1d"},
        {"prompt_ids": list(range(20, 29)), "question": "q2", "expected": "2", "kind": None},
    ]


def test_prompts_are_left_padded_so_every_row_continues_at_the_same_position() -> None:
    batch = PromptCollator(pad_token_id=PAD)(prompt_items())
    assert tuple(batch["input_ids"].shape) == tuple(batch["attention_mask"].shape) == (2, 16)
    assert batch["input_ids"].tolist() == [[PAD] * 13 + [10, 11, 12], [PAD] * 7 + list(range(20, 29))]
    assert batch["attention_mask"].tolist() == [[0] * 13 + [1] * 3, [0] * 7 + [1] * 9]
    assert "labels" not in batch


def test_prompt_metadata_travels_in_item_order() -> None:
    batch = PromptCollator(pad_token_id=PAD)(prompt_items())
    assert batch["question"] == ["q1", "q2"]
    assert batch["expected"] == ["1", "2"]
    assert batch["kind"] == ["add_1d", None]


def test_pad_to_multiple_of_one_pads_only_to_the_longest() -> None:
    batch = PromptCollator(pad_token_id=PAD, pad_to_multiple_of=1)(prompt_items())
    assert batch["input_ids"].shape[1] == 9
    train = TrainCollator(pad_token_id=PAD, pad_to_multiple_of=1)([{"input_ids": [5, 6], "labels": [5, 6]}])
    assert train["input_ids"].tolist() == [[5, 6]]


def test_packed_batch_is_one_row_of_both_examples_with_restarting_positions() -> None:
    batch = packing_collator()(train_examples())
    assert set(batch) == {"input_ids", "labels", "position_ids"}  # no attention mask: positions mark the boundaries
    assert batch["input_ids"].tolist() == [[10, 11, 12, EOS, 13, 20, 21, 22, 23, 24, 25, 26, 27, 28, EOS]]
    assert batch["position_ids"].tolist() == [list(range(5)) + list(range(10))]
    # The answers keep their labels; the second example's first token is never a target of the first.
    assert batch["labels"].tolist() == [
        [IGNORE_INDEX, IGNORE_INDEX, 12, EOS, IGNORE_INDEX] + [IGNORE_INDEX] * 8 + [28, EOS]
    ]
    assert batch["labels"].dtype == batch["input_ids"].dtype == batch["position_ids"].dtype == torch.long


def test_packing_ignores_an_example_first_label_even_if_it_was_set() -> None:
    batch = packing_collator()([{"input_ids": [5, 6, 7], "labels": [5, 6, 7]}, {"input_ids": [8, 9], "labels": [8, 9]}])
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 6, 7, IGNORE_INDEX, 9]]


def test_token_counts_exclude_padding_and_split_packed_rows() -> None:
    assert count_tokens_and_examples(train_batch()) == (15, 2)  # 32 positions, 15 of them real
    assert count_tokens_and_examples(packing_collator()(train_examples())) == (15, 2)
