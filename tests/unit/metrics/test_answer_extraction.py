"""Which number counts as a tutor's answer, and when two numerals are the same answer."""

from __future__ import annotations

import pytest

from src.metrics.answer_extraction import answers_match, extract_answer, normalise_number, reference_answer

LENIENT_CASES = [
    # (a) the marked final answer, Spanish and English, any case, markdown bold
    ("Sumamos 12 + 5.\nRespuesta: 17", "17"),
    ("respuesta: 17", "17"),
    ("RESPUESTA: 17", "17"),
    ("Respuesta final: 42", "42"),
    ("Answer: 8", "8"),
    ("Final answer: 8", "8"),
    ("**Respuesta:** 17", "17"),
    ("**Respuesta**: 17", "17"),
    ("Respuesta: **17**", "17"),
    ("**Final answer: 9**", "9"),
    ("Respuesta : 17", "17"),
    ("Answer: $1,250", "1250"),
    # (a) wins over any later number, and its last occurrence wins
    ("Respuesta: 17\nEjercicio extra: 3 + 4 = 7", "17"),
    ("Answer: 12. Check: 12 - 5 = 7, so 7 apples are left.", "12"),
    ("Respuesta: 10\nMe equivoqué. Respuesta: 12", "12"),
    ("Respuesta: 5 #### 6", "5"),
    ("Respuesta: 5. La respuesta es 6", "5"),
    # a marker with no number falls through to the next rule
    ("Respuesta: no lo sé, pero 2 + 2 = 4", "4"),
    ("Answer: see below. The answer is 30", "30"),
    # (b) GSM8K hashes
    ("She pays 3 * 4 = 12 dollars.\n#### 12", "12"),
    ("#### 1,000 then 5 more", "1000"),
    ("#### 3\nlater 9 = 9", "3"),
    ("#### -7", "-7"),
    # (c) "the answer is" phrases
    ("Entonces la respuesta es 25 y no 26", "25"),
    ("La respuesta final es 9, porque 3 x 3 = 9 y sobran 4", "9"),
    ("El resultado es 144.", "144"),
    ("So the answer is 56, not 65", "56"),
    ("The result is: **81** and 9 squared is 81 too, 1 more", "81"),
    ("The final answer is 7 apples, 8 pears", "7"),
    # (d) the value after the last "="
    ("2 + 3 = 5", "5"),
    ("7 × 8 = 56 manzanas en 4 cajas", "56"),
    ("Primero 3 + 4 = 7, luego 7 × 2 = 14 y sobran 2", "14"),
    ("x = -3 porque 5 es mayor", "-3"),
    ("12 / 4 = 3/4 no, sino 3", "0.75"),
    ("10-3=7", "7"),
    ("a = b, y b vale 4", "4"),  # "=" followed by no number: last number instead
    ("x <= 5 y luego 8", "8"),  # "<=" is not an "="
    # (e) the last number
    ("Tengo 3 manzanas y compro 4, ahora tengo 7", "7"),
    ("I think it is 42.", "42"),
    ("10-3", "3"),  # a minus after a digit is subtraction, not a sign
    ("La temperatura baja hasta -5", "-5"),
    ("Baja a −12 grados", "-12"),
    ("Quedan 2.50 euros", "2.5"),
    ("Son 3.0 litros", "3"),
    ("Comí 3/4 de la pizza", "0.75"),
    ("6/3", "2"),
    ("1/3", "0.333333"),
    ("Hay 1,234 personas", "1234"),
    ("Hay 1.234.567 habitantes", "1234567"),
    ("Hay 1 234 personas", "1234"),
    ("Cuesta 1.234,50 euros", "1234.5"),
    ("It costs 1,234.50 dollars", "1234.5"),
    ("Mide 2,5 metros", "2.5"),
    ("Pesa 0,75 kg", "0.75"),
    ("Pesa 0,750 kg", "0.75"),
    ("El total es 17.", "17"),
    ("+5", "5"),
    # no number at all
    ("No lo sé.", None),
    ("", None),
    ("Respuesta: ninguna", None),
    ("x = y", None),
]

STRICT_CASES = [
    ("Respuesta: 17", "17"),
    ("**Respuesta:** -4", "-4"),
    ("Final answer: 3/4", "0.75"),
    ("Respuesta: 2,5", "2.5"),
    ("Respuesta: 10\nRespuesta: 12", "12"),
    ("2 + 3 = 5", None),
    ("#### 12", None),
    ("La respuesta es 9", None),
    ("Tengo 7", None),
    ("Respuesta: no sé, 2 + 2 = 4", None),
]


