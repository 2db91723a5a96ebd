"""Length-grouped batches in random order.

transformers' `LengthGroupedSampler` sorts each mega-batch by length but then yields its batches in
that order: fifty steps of the longest (worked-step) answers, then fifty of the shortest (bare
facts), again and again. With a high learning rate the model swings between answer styles (math
accuracy fell from 36% to 16% mid-run, and the long kinds ended far behind). Shuffling the batches
after grouping keeps the padding savings without that rhythm.

Under data parallelism every process draws the same global batches (one shared seed) and takes its
own interleaved share of each: the processes of one step get examples of similar length, so none
waits long for another at the gradient all-reduce.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

from torch.utils.data import Sampler


class LengthGroupedBatchSampler(Sampler[list[int]]):
    """Batches of similar length, drawn in a random order that changes every epoch (seeded).

    Args:
        lengths: token length of each example.
        batch_size: examples per batch and process.
        seed: base seed; the epoch is added so each epoch has its own order.
        group_batches: how many batches' worth of examples are sorted together.
        num_replicas: number of data-parallel processes sharing each global batch.
        rank: this process's index among them.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        seed: int = 0,
        group_batches: int = 50,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside 0..{num_replicas - 1} (num_replicas={num_replicas})")
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.global_batch_size = batch_size * num_replicas
        self.group_size = self.global_batch_size * group_batches
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at the start of each epoch."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self._global_batches())

    def __iter__(self) -> Iterator[list[int]]:
        # Interleaved shares: each process gets the same spread of lengths from the sorted batch.
        return iter(batch[self.rank :: self.num_replicas] for batch in self._global_batches())

    def _global_batches(self) -> list[list[int]]:
        rng = random.Random(self.seed + self.epoch)
        order = list(range(len(self.lengths)))
        rng.shuffle(order)
        batches: list[list[int]] = []
        size = self.global_batch_size
        for start in range(0, len(order), self.group_size):
            group = sorted(order[start : start + self.group_size], key=lambda i: self.lengths[i])
            batches.extend(group[i : i + size] for i in range(0, len(group), size))
        rng.shuffle(batches)
        # A final batch too small to give every process an example would leave one without a step.
        return [batch for batch in batches if len(batch) >= self.num_replicas]
