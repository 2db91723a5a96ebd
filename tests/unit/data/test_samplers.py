"""Length-grouped batches: every example once per epoch, little padding, no long-then-short rhythm."""

from __future__ import annotations

import random

import pytest

from src.data.samplers import LengthGroupedBatchSampler

_RNG = random.Random(0)
LENGTHS = [_RNG.randint(5, 80) for _ in range(400)]


def test_every_example_appears_exactly_once_per_epoch() -> None:
    sampler = LengthGroupedBatchSampler(LENGTHS, batch_size=4, seed=1)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 100
    assert sorted(i for batch in batches for i in batch) == list(range(400))


def test_batches_hold_similar_lengths() -> None:
    batches = list(LengthGroupedBatchSampler(LENGTHS, batch_size=4, seed=1, group_batches=50))
    grouped = sum(max(LENGTHS[i] for i in b) - min(LENGTHS[i] for i in b) for b in batches)
    shuffled = list(range(400))
    random.Random(1).shuffle(shuffled)
    random_batches = [shuffled[i : i + 4] for i in range(0, 400, 4)]
    ungrouped = sum(max(LENGTHS[i] for i in b) - min(LENGTHS[i] for i in b) for b in random_batches)
    assert grouped * 5 < ungrouped


def test_batch_order_is_not_sorted_by_length_within_a_group() -> None:
    batches = list(LengthGroupedBatchSampler(LENGTHS, batch_size=4, seed=1, group_batches=100))
    longest = [max(LENGTHS[i] for i in b) for b in batches]
    assert longest != sorted(longest) and longest != sorted(longest, reverse=True)


def test_order_is_seeded_and_changes_with_the_epoch() -> None:
    first = LengthGroupedBatchSampler(LENGTHS, batch_size=4, seed=1)
    assert list(first) == list(LengthGroupedBatchSampler(LENGTHS, batch_size=4, seed=1))
    epoch_zero = list(first)
    first.set_epoch(1)
    assert list(first) != epoch_zero


def test_processes_share_each_global_batch_without_overlap() -> None:
    shares = [list(LengthGroupedBatchSampler(LENGTHS, batch_size=2, seed=1, num_replicas=2, rank=r)) for r in (0, 1)]
    assert len(shares[0]) == len(shares[1]) == 100
    for first, second in zip(*shares):
        assert len(first) == len(second) == 2 and not set(first) & set(second)
    assert sorted(i for share in shares for batch in share for i in batch) == list(range(400))


def test_two_processes_of_batch_two_see_the_batches_of_one_process_of_batch_four() -> None:
    single = list(LengthGroupedBatchSampler(LENGTHS, batch_size=4, seed=1))
    shares = [list(LengthGroupedBatchSampler(LENGTHS, batch_size=2, seed=1, num_replicas=2, rank=r)) for r in (0, 1)]
    assert [sorted(a + b) for a, b in zip(*shares)] == [sorted(batch) for batch in single]


def test_a_last_batch_too_small_to_share_is_dropped_so_every_process_steps_together() -> None:
    shares = [list(LengthGroupedBatchSampler([10] * 9, batch_size=2, seed=0, num_replicas=4, rank=r)) for r in range(4)]
    assert [len(s) for s in shares] == [1, 1, 1, 1]


def test_rank_outside_the_replicas_is_refused() -> None:
    with pytest.raises(ValueError, match="rank 2 is outside 0..1"):
        LengthGroupedBatchSampler(LENGTHS, batch_size=2, num_replicas=2, rank=2)
