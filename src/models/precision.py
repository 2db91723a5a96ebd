"""Pick the training precision for the machine at hand, and the dtype the frozen base weights take.

`trainer.precision: auto` exists because the right answer depends on hardware a config cannot know:
bf16 is the fastest choice on Ampere+ GPUs and on CPUs with AVX512-BF16 or AMX (LoRA steps 1.6× faster
than fp32 on such a CPU), but ~20× slower than fp32 on AVX2-only CPUs, and Pascal/Turing GPUs have no
bf16 at all (fp16 there).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

AUTO = "auto"
# `model.base_weights`: the frozen weights in the compute dtype, or float32 under mixed precision.
BASE_WEIGHTS = ("compute", "float32")
# CPU flags (as /proc/cpuinfo spells them) that make bf16 matrix products fast.
FAST_BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
CPUINFO = Path("/proc/cpuinfo")


def cpu_flags(cpuinfo: Path | None = None) -> set[str]:
    """The vector-extension flags the CPU reports (empty where /proc/cpuinfo does not exist)."""
    cpuinfo = CPUINFO if cpuinfo is None else cpuinfo  # read when called, so tests can stand in another CPU
    if not cpuinfo.is_file():
        return set()
    for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return set(value.split())
    return set()


def cpu_has_fast_bf16(cpuinfo: Path | None = None) -> bool:
    """True when the CPU multiplies bf16 natively (AVX512-BF16 or AMX), read from the CPU, never assumed."""
    cpuinfo = CPUINFO if cpuinfo is None else cpuinfo
    if cpuinfo.is_file():
        return bool(cpu_flags(cpuinfo) & FAST_BF16_CPU_FLAGS)
    # Without /proc/cpuinfo (macOS, Windows), oneDNN's own detection is the best evidence available.
    return "AMX" in torch.backends.cpu.get_cpu_capability().upper()


def cuda_has_bf16(device: int = 0) -> bool:
    """bf16 on compute capability 8.0+ only: `torch.cuda.is_bf16_supported()` also says True for
    pre-Ampere cards, where bf16 is emulated and slow."""
    major, _ = torch.cuda.get_device_capability(device)
    return major >= 8


def uses_cuda(accelerator: str | None) -> bool:
    """Whether the trainer's accelerator setting lands on a CUDA GPU on this machine."""
    name = str(accelerator or "auto").lower()
    return name in {"auto", "gpu", "cuda"} and torch.cuda.is_available()


def resolve_precision(requested: str | int | None, accelerator: str | None) -> tuple[str | int | None, str]:
    """(precision Lightning accepts, why) for `requested`; anything but `auto` passes through."""
    if requested != AUTO:
        return requested, "as configured"
    if uses_cuda(accelerator):
        if cuda_has_bf16():
            return "bf16-mixed", f"{torch.cuda.get_device_name(0)} computes in bf16 natively"
        return "16-mixed", f"{torch.cuda.get_device_name(0)} has no native bf16 (compute capability < 8.0)"
    if cpu_has_fast_bf16():
        return "bf16-mixed", "the CPU has AVX512-BF16 or AMX"
    return "32-true", "the CPU has neither AVX512-BF16 nor AMX (bf16 would be emulated and slow)"


def weight_dtype(precision: str | int | None) -> torch.dtype:
    """The dtype frozen base weights are loaded in: the compute dtype of `precision`.

    Under mixed precision the plugin only autocasts activations; fp32 base weights would be recast on
    every matmul and take 2× the memory. LoRA weights and optimizer state stay fp32 regardless.
    """
    name = str(precision)
    if name.startswith("bf16"):
        return torch.bfloat16
    if name.startswith("16"):
        return torch.float16
    return torch.float32


def base_weight_dtype(precision: str | int | None, base_weights: str = "compute") -> torch.dtype:
    """The frozen base weights' dtype: the compute dtype (`weight_dtype`), or float32 when `base_weights`
    asks for it, the way Lightning's and HF Trainer's mixed precision keep a model: autocast still
    multiplies in bf16/fp16, while the residual stream, norms and LoRA sums between the products stay float32."""
    return torch.float32 if base_weights == "float32" else weight_dtype(precision)


def placement(trainer: Any | None, base_weights: str = "compute") -> tuple[torch.device, torch.dtype]:
    """Where a module's weights go and in which dtype: the trainer's device and precision (`base_weight_dtype`),
    or fp32 on the CPU for a module used outside a trainer (tools, tests)."""
    if trainer is None:
        return torch.device("cpu"), torch.float32
    return trainer.strategy.root_device, base_weight_dtype(trainer.precision, base_weights)
