"""An independent held-out arithmetic set: the honest measure of a tutor tuned on `arithmetic.py`'s data.

The tuning set (`val.jsonl`) comes from the same generator, templates and operand orders as the
training data, and the recipe is chosen on it, so its accuracy is optimistic. This set is drawn by
its own function, with its own phrasings (none of the training templates), and it covers on purpose
what a student may write and the training generator might not favour:

- every precedence order: the strong operator (× or ÷) first or second, with + or −, and the other
  operand one- or two-digit (`5 + 3 × 9`, `3 × 9 + 5`, `47 - 84 ÷ 7`, `84 ÷ 7 - 47`, ...);
- factors and divisors up to 12 (`11 × 12`, `77 ÷ 11`), every divisor 2–12 and quotient 1–12;
- the operands 0 and 1 (`0 × 7`, `9 - 0`, `1 × 8`, `0 + 3 × 4`);
- the signs `×`, `*`, `x`, `÷` and `/`, and both languages.

The eight kinds are those of `arithmetic.KINDS`, in the tuning set's proportions (`HELD_OUT_SHARES`). Answers are written in
the training format (worked steps, then `Respuesta: N` / `Answer: N`) so the validation loss stays
comparable, but only the final number is graded. `arithmetic.main` excludes this file's problems from
both the tuning set and the training data: a problem here is never a training question (its facts,
such as `77÷11=7`, may appear inside other problems' steps).

    python -m src.data.arithmetic_independent --out data/arithmetic/independent.jsonl --n 400 --seed 2026
"""

from __future__ import annotations

import argparse
import itertools
import random
from collections.abc import Iterator, Sequence
from pathlib import Path

from src.data.arithmetic import (
    HELD_OUT_SHARES, KINDS, LANGS, MARKERS, Problem, allocate, evaluate, worked_steps, write_jsonl,
)
from src.data.conversation import Record, make_record

PHRASINGS: dict[str, tuple[str, ...]] = {
    "es": ("Dime cuánto vale {e}", "¿Me ayudas a hacer {e}?", "Necesito el resultado de {e}", "Opera: {e}",
           "¿Cuál es el resultado de {e}?", "Haz la cuenta {e}"),
    "en": ("Can you work out {e}?", "What does {e} equal?", "Find the value of {e}", "Help me with {e}",
           "Work this out: {e}", "What's {e}?"),
}
MUL_SIGNS: tuple[str, ...] = ("×", "*", "x")
DIV_SIGNS: tuple[str, ...] = ("÷", "/")

PRECEDENCE_ORDERS: tuple[str, ...] = tuple(
    f"{first}{size}" for first in ("a+b*c", "a-b*c", "b*c+a", "b*c-a", "a+b/c", "a-b/c", "b/c+a", "b/c-a")
    for size in (":1d", ":2d")
)
"""Shape of a precedence question, `a` being the operand outside the strong operation, with one
(`:1d`, 0–9) or two digits (`:2d`, 10–99)."""


def precedence_order(problem: Problem) -> str:
    """The `PRECEDENCE_ORDERS` entry a precedence problem has."""
    strong_first = problem[1] in ("*", "/")
    weak, strong = (problem[3], problem[1]) if strong_first else (problem[1], problem[3])
    other = problem[4] if strong_first else problem[0]
    shape = f"b{strong}c{weak}a" if strong_first else f"a{weak}b{strong}c"
    assert isinstance(other, int)
    return f"{shape}:{'1d' if other < 10 else '2d'}"


def _cycle(values: Sequence, rng: random.Random) -> Iterator:
    """Every value once in a shuffled round, then again in a new order: even coverage in few draws."""
    while True:
        order = list(values)
        rng.shuffle(order)
        yield from order


