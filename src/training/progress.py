"""Training totals the run summary reports: tokens, examples and seconds inside training steps."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from lightning.pytorch.strategies import Strategy

from src.data.collate import count_tokens_and_examples


@dataclass
class TrainProgress:
    """Totals kept across a resume, summed over data-parallel processes; padding excluded, packed rows split.

    Lightning's `ThroughputMonitor` logs rates per device but keeps no totals and none across a resume,
    which the run summary and a resumed run's numbers need.
    """

    tokens: int = 0
    examples: int = 0
    seconds: float = 0.0  # time inside training steps; validation and generation excluded
    _batch_started: float = 0.0
    _batch_tokens: int = 0

    def start_batch(self) -> None:
        self._batch_started = time.perf_counter()

    def count(self, batch: dict[str, torch.Tensor], strategy: Strategy) -> None:
        """Add a batch's real tokens and examples, summed over processes (one all-reduce)."""
        local = torch.tensor(count_tokens_and_examples(batch), dtype=torch.long)
        tokens, examples = (int(n) for n in strategy.reduce(local, reduce_op="sum"))
        self._batch_tokens = tokens
        self.tokens += tokens
        self.examples += examples

    def end_batch(self) -> float:
        """The batch's tokens per second; its time is added to `seconds`."""
        elapsed = max(time.perf_counter() - self._batch_started, 1e-9)
        self.seconds += elapsed
        return self._batch_tokens / elapsed

    def state_dict(self) -> dict[str, Any]:
        return {"tokens": self.tokens, "examples": self.examples, "seconds": self.seconds}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tokens, self.examples = state.get("tokens", 0), state.get("examples", 0)
        self.seconds = state.get("seconds", 0.0)
