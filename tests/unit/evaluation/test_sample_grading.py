"""The verdict printed beside each sample answer: the held-out sets' grading rules, applied to one question."""

from __future__ import annotations

import pytest

from src.evaluation.sample_grading import sample_verdict


def test_a_right_answer_with_right_steps_is_right():
    assert sample_verdict("What is 9 * 8?", "9×8=72\nAnswer: 72") == "right"


@pytest.mark.parametrize(
    ("question", "reply", "verdict"),
    [
        ("¿Cuánto es 12 + 7?", "12+7=29\nRespuesta: 29", "wrong: 12 + 7 = 19; first wrong step 12+7=29 (true: 19)"),
        ("¿Cuánto es 45 - 18?", "45>18\n45-10=35\n35-8=29\nRespuesta: 29",
         "wrong: 45 - 18 = 27; first wrong step 35-8=29 (true: 27)"),
        ("Calcula 5 + 3 x 9", "3×9=27\n27+5=33\nRespuesta: 33", "wrong: 5 + 3 x 9 = 32; first wrong step 27+5=33 (true: 32)"),
    ],
)
def test_a_wrong_answer_says_the_true_value_and_the_first_wrong_step(question: str, reply: str, verdict: str):
    assert sample_verdict(question, reply) == verdict


def test_a_right_answer_reached_through_a_wrong_step_says_so():
    assert sample_verdict("What is 5 + 3?", "5+3=9\nAnswer: 8") == "right, but its first wrong step 5+3=9 (true: 8)"


def test_a_reply_without_the_answer_line_is_wrong_as_the_strict_metric_counts_it():
    assert sample_verdict("What is 5 + 3?", "It is eight") == "wrong: no answer line"


def test_exact_values_are_fractions_not_floor_division():
    assert sample_verdict("What is 7 / 2?", "Answer: 3.5") == "right"
    assert sample_verdict("What is 7 / 2?", "Answer: 3").startswith("wrong: 7 / 2 = 3.5")


def test_a_question_without_one_arithmetic_expression_gets_no_verdict():
    assert sample_verdict("What is the capital of France?", "Paris") is None
