"""RunReport: history files whose summary agrees with the history, an honest verdict, sample answers."""

from __future__ import annotations

import contextlib
import csv
import io
import itertools
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from standin_tutor import StandInTutor, make_trainer

from src.callbacks.adapter_checkpoint import AdapterCheckpoint
from src.callbacks.memory_monitor import MemoryMonitor
from src.callbacks.run_report import FIRST_COLUMNS, RunReport

NEVER_BEAT = "The fine-tuned adapter never beat the base model"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """A 6-step fit (validations at 2, 4, 6 scoring 0.2, 0.5, 0.3; base 0.1) with all three callbacks."""
    root = tmp_path_factory.mktemp("report_run")
    module = StandInTutor({2: 0.2, 4: 0.5, 6: 0.3}, base_acc=0.1)
    checkpoint, report = AdapterCheckpoint(), RunReport(sample_questions=["¿Cuánto es 2 + 2?", "What is 3 * 4?"])
    trainer = make_trainer(root, [checkpoint, MemoryMonitor(), report])
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        trainer.fit(module)
    return SimpleNamespace(trainer=trainer, module=module, checkpoint=checkpoint, report=report, out=out.getvalue())


def test_files_go_next_to_the_adapters(run: SimpleNamespace) -> None:
    folder = run.checkpoint.dirpath
    assert run.report.dirpath == folder
    for name in ("metrics.json", "metrics.csv", "training_metrics.png", "held_out.png"):
        assert (folder / name).stat().st_size > 0, name
    for name in ("training_metrics.png", "held_out.png"):
        assert (folder / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


def test_history_has_one_record_per_step_and_per_validation(run: SimpleNamespace) -> None:
    history = run.report.history
    assert [r["step"] for r in history if r["kind"] == "train"] == [1, 2, 3, 4, 5, 6]
    vals = [r for r in history if r["kind"] == "val"]  # the sanity check is not recorded
    expected = [(2, pytest.approx(0.2)), (4, 0.5), (6, pytest.approx(0.3))]  # float32 metrics
    assert [(r["step"], r["val/math_acc"]) for r in vals] == expected
    assert all({"train/loss", "train/grad_norm", "train/lr"} <= r.keys() for r in history if r["kind"] == "train")
    assert all(b["time_s"] >= a["time_s"] for a, b in itertools.pairwise(history))


def test_summary_agrees_with_the_history(run: SimpleNamespace) -> None:
    saved = json.loads((run.checkpoint.dirpath / "metrics.json").read_text())
    assert saved["history"] == run.report.history
    summary, losses = saved["summary"], [r["train/loss"] for r in saved["history"] if r["kind"] == "train"]
    assert summary["loss_initial"] == losses[0] and summary["loss_final"] == losses[-1]
    assert summary["loss_min"] == min(losses) and summary["loss_max"] == max(losses)
    assert summary["loss_improvement_pct"] == pytest.approx((losses[0] - losses[-1]) / losses[0] * 100)
    assert summary["total_steps"] == run.trainer.global_step == 6
    assert summary["steps_per_sec"] == pytest.approx(6 / summary["duration_s"])
    assert summary["samples_per_sec"] == pytest.approx(run.module.progress.examples / summary["duration_s"])
    params = sum(p.numel() for p in run.module.model.parameters())
    assert summary["train_flops_estimate"] == 6 * params * run.module.progress.tokens > 0
    assert summary["peak_memory_mb"] > 0
    assert (summary["base_math_acc"], summary["best_math_acc"], summary["best_math_acc_step"]) == (0.1, 0.5, 4)
    assert summary["beat_base"] is True
    assert summary["best_adapter_path"] == str(run.checkpoint.best_path)
    assert summary == run.report.summary


def test_csv_has_one_row_per_record(run: SimpleNamespace) -> None:
    with (run.checkpoint.dirpath / "metrics.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:4] == FIRST_COLUMNS
    assert len(rows) == len(run.report.history)
    for row, record in zip(rows, run.report.history):
        assert row["kind"] == record["kind"] and int(row["step"]) == record["step"]
        assert {k: float(v) for k, v in row.items() if "/" in k and v} == {k: v for k, v in record.items() if "/" in k}


def test_printed_summary_names_the_best_adapter_and_tensorboard(run: SimpleNamespace) -> None:
    assert "TRAINING METRICS SUMMARY" in run.out
    assert "Math accuracy: base 10.0% -> best 50.0% (step 4)" in run.out
    assert f"Best adapter: {run.checkpoint.best_path}" in run.out
    assert f"tensorboard --logdir {run.trainer.logger.save_dir}" in run.out
    assert "estimate" in run.out and NEVER_BEAT not in run.out


def test_sample_answers_come_from_the_tutor_and_say_which_weights(run: SimpleNamespace) -> None:
    assert run.module.generate_calls == [
        [[{"role": "user", "content": "¿Cuánto es 2 + 2?"}], [{"role": "user", "content": "What is 3 * 4?"}]]
    ]
    assert run.report.samples == [
        {"question": "¿Cuánto es 2 + 2?", "answer": "canned reply 0", "verdict": "wrong: no answer line"},
        {"question": "What is 3 * 4?", "answer": "canned reply 1", "verdict": "wrong: no answer line"},
    ]
    # Each sample is graded as the held-out sets are, so a wrong answer never reads as right.
    assert "Q: What is 3 * 4?\nA: canned reply 1\n(wrong: no answer line)" in run.out
    # The best adapter is from step 4 but the module still holds the step-6 weights.
    assert "Answered by the current weights from the last step, 6; the best adapter is from step 4" in run.out


def test_sample_answers_run_in_the_trainers_precision_as_validation_does(tmp_path: Path) -> None:
    module = StandInTutor({2: 0.2}, base_acc=0.1)
    report = RunReport(sample_questions=["What is 3 * 4?"])
    trainer = make_trainer(tmp_path, [AdapterCheckpoint(), report], max_steps=2, precision="bf16-mixed")
    with contextlib.redirect_stdout(io.StringIO()):
        trainer.fit(module)
    assert module.generate_autocast == [torch.bfloat16]


def test_says_plainly_when_the_base_model_stays_better(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    module = StandInTutor({2: 0.2, 4: 0.5}, base_acc=0.9)
    report = RunReport(sample_questions=[])
    trainer = make_trainer(tmp_path, [report], max_steps=4)
    trainer.fit(module)

    out = capsys.readouterr().out
    assert f"{NEVER_BEAT} (base 90.0% vs best 50.0%): keep the base model." in out
    assert report.summary["beat_base"] is False and report.summary["best_math_acc_step"] == 4
    # Without an AdapterCheckpoint the files go to the log dir, and no samples are generated.
    assert report.dirpath == Path(trainer.log_dir) and (report.dirpath / "metrics.json").is_file()
    assert module.generate_calls == [] and "SAMPLE ANSWERS" not in out


def test_after_a_resume_the_best_comes_from_the_checkpoint_state(tmp_path: Path) -> None:
    dirpath = str(tmp_path / "adapters")
    trainer = make_trainer(tmp_path, [AdapterCheckpoint(dirpath=dirpath)], max_steps=4)
    trainer.fit(StandInTutor({2: 0.2, 4: 0.5}))
    trainer.save_checkpoint(tmp_path / "resume.ckpt")

    report = RunReport(sample_questions=[])
    resumed = make_trainer(tmp_path, [AdapterCheckpoint(dirpath=dirpath), report], max_steps=6)
    resumed.fit(StandInTutor({6: 0.3}), ckpt_path=tmp_path / "resume.ckpt")
    # Step 4 is not in this run's history, but its adapter is still the best one on disk.
    assert [r["step"] for r in report.history if r["kind"] == "val"] == [6]
    assert (report.summary["best_math_acc"], report.summary["best_math_acc_step"]) == (0.5, 4)
    assert report.summary["beat_base"] is True
