"""Training speed: this project's step against HF Trainer + PEFT, in one process, on the same batches.

    python -m bench.train_speed --config configs/smollm2.yaml --steps 40 --warmup_steps 5 --repeats 2

Both sides take the config's model, tokenised examples (assistant-only labels), batch order (the data
module's own sampler, so every step sees the same examples on both sides), LoRA (r, alpha, dropout,
targets), lr schedule, gradient clipping, accumulation and number of steps. The project side is
`Trainer.fit` on `TutorModule`/`TutorDataModule` built from the config, validation and generation off.
The HF side is the usual recipe: `get_peft_model` on the same base weights (float32, as
`from_pretrained` loads them, unless `--hf_weights compute`), `DataCollatorForSeq2Seq` padding to a
multiple of 8 with -100 labels, and `transformers.Trainer` with the equivalent bf16/fp16 flag and
its default optimizer. With `model.quantization` the HF side follows the QLoRA recipe (the same
BitsAndBytesConfig, `prepare_model_for_kbit_training`, the config's 8-bit optimizer under HF's
name). On CUDA a third side runs HF with `torch_compile=True`.

Sides run alternately (A B, B A, ...) and each figure is the median over repeats: machine drift
hits both sides alike. Timing starts at the end of the `--warmup_steps`-th optimizer step and ends
at the last one; it covers everything in the loop (data loading, forward, backward, clipping,
optimizer, callbacks). Tokens are real (non-padding) tokens. Extra arguments after `--` go to the
project's config parser, e.g. `-- --data.batch_size 8`.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import torch
from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
from torch.utils.data import DataLoader
from transformers import DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments

from bench.measure import (
    PeakMemory, device_description, frozen_matmul_parameters, matmul_peak_flops, release_memory, write_result,
)
from bench.train_figures import HF, HF_COMPILE, PROJECT, StepLog, aggregate, format_summary, summarise
from src.training.lightning_cli import TutorCLI
from src.training.trainer import TutorTrainer
from src.data.collate import count_tokens_and_examples
from src.data.datamodule import TutorDataModule
from src.errors import ConfigurationError
from src.models.loading import load_base_model
from src.models.precision import resolve_precision, uses_cuda, weight_dtype
from src.models.settings import LoraSettings, OptimizerSettings, settings_of
from src.training.tutor_module import TutorModule
# The 8-bit optimizers under HF's names; AdamW stays HF's default implementation (fused where torch has it).
HF_OPTIMIZERS = {"adamw_8bit": "adamw_bnb_8bit", "paged_adamw_8bit": "paged_adamw_8bit"}


class _ProjectClock(L.Callback):
    def __init__(self, log: StepLog, device: torch.device, accumulate: int) -> None:
        self.steps, self.device, self.accumulate = log, device, accumulate

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        real, examples = count_tokens_and_examples(batch)  # the project's own count (packed rows split)
        self.steps.micro_batch(real, batch["input_ids"].numel(), examples, outputs["loss"])
        if (batch_idx + 1) % self.accumulate == 0:
            self.steps.step_end(self.device)


class _HFClock(TrainerCallback):
    def __init__(self, log: StepLog, device: torch.device) -> None:
        self.steps, self.device = log, device

    def on_step_end(self, args, state, control, **kwargs) -> None:
        self.steps.step_end(self.device)


class _HFTrainerOnGivenBatches(Trainer):
    """HF Trainer fed the project's batch order (same examples each step) and counting real tokens."""

    def __init__(self, *args: Any, loader: DataLoader, log: StepLog, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._loader, self._log = loader, log

    def get_train_dataloader(self) -> DataLoader:
        return self._loader

    def training_step(self, model, inputs, num_items_in_batch=None):
        mask, ids = inputs["attention_mask"], inputs["input_ids"]
        loss = super().training_step(model, inputs, num_items_in_batch)
        self._log.micro_batch(int(mask.sum()), ids.numel(), len(ids), loss)
        return loss


def build_cli(options: argparse.Namespace) -> TutorCLI:
    """A fresh module and data module from the config, exactly as `python -m src.cli fit` builds them."""
    args = ["--config", options.config]
    if options.random_init:
        args += ["--config", "configs/overlays/random_init.yaml", "--model.tokenizer_name", options.tokenizer]
        if options.architecture:
            args += ["--model.architecture", options.architecture]
    if options.precision:
        args += ["--trainer.precision", options.precision]
    args += ["--model.evaluate_base", "false", "--data.packing", str(options.packing).lower()]
    # Replay rows are the base model's generations, mixed in by the module once it is built; both sides
    # time steps on the same task rows instead.
    args += ["--data.replay_ratio", "0", "--model.replay_kl", "0"]
    if options.compile:
        args += ["--model.compile", "true"]
    return TutorCLI(TutorModule, TutorDataModule, trainer_class=TutorTrainer, args=args + options.overrides, run=False)


def training_settings(cli: TutorCLI, options: argparse.Namespace) -> dict[str, Any]:
    trainer = cli.config["trainer"]
    accelerator = options.accelerator or trainer.get("accelerator") or "auto"
    precision, why = resolve_precision(trainer.get("precision"), accelerator)
    return {
        "accelerator": accelerator,
        "precision": precision,
        "precision_why": why,
        "device": torch.device("cuda", 0) if uses_cuda(accelerator) else torch.device("cpu"),
        "accumulate": int(trainer.get("accumulate_grad_batches") or 1),
        "clip": float(trainer.get("gradient_clip_val") or 0.0),
        "total_steps": options.warmup_steps + options.steps,
    }


def run_project(options: argparse.Namespace, settings: dict[str, Any], log: StepLog, root: str) -> dict[str, Any]:
    cli = build_cli(options)
    module: TutorModule = cli.model
    trainer = TutorTrainer(
        accelerator=settings["accelerator"], devices=1, precision=settings["precision"],
        max_steps=settings["total_steps"], max_epochs=-1, accumulate_grad_batches=settings["accumulate"],
        gradient_clip_val=settings["clip"] or None, limit_val_batches=0, num_sanity_val_steps=0,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[_ProjectClock(log, settings["device"], settings["accumulate"])], default_root_dir=root,
    )
    trainer.fit(module, datamodule=cli.datamodule)
    return model_shape(module.model)


def run_hf(options: argparse.Namespace, settings: dict[str, Any], log: StepLog, root: str, compile: bool) -> dict[str, Any]:
    cli = build_cli(options)
    hp, data = cli.model.hparams, cli.datamodule
    adapter = settings_of(LoraSettings, hp.lora)
    optimizer = settings_of(OptimizerSettings, hp.optimizer)
    if adapter.layers is not None or hp.adapter_path is not None:
        raise ConfigurationError("bench/train_speed.py compares fresh adapters on all layers: unset model.lora.layers and model.adapter_path")
    data.setup("fit")
    precision = str(settings["precision"])
    quantized = hp.get("quantization") is not None
    compute_weights = options.hf_weights == "compute" or precision.endswith("-true") or quantized
    dtype = weight_dtype(precision) if compute_weights else torch.float32
    torch.manual_seed(hp.seed)
    # The project's loader gives both sides the same weights (hub, folder, GGUF or random architecture,
    # quantised through the same BitsAndBytesConfig).
    base = load_base_model(hp.model_name, hp.gguf_file, hp.random_init, hp.architecture, hp.architecture_overrides,
                           dtype=dtype, seed=hp.seed, attn_implementation=hp.attn_implementation,
                           **({"quantization": hp.quantization, "device": settings["device"]} if quantized else {}))
    if quantized:  # the documented QLoRA recipe
        base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=hp.gradient_checkpointing)
    lora = LoraConfig(task_type="CAUSAL_LM", r=adapter.r, lora_alpha=adapter.alpha, lora_dropout=adapter.dropout,
                      target_modules=adapter.target_modules)
    model = get_peft_model(base, lora)
    tokenizer = data.tokenizer
    tokenizer.padding_side = "right"
    collator = DataCollatorForSeq2Seq(tokenizer, padding=True, pad_to_multiple_of=8, label_pad_token_id=-100, return_tensors="pt")
    same_batches = data.train_dataloader().batch_sampler  # the project's order: the same examples every step
    loader = DataLoader(data.train_dataset.select_columns(["input_ids", "labels"]), batch_sampler=same_batches,
                        collate_fn=collator, num_workers=data.hparams.num_workers)
    total = settings["total_steps"]
    args = TrainingArguments(
        output_dir=root, per_device_train_batch_size=data.hparams.batch_size,
        gradient_accumulation_steps=settings["accumulate"], learning_rate=optimizer.learning_rate,
        weight_decay=optimizer.weight_decay, max_grad_norm=settings["clip"], max_steps=total,
        lr_scheduler_type=optimizer.lr_scheduler, warmup_steps=round(optimizer.warmup_ratio * total),
        bf16=precision.startswith("bf16"), fp16=precision.startswith("16"), use_cpu=settings["device"].type == "cpu",
        torch_compile=compile, logging_strategy="no", save_strategy="no", eval_strategy="no", report_to="none",
        disable_tqdm=True, seed=hp.seed, dataloader_num_workers=data.hparams.num_workers,
        **({"optim": HF_OPTIMIZERS[optimizer.name]} if optimizer.name in HF_OPTIMIZERS else {}),
        # Named only when on: transformers 5.23 renames the flag, the 5.17 on the GPU machine knows only this name.
        **({"gradient_checkpointing": True, "gradient_checkpointing_kwargs": {"use_reentrant": False}} if hp.gradient_checkpointing else {}),
    )
    trainer = _HFTrainerOnGivenBatches(model=model, args=args, data_collator=collator, loader=loader, log=log,
                                       callbacks=[_HFClock(log, settings["device"])])
    trainer.train()
    return model_shape(model)


