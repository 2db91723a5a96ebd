"""Which attention kernels a run may ask transformers for, checked before any weights are loaded."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from src.errors import ConfigurationError

ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2")
# Training steps may also run SDPA on torch's math backend alone (`model.train_attn_implementation`).
SDPA_MATH = "sdpa_math"
TRAIN_ATTN_IMPLEMENTATIONS = (*ATTN_IMPLEMENTATIONS, SDPA_MATH)


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


@contextmanager
def attention_kernel(model: torch.nn.Module, name: str | None) -> Iterator[None]:
    """Run the block's forwards with `name` as `model`'s attention kernel (None: the one it has), then restore it.

    transformers reads the kernel from the config at every forward and torch its SDPA backends from a
    context, so training can use one kernel and generation another; backward follows what forward recorded.
    In bf16 on a CPU with AVX512-BF16, a SmolLM2-135M LoRA step ran 1.10x faster on SDPA's math backend than
    on its flash kernel and 1.14x with eager (bench/attention_kernels.py; docs/results/2026-12-07-training-attention.md).
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
