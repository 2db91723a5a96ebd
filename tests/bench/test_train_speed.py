"""bench/train_speed.py in CI size: both sides train on the same batches and report finite figures."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bench.train_speed import HF, PROJECT, main
from conftest import arithmetic_rows, write_jsonl

STEPS, WARMUP = 2, 1


@pytest.fixture(scope="module")
def result(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    folder = tmp_path_factory.mktemp("train-speed")
    train = write_jsonl(folder / "train.jsonl", arithmetic_rows(24))
    val = write_jsonl(folder / "val.jsonl", arithmetic_rows(4, start=60))
    return main([
        "--steps", str(STEPS), "--warmup_steps", str(WARMUP), "--repeats", "1", "--json", str(folder / "result.json"),
        "--profile", str(folder / "profile"),
        "--", "--model.model_name", str(tiny_model_dir), "--data.train_file", str(train), "--data.val_file", str(val),
        "--data.batch_size", "4",
    ]) | {"json": folder / "result.json", "profile": folder / "profile"}


def test_both_sides_ran_every_step_on_the_same_real_tokens(result: dict) -> None:
    runs = {run["side"]: run for run in result["runs"]}
    assert set(runs) == {PROJECT, HF}  # no compiled HF side on a CPU unless asked
    for run in runs.values():
        assert run["steps"] == STEPS + WARMUP and run["timed_steps"] == STEPS
    # Same batches on both sides: the same real (non-padding) tokens and examples, counted independently
    # (the project's own counter against HF's attention masks).
    assert runs[PROJECT]["real_tokens_seen"] == runs[HF]["real_tokens_seen"] > (STEPS + WARMUP) * 4 * 10
    assert runs[PROJECT]["examples_seen"] == runs[HF]["examples_seen"] == (STEPS + WARMUP) * 4
    # Before the first update both compute the base model's loss on the same labels (LoRA B starts at 0).
    assert runs[PROJECT]["first_loss"] == pytest.approx(runs[HF]["first_loss"], abs=1e-4)


def test_every_reported_figure_is_finite_and_the_ratios_are_against_hf(result: dict) -> None:
    summary = result["summary"]
    for side in (PROJECT, HF):
        figures = summary[side]
        for key in ("tokens_per_s", "steps_per_s", "mfu", "speedup_vs_hf"):
            assert math.isfinite(figures[key]) and figures[key] > 0, (side, key, figures[key])
        assert 0 < figures["real_fraction"] <= 1
        assert figures["peak_memory_bytes"] is not None
    assert summary[HF]["speedup_vs_hf"] == 1.0
    assert summary[PROJECT]["speedup_vs_hf"] == summary[PROJECT]["tokens_per_s"] / summary[HF]["tokens_per_s"]
    saved = json.loads(Path(result["json"]).read_text())
    assert saved["summary"][PROJECT]["tokens_per_s"] == summary[PROJECT]["tokens_per_s"]


def test_warmup_must_leave_a_step_to_start_the_clock() -> None:
    with pytest.raises(SystemExit):
        main(["--warmup_steps", "0"])


def test_profile_tables_cover_each_side_s_timed_steps(result: dict) -> None:
    for side in (PROJECT, HF):
        table = (result["profile"] / f"{side}.txt").read_text()
        assert "aten::mm" in table or "aten::addmm" in table  # the steps' matrix products were recorded
        assert "Self CPU time total" in table
