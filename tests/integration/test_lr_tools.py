"""lr-find gives a finite suggestion (and a config carrying it); lr-sweep trains each rate and
reports its math accuracy."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from conftest import arithmetic_rows, write_jsonl
from src.tools import run_tool
from src.tools.lr_find import with_learning_rate

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "smollm2.yaml"


def fit_args(model_dir: Path, run_dir: Path, rows: int) -> list[str]:
    train = write_jsonl(run_dir / "train.jsonl", arithmetic_rows(rows))
    val = write_jsonl(run_dir / "val.jsonl", arithmetic_rows(6, start=90))
    return [
        "--config", str(CONFIG),
        "--model.model_name", str(model_dir),
        "--model.generation.max_new_tokens", "4",
        "--data.train_file", str(train),
        "--data.val_file", str(val),
        "--data.eval_batch_size", "6",
        "--trainer.accelerator", "cpu",
        "--trainer.precision", "32-true",
        "--trainer.enable_progress_bar", "false",
        "--trainer.default_root_dir", str(run_dir),
        "--trainer.logger.init_args.save_dir", str(run_dir / "tb"),
    ]


def test_lr_find_suggests_a_finite_rate_plots_it_and_writes_it_into_a_config(tiny_model_dir, tmp_path) -> None:
    written = tmp_path / "tuned.yaml"
    args = [*fit_args(tiny_model_dir, tmp_path, rows=96), "--num_training", "20", "--output_dir", str(tmp_path / "find")]
    assert run_tool("lr-find", [*args, "--write_config", str(written)]) == 0
    curve = json.loads((tmp_path / "find" / "lr_find.json").read_text())
    assert math.isfinite(curve["suggestion"]) and 1e-6 <= curve["suggestion"] <= 1e-1
    assert len(curve["lr"]) == len(curve["loss"]) >= 12
    assert (tmp_path / "find" / "lr_find.png").stat().st_size > 0
    config = yaml.safe_load(written.read_text())
    original = yaml.safe_load(CONFIG.read_text())
    assert config["model"]["optimizer"].pop("learning_rate") == pytest.approx(curve["suggestion"], rel=1e-2)
    original["model"]["optimizer"].pop("learning_rate")
    assert config["model"] == original["model"]
    assert config["data"] == original["data"] and config["trainer"] == original["trainer"]
    assert "# lr-find suggestion" in written.read_text()


def test_the_learning_rate_line_is_replaced_or_added_and_nothing_else_changes() -> None:
    text = "# header\nmodel:\n  seed: 8\n  optimizer:\n    learning_rate: 1.0e-3  # why\n    name: adamw\ndata:\n  learning_rate: 5\n"
    assert with_learning_rate(text, 2e-4, "note") == (
        "# header\nmodel:\n  seed: 8\n  optimizer:\n    learning_rate: 2.00e-04  # note\n    name: adamw\n"
        "data:\n  learning_rate: 5\n"
    )
    assert with_learning_rate("model:\n  optimizer:\n    name: adamw\n", 2e-4, "n") == (
        "model:\n  optimizer:\n    learning_rate: 2.00e-04  # n\n    name: adamw\n"
    )
    assert with_learning_rate("model:\n  seed: 8\n", 2e-4, "n") == (
        "model:\n  optimizer:\n    learning_rate: 2.00e-04  # n\n  seed: 8\n"
    )
    assert yaml.safe_load(with_learning_rate("data: {}\n", 3e-3, "n")) == {
        "data": {}, "model": {"optimizer": {"learning_rate": 3e-3}}
    }


def test_lr_sweep_trains_each_rate_for_the_same_budget_and_reports_math_accuracy(tiny_model_dir, tmp_path) -> None:
    output = tmp_path / "sweep"
    args = [*fit_args(tiny_model_dir, tmp_path, rows=24), "--trainer.max_steps", "3", "--data.batch_size", "4"]
    assert run_tool("lr-sweep", [*args, "--lrs", "1e-4", "1e-2", "--output_dir", str(output)]) == 0
    summary = json.loads((output / "lr_sweep.json").read_text())
    runs = summary["runs"]
    assert [run["lr"] for run in runs] == [1e-4, 1e-2]
    assert all(run["steps"] == 3 and not run["diverged"] for run in runs)
    assert all(0.0 <= run["math_acc"] <= 1.0 and math.isfinite(run["val_loss"]) for run in runs)
    assert summary["base_math_acc"] is not None, "the base model is measured once, in the first run"
    assert summary["best_lr"] in (1e-4, 1e-2)
    assert (output / "lr_sweep.png").stat().st_size > 0
    for run in runs:
        assert (Path(run["log_dir"]) / "adapters" / "last" / "adapter_model.safetensors").is_file()
