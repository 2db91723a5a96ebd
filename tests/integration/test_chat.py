"""`chat` in a real terminal (a pseudo-terminal): streamed greedy turns that remember the
conversation until /reset, and /exit."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

from src.tools.chat import PROMPT, REPLY, Sampling, reply_to
from src.tools.config import build_tutor, tutor_parser

ROOT = Path(__file__).resolve().parents[2]
CONFIG = str(ROOT / "configs" / "smollm2.yaml")
QUESTIONS = ("¿Cuánto es 2 + 3?", "¿Y 4 + 4?")


class Terminal:
    """A child process on a pseudo-terminal, read until it prompts again."""

    def __init__(self, args: list[str]) -> None:
        self.master, slave = pty.openpty()
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, cwd=ROOT, env=env, close_fds=True)
        os.close(slave)
        self.transcript = ""

    def read_until(self, marker: str, count: int, timeout: float = 240.0) -> str:
        deadline = time.monotonic() + timeout
        while self.transcript.count(marker) < count:
            assert time.monotonic() < deadline, f"no {marker!r} #{count} within {timeout} s:\n{self.transcript}"
            ready, _, _ = select.select([self.master], [], [], 1.0)
            if ready:
                try:
                    chunk = os.read(self.master, 4096)
                except OSError:  # the child closed the terminal
                    chunk = b""
                if not chunk:
                    assert self.transcript.count(marker) >= count, f"the chat ended early:\n{self.transcript}"
                self.transcript += chunk.decode("utf-8", errors="replace").replace("\r\n", "\n")
        return self.transcript

    def type(self, line: str) -> None:
        os.write(self.master, (line + "\n").encode("utf-8"))

    def close(self) -> int:
        code = self.process.wait(timeout=60)
        os.close(self.master)
        return code


def replies_in(transcript: str) -> list[str]:
    """The text after each `tutor> ` up to the next prompt."""
    return [part.split(PROMPT)[0].strip() for part in transcript.split(REPLY)[1:]]


def test_a_chat_through_a_terminal_streams_greedy_turns_with_history_and_reset(tiny_model_dir, tiny_adapter_dir) -> None:
    model_args = ["--config", CONFIG, "--model.model_name", str(tiny_model_dir), "--model.adapter_path", str(tiny_adapter_dir)]
    terminal = Terminal([sys.executable, "-m", "src.cli", "chat", *model_args, "--max_new_tokens", "10", "--device", "cpu"])
    terminal.read_until(PROMPT, 1)
    terminal.type(QUESTIONS[0])
    terminal.read_until(PROMPT, 2)
    terminal.type(QUESTIONS[1])
    terminal.read_until(PROMPT, 3)
    terminal.type("/reset")
    terminal.read_until(PROMPT, 4)
    terminal.type(QUESTIONS[1])
    terminal.read_until(PROMPT, 5)
    terminal.type("/exit")
    assert terminal.close() == 0
    transcript = terminal.transcript
    assert "(new conversation)" in transcript

    # The same turns computed here, greedily: with the history, then after the reset without it.
    parser = tutor_parser("", "chat")
    module = build_tutor(parser, parser.parse_args([*model_args, "--device", "cpu"]))
    sampling = Sampling(max_new_tokens=10)
    first = reply_to(module, [{"role": "user", "content": QUESTIONS[0]}], sampling)
    history = [
        {"role": "user", "content": QUESTIONS[0]},
        {"role": "assistant", "content": first},
        {"role": "user", "content": QUESTIONS[1]},
    ]
    second = reply_to(module, history, sampling)
    fresh = reply_to(module, [{"role": "user", "content": QUESTIONS[1]}], sampling)
    assert replies_in(transcript) == [first.strip(), second.strip(), fresh.strip()]
    assert all(replies_in(transcript)), "each turn printed a reply"
    assert second != fresh, "the second turn was answered with the first one in view"
