"""Shared fixtures: a tiny random causal LM saved to disk, loaded through the real loading path."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch._dynamo  # loaded here: `torch._dynamo.config` has no settings until it is
from transformers import AutoTokenizer, LlamaForCausalLM

from tiny_llamas import NF4_SHAPES, save_tiny_llama

ASSETS = Path(__file__).parent / "assets"
TINY_TOKENIZER = ASSETS / "tiny-chatml-tokenizer"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tokenised-dataset caches go to a per-session temp folder, never to the user's cache."""
    monkeypatch.setenv("TUTOR_TUNE_CACHE", str(tmp_path_factory.getbasetemp() / "tutor-tune-cache"))


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Tiny models gain nothing from intra-op threads, and contending for them made tests ~10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _compile_only_where_tested(request: pytest.FixtureRequest) -> Iterator[None]:
    """configs/smollm2.yaml compiles its blocks in bf16 (`model.compile: auto`), and inductor spends about a
    minute building C++ kernels for each new model on two cores. Tests that fit the config with a tiny model check
    everything but the compiler, so torch's own switch runs them eagerly; tests marked `compiles`
    (tests/unit/models/test_compile.py) compile for real."""
    if request.node.get_closest_marker("compiles") is not None:
        yield
        return
    with torch._dynamo.config.patch(disable=True):
        yield


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return AutoTokenizer.from_pretrained(TINY_TOKENIZER)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer) -> Path:
    """A 2-layer Llama with the tiny ChatML tokenizer, saved like a hub checkpoint."""
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), tiny_tokenizer, random_norms=False)


@pytest.fixture(scope="session")
def tiny_nf4_model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer) -> Path:
    """The tiny Llama at hidden 64 / intermediate 128, shapes every 4-bit kernel takes (any CPU kind)."""
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-nf4-llama"), tiny_tokenizer, random_norms=False, **NF4_SHAPES)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def arithmetic_rows(count: int, start: int = 0) -> list[dict]:
    """Distinct graded chat rows `a + b`, like the arithmetic generator's output."""
    rows = []
    for n in range(start, start + count):
        a, b = n % 10, n // 10
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": f"¿Cuánto es {a} + {b}?"},
                    {"role": "assistant", "content": f"{a} + {b} = {a + b}.\nRespuesta: {a + b}"},
                ],
                "kind": "add_1d" if b < 10 else "add_2d",
                "expected": str(a + b),
            }
        )
    return rows


@pytest.fixture(scope="session")
def tiny_adapter_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """A LoRA adapter for `tiny_model_dir` with random (non-zero) A and B, so it changes the outputs."""
    from peft import LoraConfig, get_peft_model

    folder = tmp_path_factory.mktemp("tiny-adapter")
    torch.manual_seed(1)
    config = LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    get_peft_model(LlamaForCausalLM.from_pretrained(tiny_model_dir), config).save_pretrained(folder)
    return folder
