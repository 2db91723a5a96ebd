"""What happens when the loss or gradient norm becomes NaN/Inf: handlers first, then one clear error."""

from __future__ import annotations

from collections.abc import Callable

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
