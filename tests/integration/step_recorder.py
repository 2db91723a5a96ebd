"""A test-only callback: records each training step, and can SIGKILL its own process at a chosen step."""

from __future__ import annotations

import json
import os
import signal
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer


class StepRecorder(Callback):
    """Appends {step, epoch, batch, data, lr, loss} per optimizer step to a JSONL file.

    `data` fingerprints the batch's token ids, so two runs can be compared batch by batch.
    `kill_before_step` sends SIGKILL to this process when that step is about to start: a crash
    nothing can clean up after, like a power cut or the out-of-memory killer.
    """

    def __init__(self, path: str, kill_before_step: int | None = None) -> None:
        self.path = path
        self.kill_before_step = kill_before_step

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if self.kill_before_step is not None and trainer.global_step + 1 == self.kill_before_step:
            os.kill(os.getpid(), signal.SIGKILL)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        ids = batch["input_ids"]
        row = {
            "step": trainer.global_step,
            "epoch": trainer.current_epoch,
            "batch": batch_idx,
            "data": [int(ids.sum()), list(ids.shape)],
            "lr": trainer.optimizers[0].param_groups[0]["lr"],
            "loss": float(outputs["loss"]),
        }
        with open(self.path, "a", encoding="utf-8") as file:
            file.write(json.dumps(row) + "\n")
