"""QLoRA on CPU with bitsandbytes: nf4 and int8 base models hold bitsandbytes layers, keep their embeddings
in the loaded dtype, train LoRA with finite gradients, save and reload adapters; every setting that cannot
run here is refused with one message saying what to change."""

from __future__ import annotations

import json
from pathlib import Path

import bitsandbytes as bnb
import pytest
import torch
from bitsandbytes import cextension
from safetensors import safe_open

import src.models.loading as loading
import src.models.quantization as quantization
from src.errors import ConfigurationError
from src.models.loading import load_base_model
from src.models.lora import attach_lora, keep_trainable_in_float32
from src.models.quantization import bnb_config, check_quantization, is_quantized, prepare_for_kbit_training
from tiny_llamas import NF4_SHAPES, save_tiny_llama

ARCHITECTURES = Path(__file__).parents[3] / "configs" / "architectures"
SMALL = {  # the shipped architectures at a few thousand parameters (hidden 64: one nf4 block per row)
    "phi-2": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=4, vocab_size=512),
    "gpt2-xl": dict(n_embd=64, n_layer=2, n_head=4, vocab_size=512),
    "llama-3.2-1b": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=16, vocab_size=512),
}
LAYER = {"nf4": bnb.nn.Linear4bit, "int8": bnb.nn.Linear8bitLt}


def quantized_tiny(model_dir: Path, kind: str, dtype: torch.dtype = torch.float32):
    return load_base_model(str(model_dir), dtype=dtype, quantization=kind)


@pytest.mark.parametrize("kind", ["nf4", "int8"])
def test_every_projection_loads_as_a_bitsandbytes_layer_and_the_head_does_not(tiny_nf4_model_dir: Path, kind: str) -> None:
    model = quantized_tiny(tiny_nf4_model_dir, kind)
    projections = {n: m for n, m in model.named_modules() if n.endswith("_proj")}
    assert len(projections) == 2 * 7
    assert all(isinstance(m, LAYER[kind]) for m in projections.values())
    assert not isinstance(model.get_output_embeddings(), (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt))
    assert is_quantized(model)
    assert not any(p.requires_grad for p in model.parameters())


def test_nf4_is_double_quantised_and_computes_in_the_configured_dtype(tiny_nf4_model_dir: Path) -> None:
    model = quantized_tiny(tiny_nf4_model_dir, "nf4", dtype=torch.bfloat16)
    layer = model.model.layers[0].self_attn.q_proj
    state = layer.weight.quant_state
    assert state.quant_type == "nf4"
    assert state.nested  # the block scales are themselves quantised
    assert layer.compute_dtype == torch.bfloat16
    assert model.get_input_embeddings().weight.dtype == torch.bfloat16


@pytest.mark.parametrize("name", sorted(SMALL))
def test_random_architectures_quantise_too(name: str) -> None:
    model = load_base_model(
        "unused", random_init=True, architecture=str(ARCHITECTURES / f"{name}.json"),
        architecture_overrides=SMALL[name], quantization="nf4",
    )
    kinds = json.loads((ARCHITECTURES / f"{name}.json").read_text())["model_type"]
    assert type(model).__name__.lower().startswith(kinds)
    # GPT-2's Conv1D projections become Linear4bit as well.
    expected = {"phi-2": 12, "gpt2-xl": 8, "llama-3.2-1b": 14}[name]  # projections per layer x 2 layers
    assert sum(isinstance(m, bnb.nn.Linear4bit) for m in model.modules()) == expected


def test_preparation_keeps_embedding_and_head_in_the_loaded_dtype_and_norms_in_float32(tiny_nf4_model_dir: Path) -> None:
    model = quantized_tiny(tiny_nf4_model_dir, "nf4", dtype=torch.bfloat16)
    embedding, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    saved = prepare_for_kbit_training(model, gradient_checkpointing=False)
    assert embedding.dtype == head.dtype == torch.bfloat16
    # PEFT had made fp32 copies (4 bytes) of both; casting back saves 2 bytes a parameter.
    assert saved == 2 * (embedding.numel() + head.numel())
    assert model.model.norm.weight.dtype == torch.float32
    assert not model.is_gradient_checkpointing


def test_preparation_turns_gradient_checkpointing_on_only_when_asked(tiny_nf4_model_dir: Path) -> None:
    model = quantized_tiny(tiny_nf4_model_dir, "nf4")
    prepare_for_kbit_training(model, gradient_checkpointing=True)
    assert model.is_gradient_checkpointing


