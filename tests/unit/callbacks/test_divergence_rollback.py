"""A diverging run goes back to its last healthy weights with a lower learning rate, says so, and
stops as before once its rollbacks are spent."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch import Callback

from src.callbacks.divergence_rollback import DivergenceRollback
from src.training.divergence import NonFiniteTrainingError
from src.training.tutor_module import TutorModule
from unit.training.test_tutor_module import make_datamodule, make_module, make_trainer

LEARNING_RATE = 1e-2


def lora_weights(module: TutorModule) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in module.named_parameters() if p.requires_grad}


class Poison(Callback):
    """Turns one LoRA weight into NaN before the chosen steps, as a too-high learning rate would."""

    def __init__(self, steps: set[int] | None) -> None:
        self.steps = steps  # None: before every step
        self.weights_by_step: dict[int, dict[str, torch.Tensor]] = {}
        self.after_skipped_step: dict[str, torch.Tensor] | None = None

    def on_train_batch_start(self, trainer: L.Trainer, module: TutorModule, batch: Any, batch_idx: int) -> None:
        if self.steps is None or trainer.global_step + 1 in self.steps:
            if self.steps is not None:
                self.steps.discard(trainer.global_step + 1)
            name, param = next((n, p) for n, p in module.named_parameters() if p.requires_grad and "lora_B" in n)
            with torch.no_grad():
                param.fill_(math.nan)

    def on_train_batch_end(self, trainer: L.Trainer, module: TutorModule, outputs: Any, *args: Any) -> None:
        if not outputs:  # the skipped step
            self.after_skipped_step = lora_weights(module)
        else:
            self.weights_by_step[trainer.global_step] = lora_weights(module)


def test_a_nan_rolls_back_to_the_last_snapshot_with_a_lower_learning_rate(tiny_model_dir: Path, tmp_path: Path) -> None:
    poison, rollback = Poison({7}), DivergenceRollback(lr_factor=0.1, max_rollbacks=2, snapshot_every_n_steps=5)
    trainer = make_trainer(tmp_path, 10, [rollback, poison])
    module = make_module(tiny_model_dir, evaluate_base=False, optimizer={"learning_rate": LEARNING_RATE})
    with pytest.warns(UserWarning, match=r"Step 6: the training loss is nan\. Rolled back to the weights of step 5 "
                                         r"and lowered the learning rate x0\.1 .*rollback 1 of 2"):
        trainer.fit(module, datamodule=make_datamodule(tiny_model_dir, tmp_path))
    assert trainer.global_step == 10, "training went on to max_steps"
    assert rollback.rollbacks == 1
    snapshot = poison.weights_by_step[5]
    assert all(torch.equal(poison.after_skipped_step[name], value) for name, value in snapshot.items())
    assert all(torch.isfinite(p).all() for p in lora_weights(module).values())
    assert trainer.lr_scheduler_configs[0].scheduler.base_lrs == [pytest.approx(LEARNING_RATE * 0.1)]
    assert rollback.state_dict() == {"rollbacks": 1}


def test_a_divergence_that_persists_stops_after_the_allowed_rollbacks(tiny_model_dir: Path, tmp_path: Path) -> None:
    rollback = DivergenceRollback(max_rollbacks=2, snapshot_every_n_steps=1)
    trainer = make_trainer(tmp_path, 10, [rollback, Poison(None)])
    module = make_module(tiny_model_dir, evaluate_base=False)
    with pytest.warns(UserWarning, match="rollback 2 of 2"), pytest.raises(
        NonFiniteTrainingError, match=r"Training stopped at step 2 after 2 rollbacks: the training loss is nan"
    ):
        trainer.fit(module, datamodule=make_datamodule(tiny_model_dir, tmp_path))


@pytest.mark.parametrize("kwargs", [{"lr_factor": 1.5}, {"lr_factor": 0.0}, {"max_rollbacks": -1}, {"snapshot_every_n_steps": 0}])
def test_settings_that_cannot_work_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="DivergenceRollback"):
        DivergenceRollback(**kwargs)
