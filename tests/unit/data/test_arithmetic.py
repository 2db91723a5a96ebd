"""Specification of the arithmetic data generator: exact answers, the marker contract, splits, seeds."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from src.data.arithmetic import (
    DRILL_KINDS,
    HELD_OUT_SHARES,
    KINDS,
    MARKERS,
    STEP_KINDS,
    TEMPLATES,
    allocate,
    carry_borrow_tables,
    evaluate,
    generate,
    main,
    make_item,
    parse_problem,
    parse_weights,
    problems_in,
    sample_problem,
    times_tables,
    worked_steps,
)

ROOT = Path(__file__).resolve().parents[3]
DATA_README = ROOT / "data" / "arithmetic" / "README.md"
QUESTION_EXPR = re.compile(r"(-?\d+(?: [-+×x*÷/] \d+)+)")


DRILLED = {**{k: 1.0 for k in KINDS}, **{k: 1.0 for k in DRILL_KINDS}}


@pytest.fixture(scope="module")
def splits() -> tuple[list[dict], list[dict]]:
    return generate(800, 240, seed=3)


@pytest.fixture(scope="module")
def drilled_splits() -> tuple[list[dict], list[dict]]:
    return generate(800, 240, seed=3, weights=DRILLED)


def question_of(record: dict) -> str:
    return record["messages"][0]["content"]


def answer_of(record: dict) -> str:
    return record["messages"][-1]["content"]


def expression_value(question: str) -> int:
    """Evaluate the expression shown in a question, independently of the generator's own evaluator."""
    expr = QUESTION_EXPR.search(question)
    assert expr, f"no expression in {question!r}"
    python = expr.group(1).replace("×", "*").replace(" x ", " * ").replace("÷", "//").replace(" / ", " // ")
    return eval(python)  # noqa: S307 - digits and operators matched by QUESTION_EXPR only


def language_of(question: str) -> str:
    """The language whose template wording the question uses."""
    langs = {lang for lang, forms in TEMPLATES.items() for form in forms if question.startswith(form.split("{e}")[0])}
    assert len(langs) == 1, question
    return langs.pop()


def problem_key(record: dict) -> str:
    """The problem behind the wording: the expression with every operator spelled one way."""
    expr = QUESTION_EXPR.search(question_of(record)).group(1)
    return expr.replace("×", "*").replace(" x ", " * ").replace("÷", "/")


def test_expected_is_the_exact_value_of_the_question(splits):
    for record in splits[0] + splits[1]:
        assert record["expected"] == str(expression_value(question_of(record))), question_of(record)


def test_records_are_a_user_turn_then_an_assistant_turn_without_system(splits):
    for record in splits[0] + splits[1]:
        assert [m["role"] for m in record["messages"]] == ["user", "assistant"]


def test_last_line_is_the_marker_in_the_question_language(splits):
    for record in splits[0] + splits[1]:
        lang = language_of(question_of(record))
        marker = MARKERS[lang]
        assert answer_of(record).splitlines()[-1] == f"{marker}: {record['expected']}"


def test_marker_appears_only_on_the_last_line(splits):
    for record in splits[0]:
        lines = answer_of(record).splitlines()
        assert not any(m in line for line in lines[:-1] for m in MARKERS.values())


def test_every_kind_and_both_languages_are_present(splits):
    for split in splits:
        assert {r["kind"] for r in split} == set(KINDS)
        finals = {answer_of(r).splitlines()[-1].split(":")[0] for r in split}
        assert finals == set(MARKERS.values())


def test_train_and_val_share_no_problem(splits):
    train, val = splits
    assert not {problem_key(r) for r in train} & {problem_key(r) for r in val}


def test_val_is_spread_over_kinds_by_the_held_out_shares(splits):
    counts = {k: sum(r["kind"] == k for r in splits[1]) for k in KINDS}
    assert counts == allocate(240, HELD_OUT_SHARES)
    _, full_val = generate(0, 400, seed=1)
    assert {k: sum(r["kind"] == k for r in full_val) for k in KINDS} == HELD_OUT_SHARES


