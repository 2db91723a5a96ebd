"""Synthetic arithmetic tutoring data: chat records whose answers end in a graded marker line.

Every assistant answer ends with `Respuesta: N` (Spanish question) or `Answer: N` (English
question); the strict metric reads only that line. Before it come short worked steps: tens then
units for 2-digit sums; for differences a comparison first (`27<45`), turned round when negative,
then tens and units; partial products for 2-digit × 1-digit, the strong operator first and then the
same steps for precedence, `63÷9=7` for division, and the restated expression for 1-digit facts.
Steps are written without spaces (`45-20=25`, a third fewer tokens than `45 - 20 = 25`): on a
2-core CPU every training token costs time. Training can add drills (`DRILL_KINDS`) of the steps
the graded kinds fail on; validation never contains them.

Train and validation are disjoint by problem (operands and operators), not by wording, so a
validation question is never a rephrased training one; `--exclude` keeps a second held-out set's
problems (`arithmetic_independent.py`) out of both.

Training teaches operations rather than layouts, because a recipe tuned on one validation set's
layouts failed on other phrasings and operand orders: precedence in every order (strong operation
first or second, lone operand 0–99), factors and divisors to 12, products in either order, a sum
started from its larger term whatever the order (`5+27` and `27+5` both `27+5=32`), the times table
to 12 × 12 as questions (`mul_fact`) and the × and ÷ tables of 2 to 12 as facts (`--tables`: every
division fact, including those of held-out questions, is seen at least once). What each choice
measured: docs/results/2026-11-24-arithmetic-data-recipe.md. The bundled data:

    python -m src.data.arithmetic --out data/arithmetic --train 4560 --val 400 --seed 0 --tables \
        --exclude data/arithmetic/independent.jsonl --weights \
        add_1d=0.15,sub_1d=0.15,mul_1d=0.15,mul_fact=0.4,add_2d=0.7,div=0.8,sub_2d=1.3,mul_2d1d=0.9,precedence=2.2,sub_2d1d=0.7,add_2d1d=0.4,sub_2d_neg=0.5
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import re
from collections.abc import Sequence
from pathlib import Path

from src.data.conversation import DataFormatError, Record, make_record

KINDS: tuple[str, ...] = ("add_1d", "sub_1d", "mul_1d", "add_2d", "sub_2d", "mul_2d1d", "div", "precedence")
DRILL_KINDS: tuple[str, ...] = ("sub_2d1d", "add_2d1d", "sub_2d_neg", "mul_fact")
"""Training-only practice of what the graded kinds lean on: a digit taken from or added to a 2-digit
number (`53-6=47`, `13+7=20`), 2-digit differences that come out negative (the `27<45`
comparison) and the times table to 12 × 12 (`11×12=132`, `0×7=0`). Never validated."""
ALL_KINDS: tuple[str, ...] = (*KINDS, *DRILL_KINDS)
HELD_OUT_SHARES: dict[str, float] = {
    "add_1d": 25, "sub_1d": 25, "mul_1d": 25, "add_2d": 70, "sub_2d": 70, "mul_2d1d": 70, "div": 40, "precedence": 75,
}
"""Questions per kind in a held-out set of 400. The tuning and the independent sets share no problem
and leave training some: the 1-digit kinds have only 100 problems (55 for `sub_1d`) and division
132 (divisors 2–12, quotients 1–12), so they get fewer questions than the open-ended kinds."""
STEP_KINDS: tuple[str, ...] = ALL_KINDS
"""Kinds that get worked steps by default (for 1-digit facts, the restated expression)."""

LANGS: tuple[str, ...] = ("es", "en")
MARKERS: dict[str, str] = {"es": "Respuesta", "en": "Answer"}
TEMPLATES: dict[str, tuple[str, ...]] = {
    "es": ("¿Cuánto es {e}?", "Calcula {e}", "¿Cuánto da {e}?", "Resuelve {e}", "¿Qué resultado da {e}?"),
    "en": ("What is {e}?", "Compute {e}", "How much is {e}?", "Calculate {e}", "Solve {e}"),
}
# Questions mostly use × and ÷; a minority use the ASCII forms people type, so both are understood.
MUL_SIGNS: tuple[tuple[str, float], ...] = (("×", 0.7), ("*", 0.15), ("x", 0.15))
DIV_SIGNS: tuple[tuple[str, float], ...] = (("÷", 0.7), ("/", 0.3))

Problem = tuple[int | str, ...]
"""Operands and canonical operators, e.g. (45, "-", 27) or (5, "+", 3, "*", 4): the identity of a problem."""


def evaluate(problem: Problem) -> int:
    """Exact value of a problem with the usual precedence (× and ÷ before + and −)."""
    expr = " ".join(str(t) for t in problem).replace("/", "//")
    # The operands are small literals we generated ourselves; `//` is exact because every division is.
    return int(eval(expr, {"__builtins__": {}}))  # noqa: S307


def sample_problem(kind: str, rng: random.Random) -> Problem:
    """Draw one problem of `kind`; divisions are built from their quotient so they are always exact."""
    if kind == "add_1d":
        return (rng.randint(0, 9), "+", rng.randint(0, 9))
    if kind == "sub_1d":
        # 1-digit subtraction facts as taught: never negative (sub_2d covers negative results).
        a, b = sorted((rng.randint(0, 9), rng.randint(0, 9)), reverse=True)
        return (a, "-", b)
    if kind == "mul_1d":
        return (rng.randint(0, 9), "*", rng.randint(0, 9))
    if kind == "mul_fact":
        # The times table to 12 × 12, in either order, 0 and 1 included.
        return (rng.randint(0, 12), "*", rng.randint(0, 12))
    if kind == "add_2d":
        return (rng.randint(10, 99), "+", rng.randint(10, 99))
    if kind == "sub_2d1d":
        # The second step of every 2-digit difference; mostly with borrowing, where the errors are.
        a, b = rng.randint(10, 99), rng.randint(0, 9)
        if rng.random() < 0.6 and 0 < b <= a % 10:
            a = a - a % 10 + rng.randint(0, b - 1)
        return (a, "-", b)
    if kind == "sub_2d":
        a, b = sorted((rng.randint(10, 99), rng.randint(10, 99)), reverse=True)
        # About a quarter negative: enough to learn the sign without spending most steps on it.
        return (b, "-", a) if rng.random() < 0.25 else (a, "-", b)
    if kind == "add_2d1d":
        # The last step of 2-digit sums and of precedence; mostly carrying into the tens.
        a, b = rng.randint(10, 99), rng.randint(1, 9)
        if rng.random() < 0.6 and a % 10 + b < 10:
            a = a - a % 10 + rng.randint(10 - b, 9)
        return (a, "+", b)
    if kind == "sub_2d_neg":
        a, b = sorted(rng.sample(range(10, 100), 2))
        return (a, "-", b)
    if kind == "mul_2d1d":
        a, b = rng.randint(10, 99), rng.randint(1, 9)
        return (b, "*", a) if rng.random() < 0.5 else (a, "*", b)
    if kind == "div":
        divisor, quotient = rng.randint(2, 12), rng.randint(1, 12)
        return (divisor * quotient, "/", divisor)
    if kind == "precedence":
        return _sample_precedence(rng)
    raise ValueError(f"unknown kind {kind!r}; expected one of {', '.join(ALL_KINDS)}")


def _sample_precedence(rng: random.Random) -> Problem:
    """Three operands, one of + − and one of × ÷, in every order: the strong operation first or
    second, its factors and divisors up to 12, the other operand 0–99 (one or two digits, half each)."""
    weak = rng.choice("+-")
    if rng.random() < 0.5:
        strong: Problem = (rng.randint(0, 12), "*", rng.randint(2, 12))
        strong = strong if rng.random() < 0.5 else (strong[2], "*", strong[0])
    else:
        divisor = rng.randint(2, 12)
        strong = (divisor * rng.randint(1, 12), "/", divisor)
    other = rng.randint(0, 9) if rng.random() < 0.5 else rng.randint(10, 99)
    return (other, weak, *strong) if rng.random() < 0.5 else (*strong, weak, other)


EXPRESSION = re.compile(r"\d+(?:\s*[-+×x*÷/]\s*\d+)+")
SIGNS: dict[str, str] = {"×": "*", "x": "*", "*": "*", "÷": "/", "/": "/", "+": "+", "-": "-"}


def parse_problem(question: str) -> Problem:
    """The problem a question asks (`"Calcula 5 + 3 x 9"` → `(5, "+", 3, "*", 9)`), whatever its wording
    and signs: what makes two questions the same problem."""
    found = EXPRESSION.findall(question)
    if len(found) != 1:
        raise ValueError(f"expected one arithmetic expression in {question!r}, found {len(found)}")
    tokens = re.findall(r"\d+|[-+×x*÷/]", found[0])
    return tuple(int(t) if t.isdigit() else SIGNS[t] for t in tokens)


def problems_in(path: Path) -> set[Problem]:
    """The problems asked by a JSONL file's questions (the first user turn of each line)."""
    problems: set[Problem] = set()
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            try:
                record = json.loads(line)
                question = next(m["content"] for m in record["messages"] if m["role"] == "user")
                problems.add(parse_problem(question))
            except (ValueError, KeyError, StopIteration, TypeError) as err:
                raise DataFormatError(str(path), f"line {number}", f"expected a chat record with one arithmetic "
                                      f"question in its user turn ({err})") from err
    return problems


