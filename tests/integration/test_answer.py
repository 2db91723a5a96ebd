"""`answer` writes the replies `validate` generates for its math accuracy, graded the same way."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import arithmetic_rows, write_jsonl
from src.training.lightning_cli import cli_main
from src.evaluation.answers import Answerer
from src.tools import run_tool

ROOT = Path(__file__).resolve().parents[2]
CONFIG = str(ROOT / "configs" / "smollm2.yaml")


def model_args(model_dir: Path, adapter_dir: Path) -> list[str]:
    return [
        "--config", CONFIG,
        "--model.model_name", str(model_dir),
        "--model.adapter_path", str(adapter_dir),
        "--model.generation.max_new_tokens", "8",
        "--data.eval_batch_size", "5",  # 12 items: batches of 5, 5, 2 with different padding
    ]


@pytest.fixture(scope="module")
def val_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rows = arithmetic_rows(12, start=85)  # one- and two-digit sums: prompts of different lengths
    return write_jsonl(tmp_path_factory.mktemp("answer") / "val.jsonl", rows)


def validate_replies(
    model_dir: Path, adapter_dir: Path, val_file: Path, run_dir: Path, extra: list[str]
) -> tuple[dict[str, str], float]:
    """Every (question, reply) `validate` generates, and the math accuracy it logs."""
    seen: dict[str, str] = {}
    original = Answerer.answer_batch

    def spy(self, batch):
        replies = original(self, batch)
        seen.update(zip(batch["question"], replies))
        return replies

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Answerer, "answer_batch", spy)
        cli = cli_main(
            [
                "validate", *model_args(model_dir, adapter_dir),
                "--data.val_file", str(val_file),
                "--data.extra_math_files", "{}",  # only the file `answer` reads, not the config's independent set
                "--trainer.precision", "32-true",  # the commands after training compute in float32
                "--trainer.accelerator", "cpu",
                "--trainer.logger.init_args.save_dir", str(run_dir),
                "--trainer.enable_progress_bar", "false",
                *extra,
            ]
        )
    return seen, float(cli.trainer.callback_metrics["val/math_acc"])


# With a task system turn, `answer` opens each question with it as validation does.
@pytest.mark.parametrize("extra", [[], ["--data.task_system_prompt", "Math tutor."]], ids=["plain", "task_turn"])
def test_answers_are_validates_generations_for_the_same_items(
    tiny_model_dir, tiny_adapter_dir, val_file, tmp_path, extra
) -> None:
    expected_replies, accuracy = validate_replies(tiny_model_dir, tiny_adapter_dir, val_file, tmp_path / "tb", extra)
    output = tmp_path / "answers.jsonl"
    code = run_tool(
        "answer",
        [*model_args(tiny_model_dir, tiny_adapter_dir), "--questions", str(val_file), "--output", str(output),
         "--device", "cpu", *extra],
    )
    assert code == 0
    rows = [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()]
    source = [json.loads(line) for line in val_file.read_text(encoding="utf-8").splitlines()]
    assert [row["question"] for row in rows] == [s["messages"][0]["content"] for s in source], "file order is kept"
    assert len(expected_replies) == 12
    assert {row["question"]: row["reply"] for row in rows} == expected_replies
    assert [row["expected"] for row in rows] == [s["expected"] for s in source]
    assert set(rows[0]) == {"question", "reply", "extracted", "expected", "correct", "kind", "steps", "first_wrong_step"}
    assert sum(row["correct"] for row in rows) / len(rows) == pytest.approx(accuracy)


def test_bare_questions_get_replies_without_grades(tiny_model_dir, tiny_adapter_dir, tmp_path) -> None:
    questions = tmp_path / "questions.txt"
    questions.write_text("¿Cuánto es 3 + 4?\n\nWhat is 6 × 7?\n", encoding="utf-8")
    output = tmp_path / "answers.jsonl"
    args = [*model_args(tiny_model_dir, tiny_adapter_dir), "--questions", str(questions), "--output", str(output)]
    assert run_tool("answer", args) == 0
    rows = [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()]
    assert [row["question"] for row in rows] == ["¿Cuánto es 3 + 4?", "What is 6 × 7?"]
    assert all(row["expected"] is None and row["correct"] is None and isinstance(row["reply"], str) for row in rows)
