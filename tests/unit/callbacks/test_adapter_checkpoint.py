"""AdapterCheckpoint: best-by-accuracy PEFT folders that reload exactly and survive failed saves."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import Callback, LightningModule, Trainer
from peft import PeftModel
from safetensors.torch import load_file
from standin_tutor import LoraSnapshots, StandInTutor, lora_state, make_base, make_trainer, same_tensors
from transformers import AutoTokenizer

from src.callbacks.adapter_checkpoint import AdapterCheckpoint

ACC_RISES_THEN_FALLS = {2: 0.2, 4: 0.5, 6: 0.3}
LOSS_KEEPS_FALLING = {2: 3.0, 4: 2.0, 6: 1.0}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """One 6-step fit validating at steps 2, 4, 6 with accuracy 0.2, 0.5, 0.3 and falling val loss."""
    root = tmp_path_factory.mktemp("adapter_run")
    module = StandInTutor(ACC_RISES_THEN_FALLS, val_loss_by_step=LOSS_KEEPS_FALLING)
    checkpoint, snapshots = AdapterCheckpoint(), LoraSnapshots()
    trainer = make_trainer(root, [snapshots, checkpoint])
    trainer.fit(module)
    return SimpleNamespace(trainer=trainer, module=module, checkpoint=checkpoint, snapshots=snapshots)


def load_adapter(folder: Path) -> PeftModel:
    return PeftModel.from_pretrained(make_base(seed=123), folder)


def test_best_is_chosen_by_math_accuracy_not_by_loss(run: SimpleNamespace) -> None:
    ckpt = run.checkpoint
    assert (ckpt.best_score, ckpt.best_step, ckpt.best_epoch) == (0.5, 4, 0)
    saved = json.loads((ckpt.best_path / "best.json").read_text())
    assert saved == {"monitor": "val/math_acc", "score": 0.5, "step": 4, "epoch": 0}


def test_default_dirpath_is_under_the_log_dir(run: SimpleNamespace) -> None:
    adapters = Path(run.trainer.log_dir) / "adapters"
    assert run.checkpoint.dirpath == adapters
    assert run.checkpoint.best_path == adapters / "best"
    assert run.checkpoint.last_path == adapters / "last"
    assert sorted(p.name for p in adapters.iterdir()) == ["best", "last"]  # no staging leftovers


def test_best_folder_holds_the_adapter_and_tokenizer_only(run: SimpleNamespace) -> None:
    best = run.checkpoint.best_path
    names = {p.name for p in best.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "best.json", "tokenizer.json"} <= names
    assert not names & {"model.safetensors", "pytorch_model.bin", "model.safetensors.index.json"}
    assert all(p.stat().st_size < 1_000_000 for p in best.iterdir())
    assert all("lora_" in key for key in load_file(best / "adapter_model.safetensors"))
    reloaded = AutoTokenizer.from_pretrained(best)
    assert reloaded("1 + 2 = 3")["input_ids"] == run.module.tokenizer("1 + 2 = 3")["input_ids"]


def test_best_adapter_reloads_the_weights_of_its_step_exactly(run: SimpleNamespace) -> None:
    at_best, at_end = run.snapshots.by_step[4], run.snapshots.by_step[6]
    assert not same_tensors(at_best, at_end), "training should have moved the adapter after step 4"
    assert same_tensors(lora_state(load_adapter(run.checkpoint.best_path)), at_best)


def test_last_adapter_holds_the_final_weights(run: SimpleNamespace) -> None:
    last = run.checkpoint.last_path
    assert json.loads((last / "last.json").read_text()) == {"step": 6, "epoch": 1}
    assert same_tensors(lora_state(load_adapter(last)), lora_state(run.module.model))


def test_min_mode_follows_the_falling_loss(tmp_path: Path) -> None:
    checkpoint = AdapterCheckpoint(dirpath=str(tmp_path / "by_loss"), monitor="val/loss", mode="min", save_last=False)
    module = StandInTutor(ACC_RISES_THEN_FALLS, val_loss_by_step=LOSS_KEEPS_FALLING)
    make_trainer(tmp_path, [checkpoint]).fit(module)
    assert (checkpoint.best_score, checkpoint.best_step) == (1.0, 6)
    assert checkpoint.last_path is None and not (tmp_path / "by_loss" / "last").exists()


def test_failed_save_leaves_the_previous_best_intact(tmp_path: Path) -> None:
    module = StandInTutor({2: 0.2, 4: 0.5})
    checkpoint, snapshots = AdapterCheckpoint(dirpath=str(tmp_path / "adapters")), LoraSnapshots()

    class FailSecondBestSave(Callback):
        """Before the step-4 validation ends, make the adapter save die after writing half a file."""

        def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
            if trainer.global_step != 4:
                return

            def broken_save(save_directory: str | Path, **kwargs: object) -> None:
                Path(save_directory).mkdir(parents=True, exist_ok=True)
                (Path(save_directory) / "adapter_model.safetensors").write_bytes(b"half a file")
                raise OSError("No space left on device")

            pl_module.model.save_pretrained = broken_save

    trainer = make_trainer(tmp_path, [snapshots, FailSecondBestSave(), checkpoint], max_steps=4)
    with pytest.raises(OSError, match="No space left"):
        trainer.fit(module)

    best = tmp_path / "adapters" / "best"
    assert (checkpoint.best_score, checkpoint.best_step) == (pytest.approx(0.2), 2)  # float32 metric
    assert json.loads((best / "best.json").read_text())["step"] == 2
    assert same_tensors(lora_state(load_adapter(best)), snapshots.by_step[2])
    assert sorted(p.name for p in (tmp_path / "adapters").iterdir()) == ["best"]  # staging folder removed


def test_interrupted_swap_is_recovered_on_setup(tmp_path: Path) -> None:
    """A crash between retiring the old best and renaming the new one in must not lose the old best."""
    retired = tmp_path / ".best.old"
    retired.mkdir()
    (retired / "best.json").write_text('{"step": 2}')
    (tmp_path / ".best.tmp").mkdir()  # the half-written new one
    AdapterCheckpoint(dirpath=str(tmp_path)).setup(trainer=None, pl_module=None, stage="fit")  # type: ignore[arg-type]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]
    assert json.loads((tmp_path / "best" / "best.json").read_text()) == {"step": 2}


def test_resuming_keeps_the_best_score(tmp_path: Path) -> None:
    dirpath = str(tmp_path / "adapters")
    first = AdapterCheckpoint(dirpath=dirpath)
    trainer = make_trainer(tmp_path, [first], max_steps=4)
    trainer.fit(StandInTutor({2: 0.2, 4: 0.5}))
    trainer.save_checkpoint(tmp_path / "resume.ckpt")

    # The resumed run scores 0.3 at step 6: below the 0.5 from before the restart, so no new best.
    resumed = AdapterCheckpoint(dirpath=dirpath)
    make_trainer(tmp_path, [resumed], max_steps=6).fit(StandInTutor({6: 0.3}), ckpt_path=tmp_path / "resume.ckpt")
    assert (resumed.best_score, resumed.best_step) == (0.5, 4)
    assert json.loads((Path(dirpath) / "best" / "best.json").read_text())["step"] == 4
    assert json.loads((Path(dirpath) / "last" / "last.json").read_text())["step"] == 6


def test_state_dict_round_trip() -> None:
    source = AdapterCheckpoint(dirpath="adapters", monitor="val/loss", mode="min")
    source.best_score, source.best_step, source.best_epoch, source.best_path = 1.25, 40, 2, Path("adapters/best")
    target = AdapterCheckpoint(dirpath="adapters", monitor="val/loss", mode="min")
    target.load_state_dict(source.state_dict())
    restored = (target.best_score, target.best_step, target.best_epoch, target.best_path)
    assert restored == (1.25, 40, 2, Path("adapters/best"))
    assert source.state_key != AdapterCheckpoint(monitor="val/math_acc").state_key


def test_missing_monitor_names_the_logged_keys_and_the_fix(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, [AdapterCheckpoint(monitor="val/math_accuracy")], max_steps=2)
    with pytest.raises(MisconfigurationException) as error:
        trainer.fit(StandInTutor({2: 0.2}))
    message = str(error.value)
    assert "'val/math_accuracy'" in message and "val/math_acc_strict" in message and "`monitor` init arg" in message


def test_mode_must_be_max_or_min() -> None:
    with pytest.raises(ValueError, match="mode='maximum'"):
        AdapterCheckpoint(mode="maximum")


def test_refuses_to_save_a_model_without_lora(tmp_path: Path) -> None:
    module = StandInTutor({2: 0.2})
    module.model = make_base()  # configure_model keeps an existing model: a plain causal LM
    with pytest.raises(TypeError, match="full base weights"):
        make_trainer(tmp_path, [AdapterCheckpoint(dirpath=str(tmp_path / "adapters"))], max_steps=2).fit(module)
    assert not (tmp_path / "adapters" / "best").exists()
