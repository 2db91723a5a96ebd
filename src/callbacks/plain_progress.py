"""Progress as plain lines for logs that are not a terminal (`make fit > fit.log`, nohup, cluster jobs).

Lightning's rich and tqdm bars redraw one line in place: written to a file they show nothing useful (rich
draws nothing at all off a terminal). `PlainProgress` prints a line every N steps or seconds instead
(step/total, loss, real tokens/s, elapsed, ETA) and one per generation pass over a held-out set;
`with_plain_progress` installs it in place of the bar only when stdout is not a terminal.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ProgressBar

from src.evaluation.math_evaluator import LOSS_LOADER
from src.evaluation.progress_lines import duration, pass_line, questions_in
from src.training.contracts import ReportedTutor


def stdout_is_terminal() -> bool:
    return sys.stdout.isatty()


class PlainProgress(ProgressBar):
    """Lightning's progress bar as one printed line every `every_n_steps` optimizer steps or
    `every_n_seconds`, whichever comes first, and one line at the end of each generation pass.

    Args:
        every_n_steps: print a training line at least this often (in optimizer steps).
        every_n_seconds: also print when this long has passed since the last line; None: steps only.
    """

    def __init__(self, every_n_steps: int = 50, every_n_seconds: float | None = 60.0) -> None:
        super().__init__()
        self.every_n_steps = every_n_steps
        self.every_n_seconds = every_n_seconds
        self._enabled = True
        self._fit_started = 0.0
        self._last_line = 0.0
        self._last_step = 0
        self._first_step = 0
        self._eta_from: tuple[float, int] | None = None  # (time, step) at the end of the first training step
        self._pass_started = 0.0
        self._answered = 0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def _print(self, line: str) -> None:
        if self._enabled and self.trainer.is_global_zero:
            print(line, flush=True)
            self._last_line = time.monotonic()

    def _due(self, steps_since: int) -> bool:
        waited = time.monotonic() - self._last_line
        return steps_since >= self.every_n_steps or (self.every_n_seconds is not None and waited >= self.every_n_seconds)

    # ---------------------------------------------------------------------------- training
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._fit_started = self._last_line = time.monotonic()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # After the module's own on_train_start (the base evaluation): ETA counts training only.
        self._last_line = time.monotonic()
        self._first_step = self._last_step = trainer.global_step
        self._eta_from = None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if self._eta_from is None and step > self._first_step:
            # The first step carries one-off costs (compiling the blocks, first allocations): on a first run it
            # took two minutes and an ETA from it read 41 hours. The steps after it set the pace.
            self._eta_from = (time.monotonic(), step)
        if step > self._last_step and self._due(step - self._last_step):
            self._print(self.training_line(trainer, pl_module))
            self._last_step = step

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step > self._last_step:
            self._print(self.training_line(trainer, pl_module))

    def training_line(self, trainer: L.Trainer, pl_module: L.LightningModule) -> str:
        step, total = trainer.global_step, trainer.estimated_stepping_batches
        now = time.monotonic()
        parts = [f"step {step}/{total if total != float('inf') else '?'}"]
        loss = self.get_metrics(trainer, pl_module).get("train/loss")
        if loss is not None:
            parts.append(f"loss {float(loss):.4f}")
        tutor = pl_module if isinstance(pl_module, ReportedTutor) else None
        tokens, seconds = (tutor.progress.tokens, tutor.progress.seconds) if tutor else (0, 0.0)
        if tokens and seconds:
            parts.append(f"{tokens / seconds:,.0f} tokens/s")  # real (unpadded) tokens over time in steps
        parts.append(f"elapsed {duration(now - self._fit_started)}")
        if self._eta_from is not None and step > self._eta_from[1] and total != float("inf") and step < total:
            # Wall time per step since the first step ended, validations included: what the user waits.
            since, from_step = self._eta_from
            parts.append(f"ETA {duration((now - since) / (step - from_step) * (total - step))}")
        return "train: " + ", ".join(parts)

    # ---------------------------------------------------------------------------- generation passes
    def on_validation_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                                  batch_idx: int, dataloader_idx: int = 0) -> None:
        if batch_idx == 0:
            self._pass_started = self._last_line = time.monotonic()
            self._answered = 0

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if dataloader_idx == LOSS_LOADER or trainer.sanity_checking:
            return
        self._answered += questions_in(batch)
        total = self._questions(trainer, dataloader_idx)
        last = batch_idx + 1 >= self._batches(trainer, dataloader_idx)
        if last or self._due(0):
            sets = pl_module.math_sets if isinstance(pl_module, ReportedTutor) else []
            name = sets[dataloader_idx - 1] if 0 < dataloader_idx <= len(sets) else f"set {dataloader_idx}"
            self._print(pass_line(f"validation ({name})", self._answered, total, time.monotonic() - self._pass_started))

    @staticmethod
    def _batches(trainer: L.Trainer, dataloader_idx: int) -> float:
        counts = trainer.num_val_batches
        return counts[dataloader_idx] if dataloader_idx < len(counts) else float("inf")

    @staticmethod
    def _questions(trainer: L.Trainer, dataloader_idx: int) -> int | None:
        loaders = trainer.val_dataloaders
        loaders = loaders if isinstance(loaders, (list, tuple)) else [loaders]
        dataset = getattr(loaders[dataloader_idx], "dataset", None) if dataloader_idx < len(loaders) else None
        try:
            return len(dataset)
        except TypeError:
            return None


def with_plain_progress(callbacks: Any, enable_progress_bar: bool | None) -> Any:
    """`callbacks` plus a `PlainProgress` when stdout is not a terminal and the config chose no bar of its
    own; on a terminal (or with the bar turned off) they are returned unchanged."""
    if enable_progress_bar is False or stdout_is_terminal():
        return callbacks
    chosen = [] if callbacks is None else list(callbacks) if isinstance(callbacks, (list, tuple)) else [callbacks]
    if any(isinstance(cb, ProgressBar) for cb in chosen):
        return callbacks
    return [*chosen, PlainProgress()]

