"""Replay: the base model's own replies to general prompts, mixed into the task's training records.

Loss on those replies teaches the adapter to leave general behaviour as the base model had it (the
replies come from `src.evaluation.reply_cache`, generated once). `replay_ratio` counts replay rows
per task row: 0.1 adds one replay row for every ten task rows. When more replay rows are asked for
than there are prompts, the prompts are reused, each pass in a new order, so no prompt is seen twice
before every prompt is seen once.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

from src.data.conversation import Record, make_record
from src.errors import ConfigurationError

REPLAY_MAX_NEW_TOKENS = 64
"""Length of the base model's replay replies: a few sentences, as long as a worked math answer."""

_SENTENCE_END = re.compile(r"[.!?\u3002][\"')\]]*(?=\s|$)")

REPLAY_KIND = "replay"
"""The `kind` of replay records (their `expected` is None: they are never graded as math)."""


def replay_records(prompts: Sequence[str], replies: Sequence[str]) -> list[Record]:
    """One single-turn training record per (prompt, base reply) pair, each reply ending at a whole
    sentence; empty replies are skipped, since they would only teach the model to stop at once."""
    if len(prompts) != len(replies):
        raise ValueError(f"Got {len(prompts)} replay prompts but {len(replies)} replies; give one reply per prompt.")
    return [
        make_record([{"role": "user", "content": p}, {"role": "assistant", "content": whole_sentences(r)}],
                    kind=REPLAY_KIND)
        for p, r in zip(prompts, replies)
        if r.strip()
    ]


def whole_sentences(reply: str) -> str:
    """`reply` up to its last sentence end: a reply the token budget cut mid-sentence would teach the
    adapter to end its turn mid-sentence. A reply with no sentence end is kept whole."""
    reply = reply.strip()
    ends = [m.end() for m in _SENTENCE_END.finditer(reply)]
    return reply[: ends[-1]].rstrip() if ends else reply


def replay_count(task_rows: int, ratio: float) -> int:
    """How many replay rows `ratio` adds to `task_rows` task rows (rounded to the nearest row)."""
    if not 0.0 <= ratio <= 10.0:
        raise ConfigurationError(
            f"data.replay_ratio is {ratio}; expected replay rows per task row between 0 and 10 "
            "(0.1 = one replay row per ten task rows, 0 = no replay)"
        )
    return round(task_rows * ratio)


def mix_replay(task: Sequence[Record], replay: Sequence[Record], ratio: float, seed: int) -> list[Record]:
    """The task records in their order with `replay_count(len(task), ratio)` replay rows inserted at
    positions drawn from `seed`: the same seed gives the same list."""
    wanted = replay_count(len(task), ratio)
    if wanted == 0:
        return list(task)
    if not replay:
        raise ConfigurationError(
            f"data.replay_ratio is {ratio} but there are no replay records; give replay prompts with non-empty "
            "base replies, or set data.replay_ratio: 0"
        )
    rng = random.Random(seed)
    chosen: list[Record] = []
    while len(chosen) < wanted:
        order = list(replay)
        rng.shuffle(order)
        chosen.extend(order[: wanted - len(chosen)])
    # Slots 0..len(task) are the gaps before, between and after task rows; several replay rows may share one.
    gaps = sorted(rng.randrange(len(task) + 1) for _ in chosen)
    mixed: list[Record] = []
    cursor = 0
    for gap, record in zip(gaps, chosen):
        mixed.extend(task[cursor:gap])
        cursor = gap
        mixed.append(record)
    mixed.extend(task[cursor:])
    return mixed
