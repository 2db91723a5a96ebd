"""4-bit and 8-bit frozen base weights (QLoRA) through bitsandbytes, and the checks that it can run here.

`model.quantization: nf4` stores each base linear weight as 4-bit NormalFloat with double-quantised
block scales (~0.52 byte a parameter instead of 2 in fp16); `int8` as LLM.int8() (1 byte). LoRA stays
fp32 on top, computing in the trainer's compute dtype.
"""

from __future__ import annotations

import importlib.util
from typing import Literal

import torch
from lightning.pytorch.utilities import rank_zero_info
from peft import prepare_model_for_kbit_training
from transformers import BitsAndBytesConfig, PreTrainedModel

from src.errors import ConfigurationError

Quantization = Literal["nf4", "int8"]
QUANTIZATIONS: tuple[str, ...] = ("nf4", "int8")
BITSANDBYTES_PIN = "bitsandbytes==0.50.2"
# Where this project runs bitsandbytes' 4-bit/8-bit layers and 8-bit optimizers (CUDA, and CPU since 0.50);
# its other backends (mps, xpu, ...) are partial and untested here.
BNB_DEVICE_TYPES = frozenset({"cuda", "cpu"})


def bitsandbytes_installed() -> bool:
    return importlib.util.find_spec("bitsandbytes") is not None


def check_bitsandbytes(key: str, value: str, device_type: str, fallback: str) -> None:
    """Raise one ConfigurationError, naming `key` and what to change, when bitsandbytes cannot run on
    `device_type` here (not installed, no native library for the device, or an unsupported device)."""
    if not bitsandbytes_installed():
        raise ConfigurationError(
            f"{key}: {value} needs the bitsandbytes package, which is not installed. "
            f"Install it (pip install {BITSANDBYTES_PIN}) or set {fallback}."
        )
    if device_type not in BNB_DEVICE_TYPES:
        raise ConfigurationError(
            f"{key}: {value} runs on CUDA GPUs and CPUs only, not on {device_type}. "
            f"Set trainer.accelerator: cpu or gpu, or set {fallback}."
        )
    from bitsandbytes import cextension

    if isinstance(cextension.lib, cextension.ErrorHandlerMockBNBNativeLibrary):
        raise ConfigurationError(
            f"{key}: {value}: bitsandbytes could not load its native library on this machine "
            f"(backend {cextension.BNB_BACKEND}). Reinstall it for this platform (pip install {BITSANDBYTES_PIN}) "
            f"or set {fallback}."
        )
    if device_type == "cuda" and cextension.BNB_BACKEND not in {"CUDA", "ROCm"}:
        raise ConfigurationError(
            f"{key}: {value}: this bitsandbytes build has no GPU kernels (backend {cextension.BNB_BACKEND}) "
            f"for torch {torch.__version__}. Install a CUDA build ({BITSANDBYTES_PIN}), train on the CPU "
            f"(trainer.accelerator: cpu), or set {fallback}."
        )


def check_quantization(quantization: str | None, device_type: str, gguf_file: str | None = None) -> None:
    """Every reason `model.quantization` cannot work here, as one ConfigurationError."""
    if quantization is None:
        return
    if quantization not in QUANTIZATIONS:
        raise ConfigurationError(
            f"model.quantization: {quantization!r} is not a known quantization; expected one of "
            f"{', '.join(QUANTIZATIONS)} or null."
        )
    if gguf_file is not None:
        raise ConfigurationError(
            f"model.quantization: {quantization} cannot requantise GGUF weights (model.gguf_file: {gguf_file}). "
            "Point model.model_name at a safetensors checkpoint, or set model.quantization: null."
        )
    check_bitsandbytes("model.quantization", quantization, device_type, "model.quantization: null")


def bnb_config(quantization: str | None, compute_dtype: torch.dtype) -> BitsAndBytesConfig | None:
    """transformers' BitsAndBytesConfig for `quantization`; 4-bit layers compute in `compute_dtype`."""
    if quantization is None:
        return None
    if quantization == "nf4":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            # Double quantisation stores the fp32 block scales in 8 bits: ~0.37 bit a parameter saved.
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype,
        )
    if quantization == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    raise ConfigurationError(
        f"model.quantization: {quantization!r}; expected one of {', '.join(QUANTIZATIONS)} or null."
    )


def is_quantized(model: torch.nn.Module) -> bool:
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))


def keep_4bit_layers_on_the_trainable_kernel(model: torch.nn.Module) -> list[str]:
    """Turn bitsandbytes' AVX512-BF16 inference path off for every 4-bit layer; returns their names.

    On a CPU with AVX512-BF16, bitsandbytes 0.50.2's `Linear4bit.forward` repacks a layer's weight for a
    faster kernel the first time the layer runs in eval mode without grad, deciding by the flag
    `support_avx512bf16_for_cpu` it read from `has_avx512bf16()` when the layer was built. The repacked
    layout is for inference only, but it stays: from then on `matmul_4bit` sends every call, training steps
    included, to `gemv_4bit`, which has no backward (with a bias it raises "a view of a leaf Variable that
    requires grad is being used in an in-place operation"; without one the gradient to the LoRA layers
    below is lost). A tutor answers questions before and between its training steps, so its 4-bit layers
    stay on the dequantise-and-matmul kernel every other CPU uses. The repacking also crashes on shapes
    it does not take (outputs not in multiples of 32: "shape '[32, 0]' is invalid"), which this avoids too.
    """
    if not bitsandbytes_installed():
        return []
    import bitsandbytes as bnb

    switched = []
    for name, module in model.named_modules():
        if isinstance(module, bnb.nn.Linear4bit) and getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False
            switched.append(name)
    if switched:
        # Said once a load, since it costs speed: only CPUs with AVX512-BF16 reach this.
        rank_zero_info(
            f"{len(switched)} 4-bit layers use bitsandbytes' plain CPU kernel: its AVX512-BF16 kernel repacks the "
            "weights for inference only, and a tutor trains after answering"
        )
    return switched


def prepare_for_kbit_training(model: PreTrainedModel, gradient_checkpointing: bool) -> int:
    """PEFT's k-bit preparation, minus its fp32 copies of the embedding and output head; returns the bytes
    that re-casting saved.

    `prepare_model_for_kbit_training` casts every non-quantised fp16/bf16 parameter to fp32. For the norms
    that is cheap and steadies training; for phi-2's embedding and separate output head it doubles
    0.49 GiB to 0.98 GiB (counted on the meta device by bench/memory_plan.py), a quarter of a 4 GB card.
    Under Lightning's mixed precision those matmuls run in the autocast dtype anyway, so the fp32 copies
    buy no precision: they are cast back to the dtype they were loaded in.
    """
    loaded = {name: p.dtype for name, p in model.named_parameters()}
    prepare_model_for_kbit_training(
        model,
        use_gradient_checkpointing=gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
    )
    saved = 0
    embeddings = [model.get_input_embeddings(), model.get_output_embeddings()]
    for name, module in model.named_modules():
        if not any(module is e for e in embeddings if e is not None):
            continue
        for param_name, param in module.named_parameters(prefix=name, recurse=False):
            dtype = loaded.get(param_name)
            if dtype is not None and param.dtype != dtype:
                saved += param.numel() * (param.element_size() - torch.finfo(dtype).bits // 8)
                param.data = param.data.to(dtype)
    return saved