@pytest.mark.parametrize(("text", "answer"), LENIENT_CASES)
def test_extract_answer_lenient(text: str, answer: str | None) -> None:
    assert extract_answer(text) == answer


@pytest.mark.parametrize(("text", "answer"), STRICT_CASES)
def test_extract_answer_strict(text: str, answer: str | None) -> None:
    assert extract_answer(text, strict=True) == answer


@pytest.mark.parametrize(
    ("token", "normal"),
    [
        ("17", "17"),
        ("1,234", "1234"),
        ("12,500", "12500"),
        ("1,234,567", "1234567"),
        ("1.234.567", "1234567"),
        ("1 234", "1234"),
        ("1\u00a0234\u00a0567", "1234567"),
        ("17.", "17"),
        ("+5", "5"),
        ("-5", "-5"),
        ("−5", "-5"),
        ("2.50", "2.5"),
        ("3.0", "3"),
        ("-0.0", "0"),
        ("3/4", "0.75"),
        ("6/3", "2"),
        ("-6/3", "-2"),
        ("1/3", "0.333333"),
        ("2/3", "0.666667"),
        ("2,5", "2.5"),
        ("0,75", "0.75"),
        ("0,750", "0.75"),  # zero integer part: a decimal comma
        ("1,2345", "1.2345"),  # four digits after the comma: a decimal comma
        ("1234,567", "1234.567"),  # four-digit integer part: a decimal comma
        ("1.234,5", "1234.5"),
        ("1,234.5", "1234.5"),
        ("1.5", "1.5"),  # a single period is always a decimal point
        ("3.14159265", "3.141593"),
        (" 42 ", "42"),
        ("123456789012345678901234567890.5", "123456789012345678901234567890.5"),
    ],
)
def test_normalise_number(token: str, normal: str) -> None:
    assert normalise_number(token) == normal


@pytest.mark.parametrize("token", ["", "abc", "5/0", "1,2,3", "1.2.3", "1,2.3", "--5", "/4", "3/"])
def test_normalise_number_rejects_non_numbers(token: str) -> None:
    assert normalise_number(token) is None


@pytest.mark.parametrize(
    ("predicted", "expected", "match"),
    [
        ("17", "17", True),
        ("17", "18", False),
        ("2.5", "2.50", True),
        ("3", "3.0", True),
        ("1234", "1,234", True),
        ("0.75", "3/4", True),
        ("0.333333", "1/3", True),
        ("0.33", "1/3", False),
        ("-3", "−3", True),
        ("-3", "3", False),
        ("2.5", "2,5", True),
        ("1.000001", "1", True),  # within the tolerance
        ("1.000002", "1", False),
        (None, "17", False),
        ("abc", "17", False),
    ],
)
def test_answers_match(predicted: str | None, expected: str, match: bool) -> None:
    assert answers_match(predicted, expected) is match


def test_answers_match_rejects_non_numeric_expected() -> None:
    with pytest.raises(ValueError, match=r"Expected answer 'diecisiete' is not a number"):
        answers_match("17", "diecisiete")


def test_extraction_agrees_with_normalisation() -> None:
    # Every extracted answer is already normal, so string equality is value equality.
    for text, _ in LENIENT_CASES:
        answer = extract_answer(text)
        if answer is not None:
            assert normalise_number(answer) == answer


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        ("16", "16"),
        (" -3 ", "-3"),
        ("3/4", "0.75"),
        ("1.234,5", "1234.5"),
        ("9 + 7 = 16.\nRespuesta: 16", "16"),
        ("Answer: 42", "42"),
        ("Natalia sold 48 clips...\n#### 72", "72"),
        ("Sumamos 2 y 3: la respuesta es 5", "5"),
        ("First 4, then 6, so the answer is 10.", "10"),
        ("Respuesta: 3\nRespuesta final: 4", "4"),
    ],
)
def test_reference_answer_reads_a_bare_or_marked_final_number(reference: str, expected: str) -> None:
    assert reference_answer(reference) == expected


@pytest.mark.parametrize(
    "reference",
    ["9 + 7 = 16", "Primero 4, luego 6 y al final 10", "Usa la función print", "Respuesta: dieciséis", ""],
)
def test_reference_answer_is_none_when_the_final_number_is_not_marked(reference: str) -> None:
    assert reference_answer(reference) is None
