"""`TutorModule`: a causal LM with LoRA, trained on answers and judged by the answers it generates."""

from __future__ import annotations

import math
import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import grad_norm, rank_zero_info, rank_zero_warn
from torchmetrics import MeanMetric
from transformers import get_scheduler

from src.callbacks.divergence_rollback import DivergenceRollback
from src.callbacks.plain_progress import generation_progress
from src.data.chat_format import ChatFormatter
from src.data.collate import PromptCollator, count_tokens_and_examples
from src.data.conversation import Message
from src.errors import TutorTuneError
from src.metrics.math_accuracy import MathAccuracy, graded_results
from src.models.attention import check_attn_implementation
from src.models.compile import compile_repeated_blocks
from src.models.generation import generate_greedy
from src.models.loading import check_vocabulary_fits, load_base_model, load_tokenizer
from src.models.lora import attach_lora, count_parameters, keep_trainable_in_float32
from src.models.loss import causal_lm_loss
from src.models.offline_default import OFFLINE_DEFAULT, cache_folder
from src.models.optimizers import OptimizerName, build_optimizer, check_optimizer
from src.models.packing import check_packing_support
from src.models.precision import weight_dtype
from src.models.quantization import Quantization, check_quantization, prepare_for_kbit_training
from src.models.sources import check_adapter, refuse_pickle

LOSS_LOADER = 0  # then one loader of generation prompts per held-out set (the datamodule's `math_set_names`)


class NonFiniteTrainingError(TutorTuneError, RuntimeError):
    """The loss or gradient norm became NaN/Inf: continuing would only write a broken adapter."""


