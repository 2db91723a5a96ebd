"""Questions to put to a trained tutor: from any training data format, or from bare question lists.

A training file gives each item's prompt (the conversation up to its last answer) and, for graded
arithmetic, the expected number. A file of bare questions has no answers at all: one question per
line (`.txt` without `###` blocks or `Pregunta:` labels), or JSON/JSONL objects with a `question`
and no `answer` (optional `expected`, `kind`, `system`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, TypedDict

from src.data.conversation import DataFormatError, Message, Record
from src.data.formats import RecordError, json_items, read_text, describe_value, load_records

_QA_MARKERS = re.compile(r"^\s*(#{3,}\s*$|(pregunta|question|respuesta|answer)\s*:)", re.IGNORECASE | re.MULTILINE)


class Question(TypedDict):
    """A prompt ending with a user turn, with the reference answer when one is known."""

    messages: list[Message]
    question: str
    expected: str | None
    kind: str | None


def load_questions(path: str | Path, format: str = "auto") -> list[Question]:
    """Questions of `path`: bare ones if the file has no answers, else the prompts of its records."""
    path = Path(path)
    if format == "auto":
        text = read_text(path)
        suffix = path.suffix.lower()
        if suffix == ".txt" and text.strip() and not _QA_MARKERS.search(text):
            return _question_lines(text)
        if suffix in (".json", ".jsonl") and text.strip():
            items = json_items(text, str(path))
            first = next((obj for _, obj in items if isinstance(obj, dict)), None)
            if first is not None and "question" in first and "answer" not in first:
                return _question_objects(items, str(path))
    return [question_of(record) for record in load_records(path, format)]


def question_of(record: Record) -> Question:
    """The record's conversation up to its last assistant turn, as validation prompts it."""
    messages = record["messages"]
    last_answer = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=len(messages))
    prompt = messages[:last_answer]
    return {"messages": prompt, "question": prompt[-1]["content"], "expected": record["expected"], "kind": record["kind"]}


def _question_lines(text: str) -> list[Question]:
    return [_bare(line.strip()) for line in text.split("\n") if line.strip()]


def _bare(text: str, expected: str | None = None, kind: str | None = None, system: str | None = None) -> Question:
    messages: list[Message] = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": text})
    return {"messages": messages, "question": text, "expected": expected, "kind": kind}


def _question_objects(items: list[tuple[str, Any]], path: str) -> list[Question]:
    """`{"question": ..., "expected"?: ..., "kind"?: ..., "system"?: ...}` objects; every bad one is listed."""
    questions, problems = [], []
    for where, obj in items:
        try:
            questions.append(_question_object(obj))
        except RecordError as error:
            problems.append(f"  {where}: {error}")
    if problems:
        raise DataFormatError(path, None, f"{len(problems)} problems:\n" + "\n".join(problems))
    return questions


def _question_object(obj: Any) -> Question:
    if isinstance(obj, RecordError):
        raise obj
    if not isinstance(obj, dict):
        raise RecordError(f"expected a JSON object with 'question', got {describe_value(obj)}")
    values = {}
    for key in ("question", "expected", "kind", "system"):
        value = obj.get(key)
        if key == "expected" and isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        if value is not None and not isinstance(value, str):
            raise RecordError(f"'{key}' must be a string, got {describe_value(value)}")
        values[key] = value
    if not values["question"] or not values["question"].strip():
        raise RecordError("'question' is missing or empty")
    return _bare(values["question"], values["expected"], values["kind"], values["system"])
