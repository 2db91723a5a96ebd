"""Exact-match arithmetic accuracy over generated tutor replies, overall and per operation kind."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torchmetrics import Metric
from torchmetrics.utilities.compute import _safe_divide

from src.metrics.answer_extraction import answers_match, extract_answer

OTHER = "other"
"""Name of the slot that counts items whose kind is None or not in `kinds`."""


class GradedReply(NamedTuple):
    """One reply's lenient grade: what was read from it, and whether that equals the expected."""

    extracted: str | None
    correct: bool


def graded_results(replies: Sequence[str], expected: Sequence[str]) -> list[GradedReply]:
    """Grade each reply leniently, so callers can show which answers were wrong and why."""
    _check_lengths(replies, expected=expected)
    graded = []
    for reply, want in zip(replies, expected):
        extracted = extract_answer(reply)
        graded.append(GradedReply(extracted, answers_match(extracted, want)))
    return graded


class MathAccuracy(Metric):
    """Share of replies whose final answer equals the expected number.

    `compute()` returns float32 scalars (floats so the dict can go straight to `log_dict`):
      - `acc`: lenient accuracy, the answer found by any rule of `extract_answer`;
      - `acc_strict`: only answers given as "Respuesta: N" / "Answer: N" count, which tells
        whether the model learnt the answer format as well as the arithmetic;
      - `acc/<kind>`: lenient accuracy of each kind in `kinds` with at least one item, and
        `acc/other` for items of no or an unknown kind (only when `kinds` is not empty,
        since it would repeat `acc` otherwise);
      - `count`: number of graded replies.
    With no replies every accuracy is 0.

    Counts are per-kind tensors rather than a dict keyed by kind, because only tensor states
    can be summed across processes.

    Args:
        kinds: the operation kinds to report separately ("add_2d", "precedence", …).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    correct: torch.Tensor
    correct_strict: torch.Tensor
    total: torch.Tensor

    def __init__(self, kinds: Sequence[str] = (), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.kinds = tuple(kinds)
        repeated = sorted({k for k in self.kinds if self.kinds.count(k) > 1})
        problems = [f"{k!r} is repeated" for k in repeated]
        if OTHER in self.kinds:
            problems.append(f"{OTHER!r} is reserved for items of no or an unknown kind")
        if problems:
            raise ValueError(f"Invalid kinds {list(self.kinds)}: {'; '.join(problems)}.")
        self._slot = {kind: i for i, kind in enumerate(self.kinds)}
        slots = len(self.kinds) + 1  # the last slot is OTHER
        for name in ("correct", "correct_strict", "total"):
            self.add_state(name, torch.zeros(slots, dtype=torch.long), dist_reduce_fx="sum")

    def update(
        self, replies: list[str], expected: list[str], kinds: list[str | None] | None = None
    ) -> None:
        """Grade a batch of replies against their expected answers, counting by kind."""
        _check_lengths(replies, expected=expected, kinds=kinds)
        other = len(self.kinds)
        item_kinds = kinds if kinds is not None else [None] * len(replies)
        slots = [other if k is None else self._slot.get(k, other) for k in item_kinds]
        lenient = [g.correct for g in graded_results(replies, expected)]
        strict = [
            answers_match(extract_answer(r, strict=True), e) for r, e in zip(replies, expected)
        ]

        device = self.total.device
        index = torch.tensor(slots, dtype=torch.long, device=device)  # (N,)
        self.total.index_add_(0, index, torch.ones_like(index))
        self.correct.index_add_(0, index, torch.tensor(lenient, dtype=torch.long, device=device))
        self.correct_strict.index_add_(
            0, index, torch.tensor(strict, dtype=torch.long, device=device)
        )

    def compute(self) -> dict[str, torch.Tensor]:
        """Accuracies and count as float32 scalars; see the class docstring for the keys."""
        count = self.total.sum()
        result = {
            "acc": _safe_divide(self.correct.sum(), count),
            "acc_strict": _safe_divide(self.correct_strict.sum(), count),
        }
        names = [*self.kinds, OTHER] if self.kinds else []
        for i, name in enumerate(names):
            if self.total[i] > 0:
                result[f"acc/{name}"] = _safe_divide(self.correct[i], self.total[i])
        result["count"] = count.float()
        return result


def _check_lengths(replies: Sequence[str], **others: Sequence[Any] | None) -> None:
    wrong = {name: len(v) for name, v in others.items() if v is not None and len(v) != len(replies)}
    if wrong:
        sizes = ", ".join(f"{name}={size}" for name, size in wrong.items())
        raise ValueError(f"Got {len(replies)} replies but {sizes}; give one entry per reply.")
