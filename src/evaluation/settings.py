"""The evaluation's grouped settings: `model.generation.*` and `model.retention.*` in a config."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GenerationSettings:
    """How held-out math questions are answered at validation.

    Args:
        max_new_tokens: generation budget for each math answer.
        wrong_answers_logged: how many wrong answers each validation shows in TensorBoard.
    """

    max_new_tokens: int = 32
    wrong_answers_logged: int = 5


@dataclass(frozen=True)
class RetentionSettings:
    """What the adapter keeps of the base model's general answers, measured beside math (`retain/*`).

    Args:
        dir: folder of the retention set (`checkable.jsonl`, `open.jsonl`); None: not measured.
        eval_size: base-right checkable items graded at each validation (a seeded subset); None: all.
        base_size: checkable items put to the base model (a seeded subset); None: all.
        extra_dirs: further retention sets by name, each graded whole (`retain/<name>/*`), e.g. one
            written apart from `dir` to check what was chosen on it.
    """

    dir: str | None = None
    eval_size: int | None = 64
    base_size: int | None = None
    extra_dirs: dict[str, str] | None = None
