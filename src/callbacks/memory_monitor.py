"""Memory use during training and, separately, during validation generation.

Runs of a 1.5B model on a 4 GB card run out of memory while *generating* during validation, not
while training, so the validation peak is logged on its own (`memory/val_peak_mb`) next to the
training-step readings. On CUDA the numbers come from PyTorch's caching allocator; on CPU from the
kernel's view of the process (VmRSS / VmHWM in /proc/self/status). With several processes the
readings are those of rank 0, i.e. per process and per device.
"""

from __future__ import annotations

import platform
import sys
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_only

MB = 1024**2
PROC_STATUS = Path("/proc/self/status")
PROC_CLEAR_REFS = Path("/proc/self/clear_refs")


def read_proc_status_mb(field: str) -> float | None:
    """Return a `/proc/self/status` field such as "VmRSS" in MB, or None off Linux."""
    try:
        for line in PROC_STATUS.read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024  # the kernel reports kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def getrusage_peak_mb() -> float | None:
    """Peak resident memory from `resource.getrusage`, for systems without /proc."""
    try:
        import resource  # not available on Windows
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MB if sys.platform == "darwin" else peak / 1024  # bytes on macOS, kB on Linux


def reset_proc_peak() -> bool:
    """Reset VmHWM to the current RSS (`echo 5 > /proc/self/clear_refs`); False where not allowed."""
    try:
        PROC_CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


