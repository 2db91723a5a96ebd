"""A config's base model in float32 with a fresh LoRA adapter of the config's rank, for benchmarks that
time pieces of a step or a measurement outside the trainer (no Lightning loop, no data module)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import yaml
from peft import PeftModel

from src.data.chat_format import ChatFormatter
from src.models.loading import load_base_model
from src.models.lora import attach_lora
from src.models.settings import LoraSettings, settings_of
from src.sources.tokenizer import load_tokenizer


@dataclass(frozen=True)
class ConfigModel:
    model_args: dict[str, Any]
    data_args: dict[str, Any]
    formatter: ChatFormatter
    model: PeftModel


def load_config_model(config_path: str) -> ConfigModel:
    """The config's model with its prompt format; LoRA dropout off so repeated timings see the same graph."""
    config = yaml.safe_load(open(config_path, encoding="utf-8"))
    model_args, data_args = config["model"], config.get("data", {})
    tokenizer = load_tokenizer(model_args["model_name"])
    formatter = ChatFormatter(tokenizer, data_args.get("system_prompt"), data_args.get("chat_template"))
    adapter = settings_of(LoraSettings, model_args.get("lora"))
    model = attach_lora(load_base_model(model_args["model_name"], dtype=torch.float32), r=adapter.r,
                        alpha=adapter.alpha, dropout=0.0, target_modules=adapter.target_modules)
    return ConfigModel(model_args, data_args, formatter, model)
