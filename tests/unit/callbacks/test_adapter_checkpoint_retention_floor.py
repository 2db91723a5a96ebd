"""AdapterCheckpoint's retention floor: an adapter that forgot too much of the base model never
becomes `best/`, however good its math, and the run records what was passed over."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from lightning.fabric.utilities.exceptions import MisconfigurationException
from peft import PeftModel
from standin_tutor import LoraSnapshots, StandInTutor, lora_state, make_base, make_trainer, same_tensors

from src.callbacks.adapter_checkpoint import AdapterCheckpoint

# Validation 1 (step 2) keeps most of the base model; validation 2 (step 4) is better at math but forgets half.
MATH_BY_STEP = {2: 0.8, 4: 0.9}
KEPT_BY_STEP = {2: 0.95, 4: 0.5}
FLOOR = 0.9


class RetentionTutor(StandInTutor):
    """The stand-in tutor, also logging a scripted `retain/kept` at each validation."""

    def __init__(self, math_acc_by_step: dict[int, float], kept_by_step: dict[int, float] | None) -> None:
        super().__init__(math_acc_by_step)
        self.kept_by_step = kept_by_step

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        if self.kept_by_step is not None:
            self.log("retain/kept", self.kept_by_step.get(self.global_step, 1.0))


def fit(root: Path, retention_floor: float | None, kept_by_step: dict[int, float] | None = KEPT_BY_STEP):
    checkpoint = AdapterCheckpoint(dirpath=str(root / "adapters"), retention_floor=retention_floor)
    snapshots = LoraSnapshots()
    make_trainer(root, [snapshots, checkpoint], max_steps=4).fit(RetentionTutor(MATH_BY_STEP, kept_by_step))
    return checkpoint, snapshots


def best_meta(checkpoint: AdapterCheckpoint) -> dict:
    return json.loads((checkpoint.best_path / "best.json").read_text())


def test_the_floor_keeps_the_adapter_that_retained_more(tmp_path: Path) -> None:
    checkpoint, snapshots = fit(tmp_path, retention_floor=FLOOR)
    assert (checkpoint.best_step, checkpoint.best_score) == (2, pytest.approx(0.8))
    meta = best_meta(checkpoint)
    assert meta["step"] == 2 and meta["retention"] == pytest.approx(0.95) and meta["retention_floor"] == FLOOR
    on_disk = lora_state(PeftModel.from_pretrained(make_base(seed=123), checkpoint.best_path))
    assert same_tensors(on_disk, snapshots.by_step[2]) and not same_tensors(on_disk, snapshots.by_step[4])


def test_the_validation_passed_over_is_recorded(tmp_path: Path) -> None:
    checkpoint, _ = fit(tmp_path, retention_floor=FLOOR)
    assert len(checkpoint.passed_over) == 1
    passed = checkpoint.passed_over[0]
    assert (passed["step"], passed["kept_step"]) == (4, 2)
    assert passed["score"] == pytest.approx(0.9) and passed["retention"] == pytest.approx(0.5)
    assert passed["kept_score"] == pytest.approx(0.8)
    assert checkpoint.best_passed_over == passed


def test_without_the_floor_the_best_math_is_kept(tmp_path: Path) -> None:
    checkpoint, _ = fit(tmp_path, retention_floor=None)
    assert (checkpoint.best_step, checkpoint.best_score) == (4, pytest.approx(0.9))
    assert checkpoint.passed_over == [] and checkpoint.best_passed_over is None
    assert "retention" not in best_meta(checkpoint)


def test_nothing_is_passed_over_when_every_adapter_clears_the_floor(tmp_path: Path) -> None:
    checkpoint, _ = fit(tmp_path, retention_floor=FLOOR, kept_by_step={2: 0.95, 4: 0.92})
    assert checkpoint.best_step == 4 and checkpoint.passed_over == [] and checkpoint.best_passed_over is None


def test_the_passed_over_record_survives_a_resume() -> None:
    source = AdapterCheckpoint(retention_floor=FLOOR)
    source.best_score, source.best_step = 0.8, 2
    source.passed_over = [{"step": 4, "epoch": 0, "score": 0.9, "retention": 0.5, "kept_step": 2, "kept_score": 0.8}]
    target = AdapterCheckpoint(retention_floor=FLOOR)
    target.load_state_dict(source.state_dict())
    assert target.passed_over == source.passed_over and target.best_passed_over == source.passed_over[0]


def test_a_floor_without_the_retention_metric_says_how_to_fix_it(tmp_path: Path) -> None:
    with pytest.raises(MisconfigurationException, match=r"retention_monitor='retain/kept'.*drop retention_floor"):
        fit(tmp_path, retention_floor=FLOOR, kept_by_step=None)


@pytest.mark.parametrize("floor", [-0.1, 1.5])
def test_the_floor_is_a_share(floor: float) -> None:
    with pytest.raises(ValueError, match="between 0 and 1"):
        AdapterCheckpoint(retention_floor=floor)
