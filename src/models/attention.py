"""Which attention kernels a run may ask transformers for, checked before any weights are loaded."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from src.errors import ConfigurationError

ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2")
# Training steps may also run SDPA on torch's math backend alone, or let the device and precision choose.
SDPA_MATH = "sdpa_math"
TRAIN_ATTN_IMPLEMENTATIONS = (*ATTN_IMPLEMENTATIONS, SDPA_MATH, "auto")


def check_attn_implementation(name: str | None, key: str = "model.attn_implementation") -> None:
    """Raise a ConfigurationError naming `key` for a kernel that cannot run here.

    transformers would fail too, but only after loading the weights, and with a message about its
    own internals rather than the config key.
    """
    if name is None:
        return
    if name not in ATTN_IMPLEMENTATIONS:
        raise ConfigurationError(
            f"{key}={name!r}: expected one of {ATTN_IMPLEMENTATIONS} or null "
            "(null lets transformers choose, sdpa where the architecture supports it)."
        )
    if name == "flash_attention_2":
        if not torch.cuda.is_available():
            raise ConfigurationError(
                f"{key}=flash_attention_2 needs a CUDA GPU and none is visible; "
                "use sdpa (or null) on this machine."
            )
        if importlib.util.find_spec("flash_attn") is None:
            raise ConfigurationError(
                f"{key}=flash_attention_2 needs the flash-attn package, which is not installed: "
                "`pip install flash-attn --no-build-isolation` on a machine with CUDA, or use sdpa."
            )


def training_attention(
    requested: str | None, loaded: str | None, device_type: str, precision: str | int | None
) -> str | None:
    """The attention kernel for training steps: `requested`, or with None the one the model was loaded with.

    `auto` picks `sdpa_math` (SDPA on torch's math backend) for an SDPA model in bf16 on the CPU, else the
    loaded kernel. Measured on an AVX512-BF16 CPU (torch 2.13, 4 rows of 56 tokens, SmolLM2's heads): torch's
    CPU flash-attention forward and backward take 4.3 ms a layer in bf16, the math backend 2.1 ms with the
    same error against float64 (it computes in float32), eager 1.4 ms with twice that error (bf16 scores); in
    float32 the flash kernel is the fastest. See docs/results/2026-12-07-training-attention.md.
    """
    if requested is None:
        return loaded
    if requested != "auto":
        return requested
    return SDPA_MATH if device_type == "cpu" and str(precision).startswith("bf16") and loaded == "sdpa" else loaded


@contextmanager
def attention_kernel(model: torch.nn.Module, name: str | None) -> Iterator[None]:
    """Run the block's forwards with `name` as `model`'s attention kernel, then restore the one it had.

    transformers reads the kernel from the config at every forward and torch its SDPA backends from a
    context, so training can use one kernel and generation another; backward follows what forward recorded.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    loaded = base.config._attn_implementation
    kernel = "sdpa" if name == SDPA_MATH else name
    with ExitStack() as restore:
        if name == SDPA_MATH:
            restore.enter_context(sdpa_kernel([SDPBackend.MATH]))
        if kernel is not None and kernel != loaded:
            base.set_attn_implementation(kernel)
            restore.callback(base.set_attn_implementation, loaded)
        yield
