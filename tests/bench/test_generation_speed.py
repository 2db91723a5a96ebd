"""bench/generation_speed.py in CI size: the project's validation generation and a plain loop answer alike."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from bench.generation_speed import LLAMA_CPP, PLAIN, PROJECT, agreement, main
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


def test_agreement_counts_identical_replies_and_same_answers_against_the_project() -> None:
    answers = {
        PROJECT: ["2 + 2 = 4", "5 - 3 = 2", "Respuesta: 9"],
        PLAIN: ["2 + 2 = 4", "5 - 3 = 2", "Respuesta: 9"],
        LLAMA_CPP: ["2 + 2 = 4 ", "5 - 3 = 2, so 2", "Respuesta: 8"],
    }
    assert agreement(answers) == {
        PLAIN: {"identical_replies": 3, "same_answer": 3},
        LLAMA_CPP: {"identical_replies": 1, "same_answer": 2},
    }


def test_llama_cpp_answers_from_the_exported_tutor(tiny_model_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install llama-cpp-python)")
    from src.export import export_gguf

    gguf = export_gguf(tiny_model_dir, tmp_path / "tiny.f16.gguf", "f16")
    val = write_jsonl(tmp_path / "val.jsonl", arithmetic_rows(QUESTIONS, start=60))
    result = main([
        "--repeats", "1", "--batch_size", "5", "--gguf", str(gguf), "--threads", "1",
        "--", "--model.model_name", str(tiny_model_dir), "--data.val_file", str(val), "--model.generation.max_new_tokens", "4",
    ])
    assert result["seconds"][LLAMA_CPP] > 0 and math.isfinite(result["speedup_vs_llama_cpp"])
    # f16 weights against float32: a near-uniform random model may flip an argmax or two, not most of them.
    assert result["agreement_with_project"][LLAMA_CPP]["same_answer"] >= QUESTIONS // 2
