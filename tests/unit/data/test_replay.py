"""Replay: `replay_ratio` replay rows per task row, inserted among the task rows without reordering
them, the same list for the same seed, and every prompt used once before any is used twice."""

from __future__ import annotations

from collections import Counter

import pytest

from src.data.conversation import Record, make_record
from src.data.replay import REPLAY_KIND, mix_replay, replay_count, replay_records
from src.errors import ConfigurationError

PROMPTS = ["Describe a river.", "List three birds.", "Explain rain."]
REPLIES = ["A river is flowing water.", "Robin, crow, owl.", "Clouds drop water."]


def task_rows(count: int) -> list[Record]:
    return [
        make_record([{"role": "user", "content": f"{n} + 1?"}, {"role": "assistant", "content": str(n + 1)}],
                    kind="add_1d", expected=str(n + 1))
        for n in range(count)
    ]


def replay_prompt(record: Record) -> str:
    return record["messages"][0]["content"]


def replayed(mixed: list[Record]) -> list[Record]:
    return [r for r in mixed if r["kind"] == REPLAY_KIND]


def test_records_are_single_turn_pairs_of_prompt_and_base_reply() -> None:
    records = replay_records(PROMPTS, REPLIES)
    assert [r["messages"] for r in records] == [
        [{"role": "user", "content": p}, {"role": "assistant", "content": r}] for p, r in zip(PROMPTS, REPLIES)
    ]
    assert all(r["kind"] == REPLAY_KIND and r["expected"] is None for r in records)  # never graded as math


def test_empty_replies_are_skipped_and_replies_stripped() -> None:
    records = replay_records(PROMPTS, ["  Flowing water.\n", "", " \n "])
    assert [(replay_prompt(r), r["messages"][1]["content"]) for r in records] == [(PROMPTS[0], "Flowing water.")]


@pytest.mark.parametrize(
    "reply, kept",
    [
        ("Paris is the capital. It lies on the Seine and", "Paris is the capital."),  # cut by the token budget
        ('He said "stop." Then he left', 'He said "stop."'),
        ("Is it far? Yes! It is 3.5 km away.", "Is it far? Yes! It is 3.5 km away."),  # a decimal point ends nothing
        ("def add(a, b):\n    return a +", "def add(a, b):\n    return a +"),  # no sentence end: kept whole
    ],
)
def test_a_reply_ends_at_its_last_whole_sentence(reply: str, kept: str) -> None:
    (record,) = replay_records(["Say something."], [reply])
    assert record["messages"][1]["content"] == kept


def test_one_reply_per_prompt() -> None:
    with pytest.raises(ValueError, match="3 replay prompts but 2 replies"):
        replay_records(PROMPTS, REPLIES[:2])


@pytest.mark.parametrize(("task", "ratio", "expected"), [(100, 0.0, 0), (100, 0.1, 10), (100, 0.25, 25),
                                                          (7, 0.5, 4), (10, 1.0, 10), (4, 2.5, 10)])
def test_replay_rows_per_task_row(task: int, ratio: float, expected: int) -> None:
    assert replay_count(task, ratio) == expected
    mixed = mix_replay(task_rows(task), replay_records(PROMPTS, REPLIES), ratio, seed=0)
    assert len(replayed(mixed)) == expected and len(mixed) == task + expected


def test_the_task_rows_keep_their_order() -> None:
    task = task_rows(30)
    mixed = mix_replay(task, replay_records(PROMPTS, REPLIES), 0.5, seed=3)
    assert [r for r in mixed if r["kind"] != REPLAY_KIND] == task


def test_the_same_seed_gives_the_same_list() -> None:
    task, replay = task_rows(40), replay_records(PROMPTS, REPLIES)
    assert mix_replay(task, replay, 0.3, seed=7) == mix_replay(task, replay, 0.3, seed=7)
    seeds = {tuple(i for i, r in enumerate(mix_replay(task, replay, 0.3, seed=s)) if r["kind"] == REPLAY_KIND)
             for s in range(5)}
    assert len(seeds) > 1  # the seed does place the replay rows


def test_every_prompt_is_used_once_before_any_repeats() -> None:
    # 20 task rows at ratio 0.55 ask for 11 replay rows from 3 prompts: passes of 3, 3, 3 and 2.
    mixed = mix_replay(task_rows(20), replay_records(PROMPTS, REPLIES), 0.55, seed=1)
    order = [replay_prompt(r) for r in replayed(mixed)]
    assert len(order) == 11
    for start in range(0, 9, 3):
        assert sorted(order[start : start + 3]) == sorted(PROMPTS)
    assert len(set(order[9:])) == 2
    assert max(Counter(order).values()) - min(Counter(order).values()) <= 1


def test_ratio_zero_adds_nothing_even_without_replay_rows() -> None:
    task = task_rows(5)
    assert mix_replay(task, [], 0.0, seed=0) == task


@pytest.mark.parametrize("ratio", [-0.1, 10.5])
def test_a_ratio_out_of_range_names_the_key_and_the_range(ratio: float) -> None:
    with pytest.raises(ConfigurationError, match=r"data\.replay_ratio is .*between 0 and 10"):
        mix_replay(task_rows(5), replay_records(PROMPTS, REPLIES), ratio, seed=0)


def test_replay_asked_for_without_replay_rows_is_a_configuration_error() -> None:
    all_empty = replay_records(PROMPTS, ["", " ", "\n"])
    with pytest.raises(ConfigurationError, match=r"no replay records.*data\.replay_ratio: 0"):
        mix_replay(task_rows(5), all_empty, 0.2, seed=0)
