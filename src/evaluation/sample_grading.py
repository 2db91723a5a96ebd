"""A verdict beside each sample answer the run prints, from the same rules that grade held-out sets.

The samples are the first answers a user reads; a wrong sum printed without comment reads as right.
"""

from __future__ import annotations

from src.data.arithmetic import EXPRESSION
from src.metrics.answer_extraction import extract_answer
from src.metrics.step_checker import check_steps


def sample_verdict(question: str, reply: str) -> str | None:
    """`right` or `wrong: …` with the true value and the reply's first wrong step; None when the question
    asks no single arithmetic expression (a general question has no exact answer to check)."""
    expressions = EXPRESSION.findall(question)
    if len(expressions) != 1:
        return None
    slip = check_steps(reply).first_wrong
    slip_text = f"first wrong step {slip.text} (true: {slip.expected})" if slip else ""
    answer = extract_answer(reply, strict=True)
    if answer is None:
        return "wrong: no answer line" + (f"; {slip_text}" if slip else "")
    claim = check_steps(f"{expressions[0]} = {answer}").steps
    if len(claim) != 1:
        return None
    if claim[0].correct:
        return "right" + (f", but its {slip_text}" if slip else "")
    return f"wrong: {expressions[0]} = {claim[0].expected}" + (f"; {slip_text}" if slip else "")
