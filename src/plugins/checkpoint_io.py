"""Checkpoints written so that a crash mid-save never replaces the last good one with a broken file.

Lightning's `TorchCheckpointIO` saves through an fsspec transaction whose temporary file lives in the
system temp folder: when that is another filesystem than the run folder (a tmpfs /tmp, a mounted
disk), the final move is a copy, and a `kill -9` during it leaves a truncated `last.ckpt`. This
plugin writes next to the target, flushes to disk and renames, which POSIX makes atomic.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    """`TorchCheckpointIO` whose saves appear all at once or not at all."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"AtomicCheckpointIO.save_checkpoint takes no storage_options, got {storage_options!r}")
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, staging = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        try:
            with os.fdopen(handle, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(staging, target)
        except BaseException:
            Path(staging).unlink(missing_ok=True)
            raise

    def load_checkpoint(self, path: _PATH, map_location: Any | None = None, weights_only: bool | None = None) -> dict[str, Any]:
        # Our checkpoints hold tensors, numbers, strings and containers only: never unpickle code.
        return super().load_checkpoint(path, map_location=map_location, weights_only=True)
