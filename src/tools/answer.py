"""`answer`: the tutor's greedy answers to a file of questions, written as JSONL.

    python -m src.cli answer --config configs/smollm2.yaml --model.adapter_path ADAPTER \
        --questions data/arithmetic/val.jsonl --output answers.jsonl

One line per question: `question`, `reply`, `extracted` (the number read from the reply),
`expected` and `correct` (null without a reference), `kind`. Prompts, batching (longest prompts
first, `data.eval_batch_size` per batch), generation and grading are validation's own, so a file's
replies are the ones `validate` computes for its math accuracy.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from src.data.collate import PromptCollator
from src.data.conversation import with_system_turn
from src.data.formats import FORMATS
from src.data.questions import Question, load_questions
from src.metrics.answer_extraction import answers_match, extract_answer
from src.metrics.step_checker import check_steps
from src.training.tutor_module import TutorModule
from src.tools.config import build_tutor, parse, tutor_parser


def answer_questions(module: TutorModule, questions: Sequence[Question], batch_size: int) -> list[str]:
    """Greedy replies in the order of `questions`, generated in validation's batches."""
    tokenizer, formatter = module.tokenizer, module.formatter
    items = [
        {
            "prompt_ids": tokenizer(formatter.prompt_text(q["messages"]), add_special_tokens=False)["input_ids"],
            "question": q["question"],
            "expected": q["expected"],
            "kind": q["kind"],
        }
        for q in questions
    ]
    # As TutorDataModule.math_dataloader: longest first (a stable sort), so batches and padding match.
    order = sorted(range(len(items)), key=lambda i: -len(items[i]["prompt_ids"]))
    collate = PromptCollator(tokenizer.pad_token_id)
    replies: list[str] = [""] * len(items)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        for index, reply in zip(chunk, module.answerer.answer_batch(collate([items[i] for i in chunk]))):
            replies[index] = reply
    return replies


def answer_rows(questions: Sequence[Question], replies: Sequence[str]) -> list[dict]:
    """One JSON-ready row per question, graded as validation grades (lenient extraction)."""
    rows = []
    for question, reply in zip(questions, replies):
        extracted = extract_answer(reply)
        expected = question["expected"]
        steps = check_steps(reply)
        wrong = steps.first_wrong
        rows.append(
            {
                "question": question["question"],
                "reply": reply,
                "extracted": extracted,
                "expected": expected,
                "correct": None if expected is None else answers_match(extracted, expected),
                "kind": question["kind"],
                # The worked steps: "right", "wrong" or "unparseable", and the first wrong step with its type.
                "steps": steps.status,
                "first_wrong_step": None if wrong is None else {"text": wrong.text, "kind": wrong.kind, "line": wrong.line, "true": wrong.expected},
            }
        )
    return rows


def summary(rows: Sequence[dict], output: Path) -> str:
    graded = [row for row in rows if row["correct"] is not None]
    line = f"Answered {len(rows)} questions -> {output}"
    if graded:
        right = sum(row["correct"] for row in graded)
        line += f"\nMath accuracy: {right / len(graded):.1%} ({right}/{len(graded)} with a reference)"
    return line


def main(argv: Sequence[str]) -> int:
    parser = tutor_parser("Answer a file of questions with the tutor; write JSONL.", "answer")
    parser.add_argument("--questions", type=str, required=True, help="any training data file, or bare questions")
    parser.add_argument("--output", type=str, default="answers.jsonl", help="JSONL file to write")
    parser.add_argument("--format", type=str, default="auto", choices=list(FORMATS), help="data format of --questions")
    parser.add_argument("--limit", type=int | None, default=None, help="answer only the first N questions")
    parser.add_argument("--batch_size", type=int | None, default=None, help="default: data.eval_batch_size")
    cfg = parse(parser, argv)
    # Marked as validation marks the task's questions, so a file's replies stay validate's.
    questions = [
        {**q, "messages": with_system_turn(q["messages"], cfg.data.task_system_prompt)}
        for q in load_questions(cfg.questions, cfg.format)[: cfg.limit]
    ]
    module = build_tutor(parser, cfg)
    replies = answer_questions(module, questions, cfg.batch_size or cfg.data.eval_batch_size)
    rows = answer_rows(questions, replies)
    output = Path(cfg.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    print(summary(rows, output))
    return 0
