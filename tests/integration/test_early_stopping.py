"""Early stopping on a plateau of generated-answer math accuracy, as configured for the default job."""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch.callbacks import EarlyStopping

from conftest import arithmetic_rows, write_jsonl
from src.callbacks.adapter_checkpoint import AdapterCheckpoint
from src.training.lightning_cli import cli_main

ROOT = Path(__file__).resolve().parents[2]


def test_training_stops_when_math_accuracy_stops_improving(tiny_model_dir: Path, tmp_path: Path) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", arithmetic_rows(80))
    val = write_jsonl(tmp_path / "val.jsonl", arithmetic_rows(8, start=90))
    cli = cli_main(
        [
            "fit",
            "--config", str(ROOT / "configs" / "smollm2.yaml"),
            "--model.model_name", str(tiny_model_dir),
            "--model.optimizer.learning_rate", "1e-6",  # a random tiny model stays at 0%: a plateau from the start
            "--model.generation.max_new_tokens", "4",
            "--data.train_file", str(train),
            "--data.val_file", str(val),
            "--data.batch_size", "2",
            "--trainer.max_steps", "40",
            "--trainer.val_check_interval", "2",
            "--trainer.default_root_dir", str(tmp_path),
            "--trainer.logger.init_args.save_dir", str(tmp_path / "tb_logs"),
            "--trainer.enable_progress_bar", "false",
        ]
    )
    early_stopping = next(cb for cb in cli.trainer.callbacks if isinstance(cb, EarlyStopping))
    assert early_stopping.monitor == "val/math_acc" and early_stopping.mode == "max"
    patience = early_stopping.patience
    # The first validation sets the best; `patience` validations without improvement stop the run.
    assert cli.trainer.global_step == 2 * (patience + 1) < 40
    assert early_stopping.wait_count == patience
    checkpoint = next(cb for cb in cli.trainer.callbacks if isinstance(cb, AdapterCheckpoint))
    assert checkpoint.best_step == 2, "ties never replace the first best adapter"
