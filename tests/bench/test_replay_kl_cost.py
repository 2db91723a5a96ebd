"""bench/replay_kl_cost.py in CI size: every variant is timed on the same batches, with replay rows marked."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from bench.replay_kl_cost import VARIANTS, main
from conftest import arithmetic_rows, write_jsonl


def test_every_variant_is_timed_on_a_tiny_model(tiny_model_dir: Path, tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"model_name": str(tiny_model_dir), "lora": {"r": 4, "alpha": 8}},
        "data": {"train_file": str(write_jsonl(tmp_path / "train.jsonl", arithmetic_rows(8))), "batch_size": 2},
    }))
    figures = tmp_path / "cost.json"
    result = main(["--config", str(config), "--steps", "4", "--repeats", "1", "--json", str(figures)])
    assert result["batches"] == 4 and result["replay_rows"] == 2  # the first row of every other batch
    assert set(result["seconds"]) == set(VARIANTS) and all(s > 0 for s in result["seconds"].values())
    assert json.loads(figures.read_text())["seconds"] == result["seconds"]
