"""A resumed epoch continues the interrupted one's seeded order at the next batch."""

from __future__ import annotations

import pytest
from lightning.fabric.utilities.data import _set_sampler_epoch
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler

from src.data.resumable import ResumableBatchSampler
from src.data.samplers import LengthGroupedBatchSampler

LENGTHS = [(7 * i) % 31 + 3 for i in range(40)]


def length_grouped() -> ResumableBatchSampler:
    return ResumableBatchSampler(LengthGroupedBatchSampler(LENGTHS, batch_size=4, seed=3, group_batches=2))


def shuffled() -> ResumableBatchSampler:
    order = DistributedSampler(range(40), num_replicas=1, rank=0, shuffle=True, seed=3)
    return ResumableBatchSampler(BatchSampler(order, batch_size=4, drop_last=False))


@pytest.mark.parametrize("make", [length_grouped, shuffled])
def test_resuming_replays_the_rest_of_the_same_epoch(make) -> None:
    uninterrupted = make()
    uninterrupted.set_epoch(2)
    expected = list(uninterrupted)
    resumed = make()
    resumed.resume(epoch=2, batches_done=3)
    assert list(resumed) == expected[3:]
    assert len(resumed) == len(expected), "the epoch keeps its full length: Lightning counts the position"


@pytest.mark.parametrize("make", [length_grouped, shuffled])
def test_the_skip_applies_to_one_epoch_only(make) -> None:
    sampler = make()
    sampler.resume(epoch=0, batches_done=5)
    list(sampler)
    assert len(list(sampler)) == len(sampler)


def test_a_completed_epoch_resumes_at_the_start_of_the_next() -> None:
    sampler, reference = length_grouped(), length_grouped()
    sampler.resume(epoch=1, batches_done=len(sampler))
    reference.set_epoch(2)
    assert sampler.epoch == 2 and list(sampler) == list(reference)


def test_a_position_past_the_epoch_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot resume after 11 batches: an epoch has 10"):
        length_grouped().resume(epoch=0, batches_done=11)


@pytest.mark.parametrize("make", [length_grouped, shuffled])
def test_lightning_reaches_set_epoch_through_the_loader(make) -> None:
    loader = DataLoader(range(40), batch_sampler=make())
    orders = []
    for epoch in range(2):
        _set_sampler_epoch(loader, epoch)  # what Lightning's fit loop calls at each epoch start
        orders.append([list(map(int, batch)) for batch in loader])
    assert orders[0] != orders[1], "each epoch draws a new order"
    assert sorted(sum(orders[1], [])) == list(range(40))
