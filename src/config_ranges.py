"""Range checks for every numeric and choice setting of the model, the data and the project's callbacks.

The parser checks types only: a zero batch size or a negative LoRA rank parse fine and then end in a
library traceback minutes later, or silently do something else. These checks run on the parsed config
before anything is built (so a refused run writes nothing), collect every problem, and raise them
together as one `ConfigurationError`, each naming the key, the value given and the accepted range
(as litgpt's `validate_args` does).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from src.data.formats import FORMATS
from src.errors import ConfigurationError
from src.models.attention import ATTN_IMPLEMENTATIONS, TRAIN_ATTN_IMPLEMENTATIONS
from src.models.lora import is_pissa
from src.models.optimizers import OPTIMIZERS
from src.models.precision import BASE_WEIGHTS
from src.models.quantization import QUANTIZATIONS

SEED_MAX = 2**32 - 1  # numpy's and Lightning's seed_everything's limit
# transformers' `get_scheduler` names that need nothing beyond warmup and total steps.
LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
                 "inverse_sqrt")


@dataclass(frozen=True)
class Rule:
    """An accepted range: `accepts(value)` and how the message describes it."""

    accepts: Callable[[Any], bool]
    described: str
    nullable: bool = False

    def problem(self, key: str, value: Any) -> str | None:
        if value is None and self.nullable:
            return None
        if value is not None and self.accepts(value):
            return None
        shown = "null" if value is None else repr(value)
        return f"{key}: {shown}; expected {self.described}{' or null' if self.nullable else ''}"


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def integer(low: int, high: int | None = None, nullable: bool = False) -> Rule:
    def accepts(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= low and (high is None or v <= high)

    described = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"
    return Rule(accepts, described, nullable)


def real(low: float, high: float | None = None, low_open: bool = False, high_open: bool = True,
         nullable: bool = False) -> Rule:
    def accepts(v: Any) -> bool:
        if not _number(v):
            return False
        above = v > low if low_open else v >= low
        below = high is None or (v < high if high_open else v <= high)
        return above and below

    if high is None:
        described = f"a finite number {'>' if low_open else '>='} {low}"
    else:
        described = f"a number in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    return Rule(accepts, described, nullable)


def choice(options: Iterable[str], nullable: bool = False) -> Rule:
    options = tuple(options)
    return Rule(lambda v: v in options, f"one of {', '.join(options)}", nullable)


def integers(low: int) -> Rule:
    """A list of distinct integers >= low (layer indices)."""
    def accepts(v: Any) -> bool:
        items = list(v) if isinstance(v, (list, tuple)) else None
        return (items is not None and len(set(items)) == len(items)
                and all(isinstance(i, int) and not isinstance(i, bool) and i >= low for i in items))

    return Rule(accepts, f"a list of distinct integers >= {low}", nullable=True)


def lora_init() -> Rule:
    """PEFT's `init_lora_weights` values that need nothing but the weights."""
    def accepts(v: Any) -> bool:
        return v is True or v in ("gaussian", "pissa") or (isinstance(v, str) and is_pissa(v))

    return Rule(accepts, "true, gaussian, pissa or pissa_niter_<n>")