@pytest.mark.parametrize("kind", ["nf4", "int8"])
@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "checkpointed"])
def test_lora_on_a_quantised_base_gets_finite_gradients_and_only_lora_trains(
    tiny_nf4_model_dir: Path, kind: str, checkpointing: bool
) -> None:
    base = quantized_tiny(tiny_nf4_model_dir, kind)
    prepare_for_kbit_training(base, gradient_checkpointing=checkpointing)
    model = attach_lora(base, r=4, alpha=8, dropout=0.0, target_modules="all-linear")
    keep_trainable_in_float32(model)
    model.train()
    ids = torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(0))
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    assert torch.isfinite(loss)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in trainable.values())
    assert any(p.grad.abs().sum() > 0 for p in trainable.values())


def test_an_adapter_trained_on_nf4_saves_and_reloads_onto_a_fresh_nf4_base(
    tiny_nf4_model_dir: Path, tmp_path: Path
) -> None:
    model = attach_lora(quantized_tiny(tiny_nf4_model_dir, "nf4"), r=4, alpha=8, dropout=0.0, target_modules="all-linear")
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter)
    model.save_pretrained(tmp_path)
    reloaded = attach_lora(quantized_tiny(tiny_nf4_model_dir, "nf4"), r=4, alpha=8, dropout=0.0,
                           target_modules="all-linear", adapter_path=str(tmp_path))
    with safe_open(tmp_path / "adapter_model.safetensors", "pt") as saved:
        assert saved.keys() and all("lora_" in key for key in saved.keys())  # no quantised base weight
    ids = torch.randint(0, 100, (1, 8), generator=torch.Generator().manual_seed(1))
    model.eval(), reloaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, model(input_ids=ids).logits)
        with model.disable_adapter():
            base_logits = model(input_ids=ids).logits
    assert not torch.allclose(base_logits, model(input_ids=ids).logits)  # the adapter changes the answer


def test_bnb_config_for_each_setting() -> None:
    assert bnb_config(None, torch.float16) is None
    nf4 = bnb_config("nf4", torch.float16)
    assert (nf4.load_in_4bit, nf4.bnb_4bit_quant_type, nf4.bnb_4bit_use_double_quant) == (True, "nf4", True)
    assert nf4.bnb_4bit_compute_dtype == torch.float16
    assert bnb_config("int8", torch.float16).load_in_8bit


# ------------------------------------------------------------------------------------ refusals
def test_without_bitsandbytes_the_message_says_install_it_or_turn_quantization_off(monkeypatch) -> None:
    monkeypatch.setattr(quantization, "bitsandbytes_installed", lambda: False)
    with pytest.raises(ConfigurationError) as error:
        check_quantization("nf4", "cpu")
    assert str(error.value) == (
        "model.quantization: nf4 needs the bitsandbytes package, which is not installed. "
        "Install it (pip install bitsandbytes==0.50.2) or set model.quantization: null."
    )


def test_a_device_without_bitsandbytes_kernels_is_refused() -> None:
    with pytest.raises(ConfigurationError) as error:
        check_quantization("int8", "mps")
    assert str(error.value) == (
        "model.quantization: int8 runs on CUDA GPUs and CPUs only, not on mps. "
        "Set trainer.accelerator: cpu or gpu, or set model.quantization: null."
    )


def test_a_bitsandbytes_without_its_native_library_is_refused(monkeypatch) -> None:
    monkeypatch.setattr(cextension, "lib", cextension.ErrorHandlerMockBNBNativeLibrary("no library"))
    with pytest.raises(ConfigurationError, match=r"^model.quantization: nf4: bitsandbytes could not load its native "
                       r"library on this machine \(backend \w+\)\. Reinstall it for this platform \(pip install "
                       r"bitsandbytes==0\.50\.2\) or set model\.quantization: null\.$"):
        check_quantization("nf4", "cpu")


def test_a_cpu_only_bitsandbytes_on_a_gpu_is_refused(monkeypatch) -> None:
    monkeypatch.setattr(cextension, "BNB_BACKEND", "CPU")
    with pytest.raises(ConfigurationError, match=r"^model.quantization: nf4: this bitsandbytes build has no GPU "
                       r"kernels \(backend CPU\)"):
        check_quantization("nf4", "cuda")


