"""Do the exported GGUF files answer like the merged model? Greedy replies side by side, as numbers.

The merged transformers folder answers each question (batched greedy generation, its own chat
template); llama.cpp (through `llama-cpp-python`) answers the same questions from each GGUF file
with the template and tokenizer stored in the file, as Ollama and LM Studio would. Agreement is
counted on the answer read from each reply and on whole replies.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from src.data.chat_format import end_of_turn_token_ids
from src.data.questions import Question
from src.metrics.answer_extraction import answers_match, extract_answer
from src.models.generation import generate_greedy


@dataclass(frozen=True)
class Agreement:
    """How one file's replies compare with the merged model's on the same questions."""

    questions: int
    same_answer: int  # the number read from both replies is the same (or both have none)
    same_reply: int  # the replies are identical, character for character
    correct: int  # replies whose answer matches `expected`
    graded: int  # questions with an expected answer

    @property
    def answer_rate(self) -> float:
        return self.same_answer / self.questions

    @property
    def reply_rate(self) -> float:
        return self.same_reply / self.questions

    @property
    def accuracy(self) -> float:
        return self.correct / self.graded if self.graded else float("nan")


def transformers_replies(
    model_dir: str | Path, questions: list[Question], max_new_tokens: int, batch_size: int = 32
) -> list[str]:
    """Greedy replies of the merged model, in float32 (the reference the files are measured against)."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    stops = end_of_turn_token_ids(tokenizer)
    replies: list[str] = []
    for start in range(0, len(questions), batch_size):
        prompts = [
            tokenizer.apply_chat_template(q["messages"], add_generation_prompt=True, tokenize=False)
            for q in questions[start : start + batch_size]
        ]
        # The rendered template already holds every special token (<|im_start|> included).
        batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        replies += generate_greedy(model, tokenizer, batch["input_ids"], batch["attention_mask"], max_new_tokens, stops)
    return [reply.strip() for reply in replies]


def llamacpp_replies(
    gguf_path: str | Path, questions: list[Question], max_new_tokens: int, n_ctx: int = 512, n_threads: int | None = None
) -> list[str]:
    """Greedy replies of llama.cpp from the file alone: its chat template, tokenizer and end-of-turn token."""
    return llamacpp_chat_replies(open_llamacpp(gguf_path, n_ctx, n_threads), questions, max_new_tokens)


def open_llamacpp(gguf_path: str | Path, n_ctx: int = 512, n_threads: int | None = None) -> Any:
    """A `llama_cpp.Llama` for the file, loaded once (benchmarks time the answers, not the load)."""
    from llama_cpp import Llama  # optional: llama-cpp-python compiles llama.cpp on install

    return Llama(model_path=str(gguf_path), n_ctx=n_ctx, n_threads=n_threads or os.cpu_count(), seed=0, verbose=False)


def llamacpp_chat_replies(llm: Any, questions: list[Question], max_new_tokens: int) -> list[str]:
    """llama.cpp's greedy replies, one question at a time, as people run it."""
    replies = []
    for question in questions:
        result = llm.create_chat_completion(
            messages=question["messages"],
            max_tokens=max_new_tokens,
            temperature=0.0,  # greedy: llama.cpp takes the most likely token
            top_k=1,
            repeat_penalty=1.0,  # transformers' generate applies no repetition penalty
        )
        replies.append((result["choices"][0]["message"]["content"] or "").strip())
    return replies


def compare(reference: list[str], candidate: list[str], questions: list[Question]) -> Agreement:
    """Count agreement of `candidate` with `reference`, and `candidate`'s accuracy where graded."""
    same_answer = same_reply = correct = graded = 0
    for ref, cand, question in zip(reference, candidate, questions, strict=True):
        same_reply += ref == cand
        same_answer += extract_answer(ref) == extract_answer(cand)
        if question["expected"] is not None:
            graded += 1
            correct += answers_match(extract_answer(cand), question["expected"])
    return Agreement(len(questions), same_answer, same_reply, correct, graded)


def accuracy(replies: list[str], questions: list[Question]) -> float:
    """Share of graded questions whose reply carries the expected answer."""
    graded = [(r, q["expected"]) for r, q in zip(replies, questions, strict=True) if q["expected"] is not None]
    return sum(answers_match(extract_answer(r), e) for r, e in graded) / len(graded) if graded else float("nan")
