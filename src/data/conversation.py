"""The one internal form every input format becomes: a conversation plus optional math metadata.

Q&A blocks, instruction pairs, chat JSONL and ShareGPT files are all parsed into `Record`s, so
formatting, label masking and evaluation never need to know where an example came from.
"""

from __future__ import annotations

from typing import Literal, TypedDict

from src.errors import TutorTuneError

Role = Literal["system", "user", "assistant"]
ROLES: tuple[str, ...] = ("system", "user", "assistant")


class Message(TypedDict):
    role: Role
    content: str


class Record(TypedDict):
    """One training or evaluation example.

    `kind` names the operation of an arithmetic item ("add_2d", "precedence", …) for per-kind
    accuracy; `expected` is its numeric answer as text ("68", "-3", "2.5"). Both are None for
    examples that are not graded arithmetic.
    """

    messages: list[Message]
    kind: str | None
    expected: str | None


class DataFormatError(TutorTuneError, ValueError):
    """Bad input data: the message names the file, the line or block, and what was expected."""

    def __init__(self, path: str, where: str | None, problem: str) -> None:
        location = f"{path}:{where}" if where else str(path)
        super().__init__(f"{location}: {problem}")
        self.path = str(path)
        self.where = where
        self.problem = problem


def make_record(messages: list[Message], kind: str | None = None, expected: str | None = None) -> Record:
    return {"messages": messages, "kind": kind, "expected": expected}


def with_system_turn(messages: list[Message], text: str | None) -> list[Message]:
    """`messages` opened by a system turn saying `text`, unless they have one already (or `text` is None)."""
    if text is None or (messages and messages[0]["role"] == "system"):
        return messages
    return [{"role": "system", "content": text}, *messages]


def mark_task_records(records: list[Record], text: str | None) -> list[Record]:
    """The task's records with `with_system_turn(text)`: the turn that tells tutoring from other talk."""
    if text is None:
        return records
    return [{**record, "messages": with_system_turn(record["messages"], text)} for record in records]