class _Sampler:
    """Draws problems kind by kind, each kind cycling through the cases it must cover."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        # Divisors and quotients cycle separately: 12 divisions already show every divisor and quotient.
        self.divisors, self.quotients = _cycle(range(2, 13), rng), _cycle(range(1, 13), rng)
        self.orders = _cycle(PRECEDENCE_ORDERS, rng)
        self.small = _cycle(range(10), rng)  # 1-digit operands, 0 and 1 included

    def problem(self, kind: str) -> Problem:
        rng = self.rng
        if kind == "add_1d":
            return (next(self.small), "+", rng.randint(0, 9))
        if kind == "sub_1d":
            b = next(self.small)
            return (rng.randint(b, 9), "-", b)
        if kind == "mul_1d":
            pair = (next(self.small), rng.randint(0, 9))
            return (pair[0], "*", pair[1]) if rng.random() < 0.5 else (pair[1], "*", pair[0])
        if kind == "add_2d":
            return (rng.randint(10, 99), "+", rng.randint(10, 99))
        if kind == "sub_2d":
            return (rng.randint(10, 99), "-", rng.randint(10, 99))
        if kind == "mul_2d1d":
            a, b = rng.randint(10, 99), rng.randint(1, 9)
            return (b, "*", a) if rng.random() < 0.5 else (a, "*", b)
        if kind == "div":
            divisor, quotient = next(self.divisors), next(self.quotients)
            return (divisor * quotient, "/", divisor)
        if kind == "precedence":
            return self.precedence(next(self.orders))
        raise ValueError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")

    def precedence(self, order: str) -> Problem:
        rng = self.rng
        shape, size = order.split(":")
        other = rng.randint(0, 9) if size == "1d" else rng.randint(10, 99)
        if "*" in shape:
            strong: Problem = (rng.randint(0, 12), "*", rng.randint(2, 12))
            strong = strong if rng.random() < 0.5 else (strong[2], "*", strong[0])
        else:
            divisor = rng.randint(2, 12)
            strong = (divisor * rng.randint(1, 12), "/", divisor)
        weak = "+" if "+" in shape else "-"
        return (other, weak, *strong) if shape.startswith("a") else (*strong, weak, other)


def render(problem: Problem, rng: random.Random, signs: Iterator[tuple[str, str]]) -> str:
    mul, div = next(signs)
    names = {"*": mul, "/": div, "+": "+", "-": "-"}
    return " ".join(names[t] if isinstance(t, str) else str(t) for t in problem)


def generate_independent(
    n: int = 400, seed: int = 2026, exclude: set[Problem] | None = None
) -> list[Record]:
    """`n` questions over the eight kinds in the proportions of `HELD_OUT_SHARES` (25 of each 1-digit
    kind and 65 of each other kind in 400), no problem repeated or in `exclude`."""
    rng = random.Random(seed)
    sampler = _Sampler(rng)
    signs = _cycle(list(itertools.product(MUL_SIGNS, DIV_SIGNS)), rng)
    langs = _cycle(LANGS, rng)
    exclude = set(exclude or ())
    records: list[Record] = []
    for kind, count in allocate(n, HELD_OUT_SHARES).items():
        for _ in range(count):
            for _ in range(1000):
                problem = sampler.problem(kind)
                if problem not in exclude:
                    break
            else:
                raise ValueError(f"{kind}: no new problem left after {len(exclude)} excluded; ask for fewer")
            exclude.add(problem)
            lang = next(langs)
            question = rng.choice(PHRASINGS[lang]).format(e=render(problem, rng, signs))
            expected = str(evaluate(problem))
            lines = [line.replace(" ", "") for line in worked_steps(kind, problem)]
            answer = "\n".join([*lines, f"{MARKERS[lang]}: {expected}"])
            records.append(
                make_record(
                    [{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
                    kind=kind,
                    expected=expected,
                )
            )
    rng.shuffle(records)
    return records


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="the JSONL file to write")
    parser.add_argument("--n", type=int, default=400, help="number of questions")
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args(argv)
    records = generate_independent(args.n, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(args.out, records)
    print(f"wrote {len(records)} independent held-out items to {args.out}")


if __name__ == "__main__":
    main()
