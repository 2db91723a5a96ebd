"""What the project's callbacks and tools rely on in a training module, as `Protocol`s (what the module
relies on in a data module is `src.data.contracts`).

`TutorModule` satisfies them; so does any module a user writes to reuse the callbacks. Checked with
`isinstance` (runtime-checkable), so a module without them gets the callbacks' plain behaviour.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

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
