"""Estimate a run's peak memory before loading a single weight, from the model built on the meta device.

Components (bytes, per process):
- weights: every base parameter in its stored form: nf4 ≈ 0.52 byte a parameter (4-bit codes, one 8-bit
  scale per 64 weights, one fp32 scale per 256 of those), int8 1 byte + an fp32 scale a row, else the
  load dtype; PEFT's k-bit preparation keeps norms in fp32.
- lora, grads: the adapter in fp32 and one fp32 gradient per adapter weight.
- optimizer: AdamW's two fp32 moments (8 bytes a parameter); 8-bit AdamW 2 bytes (+ block scales) for
  tensors of 4,096 elements or more, 8 bytes below that (bitsandbytes' `min_8bit_size`).
- activations: what autograd saves for backward in one forward of batch × length tokens, measured by
  running that forward on meta tensors (no memory, no compute) with a hook on every saved tensor, so each
  architecture's own layout is counted, not a rule of thumb. Attention is counted as flash/SDPA kernels
  keep it (q, k, v, output, log-sum-exp: linear in length), or with the full score matrix for "eager"
  and for SDPA's math path (CPU with attention dropout). With gradient checkpointing each decoder layer
  keeps only its input, and one layer's activations live again while it is recomputed in backward.
- layer_backward: one layer's working set in backward (the recomputed layer under checkpointing, plus
  the gradients of its largest tensor and of that tensor's input).
- logits: the fp32 log-probabilities of every position (the loss keeps them for backward) plus their
  gradient and the gradient of the logits, alive together at the start of backward.
- generation: the KV cache of a validation batch (prompt + new tokens), the prompt's logits and one
  layer's largest intermediate.

Not counted: the CUDA context and allocator fragmentation (the callback leaves a margin for them), and
the autocast copies of activations under mixed precision (activations are counted in the compute dtype).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from peft import PeftModel
from transformers import AttentionInterface, AutoModelForCausalLM, PretrainedConfig
from transformers.pytorch_utils import Conv1D

from src.models.attention import SDPA_MATH
from src.models.lora import attach_lora

GIB = 1024**3
NF4_BLOCK = 64  # weights per 4-bit block (one absmax each)
NESTED_BLOCK = 256  # absmax values per double-quantisation block (one fp32 scale each)
BNB_MIN_8BIT_SIZE = 4096  # smaller tensors keep 32-bit optimizer state
BNB_OPTIMIZER_BLOCK = 256  # elements per block-wise 8-bit optimizer scale
TRACE_ATTENTION = "tutor_tune_memory_trace"
TRACE_MATH_ATTENTION = "tutor_tune_memory_trace_math"


@dataclass(frozen=True)
class RunShape:
    """The settings of a run that decide its memory."""

    batch_size: int
    max_length: int
    dtype: torch.dtype = torch.float32
    quantization: str | None = None
    gradient_checkpointing: bool = False
    optimizer: str = "adamw"
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    target_modules: list[str] | str = "all-linear"
    lora_layers: list[int] | None = None
    attn_implementation: str | None = None
    eval_batch_size: int = 8
    max_new_tokens: int = 32
    device_type: str = "cuda"


@dataclass
class MemoryEstimate:
    """Estimated bytes per component; `training` and `generation` are the two phases' peaks."""

    components: dict[str, int] = field(default_factory=dict)
    trainable_parameters: int = 0
    total_parameters: int = 0

    @property
    def training(self) -> int:
        """Peak of a training step: the kept activations plus the larger of the loss's logits (alive at
        the start of backward) and one layer's backward working set (later, once the logits are freed)."""
        c = self.components
        static = c["weights"] + c["lora"] + c["grads"] + c["optimizer"] + c["activations"]
        return static + max(c["logits"], c["layer_backward"])

    @property
    def generation(self) -> int:
        return sum(self.components[n] for n in ("weights", "lora", "optimizer", "generation"))

    @property
    def peak(self) -> int:
        return max(self.training, self.generation)


