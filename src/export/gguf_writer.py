"""Export a merged transformers folder to one GGUF file that llama.cpp (and Ollama, LM Studio) run.

Keys, tensor names, shapes and storage types follow what llama.cpp's own converter writes for the
llama architecture (checked against the SmolLM2 GGUF that llama.cpp produced); gguf-py's
`GGUFWriter` does the file format.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import gguf
from transformers import AutoConfig, PretrainedConfig

from src.errors import ConfigurationError, ModelSourceError
from src.export.gguf_tensors import OUTTYPES, head_dim, llama_tensors, rope_parameters
from src.export.gguf_vocab import read_vocab

log = logging.getLogger(__name__)

SUPPORTED_ARCHITECTURES = {"LlamaForCausalLM": gguf.MODEL_ARCH.LLAMA}
"""transformers architectures that export, and the llama.cpp architecture each becomes (SmolLM2, Llama 3.x: llama)."""

SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")


def load_config(model_dir: Path) -> PretrainedConfig:
    """The folder's config, refused early when llama.cpp's llama graph could not run it."""
    if not (model_dir / "config.json").is_file():
        raise ModelSourceError(f"{model_dir / 'config.json'} is missing: export takes a folder written by save_pretrained")
    config = AutoConfig.from_pretrained(model_dir)
    architectures = list(getattr(config, "architectures", None) or [])
    if not architectures or architectures[0] not in SUPPORTED_ARCHITECTURES:
        raise ConfigurationError(
            f"{model_dir / 'config.json'}: architectures {architectures} cannot be exported to GGUF; "
            f"supported: {', '.join(SUPPORTED_ARCHITECTURES)} (the llama family: SmolLM2, Llama 3.x)"
        )
    rope_type = rope_parameters(config).get("rope_type", "default")
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ConfigurationError(
            f"{model_dir / 'config.json'}: rope_parameters.rope_type {rope_type!r} cannot be exported; "
            f"supported: {', '.join(SUPPORTED_ROPE_TYPES)}"
        )
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        raise ConfigurationError(
            f"{model_dir / 'config.json'}: attention_bias/mlp_bias are true; llama.cpp's llama architecture has no biases"
        )
    return config


def add_llama_hyperparameters(writer: gguf.GGUFWriter, config: PretrainedConfig) -> None:
    """`llama.*` keys, named and typed as llama.cpp's converter writes them."""
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads or config.num_attention_heads)
    rope = rope_parameters(config)
    writer.add_rope_freq_base(float(rope["rope_theta"]))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(config.vocab_size)
    writer.add_rope_dimension_count(head_dim(config))
    if head_dim(config) != config.hidden_size // config.num_attention_heads:
        # llama.cpp assumes hidden_size / heads unless these keys say otherwise.
        writer.add_key_length(head_dim(config))
        writer.add_value_length(head_dim(config))
    if rope.get("rope_type") == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))


def export_gguf(
    model_dir: str | os.PathLike,
    out_path: str | os.PathLike,
    outtype: str = "f16",
    name: str | None = None,
    tokenizer_pre: str | None = None,
) -> Path:
    """Write `out_path` from a merged transformers folder; returns the path.

    Args:
        model_dir: a folder from `save_pretrained` (config.json, safetensors, tokenizer.json).
        out_path: the .gguf file to write (replaced atomically; its folder is created).
        outtype: "f16" (the merged model's answers, half the size of fp32) or "q8_0" (8-bit, ~half of f16).
        name: `general.name`; default: the folder's name.
        tokenizer_pre: llama.cpp's pre-tokenizer name when it cannot be detected ("smollm", "llama-bpe", ...).
    """
    model_dir, out_path = Path(model_dir), Path(out_path)
    if outtype not in OUTTYPES:
        raise ConfigurationError(f"outtype {outtype!r} is not supported; choose one of {', '.join(OUTTYPES)}")
    config = load_config(model_dir)
    vocab = read_vocab(model_dir, config.vocab_size, tokenizer_pre)
    arch = gguf.MODEL_ARCH_NAMES[SUPPORTED_ARCHITECTURES[config.architectures[0]]]

    out_path.parent.mkdir(parents=True, exist_ok=True)
    scratch = out_path.with_name(f".{out_path.name}.partial")
    writer = gguf.GGUFWriter(scratch, arch)
    try:
        writer.add_type(gguf.GGUFType.MODEL)
        writer.add_name(name or model_dir.resolve().name)
        add_llama_hyperparameters(writer, config)
        writer.add_file_type(OUTTYPES[outtype])
        vocab.add_to(writer)
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        parameters = 0
        for tensor in llama_tensors(model_dir, config, outtype):
            writer.add_tensor(tensor.name, tensor.data, raw_dtype=tensor.qtype)
            parameters += tensor.parameters
        # "135M", as llama.cpp labels models from their parameter count.
        writer.add_size_label(gguf.size_label(parameters, 0, 0, 0))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    # A crash above leaves only the scratch file, never a half-written GGUF under the real name.
    scratch.replace(out_path)
    log.info("wrote %s (%s, %.1f MB)", out_path, outtype, out_path.stat().st_size / 1e6)
    return out_path
