"""Which attention kernels a run may ask transformers for, checked before any weights are loaded."""

from __future__ import annotations

import importlib.util

import torch

from src.errors import ConfigurationError

ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2")


def check_attn_implementation(name: str | None) -> None:
    """Raise a ConfigurationError naming `model.attn_implementation` for a kernel that cannot run here.

    transformers would fail too, but only after loading the weights, and with a message about its
    own internals rather than the config key.
    """
    if name is None:
        return
    if name not in ATTN_IMPLEMENTATIONS:
        raise ConfigurationError(
            f"model.attn_implementation={name!r}: expected one of {ATTN_IMPLEMENTATIONS} or null "
            "(null lets transformers choose, sdpa where the architecture supports it)."
        )
    if name == "flash_attention_2":
        if not torch.cuda.is_available():
            raise ConfigurationError(
                "model.attn_implementation=flash_attention_2 needs a CUDA GPU and none is visible; "
                "use sdpa (or null) on this machine."
            )
        if importlib.util.find_spec("flash_attn") is None:
            raise ConfigurationError(
                "model.attn_implementation=flash_attention_2 needs the flash-attn package, which is not installed: "
                "`pip install flash-attn --no-build-isolation` on a machine with CUDA, or use sdpa."
            )
