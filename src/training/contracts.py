"""What the project's callbacks and tools rely on in a training module, as `Protocol`s.

`TutorModule` satisfies them; so does any module a user writes to reuse the callbacks. Checked with
`isinstance` (runtime-checkable), so a module without them gets the callbacks' plain behaviour.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
from torch.utils.data import DataLoader

from src.evaluation.answers import Answerer
from src.training.divergence import DivergencePolicy
from src.training.progress import TrainProgress


@runtime_checkable
class HandlesDivergence(Protocol):
    """A module whose `divergence` policy asks its handlers, in order, before stopping on a NaN/Inf loss or gradient."""

    divergence: DivergencePolicy


@runtime_checkable
class ReportedTutor(Protocol):
    """What `RunReport` summarises: held-out sets, the base model's numbers, training counts, sample replies."""

    math_sets: list[str]
    base_math_metrics: dict[str, float] | None
    progress: TrainProgress
    model: torch.nn.Module | None

    @property
    def answerer(self) -> Answerer: ...


@runtime_checkable
class HoldsMathSets(Protocol):
    """A data module with held-out math sets that the module answers by generation and grades."""

    math_set_names: list[str]
    math_kinds: list[str]
    longest_reference_answer: dict[str, Any] | None

    def math_dataloader(self, name: str = "val") -> DataLoader: ...


@runtime_checkable
class AcceptsReplay(Protocol):
    """A data module that mixes the base model's own replies to its `replay_prompts`, and to the
    `replay_self_prompts` prompts the base model writes itself, into training."""

    replay_prompts: list[str]
    replay_self_prompts: int

    def add_replay(self, prompts: list[str], replies: list[str]) -> None: ...
