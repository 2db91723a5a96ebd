"""Compare greedy answers of a merged model with llama.cpp running its exported GGUF files.

    python -m src.tools.check_gguf --model_dir merged/ --gguf tutor.f16.gguf tutor.q8_0.gguf \
        --questions data/arithmetic/val.jsonl

Needs `pip install llama-cpp-python` (it compiles llama.cpp: minutes on a small CPU).
"""

from __future__ import annotations

import argparse
import sys
import time

from src.errors import TutorTuneError
from src.data.questions import load_questions
from src.export.answer_agreement import accuracy, compare, llamacpp_replies, transformers_replies


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m src.tools.check_gguf", description=__doc__.splitlines()[0])
    parser.add_argument("--model_dir", required=True, help="the merged transformers folder the files were exported from")
    parser.add_argument("--gguf", nargs="+", required=True, help="GGUF files to compare with it")
    parser.add_argument("--questions", default="data/arithmetic/val.jsonl", help="questions in any supported data format")
    parser.add_argument("--limit", type=int, default=None, help="only the first N questions")
    parser.add_argument("--max_new_tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, default=None, help="llama.cpp threads (default: all cores)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        questions = load_questions(args.questions)[: args.limit]
    except TutorTuneError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    start = time.perf_counter()
    reference = transformers_replies(args.model_dir, questions, args.max_new_tokens)
    print(f"merged model (transformers, fp32): accuracy {accuracy(reference, questions):.1%} "
          f"on {len(questions)} questions ({time.perf_counter() - start:.0f} s)")
    print("| file | same answer | same reply | accuracy | seconds |")
    print("|---|---|---|---|---|")
    for path in args.gguf:
        start = time.perf_counter()
        replies = llamacpp_replies(path, questions, args.max_new_tokens, n_threads=args.threads)
        result = compare(reference, replies, questions)
        print(f"| {path} | {result.same_answer}/{result.questions} ({result.answer_rate:.1%}) "
              f"| {result.same_reply}/{result.questions} ({result.reply_rate:.1%}) | {result.accuracy:.1%} "
              f"| {time.perf_counter() - start:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