def test_division_is_always_exact():
    rng = random.Random(0)
    for kind in ("div", "precedence"):
        for _ in range(2000):
            problem = sample_problem(kind, rng)
            for i, token in enumerate(problem):
                if token == "/":
                    assert problem[i - 1] % problem[i + 1] == 0, problem


@pytest.mark.parametrize("kind", KINDS)
def test_operand_sizes_match_the_kind(kind):
    rng = random.Random(1)
    for _ in range(500):
        operands = [t for t in sample_problem(kind, rng) if isinstance(t, int)]
        if kind.endswith("_1d"):
            assert all(0 <= x <= 9 for x in operands)
        elif kind in ("add_2d", "sub_2d"):
            assert all(10 <= x <= 99 for x in operands)
        elif kind == "mul_2d1d":
            assert sorted(len(str(x)) for x in operands) == [1, 2]
        elif kind == "precedence":
            assert len(operands) == 3


def test_sub_1d_is_never_negative():
    rng = random.Random(4)
    assert all(evaluate(sample_problem("sub_1d", rng)) >= 0 for _ in range(500))


def test_sub_2d_includes_negative_results_and_borrowing():
    rng = random.Random(2)
    problems = [sample_problem("sub_2d", rng) for _ in range(400)]
    assert any(evaluate(p) < 0 for p in problems)
    assert any(p[0] % 10 < p[2] % 10 and evaluate(p) > 0 for p in problems)


@pytest.mark.parametrize(
    ("kind", "problem", "steps"),
    [
        ("add_2d", (45, "+", 27), ["45 + 20 = 65", "65 + 7 = 72"]),
        ("add_2d", (27, "+", 45), ["45 + 20 = 65", "65 + 7 = 72"]),
        ("sub_2d", (45, "-", 27), ["45 > 27", "45 - 20 = 25", "25 - 7 = 18"]),
        ("sub_2d", (27, "-", 45), ["27 < 45", "27 - 45 = -(45 - 27)", "45 - 20 = 25", "25 - 7 = 18"]),
        ("sub_2d", (45, "-", 20), ["45 > 20", "45 - 20 = 25"]),
        ("sub_2d", (38, "-", 38), ["38 = 38", "38 - 30 = 8", "8 - 8 = 0"]),
        ("mul_2d1d", (34, "*", 7), ["30 × 7 = 210", "4 × 7 = 28", "210 + 28 = 238"]),
        ("mul_2d1d", (7, "*", 34), ["30 × 7 = 210", "4 × 7 = 28", "210 + 28 = 238"]),
        ("div", (56, "/", 7), ["56 ÷ 7 = 8"]),
        ("div", (84, "/", 7), ["84 ÷ 7 = 12"]),
        ("precedence", (5, "+", 3, "*", 4), ["3 × 4 = 12", "12 + 5 = 17"]),
        ("precedence", (3, "*", 4, "+", 5), ["3 × 4 = 12", "12 + 5 = 17"]),
        ("precedence", (5, "+", 3, "*", 9), ["3 × 9 = 27", "27 + 5 = 32"]),
        ("precedence", (45, "+", 11, "*", 12), ["11 × 12 = 132", "132 + 40 = 172", "172 + 5 = 177"]),
        ("precedence", (5, "-", 77, "/", 11), ["77 ÷ 11 = 7", "5 < 7", "5 - 7 = -(7 - 5)", "7 - 5 = 2"]),
        ("precedence", (20, "/", 4, "-", 9), ["20 ÷ 4 = 5", "5 < 9", "5 - 9 = -(9 - 5)", "9 - 5 = 4"]),
        ("precedence", (25, "+", 42, "/", 6), ["42 ÷ 6 = 7", "25 + 7 = 32"]),
        ("precedence", (9, "*", 9, "-", 27), ["9 × 9 = 81", "81 > 27", "81 - 20 = 61", "61 - 7 = 54"]),
        ("add_1d", (3, "+", 4), ["3 + 4 = 7"]),
        ("mul_1d", (6, "*", 7), ["6 × 7 = 42"]),
        ("sub_2d1d", (53, "-", 6), ["53 - 6 = 47"]),
        ("add_2d1d", (13, "+", 7), ["13 + 7 = 20"]),
        ("sub_2d_neg", (27, "-", 45), ["27 < 45", "27 - 45 = -(45 - 27)", "45 - 20 = 25", "25 - 7 = 18"]),
    ],
)
def test_worked_steps(kind, problem, steps):
    assert worked_steps(kind, problem) == steps


