"""The untouched base model, put to the same questions as the adapter: math, retention and replay replies.

Called from `TutorModule`'s hooks with the module (its trainer's precision context, loggers and data
module); the generating and grading itself is `src.evaluation`'s.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from lightning.pytorch.utilities import rank_zero_info

from src.data.contracts import AcceptsReplay, HoldsMathSets
from src.data.replay import REPLAY_MAX_NEW_TOKENS
from src.data.retention import CHECKABLE_FILE, OPEN_FILE, load_checkable, load_open
from src.evaluation.math_evaluator import evaluate_base
from src.evaluation.reply_cache import ReplyCache, base_reply_key, cached_base_replies
from src.evaluation.self_prompts import self_written_prompts

if TYPE_CHECKING:
    from src.training.tutor_module import TutorModule


def measure_base_model(module: TutorModule) -> dict[str, float] | None:
    """Math accuracy on every held-out set and, when measured, retention; logged at step 0 (None: nothing to measure)."""
    metrics = base_math(module)
    if module.retention is not None:
        metrics = (metrics or {}) | base_retention(module)
    return metrics


def base_math(module: TutorModule) -> dict[str, float] | None:
    """The base model's math accuracy on every held-out set (None without held-out sets)."""
    datamodule = module.trainer.datamodule
    if not isinstance(datamodule, HoldsMathSets) or not datamodule.math_set_names:
        return None
    loaders = {name: datamodule.math_dataloader(name) for name in datamodule.math_set_names}
    precision = str(module.trainer.precision)
    # The base weights are named by a fingerprint of their values, so a changed local model never hits.
    key = base_reply_key(module.model, module.formatter, module.generation.max_new_tokens, precision)
    return evaluate_base(module.evaluator, module.model, loaders, module.answerer.answer_batch,
                         module.trainer.precision_plugin.forward_context(), module.loggers, ReplyCache(), key)


def base_retention(module: TutorModule) -> dict[str, float]:
    """The base model's general answers (from the reply cache after the first run), logged at step 0."""
    with module.trainer.precision_plugin.forward_context():
        metrics = module.retention.measure_base(module.model, module.formatter, str(module.trainer.precision))
    for logger in module.loggers:
        logger.log_metrics({f"base/{key}": value for key, value in metrics.items()}, step=0)
    return metrics


def adapter_retention(module: TutorModule) -> dict[str, float]:
    """What the adapter keeps of the base model's right general answers (`retain/*`); nothing without a
    retention set or in the sanity check."""
    if module.retention is None or module.trainer.sanity_checking:
        return {}
    if not module.retention.measured:  # validate/test: no training run measured the base model
        base_retention(module)
    with torch.no_grad(), module.trainer.precision_plugin.forward_context():
        return module.retention.measure_adapter(module.model, module.formatter)


def mix_in_replay(module: TutorModule) -> None:
    """Hand the data module the base model's replies to its replay prompts and to those the base model
    writes itself. Called from `configure_optimizers`, the one hook with the model built and no training loader
    yet (`estimated_stepping_batches` makes the first): the replay rows must be in the training set by then."""
    datamodule = module.trainer.datamodule
    if isinstance(datamodule, AcceptsReplay) and (datamodule.replay_prompts or datamodule.replay_self_prompts):
        prompts = datamodule.replay_prompts + base_written_prompts(module, datamodule.replay_self_prompts)
        started = time.perf_counter()
        replies = base_replay_replies(module, prompts)
        rank_zero_info(f"Replay: the base model's replies to {len(prompts)} prompts in "
                       f"{time.perf_counter() - started:.0f} s (cached after the first run).")
        datamodule.add_replay(prompts, replies)


def base_replay_replies(module: TutorModule, prompts: list[str]) -> list[str]:
    """The base model's own replies to the replay prompts, which training then keeps it saying."""
    with module.trainer.precision_plugin.forward_context():
        return cached_base_replies(module.model, module.formatter, prompts, REPLAY_MAX_NEW_TOKENS,
                                   str(module.trainer.precision), None, "replay", ReplyCache())


def base_written_prompts(module: TutorModule, count: int) -> list[str]:
    """`count` general prompts the base model writes itself for replay, none near a retention prompt."""
    if count <= 0:
        return []
    settings = module.hparams.retention
    folders = [settings.get("dir"), *(settings.get("extra_dirs") or {}).values()]
    exclude = list(dict.fromkeys(p for folder in folders if folder for p in retention_prompts(Path(folder))))
    started = time.perf_counter()
    with module.trainer.precision_plugin.forward_context():
        prompts = self_written_prompts(module.model, module.formatter, count, str(module.trainer.precision),
                                       exclude, ReplyCache())
    rank_zero_info(f"Replay: the base model wrote {len(prompts)} of {count} general prompts asked for "
                   f"(digits and near copies of the {len(exclude)} retention prompts left out) in "
                   f"{time.perf_counter() - started:.0f} s (cached: a second run writes nothing).")
    return prompts


def retention_prompts(folder: Path) -> list[str]:
    """Every prompt of a retention folder and of the sets in its subfolders (e.g. `independent/`), checkable
    and open: what replay must stay apart from."""
    folders = [folder, *sorted(p.parent for p in folder.glob(f"*/{CHECKABLE_FILE}"))]
    return [item["prompt"] for f in folders for item in (*load_checkable(f / CHECKABLE_FILE), *load_open(f / OPEN_FILE))]