class MemoryMonitor(Callback):
    """Log memory every few training steps, the validation peak, and print a final summary.

    Logged keys, on CUDA: `memory/allocated_mb`, `memory/reserved_mb`, `memory/max_allocated_mb`;
    on CPU: `memory/rss_mb`, `memory/peak_rss_mb`. Both: `memory/val_peak_mb` after each validation.

    On CPU the validation peak is exact only where `/proc/self/clear_refs` is writable (Linux): there
    the process peak is reset when validation starts. Elsewhere it cannot be reset, and
    `memory/val_peak_mb` is the peak of the whole process so far (an upper bound).

    Lightning's `DeviceStatsMonitor` logs every allocator counter but neither the process RSS on CPU
    nor a validation-only peak, hence this callback.

    Args:
        log_every_n_steps: Log every this many optimizer steps. None uses the Trainer's
            `log_every_n_steps`.
    """

    def __init__(self, log_every_n_steps: int | None = None) -> None:
        if log_every_n_steps is not None and log_every_n_steps < 1:
            raise ValueError(f"MemoryMonitor(log_every_n_steps={log_every_n_steps}): expected an integer >= 1 or None.")
        self.log_every_n_steps = log_every_n_steps
        self.summary: dict[str, Any] = {}
        self.val_peak_mb: float | None = None
        """Highest validation peak seen so far (MB)."""
        self.val_peak_is_exact = True
        """False when the CPU peak could not be reset before a validation (see the class docstring)."""
        # Resetting the peak for validation would lose the training peak: keep the running maximum.
        self._peak_before_reset_mb = 0.0
        self._last_logged_step = -1
        self.last_readings: dict[str, float] = {}
        """The most recent training-step readings, under their logged names."""

    # ----------------------------------------------------------------------------- readings
    @staticmethod
    def _device(trainer: Trainer) -> torch.device:
        return trainer.strategy.root_device

    def _on_cuda(self, trainer: Trainer) -> bool:
        return self._device(trainer).type == "cuda"

    def read(self, trainer: Trainer) -> dict[str, float]:
        """Current readings under their logged names (MB)."""
        if self._on_cuda(trainer):
            device = self._device(trainer)
            max_allocated = torch.cuda.max_memory_allocated(device) / MB
            return {
                "memory/allocated_mb": torch.cuda.memory_allocated(device) / MB,
                "memory/reserved_mb": torch.cuda.memory_reserved(device) / MB,
                "memory/max_allocated_mb": max(self._peak_before_reset_mb, max_allocated),
            }
        readings: dict[str, float] = {}
        rss = read_proc_status_mb("VmRSS")
        if rss is not None:
            readings["memory/rss_mb"] = rss
        peak = read_proc_status_mb("VmHWM") or getrusage_peak_mb()
        if peak is not None:
            readings["memory/peak_rss_mb"] = max(self._peak_before_reset_mb, peak)
        return readings

    def peak_mb(self, trainer: Trainer) -> float | None:
        """Peak memory of the run so far: max allocated on CUDA, peak RSS on CPU."""
        readings = self.read(trainer)
        return readings.get("memory/max_allocated_mb", readings.get("memory/peak_rss_mb"))

    # ----------------------------------------------------------------------------- training
    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        every = self.log_every_n_steps or trainer.log_every_n_steps or 1
        step = trainer.global_step
        # With gradient accumulation several batches share one step: log it once.
        if step % every != 0 or step == self._last_logged_step:
            return
        self._last_logged_step = step
        self.last_readings = self.read(trainer)
        self._log(trainer, self.last_readings)

    # ----------------------------------------------------------------------------- validation
    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        peak = self.peak_mb(trainer)
        self._peak_before_reset_mb = max(self._peak_before_reset_mb, peak or 0.0)
        if self._on_cuda(trainer):
            torch.cuda.reset_peak_memory_stats(self._device(trainer))
        elif not reset_proc_peak():
            self.val_peak_is_exact = False

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Read here, after the module's own epoch-end hook too, wherever it generates.
        if self._on_cuda(trainer):
            peak = torch.cuda.max_memory_allocated(self._device(trainer)) / MB
        else:
            peak = read_proc_status_mb("VmHWM") or getrusage_peak_mb()
        if peak is None or trainer.sanity_checking:
            return
        self.val_peak_mb = max(self.val_peak_mb or 0.0, peak)
        self._log(trainer, {"memory/val_peak_mb": peak})

    @staticmethod
    def _log(trainer: Trainer, metrics: dict[str, float]) -> None:
        # Straight to the loggers, as Lightning's DeviceStatsMonitor does: `self.log` is refused in
        # `on_validation_end`, and a value logged through it only every n steps is re-written, stale,
        # at each of the Trainer's logging steps in between. The step is the one Lightning logs with.
        if not metrics:
            return
        step = trainer.fit_loop.epoch_loop._batches_that_stepped
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)

    # ----------------------------------------------------------------------------- summary
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        readings = self.read(trainer)
        if self._on_cuda(trainer):
            self.summary = {
                "device": "cuda",
                "device_name": torch.cuda.get_device_name(self._device(trainer)),
                "allocated_mb": readings["memory/allocated_mb"],
                "reserved_mb": readings["memory/reserved_mb"],
                "max_allocated_mb": readings["memory/max_allocated_mb"],
            }
        else:
            self.summary = {
                "device": "cpu",
                "device_name": platform.processor() or platform.machine() or "CPU",
                "rss_mb": readings.get("memory/rss_mb"),
                "peak_rss_mb": readings.get("memory/peak_rss_mb"),
            }
        self.summary["val_peak_mb"] = self.val_peak_mb
        self.summary["val_peak_is_exact"] = self.val_peak_is_exact
        self._print_summary()

    @rank_zero_only
    def _print_summary(self) -> None:
        s = self.summary

        def mb(value: float | None) -> str:
            return "n/a" if value is None else f"{value:.2f} MB"

        lines = ["=== FINAL MEMORY USAGE ==="]
        if s["device"] == "cuda":
            lines += [
                f"GPU: {s['device_name']}",
                f"Allocated memory: {mb(s['allocated_mb'])}",
                f"Reserved memory: {mb(s['reserved_mb'])}",
                f"Max allocated memory: {mb(s['max_allocated_mb'])}",
            ]
        else:
            lines += [
                f"CPU: {s['device_name']}",
                f"Resident memory (RSS): {mb(s['rss_mb'])}",
                f"Peak resident memory: {mb(s['peak_rss_mb'])}",
            ]
        note = "" if s["val_peak_is_exact"] else " (process peak: could not be reset before validation)"
        lines.append(f"Validation peak: {mb(s['val_peak_mb'])}{note}")
        print("\n".join(lines))
