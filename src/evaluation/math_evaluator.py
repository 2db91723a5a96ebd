"""Math accuracy of generated answers, per held-out set, for the tuned adapter and for the base model.

`MathEvaluator` holds one `MathAccuracy` and one `StepErrors` (which worked step fails, by type) per
held-out set (named by its prefix: "val", "indep") and a few wrong answers to show in TensorBoard; `evaluate_base` runs the untouched base model over the
same loaders before training, so base and tuned numbers come from the same questions and code.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

import torch
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from peft import PeftModel
from torchmetrics import MeanMetric

from src.data.contracts import HoldsMathSets
from src.evaluation.progress_lines import generation_progress
from src.evaluation.reply_cache import ReplyCache
from src.metrics.math_accuracy import MathAccuracy, graded_results
from src.metrics.step_checker import StepErrors
from src.models.lora import base_model_outputs

LOSS_LOADER = 0
"""The first validation loader computes the loss; then one loader of generation prompts per held-out set."""

WrongAnswer = tuple[str, str, str | None, str]  # question, reply, extracted answer, expected


class MathEvaluator(torch.nn.Module):
    """What a validation measures: exact-match accuracy per held-out set, with the first
    `wrong_answers_logged` wrong answers kept, and the loss on the reference answers."""

    def __init__(self, wrong_answers_logged: int = 5) -> None:
        super().__init__()
        self.wrong_answers_logged = wrong_answers_logged
        self.set_names: list[str] = ["val"]
        self.accuracies = torch.nn.ModuleDict({"val": MathAccuracy()})
        self.step_errors = torch.nn.ModuleDict({"val": StepErrors()})
        self.wrong_answers: list[WrongAnswer] = []
        self.loss = MeanMetric()

    def configure(self, set_names: Sequence[str], kinds: Sequence[str]) -> None:
        """One metric per set, each reporting `kinds` separately; kept when nothing changed."""
        names = list(set_names) or ["val"]
        if names != self.set_names or any(list(m.kinds) != list(kinds) for m in self.accuracies.values()):
            self.accuracies = torch.nn.ModuleDict({name: MathAccuracy(list(kinds)) for name in names})
            self.step_errors = torch.nn.ModuleDict({name: StepErrors() for name in names})
        self.set_names = names

    def configure_for(self, datamodule: object, budget: int) -> None:
        """The held-out sets and kinds of a `HoldsMathSets` data module (warning when `budget` tokens cut a
        reference answer short); any other data module's prompt loader is graded as `val`."""
        if isinstance(datamodule, HoldsMathSets):
            self.configure(datamodule.math_set_names, datamodule.math_kinds)
            warn_if_replies_are_cut(budget, datamodule.longest_reference_answer)
        else:
            self.configure(["val"], [])

    def set_of_loader(self, dataloader_idx: int) -> str:
        return self.set_names[dataloader_idx - 1]

    def grade(self, name: str, batch: Mapping[str, Any], replies: list[str]) -> None:
        self.accuracies[name].update(replies, batch["expected"], batch["kind"])
        self.step_errors[name].update(replies)
        room = self.wrong_answers_logged - len(self.wrong_answers)
        graded = graded_results(replies, batch["expected"])
        for question, reply, want, grade in zip(batch["question"], replies, batch["expected"], graded):
            if room > 0 and not grade.correct:
                self.wrong_answers.append((question, reply, grade.extracted, want))
                room -= 1

    def update_loss(self, loss: torch.Tensor, labels: torch.Tensor) -> None:
        """One batch's mean loss, weighted by its answer tokens so the epoch's loss is per token."""
        self.loss.update(loss, weight=(labels != -100).sum())

    def graded_sets(self) -> list[str]:
        return [name for name in self.set_names if self.accuracies[name].update_count]

    def epoch_metrics(self) -> dict[str, float]:
        """`val/loss` and `val/ppl` when a loss was given, and `compute` of every set graded since the last call."""
        metrics = {}
        if self.loss.update_count:
            loss = self.loss.compute()
            metrics = {"val/loss": float(loss), "val/ppl": float(torch.exp(loss))}
            self.loss.reset()
        return metrics | {key: value for name in self.graded_sets() for key, value in self.compute(name).items()}

    def compute(self, name: str) -> dict[str, float]:
        """`<set>/math_acc`, `_strict`, `_count`, `<set>/math_acc/<kind>` and `<set>/steps/<type>/...`;
        the metrics are reset."""
        metric, steps = self.accuracies[name], self.step_errors[name]
        values, step_values = metric.compute(), steps.compute()
        metric.reset()
        steps.reset()
        prefix = f"{name}/math_acc"
        names = {"acc": prefix, "acc_strict": f"{prefix}_strict", "count": f"{prefix}_count"}
        result = {names.get(key, f"{prefix}/{key.removeprefix('acc/')}"): float(v) for key, v in values.items()}
        return result | {f"{name}/{key}": float(v) for key, v in step_values.items()}

    def log_wrong_answers(self, logger: Logger | None, step: int, tag: str = "val/wrong_answers") -> None:
        """The collected wrong answers as a markdown table in TensorBoard; the list starts again empty."""
        wrong, self.wrong_answers = self.wrong_answers, []
        if wrong and isinstance(logger, TensorBoardLogger):
            logger.experiment.add_text(tag, wrong_answers_markdown(wrong), global_step=step)


