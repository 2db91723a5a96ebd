"""Train/validation splits are reproducible by seed, and no validation conversation is trained on."""

from __future__ import annotations

import pytest

from src.data.conversation import Record, make_record
from src.data.splits import drop_overlap, record_key, split_records


def record(n: int, kind: str | None = None) -> Record:
    return make_record(
        [{"role": "user", "content": f"¿Cuánto es {n} + 1?"}, {"role": "assistant", "content": f"Respuesta: {n + 1}"}],
        kind=kind,
        expected=str(n + 1) if kind else None,
    )


RECORDS = [record(n) for n in range(50)]


def keys(records: list[Record]) -> list[str]:
    return [record_key(r) for r in records]


def test_same_seed_gives_the_same_split() -> None:
    assert split_records(RECORDS, 0.2, seed=7) == split_records(RECORDS, 0.2, seed=7)


def test_different_seed_gives_a_different_split() -> None:
    _, val_a = split_records(RECORDS, 0.2, seed=7)
    _, val_b = split_records(RECORDS, 0.2, seed=8)
    assert set(keys(val_a)) != set(keys(val_b))


def test_split_sizes_and_partition() -> None:
    train, val = split_records(RECORDS, 0.2, seed=0)
    assert (len(train), len(val)) == (40, 10)
    assert not set(keys(train)) & set(keys(val))
    assert sorted(keys(train) + keys(val)) == sorted(keys(RECORDS))


def test_split_keeps_file_order_within_each_side() -> None:
    train, val = split_records(RECORDS, 0.2, seed=0)
    order = {key: i for i, key in enumerate(keys(RECORDS))}
    assert [order[k] for k in keys(train)] == sorted(order[k] for k in keys(train))
    assert [order[k] for k in keys(val)] == sorted(order[k] for k in keys(val))


def test_duplicates_always_land_on_the_same_side() -> None:
    # Every conversation three times: a naive row split would put copies on both sides.
    records = [record(n) for n in range(20)] * 3
    train, val = split_records(records, 0.25, seed=1)
    assert not set(keys(train)) & set(keys(val))
    # The fraction is of distinct conversations: 5 of 20, each with its 3 copies.
    assert len(set(keys(val))) == 5
    assert (len(train), len(val)) == (45, 15)


def test_identity_is_the_conversation_not_the_metadata() -> None:
    # Same messages with a different kind are the same example and must not straddle the split.
    records = [record(n) for n in range(10)] + [record(n, kind="add_1d") for n in range(10)]
    train, val = split_records(records, 0.3, seed=3)
    assert not set(keys(train)) & set(keys(val))
    assert (len(train), len(val)) == (14, 6)


def test_at_least_one_validation_example() -> None:
    train, val = split_records(RECORDS[:10], 0.01, seed=0)
    assert (len(train), len(val)) == (9, 1)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_val_fraction_outside_zero_one_is_rejected(fraction: float) -> None:
    with pytest.raises(ValueError, match=rf"data\.val_fraction must be between 0 and 1 \(exclusive\), got {fraction}"):
        split_records(RECORDS, fraction, seed=0)


def test_too_few_distinct_examples_name_the_fix() -> None:
    # Two copies of one conversation cannot give both a training and a validation side.
    expected = r"1 distinct examples cannot be split with data\.val_fraction=0\.5.*data\.val_file"
    with pytest.raises(ValueError, match=expected):
        split_records([record(0), record(0)], 0.5, seed=0)


def test_drop_overlap_removes_every_copy_and_counts_them() -> None:
    train = [record(0), record(1), record(1), record(2), record(3)]
    val = [record(1), record(3), record(99)]
    kept, dropped = drop_overlap(train, val)
    assert kept == [record(0), record(2)]
    assert dropped == 3


def test_drop_overlap_without_overlap_keeps_everything() -> None:
    kept, dropped = drop_overlap(RECORDS[:5], RECORDS[5:10])
    assert (kept, dropped) == (RECORDS[:5], 0)
