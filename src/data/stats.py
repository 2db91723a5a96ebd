"""Dataset statistics computed once at setup, to catch a bad `max_length` or a skewed mix before training.

Token lengths show how much `max_length` cuts; the label fraction shows how much of each batch
actually trains (prompt and padding tokens carry no label); per-kind and per-topic counts show
whether a math dataset covers every operation it will be graded on.
"""

from __future__ import annotations

import re

import numpy as np

from src.data.conversation import Record

PERCENTILES: tuple[int, ...] = (50, 90, 95, 99)


def _between(operator: str) -> str:
    """`operator` between two operands, so "-" in "e-mail" or "x" in "box" is not an operation.

    The left operand ends in a digit or ")"; the right one may open with a sign or "(": `5 + -3`.
    """
    return rf"[\d)]\s*{operator}\s*[-−(]*\d"


TOPIC_PATTERNS: dict[str, re.Pattern[str]] = {
    "addition": re.compile(_between(r"\+") + r"|\bsum(a|ar|as|e|ando)?\b|\badd(ition)?\b|\bplus\b"),
    "subtraction": re.compile(_between("[-−–]") + r"|\brest(a|ar|as|e|ando)\b|\bsubtract|\bsustrac|\bminus\b"),
    "multiplication": re.compile(_between("[×*x]") + r"|\bmultipl|\btimes\b"),
    "division": re.compile(_between("[÷/]") + r"|\bdivi[ds]"),
    "fraction": re.compile(r"\bfracci|\bfraction"),
    "percentage": re.compile(r"%|\bporcentaj|\bpercent"),
}


def detect_topics(text: str) -> list[str]:
    """Math topics a question mentions, by operator between digits or keyword (Spanish or English)."""
    lowered = text.lower()
    return [topic for topic, pattern in TOPIC_PATTERNS.items() if pattern.search(lowered)]


def dataset_statistics(
    records: list[Record],
    token_lengths: list[int],
    label_token_counts: list[int],
    truncated: int,
    max_length: int,
) -> dict[str, float | int | dict]:
    """Summary of a tokenized dataset.

    Args:
        records: the parsed examples.
        token_lengths: tokens per example before truncation, so the percentiles show what `max_length` cuts.
        label_token_counts: tokens per example that carry a label (not -100) after truncation.
        truncated: how many examples are longer than `max_length`.
        max_length: the truncation length; label fraction is over at most this many tokens per example.

    `kinds` counts `record["kind"]`; `topics` counts records without a kind by the topics their
    first user message mentions (a record may count towards several topics, or none).
    """
    if not records:
        raise ValueError("no records: statistics need at least one example")
    if not len(records) == len(token_lengths) == len(label_token_counts):
        raise ValueError(
            f"got {len(records)} records, {len(token_lengths)} token lengths and "
            f"{len(label_token_counts)} label counts; expected one of each per example"
        )
    lengths = np.asarray(token_lengths, dtype=np.int64)
    kept_tokens = int(np.minimum(lengths, max_length).sum())
    # inverted_cdf: pN is an actual length that N% of the examples do not exceed, the number to
    # compare with max_length (interpolated percentiles can fall between two examples).
    tokens: dict[str, float] = {f"p{q}": int(np.percentile(lengths, q, method="inverted_cdf")) for q in PERCENTILES}
    tokens |= {"max": int(lengths.max()), "mean": float(lengths.mean())}
    kinds: dict[str, int] = {}
    topics: dict[str, int] = {}
    for record in records:
        if record["kind"] is not None:
            kinds[record["kind"]] = kinds.get(record["kind"], 0) + 1
            continue
        question = next((m["content"] for m in record["messages"] if m["role"] == "user"), "")
        for topic in detect_topics(question):
            topics[topic] = topics.get(topic, 0) + 1
    turns = [sum(m["role"] != "system" for m in record["messages"]) for record in records]
    return {
        "examples": len(records),
        "tokens": tokens,
        "max_length": max_length,
        "truncated": truncated,
        "truncated_fraction": truncated / len(records),
        "label_fraction": sum(label_token_counts) / kept_tokens if kept_tokens else 0.0,
        "mean_turns": sum(turns) / len(records),
        "kinds": dict(sorted(kinds.items())),
        "topics": dict(sorted(topics.items())),
    }


def format_statistics(stats: dict) -> str:
    """A few lines for the console, from `dataset_statistics`'s result."""
    t = stats["tokens"]
    lines = [
        f"Examples: {stats['examples']} (mean {stats['mean_turns']:.1f} turns, system messages not counted)",
        f"Tokens per example: p50 {t['p50']:g}, p90 {t['p90']:g}, p95 {t['p95']:g}, p99 {t['p99']:g}, "
        f"max {t['max']:g}, mean {t['mean']:.1f}",
        f"Truncated: {stats['truncated']} ({stats['truncated_fraction']:.1%}) longer than "
        f"max_length={stats['max_length']}",
        f"Label tokens: {stats['label_fraction']:.1%} of the tokens kept",
    ]
    for name in ("kinds", "topics"):
        if stats[name]:
            counts = sorted(stats[name].items(), key=lambda item: (-item[1], item[0]))
            lines.append(f"{name.capitalize()}: " + ", ".join(f"{key} {count}" for key, count in counts))
    return "\n".join(lines)


def flatten_for_logging(stats: dict, prefix: str = "data/") -> dict[str, float]:
    """Nested statistics as flat `data/tokens/p50`-style keys with float values, for `log_metrics`."""
    flat: dict[str, float] = {}
    for key, value in stats.items():
        if isinstance(value, dict):
            flat |= flatten_for_logging(value, prefix=f"{prefix}{key}/")
        else:
            flat[f"{prefix}{key}"] = float(value)
    return flat
