"""What `model.replay_kl` costs a training step: cross-entropy alone, with the KL from a second adapter
pass over the replay rows, and with the KL from the one shared pass `training_loss` makes.

    python -m bench.replay_kl_cost --config configs/smollm2.yaml --steps 20 --repeats 3

Loads the config's base model in float32 with a fresh LoRA adapter of the config's rank whose B is
drawn at random (so the KL and its gradient are not zero), and builds batches of
`data.batch_size` rows from the config's training file, marking the first row of every other batch
as a replay row (about the share `data.replay_ratio: 0.2` gives at batch 2). Which text a replay row
holds does not change its cost, so the task rows stand in for the base model's replies. Each variant
runs forward and backward over the same batches, interleaved per repeat; the medians and their
ratios to cross-entropy alone are printed, with the CPU kind.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from peft import PeftModel

from bench.config_model import load_config_model
from bench.measure import device_description, median, write_result
from bench.retention_speed import forget_everything
from src.data.chat_format import ChatFormatter
from src.data.collate import TrainCollator
from src.data.formats import load_records
from src.models.loss import causal_lm_loss, replay_kl, training_loss

Batch = dict[str, torch.Tensor]
VARIANTS: dict[str, Callable[[PeftModel, Batch], torch.Tensor]] = {
    "cross_entropy": causal_lm_loss,
    "kl_second_pass": lambda model, batch: causal_lm_loss(model, batch) + replay_kl(model, batch),
    "kl_shared_pass": lambda model, batch: training_loss(model, batch, 1.0)[0],
}


def batches(formatter: ChatFormatter, train_file: str, batch_size: int, steps: int) -> list[Batch]:
    records = load_records(train_file)[: batch_size * steps]
    collate = TrainCollator(formatter.tokenizer.pad_token_id)
    built = []
    for index, start in enumerate(range(0, len(records), batch_size)):
        tokens = [formatter.tokenize(r["messages"]) for r in records[start : start + batch_size]]
        batch = collate([{"input_ids": t.input_ids, "labels": t.labels} for t in tokens])
        batch["replay"] = torch.tensor([index % 2 == 0 and row == 0 for row in range(len(tokens))])
        built.append(batch)
    return built


def seconds_of(model: PeftModel, loss_of: Callable[[PeftModel, Batch], torch.Tensor], data: list[Batch]) -> float:
    started = time.perf_counter()
    for batch in data:
        loss_of(model, batch).backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/smollm2.yaml")
    parser.add_argument("--steps", type=int, default=20, help="batches per timing")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--json", help="write the figures to this file")
    options = parser.parse_args(argv)
    if options.threads:
        torch.set_num_threads(options.threads)
    loaded = load_config_model(options.config)
    data_args, formatter, model = loaded.data_args, loaded.formatter, loaded.model
    forget_everything(model)
    model.train()
    data = batches(formatter, data_args["train_file"], data_args.get("batch_size", 2), options.steps)
    replay_rows = sum(int(b["replay"].sum()) for b in data)
    print(f"device: {device_description(model.device)}; {len(data)} batches, {replay_rows} replay rows", flush=True)
    seconds_of(model, VARIANTS["kl_shared_pass"], data[:2])  # warm-up
    timings: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(options.repeats):
        for name, loss_of in VARIANTS.items():
            timings[name].append(seconds_of(model, loss_of, data))
    base = median(timings["cross_entropy"])
    result = {"device": device_description(model.device), "batches": len(data), "replay_rows": replay_rows,
              "seconds": {name: median(values) for name, values in timings.items()}}
    for name, values in timings.items():
        print(f"{name:>15}: {median(values):.2f} s per {len(data)} steps (x{median(values) / base:.2f} of cross-entropy)")
    saved = 1 - result["seconds"]["kl_shared_pass"] / result["seconds"]["kl_second_pass"]
    print(f"the shared pass saves {saved:.1%} of the step time of a second adapter pass")
    write_result(options.json, result, options)
    return result


if __name__ == "__main__":
    main()
