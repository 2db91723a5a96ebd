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

With `--gguf FILE` (the same tutor merged and exported by `python -m src.cli export`), llama.cpp
answers too, as people run it: one question at a time, `--threads` threads (all cores by default),
the chat template stored in the file, the same budget. Needs `pip install llama-cpp-python==0.3.36`.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from contextlib import AbstractContextManager
from typing import Any

import torch
from lightning.pytorch.plugins.precision import MixedPrecision

from bench.measure import device_description, median, write_result
from src.training.lightning_cli import TutorCLI
from src.training.trainer import TutorTrainer
from src.data.datamodule import TutorDataModule
from src.data.formats import load_records
from src.export.answer_agreement import llamacpp_chat_replies, open_llamacpp
from src.metrics.answer_extraction import extract_answer
from src.metrics.math_accuracy import graded_results
from src.models.builder import build_tutor_model
from src.models.precision import resolve_precision, weight_dtype
from src.training.tutor_module import TutorModule

PROJECT, PLAIN, LLAMA_CPP = "project", "plain_generate", "llama_cpp"


def build(options: argparse.Namespace) -> tuple[TutorModule, TutorDataModule, str]:
    """The module with its base weights in the dtype training gives them, the data module, and the precision."""
    args = ["--config", options.config, "--model.evaluate_base", "false"]
    if options.adapter:
        args += ["--model.adapter_path", options.adapter]
    if options.batch_size:
        args += ["--data.eval_batch_size", str(options.batch_size)]
    if options.precision:
        args += ["--trainer.precision", options.precision]
    cli = TutorCLI(TutorModule, TutorDataModule, trainer_class=TutorTrainer, args=args + options.overrides, run=False)
    module, data = cli.model, cli.datamodule
    trainer = cli.config["trainer"]
    precision, _ = resolve_precision(trainer.get("precision"), trainer.get("accelerator"))
    data.setup("validate")
    module.model, module.tokenizer, module.formatter = build_tutor_model(
        module.hparams, torch.device("cpu"), weight_dtype(precision)
    )
    module.model.eval()
    return module, data, str(precision)


def precision_context(precision: str) -> AbstractContextManager[Any]:
    """Lightning's own autocast for `precision`, as validation runs under it (nothing for full precision)."""
    if precision.endswith("-mixed"):
        return MixedPrecision(precision, "cpu").forward_context()
    return contextlib.nullcontext()


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


def llamacpp_side(gguf: str, threads: int) -> Any:
    """A side that answers with llama.cpp from `gguf`, loaded once before any timing."""
    llm = open_llamacpp(gguf, n_ctx=512, n_threads=threads)

    def answers(module: TutorModule, data: TutorDataModule, items: list[dict[str, Any]]) -> list[str]:
        return llamacpp_chat_replies(llm, items, module.generation.max_new_tokens)

    return answers


def agreement(answers: dict[str, list[str]]) -> dict[str, dict[str, int]]:
    """For every other side, against the project's: identical replies (stripped) and the same answer read."""
    ours = answers[PROJECT]
    return {
        side: {"identical_replies": sum(a.strip() == b.strip() for a, b in zip(ours, theirs)),
               "same_answer": sum(extract_answer(a) == extract_answer(b) for a, b in zip(ours, theirs))}
        for side, theirs in answers.items() if side != PROJECT
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/smollm2.yaml")
    parser.add_argument("--adapter", help="a trained LoRA adapter folder (default: a fresh one, i.e. the base model)")
    parser.add_argument("--batch_size", type=int, help="generation batch size (default: the config's data.eval_batch_size)")
    parser.add_argument("--limit", type=int, help="answer only the first N questions (default: all)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per side, alternating the order")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's); 1 on a busy shared CPU")
    parser.add_argument("--gguf", help="also time llama.cpp answering from this GGUF file (the same tutor, exported)")
    parser.add_argument("--precision", help="trainer.precision (default: the config's; auto reads the CPU's flags as "
                        "training does): the base weights' dtype and the autocast both sides answer under")
    parser.add_argument("--json", help="write the figures to this file")
    parser.add_argument("overrides", nargs="*", help="after --: project config overrides")
    options = parser.parse_args(argv)
    if options.threads:
        torch.set_num_threads(options.threads)
    module, data, precision = build(options)
    items = questions(data, options.limit)
    sides = {PROJECT: project_answers, PLAIN: plain_answers}
    if options.gguf:
        sides[LLAMA_CPP] = llamacpp_side(options.gguf, options.threads or torch.get_num_threads())
    order = list(sides)
    seconds: dict[str, list[float]] = {side: [] for side in sides}
    answers: dict[str, list[str]] = {}
    print(f"device: {device_description(module.device)}; precision {precision}; {len(items)} questions, batch {data.hparams.eval_batch_size}, "
          f"max_new_tokens {module.generation.max_new_tokens}", flush=True)
    for repeat in range(options.repeats):
        for side in order if repeat % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            with precision_context(precision):
                answers[side] = sides[side](module, data, items)
            seconds[side].append(time.perf_counter() - start)
            print(f"repeat {repeat + 1} {side}: {seconds[side][-1]:.1f} s", flush=True)
    expected = [item["expected"] for item in items]
    grades = {side: [g.correct for g in graded_results(answers[side], expected)] for side in sides}
    result = {
        "device": device_description(module.device),
        "questions": len(items),
        "precision": precision,
        "seconds": {side: median(times) for side, times in seconds.items()},
        "seconds_runs": seconds,
        "accuracy": {side: sum(g) / len(g) for side, g in grades.items()},
        "identical_answers": sum(a == b for a, b in zip(answers[PROJECT], answers[PLAIN])),
        "same_grade": sum(a == b for a, b in zip(grades[PROJECT], grades[PLAIN])),
    }
    result["speedup_vs_plain"] = result["seconds"][PLAIN] / result["seconds"][PROJECT]
    result["agreement_with_project"] = agreement(answers)
    if LLAMA_CPP in sides:
        result["gguf"] = options.gguf
        result["speedup_vs_llama_cpp"] = result["seconds"][LLAMA_CPP] / result["seconds"][PROJECT]
        same = result["agreement_with_project"][LLAMA_CPP]
        print(f"llama.cpp {result['seconds'][LLAMA_CPP]:.1f} s: the project is {result['speedup_vs_llama_cpp']:.2f}x "
              f"as fast; math accuracy {result['accuracy'][LLAMA_CPP]:.1%}; llama.cpp's replies identical to the "
              f"project's {same['identical_replies']}/{len(items)}, same answer {same['same_answer']}/{len(items)}")
    print(f"project {result['seconds'][PROJECT]:.1f} s, plain generate {result['seconds'][PLAIN]:.1f} s (median of "
          f"{options.repeats}): {result['speedup_vs_plain']:.2f}x; math accuracy {result['accuracy'][PROJECT]:.1%} vs "
          f"{result['accuracy'][PLAIN]:.1%}; identical answers {result['identical_answers']}/{len(items)}, "
          f"same grade {result['same_grade']}/{len(items)}")
    write_result(options.json, result, options)
    return result


if __name__ == "__main__":
    main()
