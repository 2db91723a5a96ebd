"""A stand-in tutor module for the callback tests: a tiny random Llama with LoRA, scripted math scores.

It honours the contract the callbacks rely on (`model`, `tokenizer`, `answerer`,
`base_math_metrics`, `progress` and the logged metric keys)
without any download, so each Trainer run takes a second or two on a CPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace
from torch.utils.data import DataLoader
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from src.training.progress import TrainProgress

TINY_LLAMA = {
    "vocab_size": 64,
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
}
BATCHES_PER_EPOCH = 4  # 8 rows, batch size 2


def make_tokenizer() -> PreTrainedTokenizerFast:
    """A 64-word WordLevel tokenizer built in memory (no download), saveable with save_pretrained."""
    words = ["[PAD]", "[UNK]", "</s>", "+", "-", "*", "=", "?"] + [str(i) for i in range(56)]
    model = WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]")
    backend = Tokenizer(model)
    backend.pre_tokenizer = Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]", eos_token="</s>")


def make_base(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**TINY_LLAMA))


def make_peft(base: LlamaForCausalLM) -> PeftModel:
    return get_peft_model(base, LoraConfig(r=2, lora_alpha=4, lora_dropout=0.0, target_modules=["q_proj", "v_proj"]))


def lora_state(model: PeftModel) -> dict[str, torch.Tensor]:
    """The adapter weights as PEFT saves them, detached copies."""
    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}


class StandInTutor(LightningModule):
    """Trains the LoRA adapter for real; validation math scores come from a script keyed by step."""

    def __init__(
        self,
        math_acc_by_step: dict[int, float],
        base_acc: float = 0.1,
        val_loss_by_step: dict[int, float] | None = None,
    ) -> None:
        super().__init__()
        self.math_acc_by_step = math_acc_by_step
        self.base_acc = base_acc
        self.val_loss_by_step = val_loss_by_step
        self.model: PeftModel | None = None
        self.tokenizer = make_tokenizer()
        self.base_math_metrics: dict[str, float] | None = None
        self.progress = TrainProgress()
        self.math_sets = ["val"]
        self.generate_calls: list[list[list[dict[str, str]]]] = []
        self.generate_autocast: list[torch.dtype | None] = []  # the CPU autocast dtype in force at each call
        g = torch.Generator().manual_seed(1)
        self.rows = torch.randint(3, TINY_LLAMA["vocab_size"], (2 * BATCHES_PER_EPOCH, 12), generator=g)

    def configure_model(self) -> None:
        if self.model is None:
            self.model = make_peft(make_base())

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.rows, batch_size=2)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.rows[:2], batch_size=2)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW([p for p in self.parameters() if p.requires_grad], lr=1e-2)

    def on_train_start(self) -> None:
        self.base_math_metrics = {"val/math_acc": self.base_acc, "val/math_acc_strict": self.base_acc}

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        loss = self.model(input_ids=batch, labels=batch).loss
        self.progress.tokens += batch.numel()
        self.progress.examples += batch.shape[0]
        self.log("train/loss", loss)
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"])
        self.log("train/tokens_per_sec", 1000.0)
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        self.log("train/grad_norm", torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        loss = self.model(input_ids=batch, labels=batch).loss
        if self.val_loss_by_step is not None:
            loss = torch.tensor(self.val_loss_by_step.get(self.global_step, 5.0))
        self.log("val/loss", loss)
        self.log("val/ppl", torch.exp(loss))

    def on_validation_epoch_end(self) -> None:
        acc = self.base_acc if self.global_step == 0 else self.math_acc_by_step.get(self.global_step, 0.0)
        self.log_dict({"val/math_acc": acc, "val/math_acc_strict": acc * 0.5, "val/math_acc/add_2d": acc})

    @property
    def answerer(self) -> CannedAnswerer:
        return CannedAnswerer(self.generate_calls, self.generate_autocast)


class CannedAnswerer:
    """Answers every conversation with a numbered canned reply and records what it was asked."""

    def __init__(self, calls: list, autocast_dtypes: list) -> None:
        self.calls = calls
        self.autocast_dtypes = autocast_dtypes

    def reply(self, conversations: list[list[dict[str, str]]], batch_size: int = 16) -> list[str]:
        self.calls.append(conversations)
        self.autocast_dtypes.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
        return [f"canned reply {i}" for i in range(len(conversations))]


class LoraSnapshots(Callback):
    """Copies the adapter weights after every validation, keyed by global step."""

    def __init__(self) -> None:
        self.by_step: dict[int, dict[str, torch.Tensor]] = {}

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:
            self.by_step[trainer.global_step] = lora_state(pl_module.model)


def make_trainer(root: Path, callbacks: list[Callback], max_steps: int = 6, **kwargs: Any) -> Trainer:
    """A CPU Trainer that validates every 2 steps and logs every step to TensorBoard under `root`."""
    options: dict[str, Any] = {
        "max_steps": max_steps,
        "accelerator": "cpu",
        "devices": 1,
        "logger": TensorBoardLogger(root / "tb_logs"),
        "default_root_dir": root,
        "callbacks": callbacks,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "val_check_interval": 2,
        "log_every_n_steps": 1,
        "num_sanity_val_steps": 1,
    }
    return Trainer(**{**options, **kwargs})


def same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