def times_tables() -> list[Record]:
    """The multiplication and division tables of 2 to 12 in both languages, as facts (not problems):
    `7×1=7 … 7×12=84` and `7÷7=1 … 84÷7=12`, so a quotient such as `60÷5=12` is met even when every
    question that asks it is held out."""
    records = []
    for n, op, lang in itertools.product(range(2, 13), ("×", "÷"), LANGS):
        title = TABLE_TITLES[lang][op].format(n=n)
        lines = [f"{n}×{k}={n * k}" if op == "×" else f"{n * k}÷{n}={k}" for k in range(1, 13)]
        records.append(fact_table(title, lines))
    return records


def fact_table(title: str, lines: list[str]) -> Record:
    """A table of facts as one training row: the title asks, the lines answer; never graded."""
    return make_record([{"role": "user", "content": title}, {"role": "assistant", "content": "\n".join(lines)}],
                       kind="table")


TABLE_TITLES: dict[str, dict[str, str]] = {
    "es": {"×": "Tabla de multiplicar del {n}", "÷": "Tabla de dividir entre {n}"},
    "en": {"×": "Times table of {n}", "÷": "Division table by {n}"},
}


def carry_borrow_tables() -> list[Record]:
    """Every 1-digit step that carries into or borrows from the tens, as facts grouped by their units:
    `12-7=5 … 92-7=85` (units 2, minus 7) and `17+5=22 … 87+5=92`. The worked steps of sums,
    differences and precedence end in one of these 405 + 360 facts, and their slips (`52-7=49`) were the
    most frequent first wrong step; drawn at random, 121 of the borrows and 192 of the carries never
    reached the bundled training data's worked steps."""
    records = []
    for units, digit in itertools.product(range(10), range(1, 10)):
        lang = LANGS[(units + digit) % 2]
        tables = []
        if units < digit:
            tables.append(("-", [f"{t + units}-{digit}={t + units - digit}" for t in range(10, 100, 10)]))
        if units + digit >= 10:
            tables.append(("+", [f"{t + units}+{digit}={t + units + digit}" for t in range(10, 90, 10)]))
        for op, lines in tables:
            records.append(fact_table(STEP_TABLE_TITLES[lang][op].format(units=units, digit=digit), lines))
    return records


