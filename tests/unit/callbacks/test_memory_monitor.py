"""MemoryMonitor: step readings on the Trainer's step axis, a validation peak, a final summary."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from standin_tutor import StandInTutor, make_trainer
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from src.callbacks import memory_monitor
from src.callbacks.memory_monitor import MemoryMonitor, read_proc_status_mb

ON_LINUX = read_proc_status_mb("VmRSS") is not None


def logged_scalars(log_dir: str) -> dict[str, dict[int, float]]:
    events = EventAccumulator(log_dir)
    events.Reload()
    return {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}


def cpu_trainer_stub() -> SimpleNamespace:
    """Just what MemoryMonitor reads from a Trainer outside of fit."""
    loop = SimpleNamespace(epoch_loop=SimpleNamespace(_batches_that_stepped=0))
    strategy = SimpleNamespace(root_device=torch.device("cpu"))
    return SimpleNamespace(strategy=strategy, sanity_checking=False, loggers=[], fit_loop=loop)


def test_cpu_run_logs_rss_every_n_steps_and_the_validation_peak(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monitor = MemoryMonitor(log_every_n_steps=2)
    trainer = make_trainer(tmp_path, [monitor], max_steps=6)
    trainer.fit(StandInTutor({}))
    scalars = logged_scalars(trainer.logger.log_dir)

    # Lightning writes the values of the batch that ends step k at step k - 1 (train/loss: 0..5).
    assert sorted(scalars["train/loss"]) == [0, 1, 2, 3, 4, 5]
    for key in ("memory/rss_mb", "memory/peak_rss_mb"):
        assert sorted(scalars[key]) == [1, 3, 5], key  # after steps 2, 4, 6: no stale repeats between
        assert all(v > 0 for v in scalars[key].values())
    # Within one reading the peak is read after the RSS, so it can never be lower.
    assert all(scalars["memory/peak_rss_mb"][s] >= scalars["memory/rss_mb"][s] for s in (1, 3, 5))
    # One validation peak per validation (steps 2, 4, 6), on the same axis as val/loss; none for the sanity check.
    assert sorted(scalars["memory/val_peak_mb"]) == sorted(scalars["val/loss"]) == [1, 3, 5]
    assert monitor.val_peak_mb == pytest.approx(max(scalars["memory/val_peak_mb"].values()), rel=1e-6)
    assert monitor.val_peak_is_exact is ON_LINUX

    summary = monitor.summary
    assert summary["device"] == "cpu" and summary["peak_rss_mb"] >= summary["rss_mb"] > 0
    out = capsys.readouterr().out
    assert "=== FINAL MEMORY USAGE ===" in out and f"Peak resident memory: {summary['peak_rss_mb']:.2f} MB" in out


def test_default_cadence_is_the_trainers(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, [MemoryMonitor()], max_steps=3, log_every_n_steps=3, limit_val_batches=0)
    trainer.fit(StandInTutor({}))
    assert sorted(logged_scalars(trainer.logger.log_dir)["memory/rss_mb"]) == [2]


@pytest.mark.skipif(not ON_LINUX, reason="reads /proc/self/status")
def test_validation_peak_survives_the_reset_of_the_process_peak() -> None:
    monitor, trainer = MemoryMonitor(), cpu_trainer_stub()
    before = monitor.peak_mb(trainer)
    monitor.on_validation_start(trainer, None)  # type: ignore[arg-type]
    # The kernel's VmHWM was reset to the current RSS, but the run's peak must not shrink.
    assert monitor.peak_mb(trainer) >= before
    monitor.on_validation_end(trainer, None)  # type: ignore[arg-type]
    assert monitor.val_peak_mb is not None and monitor.val_peak_mb > 0


def test_without_proc_the_peak_comes_from_getrusage_and_is_flagged(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(memory_monitor, "PROC_STATUS", Path("/nonexistent/status"))
    monkeypatch.setattr(memory_monitor, "PROC_CLEAR_REFS", Path("/nonexistent/clear_refs"))
    monitor, trainer = MemoryMonitor(), cpu_trainer_stub()
    readings = monitor.read(trainer)
    assert "memory/rss_mb" not in readings and readings["memory/peak_rss_mb"] > 0

    monitor.on_validation_start(trainer, None)  # type: ignore[arg-type]
    monitor.on_validation_end(trainer, None)  # type: ignore[arg-type]
    assert monitor.val_peak_is_exact is False
    monitor.on_fit_end(trainer, None)  # type: ignore[arg-type]
    assert "(process peak: could not be reset before validation)" in capsys.readouterr().out


def test_log_every_n_steps_must_be_positive() -> None:
    with pytest.raises(ValueError, match="log_every_n_steps=0"):
        MemoryMonitor(log_every_n_steps=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_run_logs_allocator_readings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    monitor = MemoryMonitor(log_every_n_steps=1)
    trainer = make_trainer(tmp_path, [monitor], max_steps=4, accelerator="gpu")
    trainer.fit(StandInTutor({}))
    scalars = logged_scalars(trainer.logger.log_dir)

    for key in ("memory/allocated_mb", "memory/reserved_mb", "memory/max_allocated_mb"):
        assert sorted(scalars[key]) == [0, 1, 2, 3] and all(v > 0 for v in scalars[key].values()), key
    assert all(scalars["memory/reserved_mb"][s] >= scalars["memory/allocated_mb"][s] for s in range(4))
    assert "memory/rss_mb" not in scalars
    assert sorted(scalars["memory/val_peak_mb"]) == [1, 3] and monitor.val_peak_mb > 0

    summary = monitor.summary
    assert summary["device"] == "cuda" and summary["device_name"] == torch.cuda.get_device_name()
    assert summary["max_allocated_mb"] >= summary["val_peak_mb"] > 0
    out = capsys.readouterr().out
    assert "=== FINAL MEMORY USAGE ===" in out and f"GPU: {summary['device_name']}" in out
