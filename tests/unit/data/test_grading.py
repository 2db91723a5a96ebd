"""Which validation rows math accuracy grades, and what the log says about it."""

from __future__ import annotations

from src.data.conversation import make_record
from src.data.grading import GradedRecords, graded_records, grading_summary


def chat(answer: str, expected: str | None = None):
    return make_record([{"role": "user", "content": "What is 9 + 7?"}, {"role": "assistant", "content": answer}], None, expected)


def test_rows_without_expected_are_graded_by_their_unambiguous_reference_answer() -> None:
    records = [
        chat("16"),
        chat("9 + 7 = 16.\nRespuesta: 16"),
        chat("Sumamos las unidades... la respuesta es 5"),
        chat("Nine plus seven.\n#### 16"),
        chat("9 + 7 = 16"),  # a bare "=": could be a step, not graded
        chat("Usa la función print"),
        chat("whatever", expected="3"),
    ]
    found = graded_records(records)
    assert [r["expected"] for r in found.records] == ["16", "16", "5", "16", "3"]
    assert (found.explicit, found.derived, found.total) == (1, 4, 7)
    assert records[0]["expected"] is None, "the input records are not changed"


def test_grading_from_answers_can_be_turned_off() -> None:
    found = graded_records([chat("16"), chat("x", expected="2")], from_answers=False)
    assert [r["expected"] for r in found.records] == ["2"]
    assert (found.explicit, found.derived) == (1, 0)


def test_the_summary_says_how_many_items_are_graded_and_where_they_came_from() -> None:
    found = graded_records([chat("16"), chat("x", expected="2"), chat("texto")])
    assert grading_summary(found, 2, "val.jsonl", True, None) == (
        "Math accuracy: grading 2 of 3 items of val.jsonl; 1 with an 'expected' value, 1 read from the reference answers."
    )
    assert grading_summary(found, 1, "val.jsonl", True, 1) == (
        "Math accuracy: grading 1 of 3 items of val.jsonl (a seeded subset of data.math_eval_size=1); "
        "1 with an 'expected' value, 1 read from the reference answers."
    )


def test_the_summary_says_why_nothing_is_graded() -> None:
    nothing = GradedRecords([], 0, 0, 5)
    assert grading_summary(nothing, 0, "val.jsonl", True, None) == (
        "Math accuracy: no item of val.jsonl can be graded: none of its 5 rows has an 'expected' value, and no "
        "reference answer is a bare number or marks its final answer ('Respuesta: N', 'Answer: N', '#### N', "
        "'la respuesta es N', 'the answer is N'). Only loss and perplexity are reported."
    )
    assert grading_summary(nothing, 0, "val.jsonl", False, None) == (
        "Math accuracy: no item of val.jsonl can be graded: none of its 5 rows has an 'expected' value "
        "(data.grade_from_answers=false). Only loss and perplexity are reported."
    )
    assert grading_summary(nothing, 0, "val.jsonl", True, 0) == (
        "Math accuracy: off (data.math_eval_size=0); only loss and perplexity are reported."
    )
