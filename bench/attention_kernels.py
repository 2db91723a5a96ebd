"""Attention kernels for training steps: one attention layer's forward and backward under each kernel,
then a whole model's LoRA training step.

    python -m bench.attention_kernels --architecture configs/architectures/smollm2-135m.json --lengths 56,144,512 \
        --step_model offline:SmolLM2-135M-Instruct

A one-layer random model of the architecture (its MLP shrunk to almost nothing, so the time is the
attention's), fed random rows of `--batch` x length embeddings without padding. Each kernel runs the
layer's forward inside `attention_kernel`, as a training step does, and backward after it: `sdpa` (torch
picks the backend, its flash kernel on the CPU), `sdpa_math` (torch's math backend alone) and `eager`
(transformers' matmul and softmax), in bf16 under autocast and in float32. Prints the median milliseconds
of a forward and backward and the largest error of the layer's output against a float64 pass, with the
CPU kind: what `model.train_attn_implementation` may gain on this CPU.

With `--step_model`, that model (bf16 weights, the default job's LoRA: r 16, all linear layers) takes a
forward and backward of `--batch` rows of `--step_length` tokens, one of them a quarter padding, under
autocast, each kernel in turn per repeat so drift hits them alike: the median milliseconds and the ratio
to `sdpa`, in the same process. Its loss under each kernel is printed too, against `sdpa`'s.
"""

from __future__ import annotations

import argparse
import time
from contextlib import nullcontext

import torch

from bench.measure import device_description, median, write_result
from src.models.attention import attention_kernel
from src.models.loading import load_base_model
from src.models.lora import attach_lora, keep_trainable_in_float32

KERNELS = ("sdpa", "sdpa_math", "eager")
PRECISIONS = {"bf16": torch.bfloat16, "fp32": torch.float32}


def one_layer_model(architecture: str) -> torch.nn.Module:
    overrides = {"num_hidden_layers": 1, "intermediate_size": 8, "vocab_size": 16}
    model = load_base_model("unused", random_init=True, architecture=architecture, architecture_overrides=overrides,
                            attn_implementation="sdpa")
    return model.get_decoder().train()


def layer_output(decoder: torch.nn.Module, kernel: str, embeddings: torch.Tensor, precision: str) -> torch.Tensor:
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else nullcontext()
    with attention_kernel(decoder, kernel), autocast:
        return decoder(inputs_embeds=embeddings, use_cache=False).last_hidden_state


def time_kernel(decoder: torch.nn.Module, kernel: str, embeddings: torch.Tensor, precision: str, repeats: int) -> float:
    seconds = []
    for _ in range(repeats + 2):  # the first two warm the kernels up
        started = time.perf_counter()
        layer_output(decoder, kernel, embeddings, precision).float().pow(2).mean().backward()
        seconds.append(time.perf_counter() - started)
    embeddings.grad = None
    return median(seconds[2:])


def time_training_steps(model_name: str, batch: int, length: int, repeats: int) -> list[dict]:
    """Median seconds of a LoRA forward and backward of `model_name` per kernel, interleaved per repeat."""
    base = load_base_model(model_name, dtype=torch.bfloat16, attn_implementation="sdpa")
    model = attach_lora(base, 16, 32, 0.0, "all-linear")
    keep_trainable_in_float32(model)
    model.train()
    ids = torch.randint(3, base.config.vocab_size, (batch, length), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[0, : length // 4] = 0  # one left-padded row, as length-grouped batches have a few
    labels = ids.masked_fill(mask == 0, -100)  # padding attends to nothing: no kernel's output there means anything

    def step(kernel: str) -> float:
        with attention_kernel(model, kernel), torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        return loss.item()

    losses = {kernel: step(kernel) for kernel in KERNELS}  # also warms each kernel up
    seconds: dict[str, list[float]] = {kernel: [] for kernel in KERNELS}
    for _ in range(repeats):
        for kernel in KERNELS:
            started = time.perf_counter()
            step(kernel)
            seconds[kernel].append(time.perf_counter() - started)
    flash = median(seconds["sdpa"])
    return [{"kernel": k, "ms": 1000 * median(seconds[k]), "vs_sdpa": flash / median(seconds[k]), "loss": losses[k]}
            for k in KERNELS]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--architecture", default="configs/architectures/smollm2-135m.json")
    parser.add_argument("--lengths", default="56,144,512", help="tokens per row, comma-separated")
    parser.add_argument("--batch", type=int, default=4, help="rows per pass (the default job's batch)")
    parser.add_argument("--repeats", type=int, default=20, help="timed passes per kernel; the median is reported")
    parser.add_argument("--step_model", help="also time a whole LoRA training step of this model per kernel")
    parser.add_argument("--step_length", type=int, default=56, help="tokens per row in the whole-model step")
    parser.add_argument("--json", help="write the figures to this file")
    options = parser.parse_args(argv)

    torch.manual_seed(0)
    decoder = one_layer_model(options.architecture)
    hidden = decoder.config.hidden_size
    print(f"device: {device_description(torch.device('cpu'))}; {options.architecture}, batch {options.batch}")
    print("| tokens | precision | kernel | ms per forward + backward | max error vs float64 |")
    print("|---|---|---|---|---|")
    rows = []
    for length in (int(n) for n in options.lengths.split(",")):
        # Frozen weights, as under LoRA: backward runs through attention to its input, as in a training step.
        embeddings = torch.randn(options.batch, length, hidden, requires_grad=True)
        with torch.no_grad():
            exact = layer_output(decoder.double(), "eager", embeddings.detach().double(), "fp32")
        decoder.float()
        for precision in PRECISIONS:
            for kernel in KERNELS:
                seconds = time_kernel(decoder, kernel, embeddings, precision, options.repeats)
                with torch.no_grad():
                    error = (layer_output(decoder, kernel, embeddings, precision).double() - exact).abs().max().item()
                rows.append({"tokens": length, "precision": precision, "kernel": kernel, "ms": 1000 * seconds,
                             "max_error": error})
                print(f"| {length} | {precision} | {kernel} | {1000 * seconds:.2f} | {error:.4f} |")
    result = {"device": device_description(torch.device("cpu")), "rows": rows}
    if options.step_model:
        steps = time_training_steps(options.step_model, options.batch, options.step_length, options.repeats)
        print(f"\n{options.step_model}, LoRA r 16 on every linear layer, bf16, batch {options.batch} x "
              f"{options.step_length} tokens: one training step (forward and backward)")
        print("| kernel | ms per step | speed vs sdpa | loss |")
        print("|---|---|---|---|")
        for row in steps:
            print(f"| {row['kernel']} | {row['ms']:.0f} | {row['vs_sdpa']:.2f}x | {row['loss']:.4f} |")
        result["steps"] = steps
    write_result(options.json, result, options)
    return result


if __name__ == "__main__":
    main()
