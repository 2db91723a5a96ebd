"""The validation path's generation: the project's math-accuracy loop against a plain batched `generate` loop.

    python -m bench.generation_speed --config configs/smollm2.yaml --repeats 2

Both sides answer the same held-out math questions (the config's `data.val_file`; all 400 of
data/arithmetic/val.jsonl by default) with the same model object (the config's base model with a
fresh LoRA adapter, which leaves it unchanged, or `--adapter` for a trained one), the same prompt
text, greedy decoding, `model.generation.max_new_tokens` and the eval batch size. The project side is what
`TutorModule` runs at validation: the data module's math loader (prompts sorted by length, left
padding to a multiple of 8) and `generate_greedy` (stops each row at any end-of-turn token). The
plain side is the loop a user writes: prompts in file order, `tokenizer(..., padding=True)` with
left padding, `model.generate(do_sample=False)`, decode the new tokens. It prints the time of each
side, their ratio, the math accuracy of each and how many answers agree.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from bench.measure import device_description, median, write_result
from src.training.lightning_cli import TutorCLI
from src.training.trainer import TutorTrainer
from src.data.datamodule import TutorDataModule
from src.data.formats import load_records
from src.metrics.math_accuracy import graded_results
from src.training.tutor_module import TutorModule

PROJECT, PLAIN = "project", "plain_generate"


def build(options: argparse.Namespace) -> tuple[TutorModule, TutorDataModule]:
    args = ["--config", options.config, "--model.evaluate_base", "false"]
    if options.adapter:
        args += ["--model.adapter_path", options.adapter]
    if options.batch_size:
        args += ["--data.eval_batch_size", str(options.batch_size)]
    cli = TutorCLI(TutorModule, TutorDataModule, trainer_class=TutorTrainer, args=args + options.overrides, run=False)
    module, data = cli.model, cli.datamodule
    data.setup("validate")
    module.configure_model()
    module.model.eval()
    return module, data


def questions(data: TutorDataModule, limit: int | None) -> list[dict[str, Any]]:
    """The math items with the conversation each prompt came from, in file order."""
    if data.hparams.math_eval_size is not None:
        raise ValueError("bench/generation_speed.py answers whole files: use --limit instead of data.math_eval_size")
    records = [r for r in load_records(data.hparams.val_file, data.hparams.format) if r["expected"] is not None]
    items = []
    for record, item in zip(records, data.math_items, strict=True):
        last_answer = max(i for i, m in enumerate(record["messages"]) if m["role"] == "assistant")
        items.append({**item, "messages": record["messages"][:last_answer]})
    return items[:limit]


def project_answers(module: TutorModule, data: TutorDataModule, items: list[dict[str, Any]]) -> list[str]:
    """`TutorModule`'s own generation over the data module's own math loader, mapped back to file order."""
    data.math_items = items
    replies = [reply for batch in data.math_dataloader() for reply in module.answerer.answer_batch(batch)]
    order = sorted(range(len(items)), key=lambda i: -len(items[i]["prompt_ids"]))  # the loader's (stable) order
    answers = [""] * len(items)
    for position, index in enumerate(order):
        answers[index] = replies[position]
    return answers


@torch.no_grad()
def plain_answers(module: TutorModule, data: TutorDataModule, items: list[dict[str, Any]]) -> list[str]:
    model, tokenizer = module.model, module.tokenizer
    tokenizer.padding_side = "left"
    texts = [data.formatter.prompt_text(item["messages"]) for item in items]
    size = data.hparams.eval_batch_size
    answers: list[str] = []
    for start in range(0, len(texts), size):
        inputs = tokenizer(texts[start : start + size], padding=True, add_special_tokens=False, return_tensors="pt").to(model.device)
        output = model.generate(**inputs, max_new_tokens=module.generation.max_new_tokens, do_sample=False,
                                pad_token_id=tokenizer.pad_token_id, temperature=None, top_p=None, top_k=None)
        answers += tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    return answers


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/smollm2.yaml")
    parser.add_argument("--adapter", help="a trained LoRA adapter folder (default: a fresh one, i.e. the base model)")
    parser.add_argument("--batch_size", type=int, help="generation batch size (default: the config's data.eval_batch_size)")
    parser.add_argument("--limit", type=int, help="answer only the first N questions (default: all)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per side, alternating the order")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's); 1 on a busy shared CPU")
    parser.add_argument("--json", help="write the figures to this file")
    parser.add_argument("overrides", nargs="*", help="after --: project config overrides")
    options = parser.parse_args(argv)
    if options.threads:
        torch.set_num_threads(options.threads)
    module, data = build(options)
    items = questions(data, options.limit)
    sides = {PROJECT: project_answers, PLAIN: plain_answers}
    order = list(sides)
    seconds: dict[str, list[float]] = {side: [] for side in sides}
    answers: dict[str, list[str]] = {}
    print(f"device: {device_description(module.device)}; {len(items)} questions, batch {data.hparams.eval_batch_size}, "
          f"max_new_tokens {module.generation.max_new_tokens}", flush=True)
    for repeat in range(options.repeats):
        for side in order if repeat % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            answers[side] = sides[side](module, data, items)
            seconds[side].append(time.perf_counter() - start)
            print(f"repeat {repeat + 1} {side}: {seconds[side][-1]:.1f} s", flush=True)
    expected = [item["expected"] for item in items]
    grades = {side: [g.correct for g in graded_results(answers[side], expected)] for side in sides}
    result = {
        "device": device_description(module.device),
        "questions": len(items),
        "seconds": {side: median(times) for side, times in seconds.items()},
        "seconds_runs": seconds,
        "accuracy": {side: sum(g) / len(g) for side, g in grades.items()},
        "identical_answers": sum(a == b for a, b in zip(answers[PROJECT], answers[PLAIN])),
        "same_grade": sum(a == b for a, b in zip(grades[PROJECT], grades[PLAIN])),
    }
    result["speedup_vs_plain"] = result["seconds"][PLAIN] / result["seconds"][PROJECT]
    print(f"project {result['seconds'][PROJECT]:.1f} s, plain generate {result['seconds'][PLAIN]:.1f} s (median of "
          f"{options.repeats}): {result['speedup_vs_plain']:.2f}x; math accuracy {result['accuracy'][PROJECT]:.1%} vs "
          f"{result['accuracy'][PLAIN]:.1%}; identical answers {result['identical_answers']}/{len(items)}, "
          f"same grade {result['same_grade']}/{len(items)}")
    write_result(options.json, result, options)
    return result


if __name__ == "__main__":
    main()
