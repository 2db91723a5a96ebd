"""What happens when the loss or gradient norm becomes NaN/Inf: handlers first, then one clear error."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from lightning.pytorch.utilities import grad_norm

from src.errors import TutorTuneError

DivergenceHandler = Callable[[str, float], bool]
"""Called with what became non-finite ("training loss", "gradient norm") and its value; returns True when it
dealt with it (the step is skipped), False to let the next handler, or finally the module's error, decide."""


class NonFiniteTrainingError(TutorTuneError, RuntimeError):
    """The loss or gradient norm became NaN/Inf: continuing would only write a broken adapter."""


class DivergencePolicy:
    """Asks `handlers` in order (a rollback, a learning-rate study's recorder); stops the run when none handles it."""

    def __init__(self) -> None:
        self.handlers: list[DivergenceHandler] = []
        self.handled = 0

    def skips_loss(self, loss: torch.Tensor, step: int, learning_rate: float) -> bool:
        """True when the training loss is NaN/Inf and a handler dealt with it: skip backward and the step."""
        return not bool(torch.isfinite(loss)) and self.handle("training loss", loss.item(), step, learning_rate)

    def checked_grad_norm(
        self, model: torch.nn.Module, step: int, learning_rate: float, skips_inf: bool = False
    ) -> float | None:
        """The total L2 gradient norm, or None when it is NaN/Inf and a handler dealt with it (clearing the
        gradients). `skips_inf`: the precision plugin skips non-finite steps by itself (16-mixed's scaler)."""
        total = grad_norm(model, norm_type=2).get("grad_2.0_norm_total", 0.0)
        if math.isfinite(total):
            return total
        if not skips_inf:
            self.handle("gradient norm", total, step, learning_rate)
        return None

    def handle(self, what: str, value: float, step: int, learning_rate: float) -> bool:
        """True when a handler dealt with the non-finite `value` (skip the step); raises otherwise."""
        if any(handler(what, value) for handler in self.handlers):
            self.handled += 1
            return True
        after = f" after {self.handled} rollbacks" if self.handled else ""
        raise NonFiniteTrainingError(
            f"Training stopped at step {step}{after}: the {what} is {value}. The likely cause is a learning rate too "
            f"high for this model (model.optimizer.learning_rate={learning_rate}): lower it, e.g. tenfold, and keep "
            "trainer.gradient_clip_val set. Adapters saved before this step were not touched."
        )
