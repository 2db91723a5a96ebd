"""Figures of a training benchmark: per-step token counts and times, medians over repeats, ratios to HF."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from bench.measure import GIB, PeakMemory, lora_training_flops_per_token, markdown_table, median

PROJECT, HF, HF_COMPILE = "project", "hf_trainer_peft", "hf_trainer_peft_compile"


@dataclass
class StepLog:
    """What one side trained on, step by step: real and computed tokens, examples, end times."""

    tokens: list[int] = field(default_factory=list)
    computed: list[int] = field(default_factory=list)
    examples: list[int] = field(default_factory=list)
    ends: list[float] = field(default_factory=list)
    first_loss: float | None = None
    profiler: torch.profiler.profile | None = None  # stepped at each step end, so its schedule counts optimizer steps
    _pending: list[int] = field(default_factory=lambda: [0, 0, 0])

    def micro_batch(self, real: int, computed: int, examples: int, loss: torch.Tensor) -> None:
        if self.first_loss is None:
            self.first_loss = float(loss)
        for i, n in enumerate((real, computed, examples)):
            self._pending[i] += n

    def step_end(self, device: torch.device) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        self.ends.append(time.perf_counter())
        for values, n in zip((self.tokens, self.computed, self.examples), self._pending):
            values.append(n)
        self._pending = [0, 0, 0]
        if self.profiler is not None:
            self.profiler.step()


def summarise(side: str, log: StepLog, warmup: int, shape: dict[str, int], peak_flops: float, memory: PeakMemory) -> dict[str, Any]:
    timed_tokens = sum(log.tokens[warmup:])
    seconds = log.ends[-1] - log.ends[warmup - 1]
    tokens_per_s = timed_tokens / seconds
    seq_len = timed_tokens / max(sum(log.examples[warmup:]), 1)
    flops = lora_training_flops_per_token(shape["frozen_matmul_params"], shape["lora_params"], shape["layers"], shape["hidden"], seq_len)
    return {
        "side": side, "steps": len(log.ends), "timed_steps": len(log.ends) - warmup, "seconds": seconds,
        "tokens_per_s": tokens_per_s, "steps_per_s": (len(log.ends) - warmup) / seconds,
        "real_fraction": sum(log.tokens[warmup:]) / max(sum(log.computed[warmup:]), 1),
        "peak_memory_bytes": memory.peak_bytes, "memory_kind": memory.kind,
        "mfu": tokens_per_s * flops / peak_flops, "flops_per_token": flops,
        "real_tokens_seen": sum(log.tokens), "examples_seen": sum(log.examples), "first_loss": log.first_loss,
    }


def aggregate(runs: list[dict[str, Any]], sides: list[str]) -> dict[str, dict[str, Any]]:
    """Median of each figure over a side's repeats, and the ratio of medians to HF Trainer + PEFT's."""
    summary: dict[str, dict[str, Any]] = {}
    for side in sides:
        ok = [r for r in runs if r["side"] == side and "error" not in r]
        if not ok:
            summary[side] = {"error": next(r["error"] for r in runs if r["side"] == side)}
            continue
        keys = ("tokens_per_s", "steps_per_s", "mfu", "real_fraction", "seconds")
        summary[side] = {k: median([r[k] for r in ok]) for k in keys}
        peaks = [r["peak_memory_bytes"] for r in ok if r["peak_memory_bytes"] is not None]
        summary[side]["peak_memory_bytes"] = max(peaks) if peaks else None
        summary[side]["repeats"] = len(ok)
        summary[side]["tokens_per_s_runs"] = [r["tokens_per_s"] for r in ok]
        summary[side]["real_tokens_seen"] = ok[0]["real_tokens_seen"]
        summary[side]["first_loss"] = ok[0]["first_loss"]
    base = summary.get(HF, {})
    for side, figures in summary.items():
        if "error" in figures or "error" in base:
            continue
        figures["speedup_vs_hf"] = figures["tokens_per_s"] / base["tokens_per_s"]
        if figures["peak_memory_bytes"] and base.get("peak_memory_bytes"):
            figures["memory_vs_hf"] = figures["peak_memory_bytes"] / base["peak_memory_bytes"]
    return summary


def format_summary(summary: dict[str, dict[str, Any]], memory_kind: str) -> str:
    rows = []
    for side, f in summary.items():
        if "error" in f:
            rows.append([side, f["error"], "", "", "", "", "", "", ""])
            continue
        memory = f"{f['peak_memory_bytes'] / GIB:.2f} GiB" if f["peak_memory_bytes"] is not None else "n/a"
        runs = ", ".join(f"{t:,.0f}" for t in f["tokens_per_s_runs"])
        rows.append([side, f"{f['tokens_per_s']:,.0f} ({runs})", f"{f['steps_per_s']:.3f}", memory, f"{100 * f['mfu']:.1f}%",
                     f"{100 * f['real_fraction']:.1f}%", f"{f.get('speedup_vs_hf', float('nan')):.2f}x",
                     f"{f['memory_vs_hf']:.2f}x" if "memory_vs_hf" in f else "n/a", f"{f['first_loss']:.4f}"])
    header = ["side", "real tokens/s, median (runs)", "steps/s", f"peak memory ({memory_kind})", "MFU",
              "real/computed tokens", "tokens/s vs HF", "memory vs HF", "first-step loss"]
    return markdown_table(header, rows)
