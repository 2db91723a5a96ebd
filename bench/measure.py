"""Measurements shared by the benchmarks: peak memory, the device's matmul ceiling, training FLOPs, tables.

Peak memory on CUDA is the caching allocator's `max_memory_allocated` (reset before each run). On CPU
there is no allocator counter, so the peak is the growth of the process's resident set: the kernel's
high-water mark (VmHWM) is reset through /proc/self/clear_refs before a run and read after it, and
freed memory is handed back to the OS first (glibc `malloc_trim`) so one run does not inherit
another's free lists.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import platform
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from src.models.precision import cpu_has_fast_bf16

GIB = 1024**3
STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")


def release_memory() -> None:
    """Collect garbage and return freed memory to the device or OS, so runs start alike."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc (macOS, musl): RSS figures then include the allocator's free lists
        pass


def _status_bytes(field: str) -> int:
    for line in STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024  # reported in kB
    raise KeyError(f"{field} not in {STATUS}")


class PeakMemory:
    """Peak memory of one run: CUDA allocated bytes, or resident-set growth on CPU (None where unreadable)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak_bytes: int | None = None
        self.kind = "CUDA max allocated" if device.type == "cuda" else "CPU peak RSS growth"

    @contextmanager
    def track(self) -> Iterator[PeakMemory]:
        release_memory()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            base = torch.cuda.memory_allocated(self.device)
            yield self
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device) - base
            return
        readable = STATUS.is_file() and CLEAR_REFS.exists()
        if readable:
            CLEAR_REFS.write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
            base = _status_bytes("VmRSS")
        yield self
        if readable:
            self.peak_bytes = _status_bytes("VmHWM") - base


def matmul_peak_flops(device: torch.device, dtype: torch.dtype, size: int | None = None, repeats: int = 3) -> float:
    """Measured dense matmul FLOP/s in `dtype` here: the ceiling MFU is stated against.

    Vendor peaks are unknown for shared CPUs and optimistic on GPUs; a square matmul is the best
    the device does in practice (median of `repeats`).
    """
    size = size or (8192 if device.type == "cuda" else 1024)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    times = []
    for attempt in range(repeats + 1):
        _sync(device)
        start = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        if attempt:  # the first product warms up the kernels
            times.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(times)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def lora_training_flops_per_token(frozen_matmul_params: int, lora_params: int, layers: int, hidden: int, seq_len: float) -> float:
    """Model FLOPs per trained token for LoRA on a frozen base (PaLM's 6N + 12·L·d·T, adapted).

    A trained weight costs 6 FLOPs per token (forward 2, input gradient 2, weight gradient 2); a
    frozen one 4 (no weight gradient, but backward still passes gradients through it to the
    adapters below). Attention has no weights and is computed forward and backward in full:
    12·L·d·T per token, T the sequence length (non-causal count, as PaLM's).
    """
    return 4 * frozen_matmul_params + 6 * lora_params + 12 * layers * hidden * seq_len


def frozen_matmul_parameters(model: torch.nn.Module) -> int:
    """Frozen weights that take part in matrix products: all frozen parameters but the input
    embedding table (a lookup), plus the output head (a product, even when tied to that table)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    embedding = base.get_input_embeddings().weight
    head = base.get_output_embeddings().weight
    frozen = sum(p.numel() for p in base.parameters() if not p.requires_grad and p is not embedding)
    return frozen + head.numel() if head is embedding else frozen


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    # Timings differ between the two CPU kinds these benchmarks run on: say which one this was.
    kind = "AVX512-BF16" if cpu_has_fast_bf16() else "no AVX512-BF16/AMX"
    return f"{name} ({kind}), {torch.get_num_threads()} threads"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def write_result(path: str | None, result: dict, options: argparse.Namespace) -> None:
    """A benchmark's result and the options that produced it, as JSON at `path` (nothing without a path)."""
    if path:
        with open(path, "w", encoding="utf-8") as handle:
            json.dump({**result, "command": vars(options)}, handle, indent=2, default=str)