def model_shape(model: torch.nn.Module) -> dict[str, int]:
    config = model.get_base_model().config.get_text_config()
    return {
        "frozen_matmul_params": frozen_matmul_parameters(model),
        "lora_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "layers": config.num_hidden_layers,
        "hidden": config.hidden_size,
    }


@contextmanager
def profiled(side: str, log: StepLog, options: argparse.Namespace, device: torch.device) -> Iterator[None]:
    """With --profile DIR: torch.profiler over the timed steps only (not loading, not warmup); the
    operators by self time go to DIR/<side>.txt. Profiled runs are slower: read their shares, not their speed."""
    if not options.profile:
        yield
        return
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if device.type == "cuda" else [])
    schedule = torch.profiler.schedule(wait=options.warmup_steps, warmup=0, active=options.steps, repeat=1)
    with torch.profiler.profile(activities=activities, schedule=schedule) as profiler:
        log.profiler = profiler
        yield
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    table = profiler.key_averages().table(sort_by=sort, row_limit=40, max_name_column_width=60)
    Path(options.profile).mkdir(parents=True, exist_ok=True)
    (Path(options.profile) / f"{side}.txt").write_text(table, encoding="utf-8")


def run_side(side: str, options: argparse.Namespace, settings: dict[str, Any], peak_flops: float) -> dict[str, Any]:
    log, memory = StepLog(), PeakMemory(settings["device"])
    torch.manual_seed(42)
    try:
        with tempfile.TemporaryDirectory() as root, memory.track(), profiled(side, log, options, settings["device"]):
            if side == PROJECT:
                shape = run_project(options, settings, log, root)
            else:
                shape = run_hf(options, settings, log, root, compile=side == HF_COMPILE)
    except torch.OutOfMemoryError as error:  # a measured outcome on a memory-capped GPU, reported as such
        release_memory()
        return {"side": side, "error": f"out of memory: {str(error).splitlines()[0]}"}
    release_memory()
    if len(log.ends) != settings["total_steps"]:
        raise RuntimeError(f"{side} ran {len(log.ends)} optimizer steps, expected {settings['total_steps']} (too little data?)")
    return summarise(side, log, options.warmup_steps, shape, peak_flops, memory)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/smollm2.yaml")
    parser.add_argument("--precision", help="trainer.precision for the project (auto, 32-true, bf16-mixed, 16-mixed...); HF gets the equivalent flag")
    parser.add_argument("--accelerator", help="trainer.accelerator (default: the config's, else auto)")
    parser.add_argument("--steps", type=int, default=40, help="timed optimizer steps per run")
    parser.add_argument("--warmup_steps", type=int, default=5, help="optimizer steps run before timing starts (>= 1)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per side, alternating the order")
    parser.add_argument("--packing", action="store_true", help="data.packing for the project side (HF stays padded)")
    parser.add_argument("--compile", action="store_true", help="model.compile for the project side")
    parser.add_argument("--hf_compile", choices=["auto", "yes", "no"], default="auto", help="also run HF with torch_compile=True (auto: on CUDA)")
    parser.add_argument("--hf_weights", choices=["fp32", "compute"], default="fp32", help="HF base weights: fp32 (from_pretrained's default) or the compute dtype")
    parser.add_argument("--random_init", action="store_true", help="random weights of --architecture (no hub download)")
    parser.add_argument("--architecture", help="configs/architectures/*.json for --random_init")
    parser.add_argument("--tokenizer", default="offline:SmolLM2-135M-Instruct", help="tokenizer for --random_init")
    parser.add_argument("--memory_fraction", type=float, help="CUDA only: cap this process at this share of the GPU (4 GiB card on an H200: 0.0288)")
    parser.add_argument("--peak_tflops", type=float, help="MFU denominator; default: a dense matmul measured here in the compute dtype")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's, one per core); 1 keeps a busy shared CPU from spin-waiting")
    parser.add_argument("--json", help="write runs and summary to this file")
    parser.add_argument("--profile", help="write each side's torch.profiler table of the timed steps into this folder")
    parser.add_argument("overrides", nargs="*", help="after --: project config overrides, e.g. --data.batch_size 8")
    options = parser.parse_args(argv)
    if options.warmup_steps < 1:
        parser.error("--warmup_steps must be at least 1: timing starts at the end of a step")
    return options


