"""Print the run's memory plan before any weight is loaded, and stop with what to change if it will not fit.

A run that does not fit a 4 GB card fails minutes in (after the download, the load, the base model's
evaluation) with a bare CUDA out-of-memory error. The plan (src/models/memory_plan.py) costs a forward on
meta tensors, so it runs in `setup`, before `configure_model` loads anything.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info
from transformers import AutoConfig, PretrainedConfig

from src.errors import ConfigurationError, MemoryPlanError
from src.models.loading import load_architecture_config
from src.sources.tokenizer import resolve_source
from src.models.memory_plan import GIB, MemoryEstimate, RunShape, estimate_memory
from src.models.precision import base_weight_dtype
from src.models.settings import LoraSettings, OptimizerSettings, settings_of
from src.evaluation.settings import GenerationSettings

MEMINFO = Path("/proc/meminfo")
ROWS = (
    ("weights", "base weights"),
    ("lora", "LoRA weights (fp32)"),
    ("grads", "LoRA gradients"),
    ("optimizer", "optimizer state"),
    ("activations", "kept activations"),
    ("layer_backward", "one layer's backward"),
    ("logits", "loss logits (fp32)"),
    ("generation", "generation (KV cache, logits)"),
)


def available_bytes(device: torch.device) -> tuple[int, str]:
    """(bytes free for this run, where the number comes from) on `device`."""
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return free, f"free on {torch.cuda.get_device_name(device)} ({total / GIB:.2f} GiB total)"
    if MEMINFO.is_file():
        for line in MEMINFO.read_text(encoding="utf-8").splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024, "system RAM available"
    raise MemoryPlanError(
        f"MemoryPlan: cannot read the free memory of {device} on this system; set its budget_gib to the "
        "memory the run may use, or check: false."
    )


def run_shape(hp: Any, dh: Any, precision: str | int | None, device_type: str) -> RunShape:
    """The memory-relevant settings of a run: the model's (`hp`) and data module's (`dh`) hyperparameters,
    the trainer's precision and the device type."""
    lora = settings_of(LoraSettings, hp["lora"])
    return RunShape(
        batch_size=dh.batch_size,
        max_length=dh.max_length,
        dtype=base_weight_dtype(precision, hp.get("base_weights", "compute")),
        quantization=hp.quantization,
        gradient_checkpointing=hp.gradient_checkpointing,
        optimizer=settings_of(OptimizerSettings, hp["optimizer"]).name,
        lora_r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        lora_layers=lora.layers,
        # Activations are kept by training steps, so the plan counts their kernel.
        attn_implementation=hp.get("train_attn_implementation") or hp.attn_implementation,
        eval_batch_size=dh.eval_batch_size,
        max_new_tokens=settings_of(GenerationSettings, hp["generation"]).max_new_tokens,
        device_type=device_type,
    )


def model_config(hp: Any) -> PretrainedConfig:
    """The architecture that will be loaded: from the JSON file for random weights, else the model's config."""
    if hp.random_init:
        return load_architecture_config(hp.model_name, hp.architecture, hp.architecture_overrides)
    source, gguf = resolve_source(hp.model_name, hp.gguf_file)
    return AutoConfig.from_pretrained(source, **({"gguf_file": gguf} if gguf else {}))


