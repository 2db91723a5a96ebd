"""Checkpoints appear whole or not at all, and load without unpickling code."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

import src.plugins.checkpoint_io as checkpoint_io
from src.plugins.checkpoint_io import AtomicCheckpointIO


def test_a_saved_checkpoint_loads_back(tmp_path: Path) -> None:
    io = AtomicCheckpointIO()
    io.save_checkpoint({"global_step": 3, "weights": torch.arange(4.0)}, tmp_path / "sub" / "last.ckpt")
    loaded = io.load_checkpoint(tmp_path / "sub" / "last.ckpt")
    assert loaded["global_step"] == 3 and torch.equal(loaded["weights"], torch.arange(4.0))


def test_a_save_that_fails_midway_leaves_the_previous_checkpoint_intact(tmp_path: Path, monkeypatch) -> None:
    io, target = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"global_step": 1}, target)
    good = target.read_bytes()

    def crash_midway(obj, file) -> None:
        file.write(b"half a checkpoint")
        raise OSError("No space left on device")

    monkeypatch.setattr(checkpoint_io.torch, "save", crash_midway)
    with pytest.raises(OSError, match="No space left"):
        io.save_checkpoint({"global_step": 2}, target)
    assert target.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"], "the half-written file is removed"


class Payload:
    def __reduce__(self):
        return (print, ("code ran while loading",))


def test_loading_refuses_to_unpickle_arbitrary_objects(tmp_path: Path) -> None:
    path = tmp_path / "evil.ckpt"
    torch.save({"state": Payload()}, path)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        AtomicCheckpointIO().load_checkpoint(path)


def test_the_trainer_writes_atomically_unless_a_sharding_strategy_or_custom_io_is_chosen() -> None:
    from lightning.pytorch.plugins.io import TorchCheckpointIO

    from src.training.trainer import with_atomic_checkpoints

    assert [type(p) for p in with_atomic_checkpoints(None, "auto")] == [AtomicCheckpointIO]
    assert [type(p) for p in with_atomic_checkpoints(None, "ddp")] == [AtomicCheckpointIO]
    assert with_atomic_checkpoints(None, "fsdp") is None and with_atomic_checkpoints(None, "deepspeed_stage_2") is None
    custom = [TorchCheckpointIO()]
    assert with_atomic_checkpoints(custom, "auto") is custom