STEP_TABLE_TITLES: dict[str, dict[str, str]] = {
    "es": {"-": "Restas llevando: …{units} menos {digit}", "+": "Sumas llevando: …{units} más {digit}"},
    "en": {"-": "Borrowing: …{units} minus {digit}", "+": "Carrying: …{units} plus {digit}"},
}


def render_expression(problem: Problem, rng: random.Random) -> str:
    """Problem as the question shows it, with one multiplication and one division sign per question."""
    mul = rng.choices([s for s, _ in MUL_SIGNS], [w for _, w in MUL_SIGNS])[0]
    div = rng.choices([s for s, _ in DIV_SIGNS], [w for _, w in DIV_SIGNS])[0]
    signs = {"*": mul, "/": div, "+": "+", "-": "-"}
    return " ".join(signs[t] if isinstance(t, str) else str(t) for t in problem)


def _sym(op: str) -> str:
    return {"*": "×", "/": "÷"}.get(op, op)


def _two_step(a: int, op: str, b: int) -> list[str]:
    """`a ± b` with a 2-digit b: tens first, then units (carrying and borrowing stay 1-digit)."""
    tens, units = b - b % 10, b % 10
    if not tens:
        return [f"{a} {op} {b} = {a + b if op == '+' else a - b}"]
    mid = a + tens if op == "+" else a - tens
    steps = [f"{a} {op} {tens} = {mid}"]
    if units:
        steps.append(f"{mid} {op} {units} = {mid + units if op == '+' else mid - units}")
    return steps


