"""General prompts the base model writes itself, for replay.

A chat model asked to continue the user turn of its own template writes what a user would ask (the
idea of Magpie, Xu et al. 2024). Started from a question's first words ("What is", "¿Qué es"), it
writes short general questions of every kind it knows, with no data file and no download. Training
on the base model's replies to them keeps the adapter answering general questions as the base did;
a few hand-written templates would teach one style only.

Kept apart from what measures the tutor: prompts with digits (arithmetic, where the base model's
replies are the very mistakes training corrects) and prompts that nearly repeat a retention prompt
are dropped.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import torch
from peft import PeftModel

from src.data.chat_format import ChatFormatter
from src.data.collate import PromptCollator
from src.evaluation.reply_cache import ReplyCache, base_reply_key
from src.metrics.retention import normalize
from src.models.lora import base_model_outputs

OPENINGS = (
    "What is the", "What are", "What does", "How many", "How do", "How does", "Why do", "Why is", "Where is",
    "Who was", "Who is", "When did", "Which", "What color", "What kind of", "Can you explain", "Tell me",
    "Describe", "Name a", "Give me", "Explain", "Define", "Translate", "Is it true that",
    "¿Qué es", "¿Cuál es", "¿Cómo se", "¿Por qué", "¿Dónde está", "¿Quién", "Dime", "Explica",
)
"""First words of the user turns the base model completes: questions and requests in English and Spanish."""

SAMPLING = {"temperature": 0.9, "top_p": 0.95, "max_new_tokens": 32}
"""Sampled, not greedy: greedy would write the same question for every copy of an opening."""

NEAR_DUPLICATE = 0.6
"""Word-set overlap (Jaccard) at or above which a written prompt counts as a copy of a retention prompt."""

_MARK = "\u0000PROMPT\u0000"


def self_written_prompts(
    model: PeftModel, formatter: ChatFormatter, count: int, precision: str, exclude: Sequence[str] = (),
    cache: ReplyCache | None = None, seed: int = 0, batch_size: int = 32,
) -> list[str]:
    """Up to `count` distinct prompts written by the base model (adapter off), none near a prompt of `exclude`.

    The same `seed` for every run: the prompts are data, like a bundled file, so runs of other seeds
    replay the same prompts. The raw writing is cached like base replies (keyed by the model, the
    prompt format, the seed and the sampling), so a second run writes nothing; the filtering runs each time."""
    if count <= 0:
        return []
    starts = [OPENINGS[i % len(OPENINGS)] for i in range(2 * count)]  # twice as many: filtering drops some

    def write(batch: list[str]) -> list[str]:
        with base_model_outputs(model):
            return sample_user_turns(model, formatter, batch, seed, batch_size)

    if cache is None:
        written = write(starts)
    else:
        key = base_reply_key(model, formatter, SAMPLING["max_new_tokens"], precision) | {
            "self_prompts": {"seed": seed, "sampling": SAMPLING}
        }
        written = cache.get_or_generate(key, starts, write, label="self-written prompt")
    return keep_general_prompts((s + w for s, w in zip(starts, written)), exclude, count)


@torch.no_grad()
def sample_user_turns(
    model: torch.nn.Module, formatter: ChatFormatter, starts: Sequence[str], seed: int, batch_size: int = 32
) -> list[str]:
    """The model's continuation of a user turn that begins with each of `starts`, up to its first line break."""
    tokenizer = formatter.tokenizer
    prefix = user_turn_prefix(formatter)
    collate = PromptCollator(tokenizer.pad_token_id)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    written: list[str] = []
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            for first in range(0, len(starts), batch_size):
                items = [{"prompt_ids": tokenizer(prefix + s, add_special_tokens=False)["input_ids"],
                          "question": s, "expected": None, "kind": None} for s in starts[first : first + batch_size]]
                batch = collate(items)
                output = model.generate(
                    input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                    do_sample=True, top_k=None, eos_token_id=sorted(formatter.end_of_turn_ids),
                    pad_token_id=tokenizer.pad_token_id, **SAMPLING,
                )
                new = output[:, batch["input_ids"].shape[1] :]
                written.extend(text.split("\n")[0] for text in tokenizer.batch_decode(new, skip_special_tokens=True))
    finally:
        model.train(was_training)
    return written


def user_turn_prefix(formatter: ChatFormatter) -> str:
    """The rendered text before a user turn's content (system turn included), e.g. `<|im_start|>user\\n`."""
    rendered = formatter.render(formatter.with_system_prompt([{"role": "user", "content": _MARK}]))
    return rendered[: rendered.index(_MARK)]


def keep_general_prompts(written: Iterable[str], exclude: Sequence[str], count: int) -> list[str]:
    """The first `count` usable prompts of `written`: complete, digit-free, distinct and not near `exclude`."""
    excluded = [words(p) for p in exclude]
    kept: list[str] = []
    seen: set[frozenset[str]] = set()
    for prompt in written:
        prompt = prompt.strip()
        ws = words(prompt)
        if len(ws) < 3 or re.search(r"\d", prompt) or not prompt.endswith(("?", ".", "!")) or ws in seen:
            continue
        if any(jaccard(ws, other) >= NEAR_DUPLICATE for other in excluded):
            continue
        seen.add(ws)
        kept.append(prompt)
        if len(kept) == count:
            break
    return kept


def words(text: str) -> frozenset[str]:
    """The retention rule's normalised words: "¿Cuál es la capital?" and "cual es la capital" are the same."""
    return frozenset(normalize(text).split())


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0
