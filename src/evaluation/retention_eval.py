"""What the adapter lost of the base model's general ability, measured cheaply enough for every validation.

The base model is measured once (its replies come from the reply cache when a previous run made
them): it answers every checkable item (or a seeded `checkable_size` of them) and every open prompt.
At each validation the adapter is graded only on items the base model answered right (it cannot keep
what the base never had), or on a fixed, seeded subset of them (`eval_size`), and on the base
model's open replies:

- `retain/kept`: share of those items the adapter still answers right;
- `retain/kl`: mean per-token KL(base || adapter) on the base's open replies, teacher-forced;
- `retain/repeat`: share of repeated word 4-grams in the adapter's open replies;
- `retain/same`: share of graded items the adapter answers word for word as the base did.

Generation is what costs. The checkable replies are short and generated at once. For the open
prompts, the KL's teacher-forced pass over the base replies also tells which of them the adapter's
greedy decoding would give again token for token; only the others are generated.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from peft import PeftModel

from src.data.chat_format import ChatFormatter
from src.data.retention import CHECKABLE_FILE, OPEN_FILE, CheckableItem, load_checkable, load_open
from src.errors import TutorTuneError
from src.evaluation.kl import reply_batches, teacher_forced_rows
from src.evaluation.reply_cache import ReplyCache, cached_base_replies, greedy_replies
from src.evaluation.settings import RetentionSettings
from src.metrics.retention import RepeatedNgrams, RetentionAccuracy, is_correct, kept_share

log = logging.getLogger(__name__)

SECONDS_KEY = "retain/seconds"
"""Seconds one measurement of every retention set took (base or adapter): the cost the run reports."""


class OpenReplies(NamedTuple):
    replies: list[str]
    reproduced: list[bool]  # the teacher-forced pass showed greedy decoding gives the base's reply: not generated
    kl: float  # mean per-token KL(base || adapter) over the base replies, in nats


class RetentionEvaluator:
    """Base-model replies measured once; the adapter's retention of them measured on demand.

    Args:
        checkable: the checkable items (`load_checkable`), graded by the answer rule.
        open_prompts: open prompts (`load_open`'s `prompt`s): KL targets and degeneration probes.
        max_new_tokens: reply budget for checkable items; the answers are a word or a number.
        open_max_new_tokens: reply budget for open prompts.
        batch_size: rows per generation and per teacher-forced batch.
        checkable_size: at most this many checkable items answered by the base model (a seeded
            subset), for a first run with no cached base replies; None answers all of them.
        eval_size: at most this many base-right items graded at each validation, a subset drawn
            once from `seed`; None grades all of them.
        open_eval_size: at most this many open prompts (a seeded subset); None uses all.
        seed: draws the subsets, so every validation of a run grades the same items.
        cache: where base replies are kept between runs; None generates them every time.
        prefix: the metrics' namespace (`retain/kept`, or `retain/indep/kept` for a second set).
    """

    def __init__(
        self,
        checkable: Sequence[CheckableItem],
        open_prompts: Sequence[str],
        max_new_tokens: int = 24,
        open_max_new_tokens: int = 48,
        batch_size: int = 32,
        checkable_size: int | None = None,
        eval_size: int | None = None,
        open_eval_size: int | None = None,
        seed: int = 0,
        cache: ReplyCache | None = None,
        prefix: str = "retain",
    ) -> None:
        if not checkable or not open_prompts:
            raise ValueError("RetentionEvaluator needs at least one checkable item and one open prompt.")
        self.checkable = _seeded_subset(list(checkable), checkable_size, seed)
        self.max_new_tokens, self.open_max_new_tokens = max_new_tokens, open_max_new_tokens
        self.batch_size, self.eval_size, self.seed, self.cache = batch_size, eval_size, seed, cache
        self.open_prompts = _seeded_subset(list(open_prompts), open_eval_size, seed)
        self.base_correct: torch.Tensor | None = None
        """(len(checkable),) bool: the base model's grade of every item; None until measured."""
        self.base_replies: list[str] = []
        self.graded: list[int] = []
        """Indices of the items graded at validation (base-right, at most `eval_size`)."""
        self.base_open_replies: list[str] = []
        self.prefix = prefix

    @property
    def measured(self) -> bool:
        """Whether the base model's replies are known (measured, or restored from a checkpoint)."""
        return self.base_correct is not None

    @classmethod
    def from_folder(
        cls, folder: str | Path, eval_size: int | None, seed: int, base_size: int | None = None, **kwargs: Any
    ) -> "RetentionEvaluator":
        """The evaluator over a retention folder's `checkable.jsonl` and `open.jsonl`, base replies cached;
        `base_size` puts only a seeded subset of the checkable items to the base model (None: all)."""
        folder = Path(folder)
        checkable = load_checkable(folder / CHECKABLE_FILE)
        open_prompts = [item["prompt"] for item in load_open(folder / OPEN_FILE)]
        return cls(checkable, open_prompts, eval_size=eval_size, checkable_size=base_size, seed=seed,
                   cache=ReplyCache(), **kwargs)

    # ----------------------------------------------------------------------------- the base model
    def measure_base(
        self, model: PeftModel, formatter: ChatFormatter, precision_key: str, model_source: str | None = None
    ) -> dict[str, float]:
        """The base model's replies (adapter off), graded; from the reply cache when it holds them.

        `precision_key` and `model_source` enter the cache key (see `base_reply_key`): replies made
        under another precision or from another model are never reused."""
        prompts = [item["prompt"] for item in self.checkable]
        self.base_replies = cached_base_replies(model, formatter, prompts, self.max_new_tokens, precision_key,
                                                model_source, "retention (checkable)", self.cache, self.batch_size)
        self.base_open_replies = cached_base_replies(model, formatter, self.open_prompts, self.open_max_new_tokens,
                                                     precision_key, model_source, "retention (open)", self.cache,
                                                     self.batch_size)
        grades = [is_correct(reply, item["answers"], item["rejects"], item["prompt"])
                  for reply, item in zip(self.base_replies, self.checkable)]
        self.base_correct = torch.tensor(grades, dtype=torch.bool)
        self.graded = _seeded_subset([i for i, right in enumerate(grades) if right], self.eval_size, self.seed)
        repeat = RepeatedNgrams()
        repeat.update(self.base_open_replies)
        return self._named({"acc": sum(grades) / len(grades), "repeat": float(repeat.compute()),
                            "count": float(len(grades))})

    # ----------------------------------------------------------------------------- the adapter
    def measure_adapter(self, model: PeftModel, formatter: ChatFormatter) -> dict[str, float]:
        """Retention of the adapter now on `model` (see the module docstring for the keys).

        `retain/acc` is the adapter's accuracy on the graded items; since only base-right items are
        graded, it equals `retain/kept`. `retain/count` is how many items were graded."""
        if not self.measured:
            raise RuntimeError("RetentionEvaluator.measure_adapter before measure_base (or load_state_dict): "
                               "there are no base replies to compare with.")
        items = [self.checkable[i] for i in self.graded]
        base_replies = [self.base_replies[i] for i in self.graded]
        # Generated outright: teacher-forcing a short reply costs as much as generating it (same tokens
        # through the model), so checking first would only pay off for the items the adapter kept.
        started = time.perf_counter()
        replies = greedy_replies(model, formatter.tokenizer, formatter, [i["prompt"] for i in items],
                                 self.max_new_tokens, self.batch_size) if items else []
        log.info("retention: %d checkable replies (budget %d tokens) generated in %.1f s", len(items),
                 self.max_new_tokens, time.perf_counter() - started)
        accuracy = RetentionAccuracy(len(self.checkable))
        if items:
            accuracy.update(replies, [i["answers"] for i in items], self.graded,
                            [i["rejects"] for i in items], [i["prompt"] for i in items])
        graded = torch.zeros_like(self.base_correct)
        graded[torch.tensor(self.graded, dtype=torch.long)] = True
        opened = self._open_replies(model, formatter)
        repeat = RepeatedNgrams()
        repeat.update(opened.replies)
        return self._named({
            "acc": float(accuracy.compute()["acc"]),
            "kept": float(kept_share(self.base_correct & graded, accuracy.per_item())),
            "kl": opened.kl,
            "repeat": float(repeat.compute()),
            "same": sum(a == b for a, b in zip(replies, base_replies)) / len(items) if items else 1.0,
            "count": float(len(items)),
        })

    def _named(self, metrics: dict[str, float]) -> dict[str, float]:
        return {f"{self.prefix}/{key}": value for key, value in metrics.items()}

    def _open_replies(self, model: PeftModel, formatter: ChatFormatter) -> OpenReplies:
        """The adapter's greedy replies to the open prompts and its KL from the base on the base's replies.

        The KL's teacher-forced pass gives the adapter's argmax at every reply position for free: where
        it reproduces the base reply, greedy decoding would give that reply again, so only the other
        prompts are generated."""
        prompts, base, budget = self.open_prompts, self.base_open_replies, self.open_max_new_tokens
        reproduced: list[bool] = []
        kl_total, kl_tokens = 0.0, 0
        for batch in reply_batches(formatter, prompts, base, self.batch_size):
            on_device = {name: tensor.to(model.device) for name, tensor in batch.items()}
            rows = teacher_forced_rows(model, **on_device, budget=budget, end_of_turn_ids=formatter.end_of_turn_ids)
            reproduced.extend(rows.reproduced.tolist())
            kl_total, kl_tokens = kl_total + float(rows.kl.sum()), kl_tokens + int(rows.tokens.sum())
        # Generated too: a reply whose text tokenizes to other tokens than were generated (a multi-byte
        # character cut at the budget) is usually not the argmax path, even of the base model.
        redo = [i for i, same in enumerate(reproduced) if not same]
        started = time.perf_counter()
        fresh = greedy_replies(model, formatter.tokenizer, formatter, [prompts[i] for i in redo], budget,
                               self.batch_size) if redo else []
        log.info("retention: %d of %d open replies (budget %d tokens) reproduced by teacher forcing, %d generated "
                 "in %.1f s", len(prompts) - len(redo), len(prompts), budget, len(redo), time.perf_counter() - started)
        replies = list(base)
        for i, reply in zip(redo, fresh):
            replies[i] = reply
        return OpenReplies(replies, reproduced, kl_total / kl_tokens if kl_tokens else 0.0)

    # ----------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """The base model's results, so a resumed run compares with the same base replies."""
        return {
            "item_ids": [item["id"] for item in self.checkable],
            "open_prompts": list(self.open_prompts),
            "base_correct": None if self.base_correct is None else self.base_correct.tolist(),
            "base_replies": list(self.base_replies),
            "graded": list(self.graded),
            "base_open_replies": list(self.base_open_replies),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        ids = [item["id"] for item in self.checkable]
        if state["item_ids"] != ids or state["open_prompts"] != self.open_prompts:
            raise TutorTuneError(
                "The checkpoint's retention state was measured on other retention items or open prompts than "
                "this run's (the retention files, their eval sizes or the seed changed); resume with the "
                "same retention settings, or start the run again to measure the base model anew."
            )
        correct = state["base_correct"]
        self.base_correct = None if correct is None else torch.tensor(correct, dtype=torch.bool)
        self.base_replies = list(state["base_replies"])
        self.graded = list(state["graded"])
        self.base_open_replies = list(state["base_open_replies"])


def _seeded_subset(values: list[Any], size: int | None, seed: int) -> list[Any]:
    """At most `size` of `values`, drawn from `seed`, in their original order."""
    if size is None or size >= len(values):
        return values
    return [values[i] for i in sorted(random.Random(seed).sample(range(len(values)), size))]


class RetentionSets:
    """The retention set `model.retention.dir` names (`retain/*`) and any further ones (`retain/<name>/*`),
    measured alike: a second set, written apart from the first, says whether what the recipe was
    chosen on (replay, the retention floor) generalises."""

    def __init__(self, main: RetentionEvaluator | None, extra: dict[str, RetentionEvaluator]) -> None:
        self.main, self.extra = main, extra
        self.evaluators = ([main] if main is not None else []) + list(extra.values())

    @classmethod
    def from_settings(cls, settings: RetentionSettings, seed: int) -> RetentionSets | None:
        """The sets `model.retention.*` asks for; None when it names none (not measured). Further sets
        (`extra_dirs`) are graded whole: each holds only a few base-right items."""
        extra = dict(settings.extra_dirs or {})
        for name in extra:
            if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
                raise TutorTuneError(f"model.retention.extra_dirs has the set name {name!r}; expected letters, "
                                     "digits, '_' or '-' (it becomes the metrics' prefix retain/<name>/)")
        if not settings.dir and not extra:
            return None
        main = RetentionEvaluator.from_folder(settings.dir, settings.eval_size, seed, settings.base_size) \
            if settings.dir else None
        return cls(main, {name: RetentionEvaluator.from_folder(folder, None, seed, prefix=f"retain/{name}")
                          for name, folder in extra.items()})

    @property
    def measured(self) -> bool:
        return all(evaluator.measured for evaluator in self.evaluators)

    def measure_base(self, model: PeftModel, formatter: ChatFormatter, precision_key: str) -> dict[str, float]:
        """Every set's base metrics, and `retain/seconds`: what measuring them cost (the run reports its share)."""
        started = time.perf_counter()
        metrics: dict[str, float] = {}
        for evaluator in self.evaluators:
            metrics |= evaluator.measure_base(model, formatter, precision_key)
        return metrics | {SECONDS_KEY: time.perf_counter() - started}

    def measure_adapter(self, model: PeftModel, formatter: ChatFormatter) -> dict[str, float]:
        """Every set's retention of the adapter now on `model`, and `retain/seconds` this measurement took."""
        started = time.perf_counter()
        metrics: dict[str, float] = {}
        for evaluator in self.evaluators:
            metrics |= evaluator.measure_adapter(model, formatter)
        return metrics | {SECONDS_KEY: time.perf_counter() - started}

    def state_dict(self) -> dict[str, Any]:
        """The main set's state (as a checkpoint with one set holds it) and each further set's under `sets`."""
        state = self.main.state_dict() if self.main is not None else {}
        return state | {"sets": {name: evaluator.state_dict() for name, evaluator in self.extra.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the sets the checkpoint measured; a set it lacks (added since) is measured again."""
        if self.main is not None and "item_ids" in state:
            self.main.load_state_dict(state)
        for name, saved in state.get("sets", {}).items():
            if name in self.extra:
                self.extra[name].load_state_dict(saved)