class TutorModule(L.LightningModule):
    """LoRA fine-tuning of a causal LM into a tutor, with math accuracy measured by generation.

    Args:
        model_name: hub id, local folder, or `offline:SmolLM2-135M-Instruct` (no download needed).
        gguf_file: GGUF file name inside `model_name`'s folder or repository.
        tokenizer_name: tokenizer source when it differs from the model (random-weight architectures).
        random_init: random weights from `architecture` (or the model's config) instead of trained ones.
        architecture: JSON architecture config for `random_init` without a hub.
        architecture_overrides: config fields to change, e.g. a scaled-down layer count.
        adapter_path: a saved LoRA adapter to evaluate or continue training; None starts a fresh one.
        lora_r: LoRA rank.
        lora_alpha: LoRA scaling numerator (the update is scaled by alpha / r).
        lora_dropout: dropout on the LoRA branch.
        target_modules: module names to adapt, or "all-linear" for every linear layer but the head.
        lora_layers: indices of the decoder layers to adapt; None adapts all. Adapting only the upper
            layers lets backward stop early (faster steps on CPU).
        gradient_checkpointing: recompute activations in backward to save memory (slower).
        attn_implementation: attention kernel: "sdpa", "eager" or "flash_attention_2" (CUDA and the
            flash-attn package); None keeps transformers' default (sdpa where supported).
        compile: `torch.compile` each decoder block in place (pays off on GPU after the first steps).
        quantization: "nf4" (4-bit NormalFloat, double-quantised) or "int8" frozen base weights through
            bitsandbytes (QLoRA), computing in the trainer's precision; None keeps them in that dtype.
        optimizer: "adamw", "adamw_fused" (one fused kernel), "adamw_8bit" or "paged_adamw_8bit"
            (bitsandbytes: 2 bytes of state a parameter instead of 8; paged spills to host RAM).
        learning_rate: peak learning rate of the optimizer.
        weight_decay: decoupled weight decay.
        warmup_ratio: share of the optimizer steps spent warming up linearly.
        lr_scheduler: transformers scheduler name after warmup ("cosine", "linear", "constant_with_warmup").
        max_new_tokens: generation budget for each math answer.
        evaluate_base: measure the untouched base model on the math items before training.
        wrong_answers_logged: how many wrong answers each validation shows in TensorBoard.
        system_prompt: linked from `data.system_prompt`.
        chat_template: linked from `data.chat_template`.
        seed: seed of random initialisation.
        packing: linked from `data.packing`; packed batches need a model that keeps examples apart.
    """

    def __init__(
        self,
        model_name: str = OFFLINE_DEFAULT,
        gguf_file: str | None = None,
        tokenizer_name: str | None = None,
        random_init: bool = False,
        architecture: str | None = None,
        architecture_overrides: dict[str, Any] | None = None,
        adapter_path: str | None = None,
        lora_r: int = 16,
        lora_alpha: int = 32,
        lora_dropout: float = 0.05,
        target_modules: list[str] | str = "all-linear",
        lora_layers: list[int] | None = None,
        gradient_checkpointing: bool = False,
        attn_implementation: str | None = None,
        compile: bool = False,
        quantization: Quantization | None = None,
        optimizer: OptimizerName = "adamw",
        learning_rate: float = 2e-4,
        weight_decay: float = 0.0,
        warmup_ratio: float = 0.05,
        lr_scheduler: str = "cosine",
        max_new_tokens: int = 32,
        evaluate_base: bool = True,
        wrong_answers_logged: int = 5,
        system_prompt: str | None = None,
        chat_template: str | None = None,
        seed: int = 0,
        packing: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self._check_sources()
        # Checkpoints hold only the trainable LoRA weights (see on_save_checkpoint).
        self.strict_loading = False
        self.model = None
        self.tokenizer = None
        self.formatter: ChatFormatter | None = None
        self.math_accuracy = MathAccuracy()
        # One metric per held-out set, named by its prefix ("val", "indep"): `math_accuracy` is "val"'s.
        self.math_sets: list[str] = ["val"]
        self.extra_math_accuracy = torch.nn.ModuleDict()
        self.val_loss = MeanMetric()
        self.base_math_metrics: dict[str, float] | None = None
        self.train_tokens_seen = 0
        self.train_examples_seen = 0
        self.train_seconds = 0.0  # time inside training steps, validation and generation excluded
        self._wrong_answers: list[tuple[str, str, str | None, str]] = []
        self._batch_started = 0.0
        self._step_tokens = 0

    # ----------------------------------------------------------------------------------- building
    def configure_model(self) -> None:
        if self.model is not None:
            return
        hp = self.hparams
        check_attn_implementation(hp.attn_implementation)
        device = self.trainer.strategy.root_device if self._trainer is not None else torch.device("cpu")
        check_quantization(hp.quantization, device.type, hp.gguf_file)
        check_optimizer(hp.optimizer, device.type)
        self.tokenizer = load_tokenizer(hp.model_name, hp.gguf_file, hp.tokenizer_name)
        base = load_base_model(
            hp.model_name, hp.gguf_file, hp.random_init, hp.architecture, hp.architecture_overrides,
            dtype=self.base_weight_dtype, seed=hp.seed, attn_implementation=hp.attn_implementation,
            quantization=hp.quantization, device=device,
        )
        check_vocabulary_fits(base, self.tokenizer)
        if hp.quantization is not None:
            saved = prepare_for_kbit_training(base, hp.gradient_checkpointing)
            kept = str(self.base_weight_dtype).removeprefix("torch.")
            rank_zero_info(
                f"{hp.quantization} base weights; embedding and head in {kept}"
                + (f" ({saved / 2**20:.0f} MiB less than PEFT's float32 copies)" if saved else "")
            )
        elif hp.gradient_checkpointing:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.model = attach_lora(
            base, hp.lora_r, hp.lora_alpha, hp.lora_dropout, hp.target_modules, hp.adapter_path, hp.lora_layers
        )
        keep_trainable_in_float32(self.model)
        self.model.train()  # from_pretrained returns eval mode; Lightning switches modes per stage from here
        if hp.packing:
            check_packing_support(self.model)
        if hp.compile:
            compile_repeated_blocks(self.model)
        self.formatter = ChatFormatter(self.tokenizer, hp.system_prompt, hp.chat_template)
        # Saved with every adapter: plain `AutoTokenizer` + `apply_chat_template` then renders the training prompt.
        self.tokenizer.chat_template = self.formatter.standalone_template()
        trainable, total = count_parameters(self.model)
        rank_zero_info(f"Trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.2f}%)")

    def _check_sources(self) -> None:
        """File checks that cost nothing, done when the config is read: a pickle path or an adapter trained on
        another base model fails before anything runs or is written."""
        hp = self.hparams
        for key in ("model_name", "tokenizer_name", "architecture"):
            refuse_pickle(f"model.{key}", hp[key])
        if hp.adapter_path is not None:
            # Random weights record no base model worth comparing; the offline default is known by its cache
            # folder (not created here: that takes ~20 s on first use).
            source = None if hp.random_init else str(cache_folder()) if hp.model_name == OFFLINE_DEFAULT else hp.model_name
            check_adapter(hp.adapter_path, hp.model_name, source)

    @property
    def base_weight_dtype(self) -> torch.dtype:
        """The trainer's compute dtype (bf16 under bf16-mixed, fp16 under 16-mixed), else float32."""
        return weight_dtype(self.trainer.precision) if self._trainer is not None else torch.float32

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        kinds = getattr(datamodule, "math_kinds", [])
        if list(self.math_accuracy.kinds) != kinds:
            self.math_accuracy = MathAccuracy(kinds)
        self.math_sets = list(getattr(datamodule, "math_set_names", ["val"]))
        extra = [name for name in self.math_sets if name != "val"]
        if list(self.extra_math_accuracy) != extra or any(
            list(m.kinds) != kinds for m in self.extra_math_accuracy.values()
        ):
            self.extra_math_accuracy = torch.nn.ModuleDict({name: MathAccuracy(kinds) for name in extra})
        self._warn_if_replies_are_cut(getattr(datamodule, "longest_reference_answer", None))

    def _warn_if_replies_are_cut(self, longest: dict[str, Any] | None) -> None:
        """A reply cut by the generation budget before its final answer is graded wrong: the reported
        accuracy would then measure the budget, not the tutor."""
        budget = self.hparams.max_new_tokens
        if longest is None or longest["tokens"] <= budget:
            return
        rank_zero_warn(
            f"model.max_new_tokens is {budget}, but the longest reference answer in {longest['source']} takes "
            f"{longest['tokens']} tokens with its end of turn ({longest['question']!r}): a reply that long is cut "
            f"before its final answer and graded wrong. Set model.max_new_tokens to at least {longest['tokens']}."
        )

    def _accuracy(self, name: str) -> MathAccuracy:
        return self.math_accuracy if name == "val" else self.extra_math_accuracy[name]

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        trainable = [p for p in self.parameters() if p.requires_grad]
        optimizer = build_optimizer(hp.optimizer, trainable, hp.learning_rate, hp.weight_decay)
        total_steps = int(self.trainer.estimated_stepping_batches)
        scheduler = get_scheduler(
            hp.lr_scheduler, optimizer, num_warmup_steps=round(hp.warmup_ratio * total_steps), num_training_steps=total_steps
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ----------------------------------------------------------------------------------- training
    def on_train_start(self) -> None:
        if self.hparams.evaluate_base and self.global_step == 0 and self.base_math_metrics is None:
            self.base_math_metrics = self.evaluate_base_model()

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._batch_started = time.perf_counter()

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = causal_lm_loss(self.model, batch)
        if not torch.isfinite(loss):
            if self._roll_back("training loss", loss.item()):
                return None  # Lightning skips backward and the optimizer step for this batch
            self._stop_non_finite("training loss", loss.item())
        # Counted here, not in on_train_batch_end: callbacks' on_train_batch_end (ModelCheckpoint)
        # runs before the module's, so a checkpoint would miss the batch it was saved after.
        # Summed over data-parallel processes (one scalar all-reduce): the counts describe the run.
        local = torch.tensor(count_tokens_and_examples(batch), dtype=torch.long)  # padding excluded, packed rows split
        tokens, examples = (int(n) for n in self.trainer.strategy.reduce(local, reduce_op="sum"))
        self._step_tokens = tokens
        self.train_tokens_seen += tokens
        self.train_examples_seen += examples
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"])
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # Called after backward and before clipping, with unscaled gradients: the norm seed 000 plotted.
        total = grad_norm(self.model, norm_type=2).get("grad_2.0_norm_total", 0.0)
        if not math.isfinite(total) and self.trainer.precision != "16-mixed":
            # 16-mixed skips steps with inf gradients by design; anywhere else they corrupt the adapter.
            if self._roll_back("gradient norm", total):
                return  # the rollback cleared the gradients: this optimizer step changes nothing
            self._stop_non_finite("gradient norm", total)
        self.log("train/grad_norm", total)

    def on_train_batch_end(self, outputs: Any, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        elapsed = max(time.perf_counter() - self._batch_started, 1e-9)
        self.train_seconds += elapsed
        self.log("train/tokens_per_sec", self._step_tokens / elapsed)

    def _rollback_callback(self) -> DivergenceRollback | None:
        return next((cb for cb in self.trainer.callbacks if isinstance(cb, DivergenceRollback)), None)

    def _roll_back(self, what: str, value: float) -> bool:
        """Hand a divergence to a `DivergenceRollback` callback, if the run has one with rollbacks left."""
        rollback = self._rollback_callback()
        return rollback is not None and rollback.roll_back(self.trainer, self, what, value)

    def _stop_non_finite(self, what: str, value: float) -> None:
        rollback = self._rollback_callback()
        after = f" after {rollback.rollbacks} rollbacks" if rollback is not None else ""
        raise NonFiniteTrainingError(
            f"Training stopped at step {self.global_step}{after}: the {what} is {value}. The likely cause is a learning "
            f"rate too high for this model (model.learning_rate={self.hparams.learning_rate}; seed 001's lr 0.5 "
            "crashed CUDA, phi-2 was stable at 1e-5): lower it, and keep trainer.gradient_clip_val set. "
            "Adapters saved before this step were not touched."
        )

    # --------------------------------------------------------------------------------- evaluation
    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        if dataloader_idx == LOSS_LOADER:
            loss = causal_lm_loss(self.model, batch)
            self.val_loss.update(loss, weight=(batch["labels"] != -100).sum())
        else:
            self._grade_batch(batch, self.math_sets[dataloader_idx - 1] if self.math_sets else "val")

    def on_validation_epoch_end(self) -> None:
        if self.val_loss.update_count:
            loss = self.val_loss.compute()
            # Metrics are already reduced over processes by torchmetrics; sync_dist only confirms it.
            self.log("val/loss", loss, prog_bar=True, sync_dist=True)
            self.log("val/ppl", torch.exp(loss), sync_dist=True)
            self.val_loss.reset()
        for name in self.math_sets or ["val"]:
            if self._accuracy(name).update_count:
                self.log_dict(self._math_metrics(name), prog_bar=False, sync_dist=True)
        self._log_wrong_answers(self.global_step)

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self.validation_step(batch, batch_idx, dataloader_idx)

    def on_test_epoch_end(self) -> None:
        self.on_validation_epoch_end()

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[str]:
        return self._generate(batch)

    def _generate(self, batch: dict[str, Any]) -> list[str]:
        return generate_greedy(
            self.model,
            self.tokenizer,
            batch["input_ids"].to(self.device),
            batch["attention_mask"].to(self.device),
            self.hparams.max_new_tokens,
            self.formatter.end_of_turn_ids,
        )

    def _grade_batch(self, batch: dict[str, Any], name: str = "val") -> None:
        replies = self._generate(batch)
        self._accuracy(name).update(replies, batch["expected"], batch["kind"])
        room = self.hparams.wrong_answers_logged - len(self._wrong_answers)
        for question, reply, want, grade in zip(batch["question"], replies, batch["expected"], graded_results(replies, batch["expected"])):
            if room > 0 and not grade.correct:
                self._wrong_answers.append((question, reply, grade.extracted, want))
                room -= 1

    def _math_metrics(self, name: str = "val") -> dict[str, float]:
        metric = self._accuracy(name)
        values = metric.compute()
        metric.reset()
        prefix = f"{name}/math_acc"
        names = {"acc": prefix, "acc_strict": f"{prefix}_strict", "count": f"{prefix}_count"}
        return {names.get(key, f"{prefix}/{key.removeprefix('acc/')}"): float(value) for key, value in values.items()}

    def evaluate_base_model(self) -> dict[str, float] | None:
        """Math accuracy of the untouched base model on every held-out set's math items, logged at step 0
        (`base/math_acc` for the validation set, `base/<prefix>/math_acc` for the others)."""
        datamodule = getattr(self.trainer, "datamodule", None)
        names = list(getattr(datamodule, "math_set_names", []))
        if datamodule is None or not names:
            return None
        was_training = self.model.training
        self.model.eval()
        metrics: dict[str, float] = {}
        # The precision plugin's autocast, as in validation_step: base and tuned answers computed alike.
        with self.model.disable_adapter(), self.trainer.precision_plugin.forward_context():
            for name in names:
                for batch in generation_progress(datamodule.math_dataloader(name), f"Base model ({name})"):
                    self._grade_batch(batch, name)
                metrics |= self._math_metrics(name)
        self.model.train(was_training)
        for logger in self.loggers:
            logger.log_metrics({f"base/{key.removeprefix('val/')}": v for key, v in metrics.items()}, step=0)
            logger.log_metrics(metrics, step=0)
        self._log_wrong_answers(0, tag="base/wrong_answers")
        for name in names:
            key = f"{name}/math_acc"
            rank_zero_info(f"Base model math accuracy ({name}): {metrics[key]:.1%} on {int(metrics[key + '_count'])} items")
        return metrics

    def _log_wrong_answers(self, step: int, tag: str = "val/wrong_answers") -> None:
        wrong, self._wrong_answers = self._wrong_answers, []
        if not wrong or not isinstance(self.logger, TensorBoardLogger):
            return
        escape = lambda text: str(text).replace("|", "\\|").replace("\n", " ⏎ ")  # noqa: E731 (markdown cells)
        rows = [f"| {escape(q)} | {escape(r)} | {escape(e)} | {escape(w)} |" for q, r, e, w in wrong]
        table = "\n".join(["| question | output | extracted | expected |", "|---|---|---|---|", *rows])
        self.logger.experiment.add_text(tag, table, global_step=step)

    def generate_replies(self, conversations: list[list[Message]], batch_size: int = 16) -> list[str]:
        """Greedy answers to conversations ending with a user turn (samples and the run report)."""
        collate = PromptCollator(self.tokenizer.pad_token_id)
        replies: list[str] = []
        was_training = self.model.training
        self.model.eval()
        for start in range(0, len(conversations), batch_size):
            chunk = conversations[start : start + batch_size]
            items = [
                {"prompt_ids": self.tokenizer(self.formatter.prompt_text(c), add_special_tokens=False)["input_ids"],
                 "question": c[-1]["content"], "expected": None, "kind": None}
                for c in chunk
            ]
            replies.extend(self._generate(collate(items)))
        self.model.train(was_training)
        return replies

    # -------------------------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Resuming needs the trainable LoRA weights, optimizer and schedule, never the frozen base.
        trainable = {name for name, p in self.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
        checkpoint["base_math_metrics"] = self.base_math_metrics
        checkpoint["train_progress"] = {
            "tokens": self.train_tokens_seen,
            "examples": self.train_examples_seen,
            "seconds": self.train_seconds,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.base_math_metrics = checkpoint.get("base_math_metrics")
        progress = checkpoint.get("train_progress", {})
        self.train_tokens_seen = progress.get("tokens", 0)
        self.train_examples_seen = progress.get("examples", 0)
        self.train_seconds = progress.get("seconds", 0.0)