MODEL_RANGES: dict[str, Rule] = {
    "lora.r": integer(1),
    "lora.alpha": real(0, low_open=True),
    "lora.dropout": real(0, 1),
    "lora.layers": integers(0),
    "lora.init": lora_init(),
    "attn_implementation": choice(ATTN_IMPLEMENTATIONS, nullable=True),
    "train_attn_implementation": choice(TRAIN_ATTN_IMPLEMENTATIONS, nullable=True),
    "quantization": choice(QUANTIZATIONS, nullable=True),
    "optimizer.name": choice(OPTIMIZERS),
    "optimizer.learning_rate": real(0, low_open=True),
    "optimizer.loraplus_lr_ratio": real(0, low_open=True, nullable=True),
    "optimizer.weight_decay": real(0),
    "optimizer.warmup_ratio": real(0, 1),
    "optimizer.lr_scheduler": choice(LR_SCHEDULERS),
    "generation.max_new_tokens": integer(1),
    "retention.eval_size": integer(1, nullable=True),
    "retention.base_size": integer(1, nullable=True),
    "generation.wrong_answers_logged": integer(0),
    "seed": integer(0, SEED_MAX),
    "replay_kl": real(0),
    "target_masked_kl": real(0),
    "base_weights": choice(BASE_WEIGHTS),
}
DATA_RANGES: dict[str, Rule] = {
    "format": choice(FORMATS),
    "val_fraction": real(0, 1),
    "split_seed": integer(0, SEED_MAX),
    "max_length": integer(2),  # at least one prompt token and one answer token
    "batch_size": integer(1),
    "eval_batch_size": integer(1),
    "order": choice(("length_grouped", "shuffle", "sequential")),
    "math_eval_size": integer(0, nullable=True),  # 0 answers no questions (loss only)
    "loss_eval_size": integer(1, nullable=True),
    "replay_ratio": real(0, 10, high_open=False),
    "replay_self_prompts": integer(0),
    "num_workers": integer(0),
}
# The project's callbacks, by class path: their init arguments as `trainer.callbacks[i].init_args.<name>`.
CALLBACK_RANGES: dict[str, dict[str, Rule]] = {
    "src.callbacks.adapter_checkpoint.AdapterCheckpoint": {
        "mode": choice(("max", "min")),
        "retention_floor": real(0, 1, high_open=False, nullable=True),
    },
    "src.callbacks.divergence_rollback.DivergenceRollback": {
        "lr_factor": real(0, 1, low_open=True),
        "max_rollbacks": integer(0),
        "snapshot_every_n_steps": integer(1),
    },
    "src.callbacks.memory_monitor.MemoryMonitor": {"log_every_n_steps": integer(1, nullable=True)},
    "src.callbacks.memory_plan.MemoryPlan": {"budget_gib": real(0, low_open=True, nullable=True), "margin": real(0, 1)},
    "src.callbacks.plain_progress.PlainProgress": {
        "every_n_steps": integer(1),
        "every_n_seconds": real(0, low_open=True, nullable=True),
    },
}


def range_problems(config: Mapping[str, Any]) -> list[str]:
    """Every out-of-range setting of one subcommand's parsed config (`model`, `data`, `trainer.callbacks`)."""
    problems = []
    for section, rules in (("model", MODEL_RANGES), ("data", DATA_RANGES)):
        values = _get(config, section) or {}
        for name, rule in rules.items():
            if _has(values, name) and (problem := rule.problem(f"{section}.{name}", _get(values, name))):
                problems.append(problem)
    callbacks = _get(_get(config, "trainer") or {}, "callbacks") or []
    for i, callback in enumerate(callbacks if isinstance(callbacks, list) else [callbacks]):
        class_path = _get(callback, "class_path")
        init_args = _get(callback, "init_args") or {}
        for name, rule in CALLBACK_RANGES.get(class_path, {}).items():
            if _has(init_args, name):
                short = class_path.rsplit(".", 1)[-1]
                problem = rule.problem(f"trainer.callbacks[{i}] ({short}).init_args.{name}", _get(init_args, name))
                if problem:
                    problems.append(problem)
    return problems


def check_ranges(config: Mapping[str, Any]) -> None:
    """Raise one ConfigurationError listing every out-of-range setting; nothing when all are in range."""
    problems = range_problems(config)
    if len(problems) == 1:
        raise ConfigurationError(f"{problems[0]} (set it in the config or with --<key> <value>)")
    if problems:
        listed = "\n".join(f"  {p}" for p in problems)
        raise ConfigurationError(
            f"{len(problems)} settings are out of range (set them in the config or with --<key> <value>):\n{listed}"
        )


def _get(container: Any, key: str) -> Any:
    """`key` of a Mapping, Namespace or object; a dotted key (`lora.r`) reads a group's field."""
    for part in key.split("."):
        container = container.get(part) if isinstance(container, Mapping) else getattr(container, part, None)
    return container


def _has(container: Any, key: str) -> bool:
    """Whether `key` is set (a jsonargparse Namespace supports `in` as a Mapping does); dotted keys read groups."""
    group, _, name = key.rpartition(".")
    if group:
        container = _get(container, group)
        if container is None:
            return False
    return name in container if hasattr(container, "__contains__") else hasattr(container, name)
