"""Dataset statistics: exact values on a hand-made dataset, topic detection, and the two renderings."""

from __future__ import annotations

import pytest

from src.data.conversation import Message, Record, make_record
from src.data.stats import dataset_statistics, detect_topics, flatten_for_logging, format_statistics


def qa(question: str, kind: str | None = None, system: str | None = None, extra_turns: int = 0) -> Record:
    messages: list[Message] = [{"role": "system", "content": system}] if system else []
    messages += [{"role": "user", "content": question}, {"role": "assistant", "content": "…"}]
    messages += [{"role": "user", "content": "¿Y?"}, {"role": "assistant", "content": "…"}] * (extra_turns // 2)
    return make_record(messages, kind=kind, expected="0" if kind else None)


RECORDS = [
    qa("¿Cuánto es 45 + 27?", kind="add_2d"),
    qa("What is 31 + 12?", kind="add_2d"),
    qa("¿Cuánto es 12 ÷ 4?", kind="div"),
    qa("Calcula el 20% de 50"),
    qa("¿Cuánto es 3 × 4 - 2?", system="Eres un tutor.", extra_turns=2),  # 4 turns; system not counted
    qa("¿Qué tipo de Pokémon es Pikachu?"),
]
TOKEN_LENGTHS = [10, 20, 30, 40, 50, 150]  # the last one is longer than max_length
LABEL_COUNTS = [2, 4, 6, 8, 10, 20]


@pytest.fixture
def stats() -> dict:
    return dataset_statistics(RECORDS, TOKEN_LENGTHS, LABEL_COUNTS, truncated=1, max_length=100)


def test_statistics_of_a_hand_made_dataset(stats: dict) -> None:
    assert stats == {
        "examples": 6,
        # pN is the length N% of the examples do not exceed: 3 of 6 are <= 30, only 5 of 6 are <= 50.
        "tokens": {"p50": 30, "p90": 150, "p95": 150, "p99": 150, "max": 150, "mean": 50.0},
        "max_length": 100,
        "truncated": 1,
        "truncated_fraction": 1 / 6,
        # 50 labelled tokens out of 250 kept (the 150-token example counts as 100).
        "label_fraction": 0.2,
        "mean_turns": 14 / 6,
        "kinds": {"add_2d": 2, "div": 1},
        # Only records without a kind are scanned; the Pokémon question has no topic.
        "topics": {"multiplication": 1, "percentage": 1, "subtraction": 1},
    }


def test_percentiles_are_lengths_that_n_percent_of_examples_do_not_exceed() -> None:
    lengths = [(7 * i) % 100 + 1 for i in range(100)]  # 1..100 shuffled
    stats = dataset_statistics([qa("a")] * 100, lengths, [1] * 100, truncated=0, max_length=200)
    assert stats["tokens"] == {"p50": 50, "p90": 90, "p95": 95, "p99": 99, "max": 100, "mean": 50.5}


def test_format_statistics(stats: dict) -> None:
    assert format_statistics(stats) == (
        "Examples: 6 (mean 2.3 turns, system messages not counted)\n"
        "Tokens per example: p50 30, p90 150, p95 150, p99 150, max 150, mean 50.0\n"
        "Truncated: 1 (16.7%) longer than max_length=100\n"
        "Label tokens: 20.0% of the tokens kept\n"
        "Kinds: add_2d 2, div 1\n"
        "Topics: multiplication 1, percentage 1, subtraction 1"
    )


def test_format_statistics_leaves_out_empty_kind_and_topic_lines() -> None:
    stats = dataset_statistics([qa("Hola")], [8], [3], truncated=0, max_length=16)
    assert format_statistics(stats).splitlines()[-1] == "Label tokens: 37.5% of the tokens kept"


def test_flatten_for_logging(stats: dict) -> None:
    assert flatten_for_logging(stats) == {
        "data/examples": 6.0,
        "data/tokens/p50": 30.0,
        "data/tokens/p90": 150.0,
        "data/tokens/p95": 150.0,
        "data/tokens/p99": 150.0,
        "data/tokens/max": 150.0,
        "data/tokens/mean": 50.0,
        "data/max_length": 100.0,
        "data/truncated": 1.0,
        "data/truncated_fraction": 1 / 6,
        "data/label_fraction": 0.2,
        "data/mean_turns": 14 / 6,
        "data/kinds/add_2d": 2.0,
        "data/kinds/div": 1.0,
        "data/topics/multiplication": 1.0,
        "data/topics/percentage": 1.0,
        "data/topics/subtraction": 1.0,
    }
    assert list(flatten_for_logging({"a": {"b": 1}}, prefix="val_data/")) == ["val_data/a/b"]


@pytest.mark.parametrize(
    ("question", "topics"),
    [
        ("¿Cuánto es 45+27?", ["addition"]),
        ("Suma 4 y 5", ["addition"]),
        ("What is 5 + -3?", ["addition"]),  # a minus sign after an operator is a sign, not a subtraction
        ("Resta 9 de 15", ["subtraction"]),
        ("Calcula 8 − 3", ["subtraction"]),
        ("Subtract 5 from 9", ["subtraction"]),
        ("What is 7 x 8?", ["multiplication"]),
        ("Calcula 3*4", ["multiplication"]),
        ("Multiplica 6 por 7", ["multiplication"]),
        ("¿Cuánto es 12 ÷ 4?", ["division"]),
        ("Divide 10 entre 2", ["division"]),
        ("¿Qué es una división?", ["division"]),
        ("Suma las fracciones 1/2 y 1/3", ["addition", "division", "fraction"]),  # a/b reads as division too
        ("What is 20 percent of 50?", ["percentage"]),
        ("Calcula el porcentaje de aprobados", ["percentage"]),
        ("Reserva en el restaurante para 2", []),
        ("Box 3 has an e-mail", []),
    ],
)
def test_detect_topics(question: str, topics: list[str]) -> None:
    assert detect_topics(question) == topics


def test_mismatched_lengths_are_refused() -> None:
    expected = r"^got 2 records, 1 token lengths and 2 label counts; expected one of each per example$"
    with pytest.raises(ValueError, match=expected):
        dataset_statistics([qa("a"), qa("b")], [1], [1, 1], truncated=0, max_length=8)


def test_empty_dataset_is_refused() -> None:
    with pytest.raises(ValueError, match=r"^no records: statistics need at least one example$"):
        dataset_statistics([], [], [], truncated=0, max_length=8)
