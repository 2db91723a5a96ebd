"""A training batch order that a checkpoint can stop and resume at the very next batch.

Lightning saves and restores its loop counters (global step, batch index, schedule), but a plain
`DataLoader` restarts its epoch from the first batch after a resume: the run would see the epoch's
first batches twice and never its last ones. The data module saves (epoch, batches consumed) in
each checkpoint and, on resume, hands them to this sampler, which replays the same seeded order
from the next batch on.

Why the data module and not a stateful loader: Lightning restores a loader's own state only when it
builds the loader after the checkpoint is read, but `trainer.estimated_stepping_batches` (which
sizes the learning-rate schedule) builds it earlier. A data module's state is restored before that.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import islice

from torch.utils.data import BatchSampler, Sampler


class ResumableBatchSampler(Sampler[list[int]]):
    """Wraps a seeded batch sampler so that an epoch can start after its first `batches_done` batches.

    The wrapped sampler's order must depend only on its seed and epoch (`set_epoch`), so the order
    replayed after a resume is the one the interrupted run was following.
    """

    def __init__(self, batches: Sampler[list[int]] | BatchSampler) -> None:
        self.batches = batches
        self.epoch = 0
        self._skip = 0

    @property
    def sampler(self) -> ResumableBatchSampler:
        """Lightning calls `set_epoch` on `loader.sampler` and `loader.batch_sampler.sampler`, never on
        the batch sampler itself: without this, a seeded batch order would repeat every epoch."""
        return self

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        for sampler in (self.batches, getattr(self.batches, "sampler", None)):
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(epoch)

    def resume(self, epoch: int, batches_done: int) -> None:
        """The next iteration replays `epoch` after its first `batches_done` batches (the next epoch
        from its start when `epoch` was complete)."""
        if not 0 <= batches_done <= len(self):
            raise ValueError(f"cannot resume after {batches_done} batches: an epoch has {len(self)}")
        if batches_done == len(self):
            epoch, batches_done = epoch + 1, 0
        self.set_epoch(epoch)
        self._skip = batches_done

    def __len__(self) -> int:
        # The full epoch: Lightning counts the resumed position itself.
        return len(self.batches)

    def __iter__(self) -> Iterator[list[int]]:
        skip, self._skip = self._skip, 0
        return islice(iter(self.batches), skip, None)
