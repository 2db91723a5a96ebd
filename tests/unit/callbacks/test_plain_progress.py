"""Off a terminal, progress is printed as plain lines: training steps with loss, real tokens/s, elapsed and
ETA; one line per generation pass; the base evaluation says how many questions and about how long."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
from lightning.pytorch.callbacks import TQDMProgressBar

import src.callbacks.plain_progress as plain_progress
from src.callbacks.plain_progress import PlainProgress, with_plain_progress
from src.evaluation.progress_lines import duration, generation_progress


@pytest.mark.parametrize(("seconds", "shown"), [(0, "0s"), (42.4, "42s"), (185, "3m05s"), (3720, "1h02m")])
def test_durations_are_short(seconds: float, shown: str) -> None:
    assert duration(seconds) == shown


def test_installed_only_off_a_terminal_and_only_without_a_chosen_bar(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(plain_progress, "stdout_is_terminal", lambda: True)
    assert with_plain_progress(None, None) is None  # Lightning's own bar on a terminal
    monkeypatch.setattr(plain_progress, "stdout_is_terminal", lambda: False)
    (added,) = with_plain_progress(None, None)
    assert isinstance(added, PlainProgress)
    chosen = [TQDMProgressBar()]
    assert with_plain_progress(chosen, None) is chosen
    assert with_plain_progress(None, False) is None  # the bar turned off: nothing printed instead


def test_generation_progress_announces_the_pass_estimates_and_finishes(caplog: pytest.LogCaptureFixture) -> None:
    batches = [{"question": ["q"] * 4} for _ in range(3)]
    with caplog.at_level(logging.INFO):
        assert list(generation_progress(batches, "Base model (val)", total=12)) == batches
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "Base model (val): answering 12 questions"
    assert re.fullmatch(r"Base model \(val\): about \d+s for 12 questions \(from the first 4\)", lines[1])
    assert re.fullmatch(r"Base model \(val\): 12/12 questions answered, elapsed \d+s", lines[-1])


def test_a_tiny_fit_off_a_terminal_prints_followable_lines(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "training"))  # the TutorModule tests' builders
    monkeypatch.setenv("TUTOR_TUNE_CACHE", str(tmp_path / "cache"))  # the base model answers here, not from a cache
    from test_tutor_module import make_datamodule, make_module

    L.seed_everything(0)
    trainer = L.Trainer(accelerator="cpu", max_steps=4, val_check_interval=4, logger=False, enable_checkpointing=False,
                        num_sanity_val_steps=0, callbacks=[PlainProgress(every_n_steps=2, every_n_seconds=None)],
                        enable_model_summary=False, default_root_dir=tmp_path)
    with caplog.at_level(logging.INFO):
        trainer.fit(make_module(tiny_model_dir), datamodule=make_datamodule(tiny_model_dir, tmp_path))
    printed = capsys.readouterr().out.splitlines()
    steps = [line for line in printed if line.startswith("train: ")]
    assert [re.match(r"train: step (\d+)/4", line)[1] for line in steps] == ["2", "4"]
    assert re.fullmatch(r"train: step 2/4, loss \d+\.\d{4}, [\d,]+ tokens/s, elapsed \d+s, ETA \d+s", steps[0])
    assert any(re.fullmatch(r"validation \(val\): (\d+)/\1 questions answered, elapsed \d+s", line) for line in printed)
    assert any(r.getMessage().startswith("Base model (val): answering ") for r in caplog.records)


def test_the_eta_follows_the_steps_after_the_first_whose_one_off_costs_it_leaves_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [0.0]
    monkeypatch.setattr(plain_progress, "time", SimpleNamespace(monotonic=lambda: now[0]))
    progress = PlainProgress(every_n_steps=1000, every_n_seconds=None)
    monkeypatch.setattr(progress, "get_metrics", lambda trainer, module: {})
    trainer = SimpleNamespace(global_step=0, estimated_stepping_batches=101, is_global_zero=True)
    progress.on_fit_start(trainer, None)
    progress.on_train_start(trainer, None)
    now[0], trainer.global_step = 120.0, 1  # the first step compiles for two minutes
    progress.on_train_batch_end(trainer, None, None, None, 0)
    assert "ETA" not in progress.training_line(trainer, None)
    now[0], trainer.global_step = 130.0, 11  # then a second a step
    progress.on_train_batch_end(trainer, None, None, None, 10)
    assert progress.training_line(trainer, None) == "train: step 11/101, elapsed 2m10s, ETA 1m30s"
