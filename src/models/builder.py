"""The one way to assemble a tutor model: tokenizer, base weights, quantisation, LoRA, compile.

The training module, the tools and the benchmarks all call `build_tutor_model`, so a model measured
by a benchmark is the model a run trains.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
from lightning.pytorch.utilities import rank_zero_info
from peft import PeftModel
from transformers import PreTrainedTokenizerBase

from src.data.chat_format import ChatFormatter
from src.models.attention import SDPA_MATH, check_attn_implementation
from src.models.compile import compile_repeated_blocks
from src.models.loading import check_vocabulary_fits, load_base_model
from src.models.lora import attach_lora, check_lora_options, count_parameters, keep_trainable_in_float32
from src.models.optimizers import check_optimizer
from src.models.packing import check_packing_support
from src.models.quantization import check_quantization, prepare_for_kbit_training
from src.models.settings import LoraSettings, OptimizerSettings, settings_of
from src.sources.checks import check_adapter, refuse_pickle
from src.sources.offline_default import OFFLINE_DEFAULT, cache_folder
from src.sources.tokenizer import load_tokenizer


class TutorModel(NamedTuple):
    """What a tutor is made of: the PEFT model, its tokenizer and the prompt format it was trained with."""

    model: PeftModel
    tokenizer: PreTrainedTokenizerBase
    formatter: ChatFormatter


def check_sources(settings: Mapping[str, Any]) -> None:
    """File checks that cost nothing, done when the config is read: a pickle path or an adapter trained on
    another base model fails before anything runs or is written."""
    for key in ("model_name", "tokenizer_name", "architecture"):
        refuse_pickle(f"model.{key}", settings[key])
    if settings["adapter_path"] is not None:
        # Random weights record no base model worth comparing; the offline default is known by its cache
        # folder (not created here: that takes ~20 s on first use).
        name = settings["model_name"]
        source = None if settings["random_init"] else str(cache_folder()) if name == OFFLINE_DEFAULT else name
        check_adapter(settings["adapter_path"], name, source)


def build_tutor_model(settings: Mapping[str, Any], device: torch.device, dtype: torch.dtype) -> TutorModel:
    """Assemble the model `settings` (the training module's hyperparameters) describe, on `device`,
    with frozen base weights in `dtype` and trainable LoRA weights in float32."""
    s = settings
    lora, optimizer = settings_of(LoraSettings, s["lora"]), settings_of(OptimizerSettings, s["optimizer"])
    check_attn_implementation(s["attn_implementation"])
    if s.get("train_attn_implementation") != SDPA_MATH:
        check_attn_implementation(s.get("train_attn_implementation"), "model.train_attn_implementation")
    check_quantization(s["quantization"], device.type, s["gguf_file"])
    check_optimizer(optimizer.name, device.type, optimizer.loraplus_lr_ratio)
    check_lora_options(lora.init, lora.use_dora, s["quantization"])
    tokenizer = load_tokenizer(s["model_name"], s["gguf_file"], s["tokenizer_name"])
    base = load_base_model(
        s["model_name"], s["gguf_file"], s["random_init"], s["architecture"], s["architecture_overrides"],
        dtype=dtype, seed=s["seed"], attn_implementation=s["attn_implementation"],
        quantization=s["quantization"], device=device,
    )
    check_vocabulary_fits(base, tokenizer)
    if s["quantization"] is not None:
        saved = prepare_for_kbit_training(base, s["gradient_checkpointing"])
        kept = str(dtype).removeprefix("torch.")
        rank_zero_info(
            f"{s['quantization']} base weights; embedding and head in {kept}"
            + (f" ({saved / 2**20:.0f} MiB less than PEFT's float32 copies)" if saved else "")
        )
    elif s["gradient_checkpointing"]:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = attach_lora(
        base, lora.r, lora.alpha, lora.dropout, lora.target_modules, s["adapter_path"], lora.layers,
        use_rslora=lora.use_rslora, use_dora=lora.use_dora, init_lora_weights=lora.init,
    )
    keep_trainable_in_float32(model)
    model.train()  # from_pretrained returns eval mode; Lightning switches modes per stage from here
    if s["packing"]:
        check_packing_support(model)
    if s["compile"]:
        compile_repeated_blocks(model)
    formatter = ChatFormatter(tokenizer, s["system_prompt"], s["chat_template"])
    # Saved with every adapter: plain `AutoTokenizer` + `apply_chat_template` then renders the training prompt.
    tokenizer.chat_template = formatter.standalone_template()
    trainable, total = count_parameters(model)
    rank_zero_info(f"Trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.2f}%)")
    return TutorModel(model, tokenizer, formatter)
