"""What the retention measurement costs on a real model: the base model once, an adapter at each validation.

    python -m bench.retention_speed --config configs/smollm2.yaml --json retention_speed.json

Loads the config's base model in float32 with a fresh LoRA adapter of the config's rank, then times
`RetentionEvaluator.measure_base` (generating into a scratch reply cache, then again from that cache)
and `measure_adapter` for three adapters: the untouched one (it reproduces every base reply), one
after `--train_steps` AdamW steps on the config's training data, and one with random A and B (it
forgets everything: the worst case for cost). It also grades the base model's replies cut to shorter
budgets, to show which budget keeps its right answers.
"""

from __future__ import annotations

import argparse
import logging
import math
import tempfile
import time
from typing import Any

import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer

from bench.config_model import load_config_model
from bench.measure import device_description, write_result
from src.data.chat_format import ChatFormatter
from src.data.collate import TrainCollator
from src.data.formats import load_records
from src.data.retention import CHECKABLE_FILE, DEFAULT_DIR, OPEN_FILE, load_checkable, load_open
from src.evaluation.reply_cache import ReplyCache
from src.evaluation.retention_eval import RetentionEvaluator
from src.metrics.retention import is_correct


def timed(label: str, call: Any, *args: Any) -> tuple[dict[str, float], float]:
    started = time.perf_counter()
    metrics = call(*args)
    seconds = time.perf_counter() - started
    print(f"{label}: {seconds:.1f} s  " + "  ".join(f"{k}={v:.4g}" for k, v in metrics.items()), flush=True)
    return metrics, seconds


def train_steps(model: PeftModel, formatter: ChatFormatter, train_file: str, steps: int, lr: float) -> float:
    """`steps` AdamW steps of batch 4 on the task data: an adapter that has started to specialise."""
    records = load_records(train_file)[: 4 * steps]
    collate = TrainCollator(formatter.tokenizer.pad_token_id)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    started = time.perf_counter()
    for start in range(0, len(records), 4):
        tokens = [formatter.tokenize(r["messages"]) for r in records[start : start + 4]]
        batch = collate([{"input_ids": t.input_ids, "labels": t.labels} for t in tokens])
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return time.perf_counter() - started


def forget_everything(model: PeftModel) -> None:
    """B drawn like A (nn.Linear's own init, as PEFT's `init_lora_weights=False` leaves it): a large random
    update on every adapted layer. PEFT's `reset_lora_parameters(..., False)` returns without touching them."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, LoraLayer):
                for linear in module.lora_B.values():
                    torch.nn.init.kaiming_uniform_(linear.weight, a=math.sqrt(5))


def base_right_at_budgets(evaluator: RetentionEvaluator, formatter: ChatFormatter, budgets: list[int]) -> dict:
    """How many items the base model answers right with its replies cut to each budget (greedy replies of
    a shorter budget are the first tokens of a longer one's)."""
    tokenizer, counts = formatter.tokenizer, {}
    for budget in budgets:
        cut = [tokenizer.decode(tokenizer(r, add_special_tokens=False)["input_ids"][:budget])
               for r in evaluator.base_replies]
        counts[budget] = sum(is_correct(r, i["answers"], i["rejects"], i["prompt"])
                             for r, i in zip(cut, evaluator.checkable))
    return counts


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/smollm2.yaml")
    parser.add_argument("--retention_dir", default=str(DEFAULT_DIR))
    parser.add_argument("--max_new_tokens", type=int, default=24)
    parser.add_argument("--open_max_new_tokens", type=int, default=48)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--checkable_size", type=int, help="checkable items the base model answers (default: all)")
    parser.add_argument("--eval_size", type=int, help="base-right items graded per validation (default: all)")
    parser.add_argument("--open_eval_size", type=int, help="open prompts per validation (default: all)")
    parser.add_argument("--train_steps", type=int, default=20)
    parser.add_argument("--budgets", default="12,16,20", help="shorter budgets to grade the base replies at")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--json", help="write the figures to this file")
    options = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if options.threads:
        torch.set_num_threads(options.threads)

    loaded = load_config_model(options.config)
    model_args, data, formatter, model = loaded.model_args, loaded.data_args, loaded.formatter, loaded.model
    checkable = load_checkable(f"{options.retention_dir}/{CHECKABLE_FILE}")
    open_prompts = [item["prompt"] for item in load_open(f"{options.retention_dir}/{OPEN_FILE}")]
    settings = dict(max_new_tokens=options.max_new_tokens, open_max_new_tokens=options.open_max_new_tokens,
                    batch_size=options.batch_size, checkable_size=options.checkable_size, eval_size=options.eval_size,
                    open_eval_size=options.open_eval_size)
    print(f"device: {device_description(model.device)}; {len(checkable)} checkable "
          f"items, {len(open_prompts)} open prompts; {settings}", flush=True)

    result: dict[str, Any] = {"device": device_description(model.device), "settings": settings, "seconds": {}}
    with tempfile.TemporaryDirectory() as scratch:
        evaluator = RetentionEvaluator(checkable, open_prompts, cache=ReplyCache(scratch), **settings)
        result["base"], result["seconds"]["base"] = timed("base (generated)", evaluator.measure_base, model, formatter,
                                                          "32-true", model_args["model_name"])
        again = RetentionEvaluator(checkable, open_prompts, cache=ReplyCache(scratch), **settings)
        _, result["seconds"]["base_cached"] = timed("base (from the cache)", again.measure_base, model, formatter,
                                                    "32-true", model_args["model_name"])
    result["graded"] = len(evaluator.graded)
    budgets = [int(b) for b in options.budgets.split(",") if b]
    result["base_right_at_budget"] = base_right_at_budgets(evaluator, formatter, budgets)
    right = round(result["base"]["retain/acc"] * len(evaluator.checkable))
    print(f"graded per validation: {len(evaluator.graded)}; base right with replies cut to "
          f"{result['base_right_at_budget']} tokens (of {right} at {options.max_new_tokens})", flush=True)

    result["untouched"], result["seconds"]["untouched"] = timed("adapter untouched", evaluator.measure_adapter,
                                                                model, formatter)
    result["seconds"]["train_steps"] = train_steps(model, formatter, data["train_file"], options.train_steps,
                                                   (model_args.get("optimizer") or {}).get("learning_rate", 1e-3))
    result["trained"], result["seconds"]["trained"] = timed(f"adapter after {options.train_steps} steps",
                                                            evaluator.measure_adapter, model, formatter)
    forget_everything(model)
    result["random"], result["seconds"]["random"] = timed("adapter random (worst case)", evaluator.measure_adapter,
                                                          model, formatter)
    write_result(options.json, result, options)
    return result


if __name__ == "__main__":
    main()
