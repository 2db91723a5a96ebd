"""Grade a base model on the checkable retention set, as a config prompts it (a one-off check).

    python -m src.evaluation.base_retention --config configs/smollm2.yaml --out base_retention.jsonl

Replies come from the reply cache, so a second run only re-grades. The output file holds each
item with its reply and grade, to read which items a model cannot be graded on fairly.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections import defaultdict
from pathlib import Path

import torch
import yaml

from src.data.chat_format import ChatFormatter
from src.data.retention import CHECKABLE_FILE, DEFAULT_DIR, load_checkable
from src.evaluation.reply_cache import ReplyCache, base_reply_key, greedy_replies
from src.metrics.retention import is_correct
from src.models.loading import load_base_model
from src.sources.tokenizer import load_tokenizer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, required=True, help="a fit config: model.model_name and data's format")
    parser.add_argument("--items", type=Path, default=DEFAULT_DIR / CHECKABLE_FILE)
    parser.add_argument("--out", type=Path, required=True, help="JSONL of items with reply and grade")
    parser.add_argument("--max_new_tokens", type=int, default=32)
    parser.add_argument("--batch_size", type=int, default=50)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    config = yaml.safe_load(args.config.read_text(encoding="utf-8"))
    model_name, data = config["model"]["model_name"], config.get("data", {})
    tokenizer = load_tokenizer(model_name)
    model = load_base_model(model_name, dtype=torch.float32)
    formatter = ChatFormatter(tokenizer, data.get("system_prompt"), data.get("chat_template"))
    items = load_checkable(args.items)
    prompts = [item["prompt"] for item in items]
    key = base_reply_key(model, formatter, args.max_new_tokens, "32-true", model_source=model_name)
    started = time.perf_counter()
    replies = ReplyCache().get_or_generate(
        key, prompts, lambda p: greedy_replies(model, tokenizer, formatter, p, args.max_new_tokens, args.batch_size)
    )
    seconds = time.perf_counter() - started

    by_group: dict[str, list[bool]] = defaultdict(list)
    with args.out.open("w", encoding="utf-8") as out:
        for item, reply in zip(items, replies):
            right = is_correct(reply, item["answers"], item["rejects"], item["prompt"])
            by_group[f"{item['kind']}/{item['lang']}"].append(right)
            by_group["all"].append(right)
            out.write(json.dumps({**item, "reply": reply, "correct": right}, ensure_ascii=False) + "\n")
    for group, grades in sorted(by_group.items()):
        print(f"{group:20s} {sum(grades):4d}/{len(grades):<4d} {sum(grades) / len(grades):.1%}")
    print(f"{len(replies)} replies in {seconds:.0f} s")


if __name__ == "__main__":
    main()