class MemoryPlan(Callback):
    """Estimate the peak memory of training and of validation generation, print it against the device's
    free memory (or a budget), and stop before loading anything when it will not fit.

    Args:
        budget_gib: memory the run may use, in GiB (the card a config is written for, e.g. 4 for a
            GTX 1050 Ti); None reads the device's free memory (CUDA) or the system's available RAM (CPU).
        margin: share of that memory kept free for what the plan does not count (the CUDA context,
            allocator fragmentation, autocast copies).
        check: stop with MemoryPlanError when the plan exceeds the usable memory; False only prints.
    """

    def __init__(self, budget_gib: float | None = None, margin: float = 0.1, check: bool = True) -> None:
        if budget_gib is not None and budget_gib <= 0:
            raise ConfigurationError(f"MemoryPlan(budget_gib={budget_gib}): expected a positive number of GiB or null.")
        if not 0 <= margin < 1:
            raise ConfigurationError(f"MemoryPlan(margin={margin}): expected a share in [0, 1), e.g. 0.1.")
        self.budget_gib = budget_gib
        self.margin = margin
        self.check = check
        self.estimate: MemoryEstimate | None = None
        self.usable: int | None = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.estimate is not None:
            return
        data = getattr(trainer, "datamodule", None)
        if data is None:
            raise ConfigurationError("MemoryPlan needs the run's data module (batch size, lengths): pass datamodule=.")
        device = trainer.strategy.root_device
        shape = run_shape(pl_module.hparams, data.hparams, trainer.precision, device.type)
        rank_zero_info(self.plan(model_config(pl_module.hparams), shape, device, training=stage == "fit"))

    def plan(
        self, config: PretrainedConfig, shape: RunShape, device: torch.device | None = None, training: bool = True
    ) -> str:
        """Estimate `shape` on `config`, set `estimate` and `usable`, and return the printed table; raises
        MemoryPlanError (with the ranked changes) when `check` is on and the plan does not fit (validate,
        test and predict only generate: `training=False` checks their peak alone)."""
        self.estimate = estimate_memory(config, shape)
        if self.budget_gib is not None:
            available, source = int(self.budget_gib * GIB), f"budget of {self.budget_gib:g} GiB"
        else:
            available, source = available_bytes(device or torch.device("cpu"))
        self.usable = int(available * (1 - self.margin))
        table = self.table(config, shape, available, source)
        peak = self.estimate.peak if training else self.estimate.generation
        if self.check and peak > self.usable:
            rank_zero_info(table)
            raise MemoryPlanError(self.advice(config, shape, source, training))
        return table

    def table(self, config: PretrainedConfig, shape: RunShape, available: int, source: str) -> str:
        e = self.estimate
        title = (
            f"Memory plan: {config.model_type}, {e.total_parameters / 1e9:.2f}B parameters, "
            f"{shape.quantization or str(shape.dtype).removeprefix('torch.')} weights, batch {shape.batch_size} x "
            f"{shape.max_length} tokens{', gradient checkpointing' if shape.gradient_checkpointing else ''}, "
            f"{shape.optimizer}"
        )
        lines = [title, f"  {'component':<32}{'GiB':>8}"]
        lines += [f"  {label:<32}{e.components[key] / GIB:>8.3f}" for key, label in ROWS]
        lines += [
            f"  {'peak while training':<32}{e.training / GIB:>8.3f}",
            f"  {'peak while generating':<32}{e.generation / GIB:>8.3f}",
            f"  {'usable':<32}{self.usable / GIB:>8.3f}  ({source}: {available / GIB:.2f} GiB, less {self.margin:.0%})",
        ]
        return "\n".join(lines)

    def advice(self, config: PretrainedConfig, shape: RunShape, source: str, training: bool = True) -> str:
        """The plan's verdict and every candidate change, re-estimated and ranked by the peak it leaves."""
        e = self.estimate

        def peak_of(estimate: MemoryEstimate) -> int:
            return estimate.peak if training else estimate.generation

        phase = "training" if training and e.training >= e.generation else "validation generation"
        options = sorted(
            (peak_of(estimate_memory(config, changed)), setting) for setting, changed in candidate_changes(shape)
        )
        lines = [
            f"MemoryPlan: the estimated peak of {peak_of(e) / GIB:.2f} GiB (during {phase}) exceeds the "
            f"{self.usable / GIB:.2f} GiB usable ({source}, less a {self.margin:.0%} margin). Changes, lowest "
            "peak first:"
        ]
        for rank, (peak, setting) in enumerate(options, 1):
            verdict = "fits" if peak <= self.usable else "still too much"
            lines.append(f"  {rank}. {setting}: {peak / GIB:.2f} GiB ({verdict})")
        lines.append("Or set the MemoryPlan callback's check: false to start anyway.")
        return "\n".join(lines)


def candidate_changes(shape: RunShape) -> list[tuple[str, RunShape]]:
    """Settings that lower memory, each as (what to write in the config, the run with it)."""
    replace = dataclasses.replace
    changes = []
    if shape.quantization != "nf4":
        changes.append(("model.quantization: nf4", replace(shape, quantization="nf4")))
    if not shape.gradient_checkpointing:
        changes.append(("model.gradient_checkpointing: true", replace(shape, gradient_checkpointing=True)))
    if shape.batch_size > 1:
        half = shape.batch_size // 2
        changes.append((
            f"data.batch_size: {half} (and twice trainer.accumulate_grad_batches: same effective batch)",
            replace(shape, batch_size=half),
        ))
    if shape.max_length > 64:
        changes.append((f"data.max_length: {shape.max_length // 2}", replace(shape, max_length=shape.max_length // 2)))
    if shape.eval_batch_size > 1:
        half = shape.eval_batch_size // 2
        changes.append((f"data.eval_batch_size: {half}", replace(shape, eval_batch_size=half)))
    if shape.optimizer in {"adamw", "adamw_fused"}:
        changes.append(("model.optimizer.name: paged_adamw_8bit", replace(shape, optimizer="paged_adamw_8bit")))
    if shape.lora_r > 4:
        changes.append((f"model.lora.r: {shape.lora_r // 2}", replace(shape, lora_r=shape.lora_r // 2)))
    return changes