def test_unknown_quantization_and_gguf_weights_are_refused() -> None:
    with pytest.raises(ConfigurationError, match=r"^model.quantization: 'fp4' is not a known quantization; "
                       r"expected one of nf4, int8 or null\.$"):
        check_quantization("fp4", "cpu")
    with pytest.raises(ConfigurationError, match=r"^model.quantization: nf4 cannot requantise GGUF weights "
                       r"\(model.gguf_file: m.gguf\)"):
        check_quantization("nf4", "cpu", gguf_file="m.gguf")


def test_no_quantization_needs_nothing() -> None:
    check_quantization(None, "mps")


# --- bitsandbytes' AVX512-BF16 inference path ---------------------------------------------------------------
@pytest.fixture
def avx512bf16_layers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every Linear4bit built from here on takes the AVX512-BF16 decision, as on a CPU that has it: the flag
    is read from `has_avx512bf16()` in the layer's constructor."""
    monkeypatch.setattr(bnb.nn.modules, "has_avx512bf16", lambda: True)


@pytest.fixture
def biased_nf4_model_dir(tiny_tokenizer, tmp_path: Path) -> Path:
    """Shapes the AVX512-BF16 repacking takes, with biased attention projections as phi-2 has."""
    return save_tiny_llama(tmp_path, tiny_tokenizer, random_norms=False, attention_bias=True, **NF4_SHAPES)


def answer_then_train(model_dir: Path) -> torch.nn.Module:
    """A 4-bit tutor answers once (eval, no grad), then takes a training forward and backward."""
    model = attach_lora(quantized_tiny(model_dir, "nf4"), r=4, alpha=8, dropout=0.0, target_modules="all-linear")
    keep_trainable_in_float32(model)
    ids = torch.randint(0, 100, (2, 9), generator=torch.Generator().manual_seed(2))
    model.eval()
    with torch.no_grad():
        model(input_ids=ids)
    model.train()
    model(input_ids=ids, labels=ids).loss.backward()
    return model


@pytest.mark.skipif(not bnb.functional.has_avx512bf16(), reason="shows bitsandbytes' own AVX512-BF16 kernel at work")
def test_without_the_guard_a_4bit_layer_cannot_train_once_it_has_answered(biased_nf4_model_dir: Path, monkeypatch) -> None:
    # Why the guard exists: the first answer repacks the weights for an inference-only kernel, and they stay so.
    monkeypatch.setattr(loading, "keep_4bit_layers_on_the_trainable_kernel", lambda model: [])
    with pytest.raises(RuntimeError, match="in-place operation"):
        answer_then_train(biased_nf4_model_dir)


def test_no_4bit_layer_keeps_the_avx512_inference_path(tiny_nf4_model_dir: Path, avx512bf16_layers) -> None:
    model = quantized_tiny(tiny_nf4_model_dir, "nf4")
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(layers) == 14
    assert not any(m.support_avx512bf16_for_cpu for m in layers)


def test_a_4bit_tutor_trains_after_answering_on_an_avx512_bf16_cpu(biased_nf4_model_dir: Path, avx512bf16_layers) -> None:
    model = answer_then_train(biased_nf4_model_dir)
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert not any(getattr(m.weight.quant_state, "packing_format_for_cpu", False) for m in layers)
    lora = {n: p for n, p in model.named_parameters() if "lora_B" in n}  # A gets none while B is 0
    assert len(lora) == 14
    # Every adapter gets a gradient, the first layer's too: the backward ran through every 4-bit layer above it.
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora.values())


def test_unpackable_shapes_answer_as_on_a_cpu_without_avx512(tiny_tokenizer, tmp_path: Path, monkeypatch) -> None:
    # hidden 32, intermediate 48: shapes the AVX512-BF16 repacking would crash on.
    folder = save_tiny_llama(tmp_path, tiny_tokenizer, random_norms=False, intermediate_size=48)
    ids = torch.randint(0, 100, (2, 9), generator=torch.Generator().manual_seed(2))
    plain = quantized_tiny(folder, "nf4").eval()
    monkeypatch.setattr(bnb.nn.modules, "has_avx512bf16", lambda: True)
    forced = quantized_tiny(folder, "nf4").eval()
    with torch.no_grad():
        torch.testing.assert_close(forced(input_ids=ids).logits, plain(input_ids=ids).logits)
