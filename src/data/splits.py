"""Deterministic train/validation splits in which no validation item repeats a training item."""

from __future__ import annotations

import json
import random

from src.data.conversation import Record
from src.errors import ConfigurationError


def record_key(record: Record) -> str:
    """Identity of an example for de-duplication: its exact conversation."""
    return json.dumps(record["messages"], ensure_ascii=False, sort_keys=True)


def split_records(records: list[Record], val_fraction: float, seed: int) -> tuple[list[Record], list[Record]]:
    """Split by seed. Identical examples always land on the same side, so none leaks into validation."""
    if not 0.0 < val_fraction < 1.0:
        raise ConfigurationError(f"data.val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    keys = list(dict.fromkeys(record_key(r) for r in records))  # unique, in file order
    random.Random(seed).shuffle(keys)
    n_val = max(1, round(len(keys) * val_fraction))
    if n_val >= len(keys):
        raise ConfigurationError(
            f"{len(keys)} distinct examples cannot be split with data.val_fraction={val_fraction}: "
            "add examples or give a separate data.val_file"
        )
    val_keys = set(keys[:n_val])
    train = [r for r in records if record_key(r) not in val_keys]
    val = [r for r in records if record_key(r) in val_keys]
    return train, val


def drop_overlap(train: list[Record], val: list[Record]) -> tuple[list[Record], int]:
    """Remove training examples that also appear in an explicit validation file."""
    val_keys = {record_key(r) for r in val}
    kept = [r for r in train if record_key(r) not in val_keys]
    return kept, len(train) - len(kept)
