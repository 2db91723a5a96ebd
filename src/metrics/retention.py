"""Grading general answers and measuring degeneration: what fine-tuning costs the base model.

The checkable-answer rule, on texts normalised by `normalize` (lower case, accents stripped,
punctuation turned into spaces, thousands separators dropped so "1,000" and "1.000" read "1000"):

1. a reply is right when some accepted answer occurs in it as whole words ("paris" in "the capital
   is paris", never "10" inside "100");
2. unless it also names a contradicting candidate (a `reject`, such as another country's capital)
   that the prompt itself does not contain: "Paris or Lyon" is a hedge, not an answer, while a
   reply may repeat what the question says.

A paraphrase passes as long as it contains an accepted variant; the data lists the variants
(digits and words, ES/EN spellings).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from typing import Any

import torch
from torchmetrics import Metric
from torchmetrics.utilities.compute import _safe_divide

_THOUSANDS = re.compile(r"(?<=\d)[.,](?=\d{3}\b)")
_NOT_WORD = re.compile(r"[^a-z0-9]+")


def normalize(text: str) -> str:
    """Lower case, no accents, words separated by single spaces (`"¡Sí, 1.000 años!"` -> `"si 1000 anos"`)."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    plain = "".join(c for c in decomposed if not unicodedata.combining(c))
    return _NOT_WORD.sub(" ", _THOUSANDS.sub("", plain)).strip()


def contains_words(text: str, phrase: str) -> bool:
    """Whether `phrase` occurs in `text` as whole words, after normalising both."""
    words = normalize(phrase)
    return bool(words) and f" {words} " in f" {normalize(text)} "


def is_correct(reply: str, answers: Sequence[str], rejects: Sequence[str] = (), prompt: str = "") -> bool:
    """The checkable-answer rule of the module docstring."""
    if not any(contains_words(reply, answer) for answer in answers):
        return False
    return not any(contains_words(reply, r) and not contains_words(prompt, r) for r in rejects)


def repeated_ngram_share(reply: str, n: int = 4) -> float:
    """Share of the reply's word n-grams that repeat an earlier one: 0 for varied text, near 1 for a loop.

    Replies shorter than n words have no n-grams and score 0."""
    words = normalize(reply).split()
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


class RetentionAccuracy(Metric):
    """Accuracy on the checkable retention prompts, remembering which item was right.

    Per-item correctness is kept (indexed by the item's position in the set, `index`), so
    `kept_share(base, adapter)` can tell the share of the base model's right answers the adapter
    still gives (`retain/kept`), which plain accuracy hides: an adapter can gain and lose items.
    `compute()` returns `{"acc": ..., "count": ...}` as float32 scalars.

    Args:
        num_items: size of the checkable set (the length of the per-item state).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    correct: torch.Tensor
    graded: torch.Tensor

    def __init__(self, num_items: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if num_items < 1:
            raise ValueError(f"RetentionAccuracy(num_items={num_items}): the checkable set needs at least one item.")
        self.num_items = num_items
        # "max" across processes: each item is graded by one process, the others hold 0.
        self.add_state("correct", torch.zeros(num_items, dtype=torch.long), dist_reduce_fx="max")
        self.add_state("graded", torch.zeros(num_items, dtype=torch.long), dist_reduce_fx="max")

    def update(
        self,
        replies: Sequence[str],
        answers: Sequence[Sequence[str]],
        index: Sequence[int],
        rejects: Sequence[Sequence[str]] | None = None,
        prompts: Sequence[str] | None = None,
    ) -> None:
        """Grade a batch of replies; `index[i]` is reply i's position in the checkable set."""
        rejects = rejects if rejects is not None else [()] * len(replies)
        prompts = prompts if prompts is not None else [""] * len(replies)
        sizes = {"answers": len(answers), "index": len(index), "rejects": len(rejects), "prompts": len(prompts)}
        wrong = {k: v for k, v in sizes.items() if v != len(replies)}
        if wrong:
            raise ValueError(f"Got {len(replies)} replies but {wrong}; give one entry per reply.")
        bad = [i for i in index if not 0 <= i < self.num_items]
        if bad:
            raise ValueError(f"Item indices {bad} are outside the checkable set's 0..{self.num_items - 1}.")
        results = [is_correct(r, a, j, p) for r, a, j, p in zip(replies, answers, rejects, prompts)]
        where = torch.tensor(list(index), dtype=torch.long, device=self.correct.device)
        self.correct[where] = torch.tensor(results, dtype=torch.long, device=self.correct.device)
        self.graded[where] = 1

    def compute(self) -> dict[str, torch.Tensor]:
        count = self.graded.sum()
        return {"acc": _safe_divide((self.correct * self.graded).sum(), count), "count": count.float()}

    def per_item(self) -> torch.Tensor:
        """(num_items,) bool: which items were graded right (ungraded items read False)."""
        return (self.correct * self.graded).bool()


def kept_share(base_correct: torch.Tensor, adapter_correct: torch.Tensor) -> torch.Tensor:
    """Share of the items the base model got right that the adapter also gets right (`retain/kept`).

    1.0 when the base model got none right: nothing was there to lose."""
    if base_correct.shape != adapter_correct.shape:
        raise ValueError(f"Per-item results differ in shape: base {tuple(base_correct.shape)}, adapter "
                         f"{tuple(adapter_correct.shape)}; grade both on the same checkable set.")
    base = base_correct.bool()
    if not base.any():
        return torch.tensor(1.0)
    return (adapter_correct.bool() & base).sum().float() / base.sum().float()


class RepeatedNgrams(Metric):
    """Mean share of repeated word n-grams over replies (`retain/repeat`): degeneration into loops."""

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    total: torch.Tensor
    count: torch.Tensor

    def __init__(self, n: int = 4, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.n = n
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, replies: Sequence[str]) -> None:
        self.total += sum(repeated_ngram_share(r, self.n) for r in replies)
        self.count += len(replies)

    def compute(self) -> torch.Tensor:
        return _safe_divide(self.total.float(), self.count)
