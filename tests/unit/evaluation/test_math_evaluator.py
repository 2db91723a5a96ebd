"""The evaluator grades each held-out set apart, reports which worked steps fail by type beside exact
match, keeps a few wrong answers, and the run summary lists the worst step types, base against kept."""

from __future__ import annotations

from src.callbacks.run_report import _held_out_table, _step_lines
from src.evaluation.math_evaluator import MathEvaluator, wrong_answers_markdown
from src.tools.answer import answer_rows


def batch(questions: list[str], expected: list[str], kind: str = "sub_2d") -> dict:
    return {"question": questions, "expected": expected, "kind": [kind] * len(questions)}


def test_each_set_is_graded_apart_with_step_errors_beside_exact_match() -> None:
    evaluator = MathEvaluator(wrong_answers_logged=1)
    evaluator.configure(["val", "indep"], ["sub_2d"])
    evaluator.grade("val", batch(["16-9?", "40-12?"], ["7", "28"]), ["16-9=9\nAnswer: 9", "40-12=28\nAnswer: 28"])
    evaluator.grade("indep", batch(["5-3?"], ["2"]), ["5-3=2\nAnswer: 2"])
    val, indep = evaluator.compute("val"), evaluator.compute("indep")
    assert val["val/math_acc"] == 0.5 and val["val/math_acc_count"] == 2
    # 16-9=9 and 40-12=28 are both two-digit subtractions with a borrow; one of the two is wrong.
    assert val["val/steps/sub_2d_borrow/error_rate"] == 0.5 and val["val/steps/sub_2d_borrow/count"] == 2
    assert val["val/steps/sub_2d_borrow/first_wrong"] == 0.5  # of the replies, half fail first there
    assert indep["indep/math_acc"] == 1.0 and indep["indep/steps/sub_1d/error_rate"] == 0.0
    assert not any(key.startswith("indep/steps/sub_2d") for key in indep)  # a type never written has no rate
    assert [w[0] for w in evaluator.wrong_answers] == ["16-9?"]  # only the first, as configured
    assert evaluator.graded_sets() == []  # compute resets


def test_wrong_answers_render_as_one_markdown_table_with_line_breaks_marked() -> None:
    table = wrong_answers_markdown([("a|b", "x\ny", None, "3")])
    assert table.splitlines()[2] == "| a\\|b | x ⏎ y | None | 3 |"


def test_the_summary_lists_the_worst_step_types_of_the_kept_adapter_beside_the_base() -> None:
    base = {"val/math_acc": 0.1, "val/steps/compare/error_rate": 0.4, "val/steps/sub_2d_borrow/error_rate": 0.5}
    kept = {"val/math_acc": 0.9, "val/steps/compare/error_rate": 0.0, "val/steps/sub_2d_borrow/error_rate": 0.03}
    table = _held_out_table(["val"], base, kept)
    assert table["val"]["best_step_errors"] == {"compare": 0.0, "sub_2d_borrow": 0.03}
    assert _step_lines(table) == [
        "Wrong worked steps by type, base -> kept adapter (what to practise next):",
        "  val    sub_2d_borrow 50.0% -> 3.0%",
    ]


def test_answer_rows_name_the_first_wrong_step() -> None:
    questions = [{"messages": [], "question": "16-9?", "expected": "7", "kind": "sub"}]
    (row,) = answer_rows(questions, ["16-9=9\nAnswer: 9"])
    assert row["correct"] is False and row["steps"] == "wrong"
    assert row["first_wrong_step"] == {"text": "16-9=9", "kind": "sub_2d_borrow", "line": 1, "true": "7"}
    (row,) = answer_rows(questions, ["Seven."])
    assert row["steps"] == "unparseable" and row["first_wrong_step"] is None
