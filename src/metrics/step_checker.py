"""Check every worked step of a reply exactly, and say which kind of step fails first.

Exact match says a reply is wrong; the steps say why. The tutor writes its working one step a line
(`61>22`, `61-20=41`, `41-2=39`, `84÷7=12`, `26-92=-(92-26)`, or in words: "primero 84 ÷ 7 = 12,
luego 35 + 12 = 47"); a slip inside one of them (`16-9=9`, `75>77`, `140+63=103`, `144÷12=11`) is
what is left to teach. Each step is recomputed with exact fractions and typed by operation and shape
(two-digit subtraction with borrow, comparison, three-digit sum, division fact, ...), so error rates
per step type say what to practise next. No grading library checks intermediate arithmetic, hence
this module; `StepErrors` aggregates it as a torchmetrics `Metric`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

import torch
from torchmetrics import Metric

STEP_TYPES = (
    "add_1d", "add_2d", "add_2d_carry", "add_3d", "add_3d_carry",
    "sub_1d", "sub_2d", "sub_2d_borrow", "sub_3d", "sub_3d_borrow", "sub_negative", "sub_negative_rewrite",
    "mul_fact", "mul_tens", "mul_large",
    "div_fact", "div_exact", "div_inexact",
    "compare", "expression",
)
"""Every step type, in report order (the metric's state holds one count per type)."""

NUMBER = r"\d+(?:\.\d+)?"
# One operand, optionally negative where no digit or bracket precedes the sign (`92-20` is a subtraction).
OPERAND = rf"(?:(?<![\d)])-)?{NUMBER}"
STEP = re.compile(
    rf"(?<![\w.])(?P<left>{OPERAND}(?:\s*[-+×÷]\s*{NUMBER})*)\s*(?P<rel>=|>|<|≥|≤)\s*"
    rf"(?P<right>-\s*\(\s*{NUMBER}\s*-\s*{NUMBER}\s*\)|-?{NUMBER})(?![\d.]*\s*[-+×÷]\s*\d)"
)
"""`a op b ... = c`, `a > b`, `a = b`, `a-b=-(b-a)`; a right side that goes on computing is not a step."""

# Operators as people and models write them, to one spelling; words only between two numbers.
SYMBOLS = (("−", "-"), ("–", "-"), ("*", "×"), ("·", "×"), ("/", "÷"))
WORDS = (
    (r"más|mas|plus", "+"), (r"menos|minus", "-"), (r"por|times|multiplied by", "×"),
    (r"dividido entre|dividido por|entre|divided by", "÷"), (r"es igual a|es|son|da|equals|is", "="),
)


@dataclass(frozen=True)
class Step:
    """One checked step: where it is, what it claims, what is true, and its type."""

    text: str
    """The step as checked, operators in one spelling (`7 x 8 = 54` reads `7×8 = 54`)."""
    line: int
    kind: str
    correct: bool
    expected: str
    """The true value (`12`, `-66`), or the true relation for a comparison (`75<77`)."""


@dataclass(frozen=True)
class StepCheck:
    """All steps of one reply, in order. `first_wrong` is None when every step holds."""

    steps: tuple[Step, ...]

    @property
    def first_wrong(self) -> Step | None:
        return next((step for step in self.steps if not step.correct), None)

    @property
    def status(self) -> str:
        """`right` (every step holds), `wrong` (one does not) or `unparseable` (no step found)."""
        if not self.steps:
            return "unparseable"
        return "right" if self.first_wrong is None else "wrong"


def normalise(line: str) -> str:
    """One spelling of each operator; `x` and operator words count only between numbers."""
    for symbol, plain in SYMBOLS:
        line = line.replace(symbol, plain)
    line = re.sub(r"(?<=\d)\s*[xX]\s*(?=\d)", "×", line)
    line = re.sub(r"(?<=\d)\s*:\s*(?=\d)", "÷", line)  # `84 : 7`; `Respuesta: 12` has no digit before
    for words, plain in WORDS:
        line = re.sub(rf"(?<=\d)\s+(?:{words})\s+(?=-?\d)", plain, line, flags=re.IGNORECASE)
    return line


def _digits(value: Fraction) -> int:
    return len(str(abs(int(value))))


def _carries(a: int, b: int) -> bool:
    """Whether column addition of `a` and `b` carries anywhere."""
    while a or b:
        if a % 10 + b % 10 >= 10:
            return True
        a, b = a // 10, b // 10
    return False


def _borrows(a: int, b: int) -> bool:
    """Whether column subtraction `a - b` (a >= b) borrows anywhere."""
    while b:
        if a % 10 < b % 10:
            return True
        a, b = a // 10, b // 10
    return False


def _shape(a: Fraction, op: str, b: Fraction, right: str) -> str:
    """The step type of `a op b`: the operation and the shape that makes it hard."""
    integers = a.denominator == 1 and b.denominator == 1 and a >= 0 and b >= 0
    if not integers:
        return "expression"
    x, y, width = int(a), int(b), max(_digits(a), _digits(b))
    if op == "+":
        if width == 1:
            return "add_1d"
        return f"add_{min(width, 3)}d" + ("_carry" if _carries(x, y) else "")
    if op == "-":
        if right.replace(" ", "").startswith("-("):
            return "sub_negative_rewrite"
        if x < y:
            return "sub_negative"
        if width == 1:
            return "sub_1d"
        return f"sub_{min(width, 3)}d" + ("_borrow" if _borrows(x, y) else "")
    if op == "×":
        if x <= 12 and y <= 12:
            return "mul_fact"
        small, large = sorted((x, y))
        return "mul_tens" if small <= 12 and large % 10 == 0 else "mul_large"
    if y == 0 or x % y:
        return "div_inexact"
    return "div_fact" if y <= 12 and x // y <= 12 else "div_exact"


def _evaluate(tokens: list[str]) -> Fraction | None:
    """`[a, op, b, ...]` with × and ÷ before + and -; None on a division by zero."""
    terms: list[Fraction] = [Fraction(tokens[0])]
    signs: list[str] = []
    for op, number in zip(tokens[1::2], tokens[2::2]):
        value = Fraction(number)
        if op in "×÷":
            if op == "÷" and value == 0:
                return None
            terms[-1] = terms[-1] * value if op == "×" else terms[-1] / value
        else:
            signs.append(op)
            terms.append(value)
    total = terms[0]
    for sign, term in zip(signs, terms[1:]):
        total = total + term if sign == "+" else total - term
    return total


def _show(value: Fraction) -> str:
    return str(value.numerator) if value.denominator == 1 else f"{float(value):g}"


def _right_value(right: str) -> Fraction:
    compact = right.replace(" ", "")
    if compact.startswith("-("):
        first, second = compact[2:-1].split("-")
        return -(Fraction(first) - Fraction(second))
    return Fraction(compact)


RELATIONS = {"=": lambda a, b: a == b, ">": lambda a, b: a > b, "<": lambda a, b: a < b,
             "≥": lambda a, b: a >= b, "≤": lambda a, b: a <= b}


def _check(match: re.Match[str], line: int) -> Step:
    left, relation, right = match["left"], match["rel"], match["right"]
    tokens = re.findall(rf"{OPERAND}|[-+×÷]", left.replace(" ", ""))
    value, claimed = _evaluate(tokens), _right_value(right)
    text = match.group(0)
    if value is None:
        return Step(text, line, "div_inexact", False, "undefined (division by zero)")
    if len(tokens) == 1 or relation != "=":
        # `75>77`, `1=1`: a comparison claims a relation; the true one is what a tutor would write.
        kind = "compare" if len(tokens) == 1 else "expression"
        true = "=" if value == claimed else ">" if value > claimed else "<"
        return Step(text, line, kind, RELATIONS[relation](value, claimed), f"{_show(value)}{true}{_show(claimed)}")
    kind = _shape(Fraction(tokens[0]), tokens[1], Fraction(tokens[2]), right) if len(tokens) == 3 else "expression"
    return Step(text, line, kind, value == claimed, _show(value))


def check_steps(reply: str) -> StepCheck:
    """Every step of `reply`, checked exactly, in the order written; lines without a step are skipped
    (`Respuesta: 14` states the answer, which exact match grades)."""
    steps = []
    for number, line in enumerate(reply.splitlines(), 1):
        steps += [_check(match, number) for match in STEP.finditer(normalise(line))]
    return StepCheck(tuple(steps))


class StepErrors(Metric):
    """Per step type: how many steps were checked, how many were wrong, how many replies failed there first.

    `compute()` gives `steps/<type>/error_rate` (wrong / checked), `steps/<type>/first_wrong` (share of
    replies whose first wrong step is of that type), the counts, and the shares of replies that are
    right, wrong and unparseable, all keyed like the project's other metrics.
    """

    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        n = len(STEP_TYPES)
        self.add_state("checked", default=torch.zeros(n, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("wrong", default=torch.zeros(n, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("first_wrong", default=torch.zeros(n, dtype=torch.long), dist_reduce_fx="sum")
        # right, wrong, unparseable replies
        self.add_state("replies", default=torch.zeros(3, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, replies: list[str]) -> None:
        index = {kind: i for i, kind in enumerate(STEP_TYPES)}
        for reply in replies:
            check = check_steps(reply)
            for step in check.steps:
                self.checked[index[step.kind]] += 1
                self.wrong[index[step.kind]] += int(not step.correct)
            if check.first_wrong is not None:
                self.first_wrong[index[check.first_wrong.kind]] += 1
            self.replies[("right", "wrong", "unparseable").index(check.status)] += 1

    def compute(self) -> dict[str, torch.Tensor]:
        total = self.replies.sum().clamp(min=1).float()
        result = {f"steps/replies_{name}": self.replies[i].float() / total
                  for i, name in enumerate(("right", "wrong", "unparseable"))}
        for i, kind in enumerate(STEP_TYPES):
            if self.checked[i] == 0:
                continue  # a type never written has no rate (not 0%)
            result[f"steps/{kind}/error_rate"] = self.wrong[i].float() / self.checked[i].float()
            result[f"steps/{kind}/first_wrong"] = self.first_wrong[i].float() / total
            result[f"steps/{kind}/count"] = self.checked[i].float()
        return result
