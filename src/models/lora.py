"""Attach LoRA to a frozen base model, or load a trained adapter onto it."""

from __future__ import annotations

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import PreTrainedModel
from transformers.pytorch_utils import Conv1D

from src.errors import ConfigurationError


def attach_lora(
    model: PreTrainedModel,
    r: int,
    alpha: int,
    dropout: float,
    target_modules: list[str] | str,
    adapter_path: str | None = None,
    layers: list[int] | None = None,
) -> PeftModel:
    """A fresh trainable adapter, or the adapter saved at `adapter_path` (trainable, to continue).

    `target_modules="all-linear"` is PEFT's own search for every linear layer except the output
    head (seed 004's `find_all_linear_names`), including GPT-2's Conv1D projections. `layers`
    restricts LoRA to those decoder layers: with only the upper layers adapted, backward stops there
    and a CPU step costs noticeably less.
    """
    if adapter_path is not None:
        try:
            return PeftModel.from_pretrained(model, adapter_path, is_trainable=True)
        except RuntimeError as error:
            if "size mismatch" not in str(error):
                raise
            # The adapter records no base model, or one under a name that matched: its shapes still differ.
            raise ConfigurationError(
                f"model.adapter_path: the adapter {adapter_path} does not fit {model.name_or_path or type(model).__name__} "
                f"(its weight shapes differ: an adapter only fits the base model it was trained on). Set "
                "model.model_name to that base model, or use an adapter trained on this one."
            ) from error
    if layers is not None and target_modules == "all-linear":
        # PEFT refuses `layers_to_transform` with the "all-linear" shorthand: spell the names out.
        target_modules = linear_module_names(model)
    config = LoraConfig(
        task_type="CAUSAL_LM",
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target_modules,
        layers_to_transform=layers,
    )
    return get_peft_model(model, config)


def linear_module_names(model: PreTrainedModel) -> list[str]:
    """Names of every linear projection (GPT-2's Conv1D included) except the output head."""
    head = model.get_output_embeddings()
    return sorted(
        {
            name.rsplit(".", 1)[-1]
            for name, module in model.named_modules()
            if isinstance(module, (torch.nn.Linear, Conv1D)) and module is not head
        }
    )


def count_parameters(model: PeftModel) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def keep_trainable_in_float32(model: torch.nn.Module) -> None:
    """LoRA weights (and so their gradients and optimizer state) in float32 whatever the base dtype:
    bf16/fp16 updates of lr × gradient round away against weights of much larger magnitude."""
    for parameter in model.parameters():
        if parameter.requires_grad and parameter.dtype != torch.float32:
            parameter.data = parameter.data.float()
