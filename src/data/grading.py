"""Which validation rows are graded by math accuracy, and the expected answer of each.

Rows with an `expected` value are graded by it. Rows without one are graded too when their
reference answer states a number unambiguously (see `reference_answer`), so any answer file, not
only the arithmetic generator's, yields a math accuracy; `data.grade_from_answers=false` turns that off.
"""

from __future__ import annotations

from dataclasses import dataclass

from src.data.conversation import Record
from src.metrics.answer_extraction import reference_answer

MARKERS = "'Respuesta: N', 'Answer: N', '#### N', 'la respuesta es N', 'the answer is N'"


@dataclass(frozen=True)
class GradedRecords:
    """The gradable records (with `expected` filled in) and how they were found."""

    records: list[Record]
    explicit: int  # rows with their own `expected`
    derived: int  # rows whose `expected` was read from the reference answer
    total: int  # all rows


def graded_records(records: list[Record], from_answers: bool = True) -> GradedRecords:
    """Records that can be graded; with `from_answers`, missing `expected` values come from the reference answer."""
    graded: list[Record] = []
    explicit = derived = 0
    for record in records:
        if record["expected"] is not None:
            graded.append(record)
            explicit += 1
        elif from_answers:
            answer = reference_answer(last_answer(record))
            if answer is not None:
                graded.append({**record, "expected": answer})
                derived += 1
    return GradedRecords(graded, explicit, derived, len(records))


def last_answer(record: Record) -> str:
    return next(m["content"] for m in reversed(record["messages"]) if m["role"] == "assistant")


def grading_summary(found: GradedRecords, graded: int, source: str, from_answers: bool, eval_size: int | None) -> str:
    """One line for the log: how many items math accuracy grades, and when none, why."""
    if eval_size == 0:
        return "Math accuracy: off (data.math_eval_size=0); only loss and perplexity are reported."
    if graded == 0:
        if from_answers:
            why = (
                f"none of its {found.total} rows has an 'expected' value, and no reference answer is a bare number "
                f"or marks its final answer ({MARKERS})"
            )
        else:
            why = f"none of its {found.total} rows has an 'expected' value (data.grade_from_answers=false)"
        return f"Math accuracy: no item of {source} can be graded: {why}. Only loss and perplexity are reported."
    origin = f"{found.explicit} with an 'expected' value"
    if from_answers:
        origin += f", {found.derived} read from the reference answers"
    subset = f" (a seeded subset of data.math_eval_size={eval_size})" if graded < len(found.records) else ""
    return f"Math accuracy: grading {graded} of {found.total} items of {source}{subset}; {origin}."
