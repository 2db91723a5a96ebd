"""Progress as printed lines for generation passes, shared by validation's progress and the base evaluation.

`generation_progress` wraps loops outside the Trainer's (the base model's evaluation), which Lightning's
progress bars never see.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any

from lightning.pytorch.utilities import rank_zero_info


def duration(seconds: float) -> str:
    """'42s', '3m05s', '1h02m': short enough for a progress line."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def questions_in(batch: Any) -> int:
    """Questions in a generation batch (its `question` list), else its first dimension."""
    if isinstance(batch, dict) and "question" in batch:
        return len(batch["question"])
    ids = batch.get("input_ids") if isinstance(batch, dict) else None
    return int(ids.shape[0]) if ids is not None else 0


def pass_line(label: str, answered: int, total: int | None, seconds: float) -> str:
    return f"{label}: {answered}/{total if total is not None else '?'} questions answered, elapsed {duration(seconds)}"


def generation_progress(batches: Iterable[Any], label: str, total: int | None = None,
                        every_n_seconds: float = 60.0) -> Iterator[Any]:
    """Yield `batches`, saying first how many questions the pass answers, after the first batch roughly how
    long it takes, then a line every `every_n_seconds` and at the end (on a terminal too: no bar covers it)."""
    if total is None:
        total = len(getattr(batches, "dataset", ()) or ()) or None
    rank_zero_info(f"{label}: answering {total if total is not None else 'the'} questions")
    started = last = time.monotonic()
    answered = 0
    for batch in batches:
        yield batch
        answered += questions_in(batch)
        now = time.monotonic()
        if answered == questions_in(batch) and total and answered < total:
            rank_zero_info(f"{label}: about {duration((now - started) / answered * total)} for {total} questions "
                           f"(from the first {answered})")
            last = now
        elif now - last >= every_n_seconds:
            rank_zero_info(pass_line(label, answered, total, now - started))
            last = now
    rank_zero_info(pass_line(label, answered, total, time.monotonic() - started))
