"""Find the final numeric answer in a generated tutor reply and compare it with the expected one.

A tutor explains before it answers, so a reply holds many numbers; grading the wrong one would
measure the explanation instead of the answer. The rules below go from the most explicit signal
(the "Respuesta: N" line the tutor is trained to end with) to the weakest (the last number).
Numbers are compared by value, so "1.234,5", "1,234.5" and "2469/2" all grade the same.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from fractions import Fraction

DECIMALS = 6
"""Non-integers are rounded to this many places, so 1/3 and 0.3333333 normalise alike."""

TOLERANCE = Fraction(1, 10**6)
"""Largest difference `answers_match` still calls equal (absorbs the rounding of fractions)."""

_SPACES = " \u00a0\u202f\u2009"  # space, no-break space, narrow no-break space, thin space
_LEADING_GROUP = r"[1-9]\d{0,2}"  # "0,750" is a decimal, never a thousands grouping

# One unsigned numeral. Alternatives are tried in order, so the grouped forms come first; the
# `(?!\d)` stops "1,2345" from being read as the grouped "1,234" followed by "5".
_BODY = (
    rf"{_LEADING_GROUP}(?:,\d{{3}})+(?!\d)(?:\.\d+)?"  # 1,234 and 1,234,567.5
    rf"|{_LEADING_GROUP}(?:\.\d{{3}}){{2,}}(?!\d)(?:,\d+)?"  # 1.234.567 and 1.234.567,5
    rf"|{_LEADING_GROUP}(?:\.\d{{3}})+(?!\d),\d+"  # 1.234,5
    rf"|{_LEADING_GROUP}(?:[{_SPACES}]\d{{3}})+(?!\d)(?:[.,]\d+)?"  # 1 234
    r"|\d+(?:[.,]\d+)?"  # 17, 2.5, 2,5
)
# A sign only where it cannot be a binary operator ("10-3" ends in 3, "= -3" is -3), and never a
# start in the middle of another numeral ("1,2,3" does not yield a separate 3).
_NUMBER = rf"(?:(?<![\w)\]])[-+−])?(?<!\d)(?<!\d[.,])(?:{_BODY})(?:/(?:{_BODY}))?"
_NUMBER_RE = re.compile(_NUMBER)

# Markdown, currency and LaTeX wrappers allowed between a marker and its number.
_DECOR = r"[\s*_:$€£(\[{\\]*"

_MARKED_RE = re.compile(
    rf"\b(?:respuesta(?:\s+final)?|(?:final\s+)?answer)\b[*_]*\s*:{_DECOR}(?P<num>{_NUMBER})",
    re.IGNORECASE,
)
_HASHES_RE = re.compile(rf"####{_DECOR}(?P<num>{_NUMBER})")
_PHRASE_RE = re.compile(
    r"\b(?:la\s+respuesta(?:\s+(?:final|correcta))?\s+es"
    r"|el\s+resultado(?:\s+final)?\s+es"
    r"|the\s+(?:(?:final|correct)\s+)?(?:answer|result)\s+is)\b"
    rf"{_DECOR}(?P<num>{_NUMBER})",
    re.IGNORECASE,
)
# "=" alone: not part of "==", "<=", ">=", "!=" or "=>".
_EQUALS_RE = re.compile(r"(?<![<>!=])=(?![=>])")
_AFTER_EQUALS_RE = re.compile(rf"{_DECOR}(?P<num>{_NUMBER})")


def extract_answer(text: str, strict: bool = False) -> str | None:
    """The reply's final answer as a normalised numeric string, or None.

    Rules, first that yields a number wins:
      a. the last "Respuesta: N" / "Respuesta final: N" / "Answer: N" / "Final answer: N"
         (any case, markdown bold allowed: "**Respuesta:** 17");
      b. the last "#### N" (GSM8K style);
      c. the last "la respuesta es N" / "el resultado es N" / "the answer is N" /
         "the result is N";
      d. the value right after the last "=";
      e. the last number in the text.
    A marker with no number after it yields nothing, and the next rule is tried. `strict`
    applies rule (a) only: it measures whether the model learnt the answer format, not just
    the arithmetic.
    """
    rules: list[Callable[[str], str | None]] = [_marked]
    if not strict:
        rules += [_hashes, _phrase, _after_last_equals, _last_number]
    for rule in rules:
        answer = rule(text)
        if answer is not None:
            return answer
    return None


def reference_answer(text: str) -> str | None:
    """The final number of a reference (dataset) answer when it is unambiguous, else None.

    Unambiguous means the whole text is a number ("16", "-3", "3/4"), or the text marks its final
    answer ("Respuesta: 16", "Answer: 16", "#### 16", "la respuesta es 16", "the answer is 16";
    the last marker wins, as in `extract_answer`). A bare "=" or the last number of a worked
    explanation is not enough: in a dataset answer those are as often a step as the result.
    """
    bare = normalise_number(text.strip())
    if bare is not None:
        return bare
    for rule in (_marked, _hashes, _phrase):
        answer = rule(text)
        if answer is not None:
            return answer
    return None


def normalise_number(token: str) -> str | None:
    """A canonical string for a numeral, so equal values compare equal as strings; None if not one.

    Accepts a leading "+", "-" or "−" (U+2212), a trailing period, fractions ("3/4" -> "0.75",
    "6/3" -> "2") and thousands separators (",", "." or a space: "1,234", "1.234.567",
    "1 234" -> "1234"). Integers come out without a decimal point; other values are rounded to
    `DECIMALS` places without trailing zeros ("2.50" -> "2.5", "3.0" -> "3").

    Comma rule, for Spanish decimal commas: a single comma is a thousands separator only when
    exactly three digits follow it and the part before it is one to three digits not starting
    with 0 ("1,234" and "12,500" -> thousands); otherwise it is a decimal comma ("2,5" -> 2.5,
    "0,750" -> 0.75, "1,2345" -> 1.2345, "1234,567" -> 1234.567). A single period is always a
    decimal point. Several commas, or several periods, are thousands separators and must group
    by threes. When both appear, the rightmost is the decimal separator ("1.234,5" and
    "1,234.5" -> 1234.5).
    """
    value = _to_fraction(token)
    return None if value is None else _format(value)


def answers_match(predicted: str | None, expected: str) -> bool:
    """Whether the predicted answer has the expected value, within `TOLERANCE`.

    Raises ValueError when `expected` is not a number: that is a data error, and counting it
    as a wrong answer would hide it inside a lower accuracy.
    """
    want = _to_fraction(expected)
    if want is None:
        raise ValueError(
            f"Expected answer {expected!r} is not a number. The `expected` field of a graded "
            "example must be numeric text such as '68', '-3', '2.5' or '3/4'."
        )
    got = None if predicted is None else _to_fraction(predicted)
    return got is not None and abs(got - want) <= TOLERANCE


def _last_valid(matches: list[re.Match[str]]) -> str | None:
    for match in reversed(matches):
        answer = normalise_number(match["num"])
        if answer is not None:
            return answer
    return None


def _marked(text: str) -> str | None:
    return _last_valid(list(_MARKED_RE.finditer(text)))


def _hashes(text: str) -> str | None:
    return _last_valid(list(_HASHES_RE.finditer(text)))


def _phrase(text: str) -> str | None:
    return _last_valid(list(_PHRASE_RE.finditer(text)))


def _after_last_equals(text: str) -> str | None:
    equals = list(_EQUALS_RE.finditer(text))
    if not equals:
        return None
    # Only the last "=": an earlier one holds an intermediate step, not the answer.
    match = _AFTER_EQUALS_RE.match(text, equals[-1].end())
    return None if match is None else normalise_number(match["num"])


def _last_number(text: str) -> str | None:
    for match in reversed(list(_NUMBER_RE.finditer(text))):
        answer = normalise_number(match.group())
        if answer is not None:
            return answer
    return None


def _to_fraction(token: str) -> Fraction | None:
    text = token.strip().replace("−", "-")
    if text.endswith("."):
        text = text[:-1]
    negative = text.startswith("-")
    if text[:1] in "+-":
        text = text[1:]
    if "/" in text:
        numerator, _, denominator = text.partition("/")
        top, bottom = _unsigned(numerator), _unsigned(denominator)
        if top is None or not bottom:  # None or zero
            return None
        value = top / bottom
    else:
        value = _unsigned(text)
        if value is None:
            return None
    return -value if negative else value


def _unsigned(text: str) -> Fraction | None:
    if re.fullmatch(rf"{_LEADING_GROUP}(?:[{_SPACES}]\d{{3}})+(?:[.,]\d+)?", text):
        text = re.sub(f"[{_SPACES}]", "", text)
    commas, periods = text.count(","), text.count(".")
    if commas and periods:
        decimal = "," if text.rfind(",") > text.rfind(".") else "."
        whole, _, frac = text.rpartition(decimal)
        if not _grouped(whole, "." if decimal == "," else ","):
            return None
        text = f"{re.sub('[.,]', '', whole)}.{frac}"
    elif commas:
        if _grouped(text, ","):
            text = text.replace(",", "")
        elif commas == 1:
            text = text.replace(",", ".")
        else:
            return None
    elif periods > 1:
        if not _grouped(text, "."):
            return None
        text = text.replace(".", "")
    if not re.fullmatch(r"\d+(?:\.\d*)?|\.\d+", text):
        return None
    return Fraction(text)


def _grouped(text: str, separator: str) -> bool:
    return re.fullmatch(rf"{_LEADING_GROUP}(?:{re.escape(separator)}\d{{3}})+", text) is not None


def _format(value: Fraction) -> str:
    if value.denominator == 1:
        return str(value.numerator)
    # Exact rounding on the Fraction: a float or a fixed-precision Decimal would lose digits of
    # large values before the point.
    scaled = round(value * 10**DECIMALS)
    whole, frac = divmod(abs(scaled), 10**DECIMALS)
    digits = f"{whole}.{frac:0{DECIMALS}d}".rstrip("0").rstrip(".")
    return f"-{digits}" if scaled < 0 else digits
