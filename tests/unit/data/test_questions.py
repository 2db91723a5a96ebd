"""Questions come from any training data format, or from bare question lists."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from src.data.conversation import DataFormatError
from src.data.questions import load_questions

EXAMPLES = Path(__file__).resolve().parents[3] / "tests" / "assets" / "formats"


@pytest.mark.parametrize("name", ["chat.jsonl", "instruction.json", "instruction.jsonl", "pokemon.txt", "sharegpt.jsonl"])
def test_every_training_format_gives_prompts_that_end_with_a_user_turn(name: str) -> None:
    questions = load_questions(EXAMPLES / name)
    assert questions
    for q in questions:
        assert q["messages"][-1]["role"] == "user" and q["question"] == q["messages"][-1]["content"]


def test_a_chat_item_keeps_earlier_turns_and_its_reference(tmp_path: Path) -> None:
    row = {
        "messages": [
            {"role": "user", "content": "¿Cuánto es 2 + 2?"},
            {"role": "assistant", "content": "4"},
            {"role": "user", "content": "¿Y por 3?"},
            {"role": "assistant", "content": "Respuesta: 12"},
        ],
        "kind": "mul_1d",
        "expected": 12,
    }
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")
    [q] = load_questions(path)
    assert q["messages"] == row["messages"][:3]
    assert (q["question"], q["expected"], q["kind"]) == ("¿Y por 3?", "12", "mul_1d")


def test_one_question_per_line_in_a_text_file(tmp_path: Path) -> None:
    path = tmp_path / "q.txt"
    path.write_text("¿Cuánto es 7 × 8?\n\n  What is 9 - 4?  \n", encoding="utf-8")
    questions = load_questions(path)
    assert [q["messages"] for q in questions] == [
        [{"role": "user", "content": "¿Cuánto es 7 × 8?"}],
        [{"role": "user", "content": "What is 9 - 4?"}],
    ]
    assert all(q["expected"] is None for q in questions)


def test_question_only_jsonl_with_optional_reference_and_system(tmp_path: Path) -> None:
    path = tmp_path / "q.jsonl"
    rows = [{"question": "¿Cuánto es 3 + 5?", "expected": 8, "kind": "add_1d"}, {"question": "Hola", "system": "Sé breve."}]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    first, second = load_questions(path)
    assert (first["question"], first["expected"], first["kind"]) == ("¿Cuánto es 3 + 5?", "8", "add_1d")
    assert second["messages"] == [{"role": "system", "content": "Sé breve."}, {"role": "user", "content": "Hola"}]


def test_bad_question_lines_are_all_reported_with_their_line(tmp_path: Path) -> None:
    path = tmp_path / "q.jsonl"
    path.write_text('{"question": "ok"}\n{"question": ""}\n{"question": 5}\n', encoding="utf-8")
    with pytest.raises(DataFormatError) as error:
        load_questions(path)
    message = str(error.value)
    assert "line 2: 'question' is missing or empty" in message and "line 3: 'question' must be a string" in message