def test_answers_write_the_steps_without_spaces():
    record = make_item("sub_2d", (27, "-", 45), "es", random.Random(0))
    assert answer_of(record) == "27<45\n27-45=-(45-27)\n45-20=25\n25-7=18\nRespuesta: -18"


def test_every_step_is_true_arithmetic(drilled_splits):
    step = re.compile(r"^(-?\d+)([-+×÷])(\d+)=(-?\d+)$")
    comparison = re.compile(r"^(\d+)([<>=])(\d+)$")
    for record in drilled_splits[0]:
        for line in answer_of(record).splitlines()[:-1]:
            if "(" in line:  # the sign flip of a negative difference, checked by the final value
                continue
            if match := comparison.match(line):
                a, sign, b = match.groups()
                assert {"<": int(a) < int(b), ">": int(a) > int(b), "=": a == b}[sign], line
            else:
                a, op, b, result = step.match(line).groups()
                assert evaluate((int(a), {"×": "*", "÷": "/"}.get(op, op), int(b))) == int(result), line


def test_no_steps_gives_a_bare_marker_line():
    record = make_item("mul_2d1d", (34, "*", 7), "en", random.Random(0), steps=False)
    assert answer_of(record) == "Answer: 238"


def test_every_kind_writes_steps_by_default(drilled_splits):
    assert set(STEP_KINDS) == {*KINDS, *DRILL_KINDS}
    assert all(len(answer_of(record).splitlines()) > 1 for record in drilled_splits[0])


def test_drills_are_trained_only_when_weighted_and_never_validated(splits, drilled_splits):
    assert not {r["kind"] for split in splits for r in split} & set(DRILL_KINDS)
    train, val = drilled_splits
    assert {r["kind"] for r in train} == {*KINDS, *DRILL_KINDS}
    assert {r["kind"] for r in val} == set(KINDS)


def test_drills_leave_the_validation_questions_unchanged(splits, drilled_splits):
    assert [question_of(r) for r in drilled_splits[1]] == [question_of(r) for r in splits[1]]


def test_sub_2d1d_drills_subtract_a_digit_mostly_with_borrowing():
    rng = random.Random(5)
    problems = [sample_problem("sub_2d1d", rng) for _ in range(400)]
    assert all(10 <= a <= 99 and 0 <= b <= 9 for a, _, b in problems)
    borrowing = sum(a % 10 < b for a, _, b in problems)
    assert 0.5 < borrowing / len(problems) < 0.9
    assert any(b == 0 for _, _, b in problems)


def test_add_2d1d_drills_add_a_digit_mostly_carrying_into_the_tens():
    rng = random.Random(7)
    problems = [sample_problem("add_2d1d", rng) for _ in range(400)]
    assert all(10 <= a <= 99 and 1 <= b <= 9 for a, _, b in problems)
    carrying = sum(a % 10 + b >= 10 for a, _, b in problems)
    assert 0.5 < carrying / len(problems) < 0.95


def test_sub_2d_neg_drills_are_always_negative_2_digit_differences():
    rng = random.Random(6)
    problems = [sample_problem("sub_2d_neg", rng) for _ in range(400)]
    assert all(10 <= a < b <= 99 for a, _, b in problems)


def test_allocate_matches_weights_and_total():
    counts = allocate(10, {"a": 1.0, "b": 1.0, "c": 3.0})
    assert counts == {"a": 2, "b": 2, "c": 6}
    assert sum(allocate(2001, {k: 1.0 for k in KINDS}).values()) == 2001


def test_parse_weights_keeps_unnamed_kinds_at_one_and_rejects_unknown_kinds():
    weights = parse_weights("sub_2d=2,precedence=0.5")
    assert weights["sub_2d"] == 2.0 and weights["precedence"] == 0.5 and weights["add_1d"] == 1.0
    assert weights["sub_2d1d"] == 0.0  # drills only when asked for
    assert parse_weights("sub_2d1d=1")["sub_2d1d"] == 1.0
    with pytest.raises(Exception, match="bad weight"):
        parse_weights("modulo=3")


