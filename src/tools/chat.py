"""`chat`: talk to the tutor in the terminal, tokens printed as they are generated.

    python -m src.cli chat --config configs/smollm2.yaml --model.adapter_path ADAPTER

The whole conversation is rendered with the training chat template and system prompt at every
turn, so the tutor sees what it saw in training. `/reset` starts a new conversation, `/exit` (or
Ctrl-D) leaves, Ctrl-C stops a reply. Greedy decoding unless `--temperature` is above 0.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from transformers import TextStreamer

from src.data.conversation import Message, with_system_turn
from src.training.tutor_module import TutorModule
from src.tools.config import build_tutor, parse, tutor_parser

PROMPT = "you> "
REPLY = "tutor> "
COMMANDS = "/reset starts over, /exit leaves"


@dataclass
class Sampling:
    """Decoding settings; temperature 0 means greedy (the default, as in validation)."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int | None = None

    def generate_kwargs(self) -> dict:
        if self.temperature <= 0:
            # Sampling settings from the checkpoint's generation_config would only raise warnings here.
            return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        return {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k}


@torch.no_grad()
def reply_to(module: TutorModule, history: list[Message], sampling: Sampling, streamer: TextStreamer | None = None) -> str:
    """The tutor's next turn after `history` (which ends with a user turn)."""
    tokenizer = module.tokenizer
    text = module.formatter.prompt_text(history)
    inputs = tokenizer(text, add_special_tokens=False, return_tensors="pt").to(module.device)
    output = module.model.generate(
        **inputs,
        max_new_tokens=sampling.max_new_tokens,
        eos_token_id=sorted(module.formatter.end_of_turn_ids),
        pad_token_id=tokenizer.pad_token_id,
        streamer=streamer,
        **sampling.generate_kwargs(),
    )
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def chat_loop(
    module: TutorModule,
    sampling: Sampling,
    read: Callable[[str], str] = input,
    write: Callable[[str], None] = print,
    system: str | None = None,
) -> list[Message]:
    """Read turns until /exit or end of input; returns the last conversation. `system` (the config's
    `data.task_system_prompt`) opens every conversation, as it opened the tutoring turns in training."""
    history: list[Message] = with_system_turn([], system)
    while True:
        try:
            line = read(PROMPT).strip()
        except EOFError:
            write("")
            return history
        if not line:
            continue
        if line == "/exit":
            return history
        if line == "/reset":
            history = with_system_turn([], system)
            write("(new conversation)")
            continue
        if line.startswith("/"):
            write(f"unknown command {line!r}: {COMMANDS}")
            continue
        history.append({"role": "user", "content": line})
        sys.stdout.write(REPLY)
        sys.stdout.flush()
        try:
            reply = reply_to(module, history, sampling, TextStreamer(module.tokenizer, skip_prompt=True, skip_special_tokens=True))
        except KeyboardInterrupt:
            history.pop()  # the question goes unanswered: ask again or go on
            write("\n(reply stopped)")
            continue
        history.append({"role": "assistant", "content": reply})


def main(argv: Sequence[str]) -> int:
    parser = tutor_parser("Chat with the tutor in the terminal.", "chat")
    parser.add_argument("--max_new_tokens", type=int, default=256, help="longest reply, in tokens")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 for greedy decoding (default)")
    parser.add_argument("--top_p", type=float, default=1.0, help="nucleus sampling share (with --temperature > 0)")
    parser.add_argument("--top_k", type=int | None, default=None, help="sample among the k likeliest tokens")
    parser.add_argument("--seed", type=int, default=0, help="seed of sampling")
    cfg = parse(parser, argv)
    module = build_tutor(parser, cfg)
    torch.manual_seed(cfg.seed)
    sampling = Sampling(cfg.max_new_tokens, cfg.temperature, cfg.top_p, cfg.top_k)
    source = cfg.model.adapter_path or "no adapter"
    decoding = "greedy" if cfg.temperature <= 0 else f"temperature {cfg.temperature}, top_p {cfg.top_p}"
    print(f"Tutor: {cfg.model.model_name} + {source} ({decoding}). {COMMANDS}.")
    if cfg.data.task_system_prompt is not None:
        print(f"Every conversation opens with the tutoring turn {cfg.data.task_system_prompt!r} "
              "(--data.task_system_prompt null to talk without it).")
    chat_loop(module, sampling, system=cfg.data.task_system_prompt)
    return 0
