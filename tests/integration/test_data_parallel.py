"""Two CPU processes (DDP over gloo) train one adapter: same global batches, shared counts, one report.

On two cores, two single-threaded processes do more work per second than one process with two
threads; the main config relies on it. Lightning relaunches `python -m src.cli`, so the run is a
real subprocess here, not an in-process call.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from peft import PeftModel
from transformers import AutoModelForCausalLM

from conftest import arithmetic_rows, write_jsonl

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def two_process_run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("ddp")
    train = write_jsonl(run_dir / "train.jsonl", arithmetic_rows(40))
    val = write_jsonl(run_dir / "val.jsonl", arithmetic_rows(9, start=60))
    command = [
        sys.executable, "-m", "src.cli", "fit",
        "--config", str(ROOT / "configs" / "smollm2.yaml"),
        "--model.model_name", str(tiny_model_dir),
        "--model.generation.max_new_tokens", "6",
        "--data.train_file", str(train),
        "--data.val_file", str(val),
        "--data.batch_size", "2",
        "--data.eval_batch_size", "4",
        "--data.math_eval_size", "null",
        "--data.loss_eval_size", "null",
        "--trainer.devices", "2",
        "--trainer.max_steps", "6",
        "--trainer.val_check_interval", "3",
        "--trainer.log_every_n_steps", "1",
        "--trainer.enable_progress_bar", "false",
        "--trainer.default_root_dir", str(run_dir),
        "--trainer.logger.init_args.save_dir", str(run_dir / "tb_logs"),
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return run_dir


def report(run_dir: Path) -> dict:
    (metrics,) = run_dir.glob("tb_logs/lightning_logs/version_*/adapters/metrics.json")
    return json.loads(metrics.read_text())


def test_the_counts_cover_both_processes(two_process_run: Path) -> None:
    summary = report(two_process_run)["summary"]
    assert summary["total_steps"] == 6
    assert summary["train_examples_seen"] == 6 * 2 * 2, "6 steps of 2 examples on each of 2 processes"


def test_every_math_item_is_graded_once_across_processes(two_process_run: Path) -> None:
    history = report(two_process_run)["history"]
    counts = {row["val/math_acc_count"] for row in history if "val/math_acc_count" in row}
    assert counts == {9}, "9 items split 5 + 4, none repeated to even out the shards"


def test_one_adapter_is_written_and_loads_with_plain_peft(two_process_run: Path, tiny_model_dir: Path) -> None:
    (best,) = two_process_run.glob("tb_logs/lightning_logs/version_*/adapters/best")
    assert len(list(two_process_run.glob("tb_logs/lightning_logs/version_*"))) == 1, "one run folder, not one per process"
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), best)