def wrong_answers_markdown(wrong: Iterable[WrongAnswer]) -> str:
    escape = lambda text: str(text).replace("|", "\\|").replace("\n", " ⏎ ")  # noqa: E731 (markdown cells)
    rows = [f"| {escape(q)} | {escape(r)} | {escape(e)} | {escape(w)} |" for q, r, e, w in wrong]
    return "\n".join(["| question | output | extracted | expected |", "|---|---|---|---|", *rows])


def evaluate_base(
    evaluator: MathEvaluator,
    model: PeftModel,
    loaders: Mapping[str, Iterable[dict[str, Any]]],
    answer: Callable[[dict[str, Any]], list[str]],
    precision_context: AbstractContextManager[Any],
    loggers: Sequence[Logger],
    cache: ReplyCache | None = None,
    cache_key: dict[str, Any] | None = None,
) -> dict[str, float]:
    """Math accuracy of the base model on every held-out set's loader, logged at step 0 (`base/math_acc`
    for the validation set, `base/<prefix>/math_acc` for the others, and the plain keys at step 0).

    `precision_context` is the trainer's autocast, as in validation: base and tuned answers computed alike.
    With a `cache`, the answers are stored under `cache_key` plus the exact prompt batches (token ids and
    padding), so a second run of the same config grades the stored answers instead of generating them."""
    metrics: dict[str, float] = {}
    was_training = model.training
    model.eval()
    try:
        with base_model_outputs(model), precision_context:
            for name, loader in loaders.items():
                batches = list(loader)
                replies = _base_answers(name, batches, answer, cache, cache_key)
                offset = 0
                for batch in batches:
                    count = len(batch["question"])
                    evaluator.grade(name, batch, replies[offset : offset + count])
                    offset += count
                metrics |= evaluator.compute(name)
    finally:
        model.train(was_training)
    for logger in loggers:
        logger.log_metrics({f"base/{key.removeprefix('val/')}": v for key, v in metrics.items()}, step=0)
        logger.log_metrics(metrics, step=0)
    evaluator.log_wrong_answers(loggers[0] if loggers else None, 0, tag="base/wrong_answers")
    for name in loaders:
        key = f"{name}/math_acc"
        rank_zero_info(f"Base model math accuracy ({name}): {metrics[key]:.1%} on {int(metrics[key + '_count'])} items")
    return metrics


def _base_answers(
    name: str, batches: list[dict[str, Any]], answer: Callable[[dict[str, Any]], list[str]],
    cache: ReplyCache | None, cache_key: dict[str, Any] | None,
) -> list[str]:
    questions = [question for batch in batches for question in batch["question"]]
    label = f"Base model ({name})"

    def generate(_: list[str]) -> list[str]:
        return [reply for batch in generation_progress(batches, label, len(questions)) for reply in answer(batch)]

    if cache is None or cache_key is None:
        return generate(questions)
    key = {**cache_key, "set": name, "batches": _batches_digest(batches)}
    path = cache.path_for(key, questions)
    if path.is_file():
        rank_zero_info(f"{label}: {len(questions)} answers from the cache of an earlier run with the same model, "
                       f"questions, prompt format, budget and precision ({path})")
    return cache.get_or_generate(key, questions, generate, label=f"base math ({name})")


def _batches_digest(batches: list[dict[str, Any]]) -> str:
    """The prompts' token ids and padding, batch by batch: batching changes a padded row's numerics."""
    digest = hashlib.sha256()
    for batch in batches:
        for key in ("input_ids", "attention_mask"):
            tensor = batch[key].detach().cpu().contiguous()
            digest.update(f"{key}{tuple(tensor.shape)}".encode())
            digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def warn_if_replies_are_cut(budget: int, longest: Mapping[str, Any] | None) -> None:
    """A reply cut by the generation budget before its final answer is graded wrong: the reported
    accuracy would then measure the budget, not the tutor."""
    if longest is None or longest["tokens"] <= budget:
        return
    rank_zero_warn(
        f"model.generation.max_new_tokens is {budget}, but the longest reference answer in {longest['source']} takes "
        f"{longest['tokens']} tokens with its end of turn ({longest['question']!r}): a reply that long is cut "
        f"before its final answer and graded wrong. Set model.generation.max_new_tokens to at least {longest['tokens']}."
    )
