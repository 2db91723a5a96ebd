"""`TutorModule`: a causal LM with LoRA, trained on answers and judged by the answers it generates.

Only the hooks live here: the model is built by `src.models.builder`, answers are graded by `src.evaluation`,
the base model's pass is `base_model_pass`, a NaN/Inf goes to the `divergence` policy.
"""

from __future__ import annotations

from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info

from src.evaluation.answers import Answerer
from src.evaluation.math_evaluator import LOSS_LOADER, MathEvaluator
from src.evaluation.retention_eval import RetentionSets
from src.evaluation.settings import GenerationSettings, RetentionSettings
from src.models.attention import attention_kernel
from src.models.builder import build_tutor_model
from src.models.compile import AUTO, check_cpp_compiler, resolve_compile
from src.models.loss import causal_lm_loss, training_loss
from src.models.optimizers import check_fused_clipping, optimizer_config
from src.models.precision import placement
from src.models.quantization import Quantization
from src.models.settings import LoraSettings, OptimizerSettings, settings_of
from src.sources.offline_default import OFFLINE_DEFAULT
from src.training.base_model_pass import adapter_retention, measure_base_model, mix_in_replay
from src.training.checkpoint_state import load_run_state, save_run_state
from src.training.divergence import DivergencePolicy
from src.training.hparams import check_hparams
from src.training.progress import TrainProgress


