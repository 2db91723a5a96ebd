"""Remove the log folder a run created when the run is refused for bad input before its first step.

Lightning creates each TensorBoard logger's `version_N/` (an event file, then the saved config) before the
data module and model are set up, so a run refused there (a malformed data file, an unavailable backend)
still appears in TensorBoard as a run with nothing in it. Lightning has no hook that undoes that.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger

from src.data.conversation import DataFormatError
from src.errors import ConfigurationError, ModelSourceError

REFUSALS = (ConfigurationError, DataFormatError, ModelSourceError)  # src.cli's USER_INPUT_ERRORS
# What a refused run leaves in its version folder: nothing else is removed, whatever the error.
SETUP_FILES = ("config.yaml", "hparams.yaml")
EVENT_PREFIX = "events.out.tfevents."


class RefusedRunCleanup(L.Callback):
    """On a refused run (bad input, no optimizer step taken), delete the TensorBoard version folder it made,
    and the parent folders that leaves empty, when that folder holds only files this run wrote at setup."""

    def __init__(self) -> None:
        self._started = time.time()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, REFUSALS) or trainer.global_step > 0 or not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                self._remove(logger)

    def _remove(self, logger: TensorBoardLogger) -> None:
        folder = Path(logger.log_dir)
        if not folder.is_dir() or not only_setup_files(folder, self._started):
            return
        if logger._experiment is not None:  # close the event file before deleting it; finalize then skips it
            logger._experiment.close()
            logger._experiment = None
        shutil.rmtree(folder)
        root = Path(logger.save_dir).resolve()
        parent = folder.parent.resolve()
        while parent != root.parent and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()
            parent = parent.parent


def only_setup_files(folder: Path, since: float) -> bool:
    """Whether `folder` holds only an event file and saved configs, all written at or after `since`."""
    files = list(folder.rglob("*"))
    return all(
        path.is_file()
        and (path.name in SETUP_FILES or path.name.startswith(EVENT_PREFIX))
        and path.stat().st_mtime >= since - 1  # coarse file-system clocks
        for path in files
    )