def add_sub_steps(a: int, op: str, b: int) -> list[str]:
    """Steps for `a ± b`: a 1-digit term is added to the 2-digit one; a difference starts by comparing
    its terms, and a negative one is turned round."""
    if op == "+":
        # The larger term first, so `5 + 27` and `27 + 5` are worked alike (and `23 + 45` like `45 + 23`).
        return _two_step(max(a, b), "+", min(a, b))
    compare = f"{a} {'<' if a < b else '>' if a > b else '='} {b}"
    if a < b:
        return [compare, f"{a} - {b} = -({b} - {a})", *_two_step(b, "-", a)]
    return [compare, *_two_step(a, op, b)]


def worked_steps(kind: str, problem: Problem) -> list[str]:
    """The lines a tutor writes before the marker line (spaced here; `make_item` compacts them)."""
    if kind in ("add_2d", "sub_2d", "sub_2d_neg"):
        a, op, b = problem
        assert isinstance(a, int) and isinstance(b, int) and isinstance(op, str)
        return add_sub_steps(a, op, b)
    if kind == "mul_2d1d":
        a, _, b = problem
        assert isinstance(a, int) and isinstance(b, int)
        big, small = (a, b) if a >= 10 else (b, a)
        tens, units = big - big % 10, big % 10
        if not units:
            return [f"{tens} × {small} = {tens * small}"]
        return [
            f"{tens} × {small} = {tens * small}",
            f"{units} × {small} = {units * small}",
            f"{tens * small} + {units * small} = {big * small}",
        ]
    if kind == "div":
        dividend, _, divisor = problem
        assert isinstance(dividend, int) and isinstance(divisor, int)
        # Written in the division direction, as precedence steps write it: `63 ÷ 9 = 7` (as
        # `9 × 7 = 63` the quotient had to be recalled backwards from the product: 36% vs 84% right).
        return [f"{dividend} ÷ {divisor} = {dividend // divisor}"]
    if kind == "precedence":
        strong_at = 1 if problem[1] in ("*", "/") else 3
        x, op, y = problem[strong_at - 1], problem[strong_at], problem[strong_at + 1]
        inner = evaluate((x, op, y))
        rest = (inner, problem[3], problem[4]) if strong_at == 1 else (problem[0], problem[1], inner)
        a, weak, b = rest
        assert isinstance(a, int) and isinstance(b, int) and isinstance(weak, str)
        return [f"{x} {_sym(str(op))} {y} = {inner}", *add_sub_steps(a, weak, b)]
    # 1-digit facts: the expression is restated, so the result is written right after its operands.
    a, op, b = problem[:3]
    return [f"{a} {_sym(str(op))} {b} = {evaluate(problem)}"]


