"""Recover from a diverging run: go back to the last good LoRA weights with a lower learning rate.

Stopping on a NaN loss (the module's default) protects the saved adapters, but throws the run away.
With this callback, a non-finite loss or gradient norm instead restores the trainable weights and
the optimizer state of the last snapshot taken while training was healthy, multiplies the learning
rate (and its schedule) by `lr_factor`, skips the bad step, and says so in the log and in
`train/rollbacks`. After `max_rollbacks` the run stops as it would without the callback.

Lightning has no such callback (its `detect_anomaly` and `EarlyStopping(check_finite=True)` only
stop), so it is written here.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn

from src.training.contracts import HandlesDivergence


class DivergenceRollback(Callback):
    """Roll back to the last healthy weights with a lower learning rate instead of stopping.

    Args:
        lr_factor: each rollback multiplies the learning rate and its schedule by this (0 < f < 1).
        max_rollbacks: rollbacks allowed in one run; the next divergence stops training.
        snapshot_every_n_steps: how often the healthy weights and optimizer state are copied (in memory:
            LoRA weights and their optimizer state only, a few MB for small models).
    """

    def __init__(self, lr_factor: float = 0.1, max_rollbacks: int = 3, snapshot_every_n_steps: int = 10) -> None:
        if not 0 < lr_factor < 1:
            raise ValueError(f"DivergenceRollback(lr_factor={lr_factor}): expected a factor between 0 and 1, e.g. 0.1")
        if max_rollbacks < 0 or snapshot_every_n_steps < 1:
            raise ValueError("DivergenceRollback: max_rollbacks must be >= 0 and snapshot_every_n_steps >= 1")
        self.lr_factor = lr_factor
        self.max_rollbacks = max_rollbacks
        self.snapshot_every_n_steps = snapshot_every_n_steps
        self.rollbacks = 0
        self._weights: dict[str, torch.Tensor] = {}
        self._optimizer_states: list[dict[str, Any]] = []
        self._snapshot_step: int | None = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if not isinstance(pl_module, HandlesDivergence):
            raise TypeError(f"DivergenceRollback needs a module with a divergence policy; {type(pl_module).__name__} has none")
        handle = self._handler(trainer, pl_module)
        if not any(getattr(h, "rollback", None) is self for h in pl_module.divergence.handlers):
            pl_module.divergence.handlers.insert(0, handle)  # before any handler that only records or stops

    def _handler(self, trainer: Trainer, pl_module: LightningModule):
        def handle(what: str, value: float) -> bool:
            return self.roll_back(trainer, pl_module, what, value)

        handle.rollback = self  # type: ignore[attr-defined]  (so setup on the next stage does not add a second)
        return handle

    # ------------------------------------------------------------------------------ snapshots
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._snapshot(trainer, pl_module)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if not outputs or self._snapshot_step is None:  # a skipped (rolled back) step has no outputs
            return
        if trainer.global_step - self._snapshot_step >= self.snapshot_every_n_steps and _all_finite(pl_module):
            self._snapshot(trainer, pl_module)

    def _snapshot(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._weights = {name: p.detach().clone() for name, p in pl_module.named_parameters() if p.requires_grad}
        self._optimizer_states = [copy.deepcopy(optimizer.state_dict()) for optimizer in trainer.optimizers]
        self._snapshot_step = trainer.global_step

    # ------------------------------------------------------------------------------- rollback
    def roll_back(self, trainer: Trainer, pl_module: LightningModule, what: str, value: float) -> bool:
        """Restore the last snapshot and lower the learning rate; False when no rollback is left."""
        if self.rollbacks >= self.max_rollbacks or self._snapshot_step is None:
            return False
        self.rollbacks += 1
        with torch.no_grad():
            for name, param in pl_module.named_parameters():
                if name in self._weights:
                    param.copy_(self._weights[name])
        for optimizer, state in zip(trainer.optimizers, self._optimizer_states):
            optimizer.load_state_dict(copy.deepcopy(state))
            optimizer.zero_grad(set_to_none=True)
            for group in optimizer.param_groups:
                group["lr"] *= self.lr_factor
                if "initial_lr" in group:
                    group["initial_lr"] *= self.lr_factor
        for config in trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            scheduler.base_lrs = [lr * self.lr_factor for lr in scheduler.base_lrs]
        new_lr = trainer.optimizers[0].param_groups[0]["lr"]
        rank_zero_warn(
            f"Step {trainer.global_step}: the {what} is {value}. Rolled back to the weights of step "
            f"{self._snapshot_step} and lowered the learning rate x{self.lr_factor} (now {new_lr:.3g}); "
            f"rollback {self.rollbacks} of {self.max_rollbacks}."
        )
        pl_module.log("train/rollbacks", float(self.rollbacks))
        return True

    # ---------------------------------------------------------------------------------- resume
    def state_dict(self) -> dict[str, Any]:
        # The lowered learning rate itself is in the optimizer and scheduler states.
        return {"rollbacks": self.rollbacks}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rollbacks = state_dict.get("rollbacks", 0)


def _all_finite(pl_module: LightningModule) -> bool:
    return all(math.isfinite(float(p.detach().float().abs().sum())) for p in pl_module.parameters() if p.requires_grad)
