"""bench/retention_speed.py in CI size: every measurement runs, and the untouched adapter keeps everything."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from bench.retention_speed import main
from conftest import arithmetic_rows, write_jsonl
from src.data.retention import CHECKABLE_FILE, DEFAULT_DIR, OPEN_FILE


def first_rows(path: Path, count: int) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()[:count]]


def test_every_measurement_runs_on_a_tiny_model(tiny_model_dir: Path, tmp_path: Path) -> None:
    retention = tmp_path / "retention"
    retention.mkdir()
    write_jsonl(retention / CHECKABLE_FILE, first_rows(DEFAULT_DIR / CHECKABLE_FILE, 6))
    write_jsonl(retention / OPEN_FILE, first_rows(DEFAULT_DIR / OPEN_FILE, 3))
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"model_name": str(tiny_model_dir), "lora": {"r": 4, "alpha": 8}},
        "data": {"train_file": str(write_jsonl(tmp_path / "train.jsonl", arithmetic_rows(8)))},
    }))
    result = main(["--config", str(config), "--retention_dir", str(retention), "--max_new_tokens", "4",
                   "--open_max_new_tokens", "4", "--batch_size", "4", "--train_steps", "2", "--budgets", "2,3"])
    assert result["base"]["retain/count"] == 6
    assert result["untouched"]["retain/kl"] < 1e-9 and result["untouched"]["retain/kept"] == 1.0
    assert result["random"]["retain/kl"] > 0
    assert set(result["seconds"]) == {"base", "base_cached", "untouched", "train_steps", "trained", "random"}
    assert all(seconds > 0 for seconds in result["seconds"].values())
    assert set(result["base_right_at_budget"]) == {2, 3}