def make_item(kind: str, problem: Problem, lang: str, rng: random.Random, steps: bool = True) -> Record:
    """One chat record: a templated question and a tutor answer ending in the marker line."""
    question = rng.choice(TEMPLATES[lang]).format(e=render_expression(problem, rng))
    expected = str(evaluate(problem))
    # Steps are written without spaces (`45-20=25`): a third fewer tokens than `45 - 20 = 25`.
    lines = [line.replace(" ", "") for line in worked_steps(kind, problem)] if steps else []
    answer = "\n".join([*lines, f"{MARKERS[lang]}: {expected}"])
    return make_record(
        [{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
        kind=kind,
        expected=expected,
    )


def allocate(total: int, weights: dict[str, float]) -> dict[str, int]:
    """Split `total` items over kinds in proportion to `weights` (largest remainders get the rest)."""
    norm = sum(weights.values())
    exact = {k: total * w / norm for k, w in weights.items()}
    counts = {k: int(v) for k, v in exact.items()}
    for k in sorted(exact, key=lambda k: counts[k] - exact[k])[: total - sum(counts.values())]:
        counts[k] += 1
    return counts


def generate_split(
    counts: dict[str, int],
    rng: random.Random,
    exclude: set[Problem] | None = None,
    unique: bool = True,
    step_kinds: Sequence[str] = STEP_KINDS,
) -> tuple[list[Record], set[Problem]]:
    """Items per kind, never using a problem in `exclude`; returns the items and the problems used.

    With `unique`, problems do not repeat within the split while the kind has fresh ones left; the
    1-digit kinds have only 100 problems, so beyond that they repeat with other wording.
    """
    exclude = exclude or set()
    items: list[Record] = []
    used: set[Problem] = set()
    for kind in ALL_KINDS:
        seen: set[Problem] = set()
        for _ in range(counts.get(kind, 0)):
            problem = _draw(kind, rng, exclude, seen if unique else set())
            seen.add(problem)
            items.append(make_item(kind, problem, rng.choice(LANGS), rng, steps=kind in step_kinds))
        used |= seen
    rng.shuffle(items)
    return items, used


def _draw(kind: str, rng: random.Random, exclude: set[Problem], seen: set[Problem]) -> Problem:
    """A problem outside `exclude`, preferably not in `seen`; repeats only once fresh ones run out."""
    repeat: Problem | None = None
    for _ in range(500):
        problem = sample_problem(kind, rng)
        if problem in exclude:
            continue
        if problem not in seen:
            return problem
        repeat = repeat or problem
    if repeat is None:
        raise ValueError(f"{kind}: no problem left outside the excluded set; ask for fewer items")
    return repeat


def generate(
    n_train: int,
    n_val: int,
    seed: int,
    weights: dict[str, float] | None = None,
    step_kinds: Sequence[str] = STEP_KINDS,
    exclude: set[Problem] | None = None,
    tables: bool = False,
    step_tables: bool = False,
) -> tuple[list[Record], list[Record]]:
    """Train and val records; val is spread over kinds by `HELD_OUT_SHARES` and drawn first, train avoids
    its problems.

    Neither split asks a problem in `exclude` (another held-out set's); `tables` adds the times tables
    (`times_tables`) to the training records, `step_tables` the carrying and borrowing steps
    (`carry_borrow_tables`).
    """
    rng = random.Random(seed)
    weights = weights or {k: 1.0 for k in KINDS}
    exclude = set(exclude or ())
    val, val_problems = generate_split(
        allocate(n_val, HELD_OUT_SHARES), rng, exclude=exclude, step_kinds=step_kinds
    )
    train, _ = generate_split(allocate(n_train, weights), rng, exclude=exclude | val_problems, step_kinds=step_kinds)
    if tables or step_tables:
        train = train + (times_tables() if tables else []) + (carry_borrow_tables() if step_tables else [])
        rng.shuffle(train)
    return train, val


def parse_weights(text: str) -> dict[str, float]:
    """`"sub_2d=2,precedence=2"` → weights for every kind, unnamed kinds keeping 1."""
    weights = {k: 1.0 for k in KINDS} | {k: 0.0 for k in DRILL_KINDS}
    for part in filter(None, (p.strip() for p in text.split(","))):
        kind, _, value = part.partition("=")
        if kind not in weights or not value:
            raise argparse.ArgumentTypeError(
                f"bad weight {part!r}: expected KIND=NUMBER with KIND in {', '.join(weights)}"
            )
        weights[kind] = float(value)
    return weights


def write_jsonl(path: Path, records: list[Record]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for train.jsonl and val.jsonl")
    parser.add_argument("--train", type=int, default=2400, help="number of training items")
    parser.add_argument("--val", type=int, default=400, help="number of validation items, even over kinds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--weights", type=parse_weights, default=None,
                        help="training mix, e.g. sub_2d=2,precedence=2 (others 1)")
    parser.add_argument("--steps", action=argparse.BooleanOptionalAction, default=True,
                        help=f"worked steps for {', '.join(STEP_KINDS)} (--no-steps: bare answers)")
    parser.add_argument("--exclude", type=Path, action="append", default=[],
                        help="JSONL held-out set whose problems neither split may ask (repeatable)")
    parser.add_argument("--tables", action=argparse.BooleanOptionalAction, default=False,
                        help="add the times tables of 2 to 12 (× and ÷) to the training data as facts")
    parser.add_argument("--step-tables", action=argparse.BooleanOptionalAction, default=False,
                        help="add every 1-digit step that carries or borrows (`52-7=45`, `47+5=52`) as facts")
    parser.add_argument("--train-only", action="store_true",
                        help="write train.jsonl only (the validation split is still drawn first and avoided)")
    args = parser.parse_args(argv)
    exclude = set().union(*(problems_in(path) for path in args.exclude))
    train, val = generate(args.train, args.val, args.seed, args.weights, STEP_KINDS if args.steps else (),
                          exclude=exclude, tables=args.tables, step_tables=args.step_tables)
    args.out.mkdir(parents=True, exist_ok=True)
    write_jsonl(args.out / "train.jsonl", train)
    if args.train_only:
        print(f"wrote {len(train)} train items to {args.out} (validation problems drawn and left out)")
        return
    write_jsonl(args.out / "val.jsonl", val)
    print(f"wrote {len(train)} train and {len(val)} val items to {args.out}")


if __name__ == "__main__":
    main()
