"""Model, tokenizer and adapter sources: pickles refused, adapters matched to their base, hub failures explained."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from src.errors import ConfigurationError, ModelSourceError
from src.models.lora import attach_lora
from src.sources.checks import check_adapter, reading_source, refuse_pickle, same_model


def tiny_llama(hidden: int) -> LlamaForCausalLM:
    config = LlamaConfig(vocab_size=64, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1)
    torch.manual_seed(0)
    return LlamaForCausalLM(config)


def save_adapter(model: LlamaForCausalLM, folder: Path, base: str | None) -> Path:
    get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = base
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("suffix", [".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"])
def test_every_pickle_suffix_is_refused(suffix: str) -> None:
    with pytest.raises(ConfigurationError, match=rf"model\.model_name: m{suffix} is a pickle file \({suffix}\)"):
        refuse_pickle("model.model_name", f"m{suffix}")


def test_safetensors_folders_and_hub_ids_pass(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"")
    (tmp_path / "training_args.bin").write_bytes(b"")  # not weights: allowed beside safetensors
    for value in (str(tmp_path), "HuggingFaceTB/SmolLM2-135M-Instruct", None):
        refuse_pickle("model.model_name", value)


def test_an_adapter_records_its_base_and_a_different_one_is_refused(tmp_path: Path) -> None:
    adapter = save_adapter(tiny_llama(16), tmp_path / "a", "org/base-a")
    check_adapter(str(adapter), "org/base-a", "org/base-a")
    with pytest.raises(ConfigurationError, match=r"was trained on org/base-a, but model\.model_name is org/base-b"):
        check_adapter(str(adapter), "org/base-b", "org/base-b")


def test_random_weights_skip_the_name_comparison(tmp_path: Path) -> None:
    adapter = save_adapter(tiny_llama(16), tmp_path / "a", "org/base-a")
    check_adapter(str(adapter), "org/base-b", None)


@pytest.mark.parametrize(
    ("recorded", "name", "source", "same"),
    [
        ("/home/a/.cache/tutor-tune/SmolLM2-135M-Instruct", "offline:SmolLM2-135M-Instruct",
         "/home/b/.cache/tutor-tune/SmolLM2-135M-Instruct", True),
        ("HuggingFaceTB/SmolLM2-135M-Instruct", "/models/SmolLM2-135M-Instruct", "/models/SmolLM2-135M-Instruct", True),
        ("HuggingFaceTB/SmolLM2-360M-Instruct", "offline:SmolLM2-135M-Instruct", "/c/SmolLM2-135M-Instruct", False),
        ("microsoft/phi-2", "microsoft/phi-2", "microsoft/phi-2", True),
    ],
)
def test_same_model_accepts_copies_under_the_same_name(recorded: str, name: str, source: str, same: bool) -> None:
    assert same_model(recorded, name, source) is same


def test_an_adapter_whose_shapes_do_not_fit_is_refused_by_name(tmp_path: Path) -> None:
    adapter = save_adapter(tiny_llama(16), tmp_path / "a", None)
    with pytest.raises(ConfigurationError, match=r"model\.adapter_path: the adapter .* does not fit .*weight shapes differ"):
        attach_lora(tiny_llama(32), 2, 4, 0.0, ["q_proj"], adapter_path=str(adapter))


@pytest.mark.parametrize(
    ("cause", "expected"),
    [
        (LocalEntryNotFoundError("offline"), r"model\.model_name: org/m is not a local folder, and this machine is offline"),
        (RepositoryNotFoundError("404", response=SimpleNamespace(headers={}, status_code=404, request=None)), r"org/m is neither a local folder nor a model on the Hugging Face Hub"),
    ],
)
def test_hub_failures_become_model_source_errors(cause: Exception, expected: str) -> None:
    with pytest.raises(ModelSourceError, match=expected):
        with reading_source("model.model_name", "org/m"):
            raise OSError("transformers' message") from cause


def test_other_errors_pass_through_unchanged() -> None:
    with pytest.raises(KeyError):
        with reading_source("model.model_name", "org/m"):
            raise KeyError("a bug")
