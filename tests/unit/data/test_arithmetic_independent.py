"""Specification of the independent held-out set: its own phrasings, every operand order, never a training problem."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from src.data.arithmetic import (
    HELD_OUT_SHARES,
    KINDS,
    MARKERS,
    TEMPLATES,
    evaluate,
    generate,
    parse_problem,
    parse_weights,
    problems_in,
)
from src.data.arithmetic_independent import PHRASINGS, PRECEDENCE_ORDERS, generate_independent, main, precedence_order

ROOT = Path(__file__).resolve().parents[3]
BUNDLED = ROOT / "data" / "arithmetic"
FULL_MIX = parse_weights(",".join(f"{k}=1" for k in ("sub_2d1d", "add_2d1d", "sub_2d_neg", "mul_fact")))


@pytest.fixture(scope="module")
def independent() -> list[dict]:
    return generate_independent(400, seed=2026)


def question_of(record: dict) -> str:
    return record["messages"][0]["content"]


def problems_of(records: list[dict], kind: str | None = None) -> list[tuple]:
    return [parse_problem(question_of(r)) for r in records if kind is None or r["kind"] == kind]


def test_four_hundred_questions_over_the_eight_kinds(independent):
    assert {k: sum(r["kind"] == k for r in independent) for k in KINDS} == HELD_OUT_SHARES


def test_expected_is_the_exact_value_and_no_problem_repeats(independent):
    problems = problems_of(independent)
    assert len(set(problems)) == len(problems)
    assert all(r["expected"] == str(evaluate(p)) for r, p in zip(independent, problems))


def test_every_precedence_order_appears_with_one_and_two_digit_operands(independent):
    orders = {precedence_order(p) for p in problems_of(independent, "precedence")}
    assert orders == set(PRECEDENCE_ORDERS)
    assert {"a+b*c:1d", "b*c+a:1d", "a-b/c:2d", "b/c-a:2d"} <= orders


def test_precedence_order_names_the_shape():
    assert precedence_order((5, "+", 3, "*", 9)) == "a+b*c:1d"
    assert precedence_order((3, "*", 9, "-", 45)) == "b*c-a:2d"
    assert precedence_order((84, "/", 7, "+", 0)) == "b/c+a:1d"


def test_every_divisor_2_to_12_and_quotient_1_to_12_appears(independent):
    divisions = problems_of(independent, "div")
    assert {d for _, _, d in divisions} == set(range(2, 13))
    assert {n // d for n, _, d in divisions} == set(range(1, 13))
    assert all(n % d == 0 for n, _, d in divisions)


def test_operands_0_and_1_every_sign_and_both_languages_appear(independent):
    operands = {t for p in problems_of(independent) for t in p if isinstance(t, int)}
    assert {0, 1} <= operands
    assert any(0 in p and "*" in p for p in problems_of(independent)), "a product by zero"
    signs = {s for r in independent for s in re.findall(r" ([×*x÷/]) ", question_of(r))}
    assert signs == {"×", "*", "x", "÷", "/"}
    markers = {r["messages"][1]["content"].splitlines()[-1].split(":")[0] for r in independent}
    assert markers == set(MARKERS.values())


def test_phrasings_are_its_own(independent):
    training_openings = {form.split("{e}")[0] for forms in TEMPLATES.values() for form in forms}
    own_openings = {form.split("{e}")[0] for forms in PHRASINGS.values() for form in forms}
    assert not training_openings & own_openings
    assert not any(question_of(r).startswith(tuple(training_openings)) for r in independent)


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_the_two_generators_never_produce_the_same_problem(independent, seed):
    excluded = set(problems_of(independent))
    train, val = generate(2400, 400, seed=seed, weights=FULL_MIX, exclude=excluded, tables=True)
    assert not excluded & set(problems_of(val))
    assert not excluded & set(problems_of([r for r in train if r["kind"] != "table"]))


def test_the_bundled_sets_share_no_problem():
    independent = problems_in(BUNDLED / "independent.jsonl")
    val = problems_in(BUNDLED / "val.jsonl")
    train_records = [json.loads(line) for line in (BUNDLED / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    train = set(problems_of([r for r in train_records if r["kind"] != "table"]))
    assert len(independent) == len(val) == 400
    assert not independent & val, "tuning and independent sets are disjoint"
    assert not independent & train, "no independent problem is a training question"
    assert not val & train


def test_the_bundled_file_is_what_the_documented_command_writes(tmp_path: Path):
    main(["--out", str(tmp_path / "independent.jsonl"), "--n", "400", "--seed", "2026"])
    assert (tmp_path / "independent.jsonl").read_text(encoding="utf-8") == (
        BUNDLED / "independent.jsonl"
    ).read_text(encoding="utf-8")