def main(argv: list[str] | None = None) -> dict[str, Any]:
    options = parse_args(argv)
    if options.threads:
        torch.set_num_threads(options.threads)
    settings = training_settings(build_cli(options), options)
    device = settings["device"]
    if options.memory_fraction is not None:
        if device.type != "cuda":
            raise ConfigurationError("--memory_fraction caps CUDA memory; this run is on the CPU")
        torch.cuda.set_per_process_memory_fraction(options.memory_fraction, device)
    compute = weight_dtype(settings["precision"])
    peak = options.peak_tflops * 1e12 if options.peak_tflops else matmul_peak_flops(device, compute)
    with_compile = options.hf_compile == "yes" or (options.hf_compile == "auto" and device.type == "cuda")
    sides = [PROJECT, HF] + ([HF_COMPILE] if with_compile else [])
    print(f"device: {device_description(device)}; precision {settings['precision']} ({settings['precision_why']}); "
          f"MFU against {peak / 1e12:.3f} TFLOP/s ({'given' if options.peak_tflops else f'measured {compute} matmul'})", flush=True)
    runs = []
    for repeat in range(options.repeats):
        for side in sides if repeat % 2 == 0 else sides[::-1]:
            result = run_side(side, options, settings, peak)
            runs.append(result)
            print(f"repeat {repeat + 1} {side}: " + (result.get("error") or
                  f"{result['tokens_per_s']:,.0f} real tokens/s, {result['steps_per_s']:.3f} steps/s, {result['seconds']:.1f} s timed"), flush=True)
    summary = aggregate(runs, sides)
    print(format_summary(summary, PeakMemory(device).kind))
    result = {"command": options, "device": device_description(device), "precision": str(settings["precision"]),
              "peak_flops": peak, "runs": runs, "summary": summary}
    write_result(options.json, result, options)
    return result


if __name__ == "__main__":
    main()
