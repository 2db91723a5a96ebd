"""A run killed with SIGKILL and resumed from its last checkpoint trains exactly like one never interrupted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import arithmetic_rows, write_jsonl

ROOT = Path(__file__).resolve().parents[2]
STEPS = 12          # two epochs of 8 batches, cut short: the kill lands in the second epoch
CHECKPOINT_EVERY = 3
KILL_BEFORE = 11    # last checkpoint at step 9; step 10 is trained and lost, then the process dies


def fit(model_dir: Path, run_dir: Path, record: Path, *, kill_before: int | None = None, ckpt_path: Path | None = None):
    config = {
        "trainer": {
            "callbacks": [
                {
                    "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "init_args": {"dirpath": str(run_dir / "checkpoints"), "every_n_train_steps": CHECKPOINT_EVERY,
                                  "save_last": True, "save_top_k": 0},
                },
                {"class_path": "step_recorder.StepRecorder",
                 "init_args": {"path": str(record), "kill_before_step": kill_before}},
            ]
        }
    }
    overlay = run_dir / "crash.yaml"
    overlay.write_text(yaml.safe_dump(config))
    command = [
        sys.executable, "-m", "src.cli", "fit",
        "--config", str(ROOT / "configs" / "smollm2.yaml"),
        "--config", str(overlay),
        "--model.model_name", str(model_dir),
        "--model.evaluate_base", "false",
        "--data.train_file", str(run_dir.parent / "train.jsonl"),
        "--data.val_file", str(run_dir.parent / "val.jsonl"),
        "--data.batch_size", "4",
        "--trainer.accelerator", "cpu",
        "--trainer.precision", "32-true",
        "--trainer.max_epochs", "2",
        "--trainer.max_steps", str(STEPS),
        "--trainer.limit_val_batches", "0",
        "--trainer.default_root_dir", str(run_dir),
        "--trainer.logger", "false",
        "--trainer.enable_progress_bar", "false",
    ]
    if ckpt_path is not None:
        command += ["--ckpt_path", str(ckpt_path)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), str(ROOT)])}
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def read_steps(path: Path) -> dict[int, dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return {row["step"]: row for row in rows}  # a step recorded twice keeps its resumed record


@pytest.fixture(scope="module")
def runs(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("crash")
    write_jsonl(root / "train.jsonl", arithmetic_rows(32))
    write_jsonl(root / "val.jsonl", arithmetic_rows(8, start=60))
    (root / "straight").mkdir(), (root / "killed").mkdir()
    straight = fit(tiny_model_dir, root / "straight", root / "straight.jsonl")
    assert straight.returncode == 0, straight.stderr[-3000:]
    killed = fit(tiny_model_dir, root / "killed", root / "killed.jsonl", kill_before=KILL_BEFORE)
    checkpoint = root / "killed" / "checkpoints" / "last.ckpt"
    before_resume = checkpoint.read_bytes() if checkpoint.exists() else None
    steps_before_resume = read_steps(root / "killed.jsonl")
    resumed = fit(tiny_model_dir, root / "killed", root / "killed.jsonl", ckpt_path=checkpoint)
    return straight, killed, resumed, (before_resume, steps_before_resume), root


def test_the_killed_run_died_of_sigkill_after_writing_a_checkpoint(runs) -> None:
    _, killed, _, (before_resume, recorded), root = runs
    assert killed.returncode == -signal.SIGKILL
    assert before_resume is not None, "last.ckpt was written before the kill"
    assert max(recorded) == KILL_BEFORE - 1, "step 10 was trained, then lost with the process"
    assert not list((root / "killed" / "checkpoints").glob(".*.tmp")), "no half-written checkpoint is left behind"


def test_resuming_continues_at_the_same_step_data_schedule_and_loss(runs) -> None:
    straight, _, resumed, _, root = runs
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    uninterrupted = read_steps(root / "straight.jsonl")
    interrupted = read_steps(root / "killed.jsonl")
    assert sorted(uninterrupted) == sorted(interrupted) == list(range(1, STEPS + 1))
    for step in range(1, STEPS + 1):
        want, got = uninterrupted[step], interrupted[step]
        assert (got["epoch"], got["batch"], got["data"]) == (want["epoch"], want["batch"], want["data"]), step
        assert got["lr"] == pytest.approx(want["lr"], rel=1e-9), step
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-5, abs=1e-6), step
    assert uninterrupted[STEPS]["epoch"] == 1, "the run crosses an epoch boundary, so the epoch's order is replayed too"