def meta_model(config: PretrainedConfig, dtype: torch.dtype, attn_implementation: str | None = None):
    """The architecture with parameters on the meta device: shapes and dtypes, no memory."""
    attn = {"attn_implementation": attn_implementation} if attn_implementation else {}
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, **attn)
    return model.requires_grad_(False)


def quantizable_linears(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The layers transformers' bitsandbytes integration replaces: every linear/Conv1D but the output head."""
    head = model.get_output_embeddings()
    return [m for m in model.modules() if isinstance(m, (torch.nn.Linear, Conv1D)) and m is not head]


def quantized_weight_bytes(numel: int, rows: int, quantization: str) -> int:
    if quantization == "nf4":
        blocks = math.ceil(numel / NF4_BLOCK)
        # Codes, 8-bit block scales, their fp32 scales, and each layer's copies of the 16-value NF4 and
        # 256-value scale code tables (fp32).
        return math.ceil(numel / 2) + blocks + 4 * math.ceil(blocks / NESTED_BLOCK) + 4 * (16 + 256)
    if quantization == "int8":
        return numel + 4 * rows
    raise ValueError(f"unknown quantization {quantization!r}")


def weight_bytes(model: torch.nn.Module, quantization: str | None, dtype: torch.dtype) -> int:
    """Bytes of the frozen base model as loaded (and, when quantised, as PEFT's preparation leaves it)."""
    size = torch.empty((), dtype=dtype).element_size()
    quantized: set[int] = set()
    total = 0
    if quantization is not None:
        for layer in quantizable_linears(model):
            weight = layer.weight
            rows = weight.shape[1] if isinstance(layer, Conv1D) else weight.shape[0]
            total += quantized_weight_bytes(weight.numel(), rows, quantization)
            quantized.add(id(weight))
    embeddings = {id(m.weight) for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None}
    for parameter in model.parameters():  # tied weights are listed once
        if id(parameter) in quantized:
            continue
        # k-bit preparation leaves norms and biases in fp32; embedding and head are cast back (quantization.py).
        kept = 4 if quantization is not None and id(parameter) not in embeddings else size
        total += parameter.numel() * kept
    return total


def optimizer_state_bytes(shapes: list[int], optimizer: str) -> int:
    if optimizer in {"adamw_8bit", "paged_adamw_8bit"}:
        return sum(
            2 * n + 2 * 4 * math.ceil(n / BNB_OPTIMIZER_BLOCK) if n >= BNB_MIN_8BIT_SIZE else 8 * n for n in shapes
        )
    return sum(8 * n for n in shapes)


def _flash_like_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Attention for the meta trace that saves what flash/SDPA kernels save: q, k, v, output and log-sum-exp."""
    return _SavedAttention.apply(query, key, value, False, 0.0), None


def _math_like_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Attention for the meta trace that saves what SDPA's math path saves: the (T, T) probabilities too."""
    return _SavedAttention.apply(query, key, value, True, dropout), None


class _SavedAttention(torch.autograd.Function):
    # Hand-written because meta tensors cannot run transformers' mask logic for the stock kernels; this
    # reproduces only what each kernel keeps for backward.
    @staticmethod
    def forward(ctx, query, key, value, math_path: bool, dropout: float):  # (B, heads, T, d) each
        out = query.new_empty(query.shape).transpose(1, 2)  # (B, T, heads, d), as transformers expects
        kept = [query, key, value, out]
        if math_path:
            probs = query.new_empty(*query.shape[:-1], key.shape[-2])  # (B, heads, T, T)
            kept.append(probs)
            if dropout > 0:
                kept += [probs.new_empty(probs.shape, dtype=torch.bool), torch.empty_like(probs)]  # mask, dropped
        else:
            kept.append(query.new_empty(query.shape[:-1], dtype=torch.float32))  # log-sum-exp (B, heads, T)
        ctx.save_for_backward(*kept)
        return out

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("the memory-plan attention exists to count what forward saves on meta tensors; it has no backward")


AttentionInterface.register(TRACE_ATTENTION, _flash_like_attention)
AttentionInterface.register(TRACE_MATH_ATTENTION, _math_like_attention)


@dataclass(frozen=True)
class ActivationTrace:
    """Bytes autograd saves in one forward, by where they were saved."""

    outside: int  # embeddings, final norm: outside the decoder layers
    layers: int  # all decoder layers together
    largest_layer: int
    largest_tensor: int  # the largest single tensor a layer saves
    layer_input: int  # the hidden states entering one layer (what checkpointing keeps)


def trace_activations(model: PeftModel, shape: RunShape) -> ActivationTrace:
    """What autograd saves in one forward of `shape`'s batch, from a forward on meta tensors."""
    base = model.get_base_model()
    params = {id(p) for p in model.parameters()}
    layers = [m for m in base.modules() if type(m).__name__ in set(base._no_split_modules or ())]
    quantized = set(map(id, quantizable_linears(base))) if shape.quantization else set()
    saved: dict[int, tuple[torch.Tensor, int | None]] = {}
    where: list[int | None] = [None]

    def record(tensor: torch.Tensor) -> None:
        root = tensor._base if tensor._base is not None else tensor
        if id(root) not in params and id(root) not in saved:
            saved[id(root)] = (root, where[0])  # the reference keeps ids unique during the trace

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        record(tensor)
        return tensor

    handles = []
    for index, layer in enumerate(layers):
        handles.append(layer.register_forward_pre_hook(lambda m, a, i=index: where.__setitem__(0, i)))
        handles.append(layer.register_forward_hook(lambda m, a, o: where.__setitem__(0, None)))
    for module in base.modules():
        if id(module) in quantized:
            # bitsandbytes' matmul keeps its input for backward even where no LoRA reads it.
            handles.append(module.register_forward_pre_hook(lambda m, a: record(a[0]) if a[0].requires_grad else None))
    ids = torch.zeros(shape.batch_size, shape.max_length, dtype=torch.long, device="meta")
    layer_input: list[int] = []

    def first_input(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        layer_input.append(_nbytes(args[0] if args else kwargs["hidden_states"]))

    if layers:
        handles.append(layers[0].register_forward_pre_hook(first_input, with_kwargs=True))
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            # No attention mask: a full batch (padding only shortens it), and no data-dependent mask logic on meta.
            base.get_decoder()(input_ids=ids, use_cache=False, **ready_made_mask(base, shape))
    finally:
        for handle in handles:
            handle.remove()
    per_layer = [0] * len(layers)
    outside = largest_tensor = 0
    for tensor, index in saved.values():
        if index is None:
            outside += _nbytes(tensor)
        else:
            per_layer[index] += _nbytes(tensor)
            largest_tensor = max(largest_tensor, _nbytes(tensor))
    return ActivationTrace(
        outside, sum(per_layer), max(per_layer, default=0), largest_tensor, layer_input[0] if layer_input else 0
    )


def ready_made_mask(base: torch.nn.Module, shape: RunShape) -> dict[str, torch.Tensor]:
    """For eager attention, the (B, 1, T, T) additive mask it will build: transformers' mask builder looks for
    packed rows in the position ids with a data-dependent check that a meta tensor cannot answer."""
    if shape.attn_implementation != "eager":
        return {}
    dtype = next(base.parameters()).dtype
    dtype = dtype if dtype.is_floating_point else torch.float32
    mask = torch.zeros(shape.batch_size, 1, shape.max_length, shape.max_length, dtype=dtype, device="meta")
    return {"attention_mask": mask}


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def trace_attention(config: PretrainedConfig, shape: RunShape) -> str:
    """How attention keeps its state for backward on this run's device."""
    if shape.attn_implementation == "eager":
        return "eager"  # the full (B, heads, T, T) probabilities
    if shape.attn_implementation == SDPA_MATH:
        return TRACE_MATH_ATTENTION
    text = config.get_text_config()
    dropout = getattr(text, "attention_dropout", None) or getattr(text, "attn_pdrop", 0.0) or 0.0
    if shape.device_type == "cpu" and dropout > 0:
        # torch's CPU flash kernel has no dropout: SDPA takes its math path, which keeps the probabilities.
        return TRACE_MATH_ATTENTION
    return TRACE_ATTENTION


def estimate_memory(config: PretrainedConfig, shape: RunShape) -> MemoryEstimate:
    """Every component of the run's memory for `config`'s architecture at `shape`'s settings."""
    model = meta_model(config, shape.dtype, trace_attention(config, shape))
    estimate = MemoryEstimate()
    estimate.components["weights"] = weight_bytes(model, shape.quantization, shape.dtype)
    peft_model = attach_lora(
        model, shape.lora_r, shape.lora_alpha, shape.lora_dropout, shape.target_modules, layers=shape.lora_layers
    )
    peft_model.train()
    lora_shapes = [p.numel() for p in peft_model.parameters() if p.requires_grad]
    estimate.trainable_parameters = sum(lora_shapes)
    estimate.total_parameters = sum(p.numel() for p in peft_model.parameters())
    estimate.components["lora"] = 4 * estimate.trainable_parameters  # kept fp32 (lora.keep_trainable_in_float32)
    estimate.components["grads"] = 4 * estimate.trainable_parameters
    estimate.components["optimizer"] = optimizer_state_bytes(lora_shapes, shape.optimizer)
    trace = trace_activations(peft_model, shape)
    # A layer's backward holds the gradient of its largest saved tensor and of that tensor's input.
    working = 2 * trace.largest_tensor
    if shape.gradient_checkpointing:
        # Each layer keeps its input; in backward one layer at a time recomputes its activations.
        estimate.components["activations"] = trace.outside + _num_layers(config) * trace.layer_input
        estimate.components["layer_backward"] = trace.largest_layer + working
    else:
        estimate.components["activations"] = trace.outside + trace.layers
        estimate.components["layer_backward"] = working
    vocab = model.get_output_embeddings().weight.shape[0]
    positions = shape.batch_size * (shape.max_length - 1)  # every position labelled: the worst case
    size = torch.empty((), dtype=shape.dtype).element_size()
    # Backward of the cross-entropy holds three fp32 (N, V) tensors at once: the log-probabilities it
    # kept, their gradient and the logits' gradient.
    estimate.components["logits"] = positions * vocab * 3 * 4
    # Generation: the KV cache, the prompt's logits (transformers' generate projects every prompt position
    # in the first step) and one layer's largest intermediate at the validation batch size.
    prompt_tokens = shape.eval_batch_size * shape.max_length
    layer_working = trace.largest_tensor * prompt_tokens // (shape.batch_size * shape.max_length)
    prompt_logits = prompt_tokens * vocab * size
    estimate.components["generation"] = kv_cache_bytes(config, shape, size) + prompt_logits + layer_working
    return estimate


def kv_cache_bytes(config: PretrainedConfig, shape: RunShape, size: int) -> int:
    """Keys and values of every layer for a validation batch of full-length prompts and all new tokens."""
    text = config.get_text_config()
    heads = getattr(text, "num_attention_heads", None) or text.n_head
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or (getattr(text, "hidden_size", None) or text.n_embd) // heads
    tokens = shape.eval_batch_size * (shape.max_length + shape.max_new_tokens)
    return 2 * _num_layers(text) * kv_heads * head_dim * tokens * size


def _num_layers(config: Any) -> int:
    text = config.get_text_config()
    return getattr(text, "num_hidden_layers", None) or text.n_layer
