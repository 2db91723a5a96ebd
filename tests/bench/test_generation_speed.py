"""bench/generation_speed.py in CI size: the project's validation generation and a plain loop answer alike."""

from __future__ import annotations

import math
from pathlib import Path

from bench.generation_speed import PLAIN, PROJECT, main
from conftest import arithmetic_rows, write_jsonl

QUESTIONS = 12


def test_both_loops_answer_every_question_and_agree(tiny_model_dir: Path, tmp_path: Path) -> None:
    val = write_jsonl(tmp_path / "val.jsonl", arithmetic_rows(QUESTIONS, start=60))
    result = main([
        "--repeats", "1", "--batch_size", "5",
        "--", "--model.model_name", str(tiny_model_dir), "--data.val_file", str(val), "--model.generation.max_new_tokens", "4",
    ])
    assert result["questions"] == QUESTIONS
    for side in (PROJECT, PLAIN):
        assert math.isfinite(result["seconds"][side]) and result["seconds"][side] > 0
        assert 0 <= result["accuracy"][side] <= 1
    assert math.isfinite(result["speedup_vs_plain"]) and result["speedup_vs_plain"] > 0
    # Same model, prompts and greedy decoding; only batch composition (and so padding) differs, which can
    # flip an argmax of a random model's near-uniform logits, so a few answers may differ, not more.
    assert result["identical_answers"] >= QUESTIONS - 1
    assert result["same_grade"] >= QUESTIONS - 1