def test_same_seed_same_files_other_seed_other_files(tmp_path: Path):
    def files(seed: int, name: str) -> tuple[str, str]:
        out = tmp_path / name
        main(["--out", str(out), "--train", "120", "--val", "40", "--seed", str(seed)])
        return (out / "train.jsonl").read_text(), (out / "val.jsonl").read_text()

    first, again, other = files(7, "a"), files(7, "b"), files(8, "c")
    assert first == again
    assert first[0] != other[0] and first[1] != other[1]


def test_files_hold_one_json_record_per_line(tmp_path: Path):
    main(["--out", str(tmp_path), "--train", "50", "--val", "16", "--seed", "0", "--no-steps"])
    lines = (tmp_path / "train.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 50
    record = json.loads(lines[0])
    assert set(record) == {"messages", "kind", "expected"}
    assert all(len(answer_of(json.loads(line)).splitlines()) == 1 for line in lines)


def test_worked_steps_read_the_same_whatever_the_operand_order():
    for a, b in ((5, 27), (23, 45), (3, 4), (0, 12)):
        assert worked_steps("add_2d", (a, "+", b)) == worked_steps("add_2d", (b, "+", a))
    assert worked_steps("mul_2d1d", (7, "*", 34)) == worked_steps("mul_2d1d", (34, "*", 7))
    assert worked_steps("precedence", (5, "+", 3, "*", 9)) == worked_steps("precedence", (3, "*", 9, "+", 5))


def test_precedence_comes_in_every_order_with_factors_and_divisors_to_12():
    rng = random.Random(8)
    problems = [sample_problem("precedence", rng) for _ in range(3000)]
    shapes = {("strong first" if p[1] in "*/" else "strong second", *(t for t in p if isinstance(t, str))) for p in problems}
    assert len(shapes) == 8  # × or ÷, + or −, either side
    others = [p[4] if p[1] in "*/" else p[0] for p in problems]
    assert min(others) == 0 and max(others) == 99 and any(o < 10 for o in others) and any(o >= 10 for o in others)
    divisors = {p[i + 1] for p in problems for i, t in enumerate(p) if t == "/"}
    factors = {p[i + d] for p in problems for i, t in enumerate(p) if t == "*" for d in (-1, 1)}
    assert divisors == set(range(2, 13)) and factors == set(range(0, 13))


def test_division_covers_divisors_2_to_12_and_quotients_1_to_12():
    rng = random.Random(9)
    problems = {sample_problem("div", rng) for _ in range(3000)}
    assert problems == {(d * q, "/", d) for d in range(2, 13) for q in range(1, 13)}


def test_the_times_tables_are_true_facts_in_both_languages():
    tables = times_tables()
    assert len(tables) == 11 * 2 * 2
    lines = [line for r in tables for line in answer_of(r).splitlines()]
    for n in range(2, 13):
        for k in range(1, 13):
            assert f"{n}×{k}={n * k}" in lines and f"{n * k}÷{n}={k}" in lines
    assert all(r["expected"] is None and r["kind"] == "table" for r in tables), "facts are trained, never graded"


def test_the_step_tables_hold_every_carry_and_borrow_into_the_tens_once():
    tables = carry_borrow_tables()
    lines = [line for r in tables for line in answer_of(r).splitlines()]
    borrows = {f"{a}-{d}={a - d}" for a in range(10, 100) for d in range(1, 10) if a % 10 < d}
    carries = {f"{a}+{d}={a + d}" for a in range(10, 90) for d in range(1, 10) if a % 10 + d >= 10}
    assert len(borrows) == 405 and len(carries) == 360
    assert sorted(lines) == sorted(borrows | carries), "each true fact once, and nothing else"
    for record in tables:
        units = {int(line.split("-" if "-" in line else "+")[0]) % 10 for line in answer_of(record).splitlines()}
        assert len(units) == 1, "a table keeps the units and digit fixed while the tens change"
    assert all(r["expected"] is None and r["kind"] == "table" for r in tables), "facts are trained, never graded"


def test_parse_problem_reads_any_wording_and_sign():
    assert parse_problem("Calcula 5 + 3 x 9") == (5, "+", 3, "*", 9)
    assert parse_problem("What's 84 / 7?") == (84, "/", 7)
    assert parse_problem("¿Cuánto es 9 × 8 - 4?") == parse_problem("Solve 9 * 8 - 4") == (9, "*", 8, "-", 4)
    assert parse_problem("Opera: 56 ÷ 8") == (56, "/", 8)
    with pytest.raises(ValueError, match="one arithmetic expression"):
        parse_problem("Tabla de multiplicar del 7")


def test_problems_in_names_the_file_and_line_of_a_bad_record(tmp_path: Path):
    path = tmp_path / "held_out.jsonl"
    path.write_text('{"messages": [{"role": "user", "content": "What is 2 + 3?"}]}\n{"messages": []}\n')
    with pytest.raises(Exception, match=r"held_out.jsonl:line 2"):
        problems_in(path)


def test_excluded_problems_are_asked_by_neither_split():
    rng = random.Random(10)
    excluded = {sample_problem(kind, rng) for kind in KINDS for _ in range(20)}
    train, val = generate(800, 240, seed=3, weights=DRILLED, exclude=excluded)
    asked = {parse_problem(question_of(r)) for r in train + val}
    assert not asked & excluded


def test_tables_are_added_to_training_only():
    train, val = generate(200, 80, seed=3, tables=True)
    assert sum(r["kind"] == "table" for r in train) == 44
    assert not any(r["kind"] == "table" for r in val)
    with_steps, _ = generate(200, 80, seed=3, tables=True, step_tables=True)
    assert sum(r["kind"] == "table" for r in with_steps) == 44 + 90
    step_tables = carry_borrow_tables()
    assert sorted(map(json.dumps, train)) == sorted(
        json.dumps(r) for r in with_steps if r not in step_tables), "the questions stay the same"


def test_cli_excludes_a_held_out_file(tmp_path: Path):
    held_out = tmp_path / "held_out.jsonl"
    main(["--out", str(tmp_path / "a"), "--train", "0", "--val", "400", "--seed", "1"])
    (tmp_path / "a" / "val.jsonl").rename(held_out)
    main(["--out", str(tmp_path / "b"), "--train", "600", "--val", "400", "--seed", "1", "--exclude", str(held_out)])
    problems = problems_in(held_out)
    assert not problems & problems_in(tmp_path / "b" / "val.jsonl")
    assert not problems & problems_in(tmp_path / "b" / "train.jsonl")


def documented_commands() -> list[list[str]]:
    """The arguments of each `python -m src.data.arithmetic` command in the data folder's README."""
    block = DATA_README.read_text(encoding="utf-8").split("```bash", 1)[1].split("```", 1)[0]
    commands = block.replace("\\\n", " ").splitlines()
    prefix = "python -m src.data.arithmetic "
    return [c.removeprefix(prefix).split() for c in commands if c.startswith(prefix)]


@pytest.mark.parametrize("argv", documented_commands(), ids=lambda argv: argv[argv.index("--out") + 1])
def test_the_bundled_training_files_are_what_the_documented_commands_write(tmp_path: Path, argv: list[str]):
    out = argv.index("--out") + 1
    bundled = ROOT / argv[out]
    argv = [str(ROOT / a) if a.startswith("data/") else a for a in argv]
    argv[out] = str(tmp_path)
    main(argv)
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == (["train.jsonl"] if "--train-only" in argv else ["train.jsonl", "val.jsonl"])
    for name in written:
        assert (tmp_path / name).read_bytes() == (bundled / name).read_bytes(), f"{bundled / name} is stale"


def training_problems(path: Path) -> set:
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return {parse_problem(question_of(r)) for r in records if r["kind"] != "table"}


def test_the_large_training_file_asks_no_held_out_problem():
    large = training_problems(ROOT / "data" / "arithmetic" / "large" / "train.jsonl")
    default = training_problems(ROOT / "data" / "arithmetic" / "train.jsonl")
    for held_out in ("val.jsonl", "independent.jsonl"):
        assert not large & problems_in(ROOT / "data" / "arithmetic" / held_out)
    assert len(large) > 1.1 * len(default), "more rows than the default's (5,404 against 4,604), mostly new problems"
