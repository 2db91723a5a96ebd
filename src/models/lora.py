"""Attach LoRA to a frozen base model, or load a trained adapter onto it."""

from __future__ import annotations

from peft import LoraConfig, PeftModel, get_peft_model
from transformers import PreTrainedModel


def attach_lora(
    model: PreTrainedModel,
    r: int,
    alpha: int,
    dropout: float,
    target_modules: list[str] | str,
    adapter_path: str | None = None,
) -> PeftModel:
    """A fresh trainable adapter, or the adapter saved at `adapter_path` (trainable, to continue).

    `target_modules="all-linear"` is PEFT's own search for every linear layer except the output
    head (seed 004's `find_all_linear_names`), including GPT-2's Conv1D projections.
    """
    if adapter_path is not None:
        return PeftModel.from_pretrained(model, adapter_path, is_trainable=True)
    config = LoraConfig(
        task_type="CAUSAL_LM", r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules
    )
    return get_peft_model(model, config)


def count_parameters(model: PeftModel) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