class TutorModule(L.LightningModule):
    """LoRA fine-tuning of a causal LM into a tutor, with math accuracy measured by generation.
    `system_prompt`, `chat_template` and `packing` are linked from `data.*` by the CLI.

    Args:
        model_name: hub id, local folder, or `offline:SmolLM2-135M-Instruct` (no download needed).
        gguf_file: GGUF file name inside `model_name`'s folder or repository.
        tokenizer_name: tokenizer source when it differs from the model (random-weight architectures).
        random_init: random weights from `architecture` (or the model's config) instead of trained ones.
        architecture: JSON architecture config for `random_init` without a hub.
        architecture_overrides: config fields to change, e.g. a scaled-down layer count.
        adapter_path: a saved LoRA adapter to evaluate or continue training; None starts a fresh one.
        lora: the adapter (`model.lora.*`).
        optimizer: the optimizer and its schedule (`model.optimizer.*`).
        generation: how math answers are generated and shown (`model.generation.*`).
        retention: the general-ability measurement (`model.retention.*`); off without a set.
        gradient_checkpointing: recompute activations in backward to save memory (slower).
        attn_implementation: "sdpa", "eager" or "flash_attention_2" (CUDA + flash-attn); None: transformers' default.
        train_attn_implementation: the kernel for training steps only (generation keeps `attn_implementation`):
            one of those, or `sdpa_math` (SDPA on torch's math backend); None: the same kernel.
        compile: `torch.compile` each decoder block in place for training steps; "auto": where it pays (GPUs, and
            CPUs training in bf16/fp16; not float32 on the CPU, where it gained nothing).
        quantization: "nf4" or "int8" frozen base weights through bitsandbytes (QLoRA); None keeps the trainer's dtype.
        evaluate_base: measure the untouched base model on the math items before training.
        seed: seed of random initialisation.
        replay_kl: weight of KL(base || adapter) on the replay rows (`data.replay_ratio`), added to the loss; 0: off.
        target_masked_kl: weight of KL(base || adapter) over the non-target vocabulary on the task rows, added
            to the loss: a regulariser against forgetting that needs no replay data (arXiv 2605.29498); 0: off.
        base_weights: dtype of the frozen base weights under mixed precision. `compute` (bf16/fp16): half
            the memory, and the residual stream, norms and the LoRA sums round to it. `float32`: as Lightning's
            and HF Trainer's mixed precision run, autocast multiplies in the compute dtype while everything
            between the products stays float32.
    """

    def __init__(
        self, model_name: str = OFFLINE_DEFAULT, gguf_file: str | None = None, tokenizer_name: str | None = None,
        random_init: bool = False, architecture: str | None = None, architecture_overrides: dict[str, Any] | None = None,
        adapter_path: str | None = None, lora: LoraSettings = LoraSettings(),
        optimizer: OptimizerSettings = OptimizerSettings(), generation: GenerationSettings = GenerationSettings(),
        retention: RetentionSettings = RetentionSettings(), gradient_checkpointing: bool = False,
        attn_implementation: str | None = None, train_attn_implementation: str | None = None,
        compile: bool | Literal["auto"] = False,
        quantization: Quantization | None = None, evaluate_base: bool = True, system_prompt: str | None = None,
        chat_template: str | None = None, seed: int = 0, packing: bool = False, replay_kl: float = 0.0,
        target_masked_kl: float = 0.0, base_weights: Literal["compute", "float32"] = "compute",
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        check_hparams(self.hparams)
        self.generation = settings_of(GenerationSettings, generation)
        self.strict_loading = False  # checkpoints hold only the trainable LoRA weights (see on_save_checkpoint)
        self.model = self.tokenizer = self.formatter = None
        self.evaluator = MathEvaluator(self.generation.wrong_answers_logged)
        self.retention = RetentionSets.from_settings(settings_of(RetentionSettings, retention), seed)
        self.base_math_metrics: dict[str, float] | None = None
        self.divergence = DivergencePolicy()
        self.progress = TrainProgress()

    @property
    def math_sets(self) -> list[str]:
        return self.evaluator.set_names

    def configure_model(self) -> None:
        if self.model is None:
            placed = placement(self._trainer, self.hparams.base_weights)
            settings = {**self.hparams, "compile": self.compiles(announce=True)}
            self.model, self.tokenizer, self.formatter = build_tutor_model(settings, *placed)

    def compiles(self, announce: bool = False) -> bool:
        """`model.compile` resolved for this trainer's device and precision (`auto`: `resolve_compile`)."""
        device, precision = ("cpu", "32-true") if self._trainer is None else (
            self.trainer.strategy.root_device.type, str(self.trainer.precision))
        compiles, why = resolve_compile(self.hparams.compile, device, precision)
        if announce and self.hparams.compile == AUTO and self._trainer is not None:
            rank_zero_info(f"model.compile: auto -> {str(compiles).lower()} ({why})")
        return compiles

    def setup(self, stage: str) -> None:
        if stage == "fit" and self._trainer is not None and self.trainer.strategy.root_device.type == "cpu" \
                and self.compiles():
            check_cpp_compiler()  # before the base model's evaluation, not at the first step
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        self.evaluator.configure_for(datamodule, self.generation.max_new_tokens)

    def configure_optimizers(self) -> dict[str, Any]:
        settings = settings_of(OptimizerSettings, self.hparams.optimizer)
        check_fused_clipping(settings.name, self.trainer.precision, self.trainer.gradient_clip_val)
        mix_in_replay(self)  # the one hook with the model built and no training loader yet
        return optimizer_config(self.model, settings, int(self.trainer.estimated_stepping_batches))

    def on_train_start(self) -> None:
        if self.hparams.evaluate_base and self.global_step == 0 and self.base_math_metrics is None:
            self.base_math_metrics = measure_base_model(self)  # on every held-out set and the retention set

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor | None:
        self.progress.start_batch()  # the batch is on the device already; its time runs to on_train_batch_end
        with attention_kernel(self.model, self.hparams.train_attn_implementation):
            loss, regularisers = training_loss(self.model, batch, self.hparams.replay_kl, self.hparams.target_masked_kl)
        if self.divergence.skips_loss(loss, self.global_step, self.hparams.optimizer["learning_rate"]):
            return None  # Lightning skips backward and the optimizer step for this batch
        # Counted here: callbacks' on_train_batch_end (ModelCheckpoint) runs before the module's.
        self.progress.count(batch, self.trainer.strategy)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"])
        for name, value in regularisers.items():
            self.log(f"train/{name}", value)
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # After backward and before clipping, with unscaled gradients; 16-mixed skips inf gradients by design.
        total = self.divergence.checked_grad_norm(
            self.model, self.global_step, self.hparams.optimizer["learning_rate"], self.trainer.precision == "16-mixed"
        )
        if total is not None:
            self.log("train/grad_norm", total)

    def on_train_batch_end(self, outputs: Any, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.log("train/tokens_per_sec", self.progress.end_batch())

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        if dataloader_idx == LOSS_LOADER:
            self.evaluator.update_loss(causal_lm_loss(self.model, batch), batch["labels"])
        else:
            self.evaluator.grade(self.evaluator.set_of_loader(dataloader_idx), batch, self.answerer.answer_batch(batch))

    def on_validation_epoch_end(self) -> None:
        # Metrics are already reduced over processes by torchmetrics; sync_dist only confirms it.
        self.log_dict(self.evaluator.epoch_metrics() | adapter_retention(self), sync_dist=True)
        self.evaluator.log_wrong_answers(self.logger, self.global_step)

    test_step = validation_step  # `test` measures what `validate` does, on the loaders it is given
    on_test_epoch_end = on_validation_epoch_end

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[str]:
        return self.answerer.answer_batch(batch)

    @property
    def answerer(self) -> Answerer:
        """The model as it answers questions, with this run's reply budget (validation, callbacks, tools)."""
        return Answerer(self.model, self.tokenizer, self.formatter, self.generation.max_new_tokens)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        save_run_state(self, checkpoint)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        load_run_state(self, checkpoint)
