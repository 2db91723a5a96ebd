"""Regional torch.compile: each decoder block is compiled in place, the loss and its gradients are the
uncompiled ones, and the PEFT adapter saves the same weights under the same names."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers.models.llama.modeling_llama import LlamaDecoderLayer

from src.data.collate import TrainCollator, packing_collator
from src.errors import ConfigurationError
from src.models.compile import check_cpp_compiler, compile_repeated_blocks, cpp_compiler, resolve_compile
from src.models.generation import generate_greedy
from src.models.loss import causal_lm_loss
from test_packing import PAD, examples, tiny_llama, with_lora

pytestmark = pytest.mark.compiles


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """Compiled graphs are cached per code object: each test compiles its own model from scratch."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    yield
    torch._dynamo.reset()


def loss_and_grads(model, batch) -> tuple[torch.Tensor, list[torch.Tensor]]:
    trainable = [p for p in model.parameters() if p.requires_grad]
    loss = causal_lm_loss(model, batch)
    return loss.detach(), list(torch.autograd.grad(loss, trainable))


def assert_compiled_matches_eager(backend: str) -> None:
    torch.manual_seed(0)
    eager = with_lora(tiny_llama("sdpa"))
    compiled = with_lora(tiny_llama("sdpa"))
    compiled.load_state_dict(eager.state_dict())
    assert compile_repeated_blocks(compiled, backend=backend) == 2  # the two LlamaDecoderLayers
    for batch in (TrainCollator(PAD)(examples()), packing_collator()(examples())):
        loss, grads = loss_and_grads(compiled, batch)
        expected_loss, expected_grads = loss_and_grads(eager, batch)
        torch.testing.assert_close(loss, expected_loss, rtol=1e-5, atol=1e-5)
        for a, b in zip(grads, expected_grads):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # the blocks really ran compiled


def test_compiled_blocks_give_the_eager_loss_and_gradients() -> None:
    # aot_eager traces forward and backward like inductor does, without compiling C++ (seconds, not minutes).
    assert_compiled_matches_eager("aot_eager")


@pytest.mark.slow
def test_inductor_compiled_blocks_give_the_eager_loss_and_gradients() -> None:
    # The backend `model.compile` uses; generating and building C++ kernels takes about a minute on 2 cores.
    assert_compiled_matches_eager("inductor")


def test_compiled_model_keeps_its_modules_names_and_adapter(tmp_path: Path, tiny_tokenizer) -> None:
    torch.manual_seed(0)
    model = with_lora(tiny_llama("sdpa"))
    names = [name for name, _ in model.named_parameters()]
    model.save_pretrained(tmp_path / "eager")
    compile_repeated_blocks(model, backend="aot_eager")
    assert [name for name, _ in model.named_parameters()] == names  # no `_orig_mod.` prefixes
    model.save_pretrained(tmp_path / "compiled")
    saved, expected = (load_file(tmp_path / side / "adapter_model.safetensors") for side in ("compiled", "eager"))
    assert saved.keys() == expected.keys() and len(saved) > 0
    for key in saved:
        torch.testing.assert_close(saved[key], expected[key], rtol=0, atol=0)


def test_generation_runs_the_eager_blocks_with_the_same_answers(tiny_tokenizer) -> None:
    torch.manual_seed(0)
    eager = with_lora(tiny_llama("sdpa"))
    compiled = with_lora(tiny_llama("sdpa"))
    compiled.load_state_dict(eager.state_dict())
    compile_repeated_blocks(compiled, backend="eager")
    prompts = torch.randint(3, 64, (2, 6), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(prompts)
    args = (tiny_tokenizer, prompts, mask, 5, {PAD})
    assert generate_greedy(compiled, *args) == generate_greedy(eager, *args)
    # No gradient, no graph: generation's KV-cache decoding would otherwise compile versions of its own.
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 0


def test_only_passes_that_record_gradients_run_compiled() -> None:
    torch.manual_seed(0)
    base = tiny_llama("sdpa")
    base.model.layers.extend(LlamaDecoderLayer(base.config, i) for i in (2, 3))  # four blocks
    model = with_lora(base)
    assert compile_repeated_blocks(model, backend="eager") == 4
    batch = TrainCollator(PAD)(examples())
    with torch.no_grad():
        causal_lm_loss(model, batch)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 0
    causal_lm_loss(model, batch).backward()
    # Two graphs for four blocks: the first block's input needs no gradient (the embeddings are frozen), the
    # others' does; identical blocks share a graph, so compiling costs one block, not one per block.
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 2


def test_a_model_without_repeated_blocks_is_refused() -> None:
    model = with_lora(tiny_llama("sdpa"))
    model.get_base_model()._no_split_modules = set()
    with pytest.raises(ConfigurationError, match=r"model\.compile=true: LlamaForCausalLM names no repeated blocks"):
        compile_repeated_blocks(model)


def test_a_missing_cpp_compiler_is_named_with_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    from torch._inductor import config as inductor_config
    from torch._inductor.cpp_builder import cpp_compiler_search

    monkeypatch.setattr(inductor_config.cpp, "cxx", ("no-such-c++-compiler",))
    cpp_compiler_search.cache_clear()
    try:
        assert cpp_compiler() is None
        refused = r"model\.compile=true on the CPU needs a C\+\+ compiler.*apt install g\+\+"
        with pytest.raises(ConfigurationError, match=refused):
            check_cpp_compiler()
    finally:
        cpp_compiler_search.cache_clear()  # the next compile searches with the real setting again


@pytest.mark.parametrize(
    ("requested", "device", "precision", "compiles"),
    [
        (True, "cpu", "32-true", True),  # as set, even where it gains nothing
        (False, "cuda", "bf16-mixed", False),
        ("auto", "cpu", "bf16-mixed", True),  # the default job on AVX512-BF16: ~1.3x faster steps
        ("auto", "cpu", "16-mixed", True),
        ("auto", "cpu", "32-true", False),  # float32 on the CPU: no gain, so no compiling and no C++ compiler
        ("auto", "cuda", "32-true", True),
    ],
)
def test_compile_auto_compiles_where_it_was_measured_to_pay(requested, device, precision, compiles) -> None:
    assert resolve_compile(requested, device, precision)[0] is compiles
