"""`chat_loop` opens every conversation with the config's tutoring turn (`data.task_system_prompt`), as
training opened the task's rows, and starts over with it after /reset."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from src.tools import chat
from src.tools.chat import Sampling, chat_loop

TURN = {"role": "system", "content": "Math tutor."}


@pytest.fixture
def seen(monkeypatch: pytest.MonkeyPatch) -> list[list[dict]]:
    histories: list[list[dict]] = []

    def reply(module, history, sampling, streamer=None) -> str:
        histories.append([dict(m) for m in history])
        return "ok"

    monkeypatch.setattr(chat, "reply_to", reply)
    monkeypatch.setattr(chat, "TextStreamer", lambda *args, **kwargs: None)
    return histories


def typed(*lines: str):
    pending = list(lines)

    def read(prompt: str) -> str:
        if not pending:
            raise EOFError
        return pending.pop(0)

    return read


def test_every_conversation_opens_with_the_tutoring_turn(seen: list[list[dict]]) -> None:
    last = chat_loop(SimpleNamespace(tokenizer=None), Sampling(), read=typed("2 + 3?", "/reset", "4 + 4?"), write=lambda _: None, system="Math tutor.")
    assert seen[0] == [TURN, {"role": "user", "content": "2 + 3?"}]
    assert seen[1] == [TURN, {"role": "user", "content": "4 + 4?"}]  # /reset kept the turn, dropped the rest
    assert last[0] == TURN


def test_without_one_the_conversation_is_the_users_turns_alone(seen: list[list[dict]]) -> None:
    chat_loop(SimpleNamespace(tokenizer=None), Sampling(), read=typed("2 + 3?"), write=lambda _: None)
    assert seen == [[{"role": "user", "content": "2 + 3?"}]]
