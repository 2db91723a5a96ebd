"""Loading: random-weight architectures from the shipped JSON configs, frozen base models, and the
checks that catch a wrong override or a tokenizer too large for the embedding table."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from transformers import GPT2LMHeadModel, LlamaForCausalLM, PhiForCausalLM

from src.errors import ConfigurationError
from src.models.loading import check_vocabulary_fits, load_architecture_config, load_base_model
from src.sources.tokenizer import load_tokenizer

ARCHITECTURES = Path(__file__).parents[3] / "configs" / "architectures"

# Each shipped architecture scaled down to a few thousand parameters.
SMALL = {
    "phi-2": (
        PhiForCausalLM,
        dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
             vocab_size=512),
    ),
    "gpt2-xl": (GPT2LMHeadModel, dict(n_embd=32, n_layer=2, n_head=4, vocab_size=512)),
    "llama-3.2-1b": (
        LlamaForCausalLM,
        dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             head_dim=8, vocab_size=512),
    ),
}


def random_model(name: str, seed: int = 0, **extra):
    return load_base_model(
        "unused",
        random_init=True,
        architecture=str(ARCHITECTURES / f"{name}.json"),
        architecture_overrides=SMALL[name][1] | extra,
        seed=seed,
    )


@pytest.mark.parametrize("name", sorted(SMALL))
def test_random_init_builds_the_architecture_frozen(name: str) -> None:
    model_class, overrides = SMALL[name]
    model = random_model(name)
    assert type(model) is model_class
    assert not any(p.requires_grad for p in model.parameters())
    assert model.get_input_embeddings().num_embeddings == 512
    # The overrides are applied; the rest comes from the shipped file.
    assert all(getattr(model.config, key) == value for key, value in overrides.items())
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_random_init_keeps_unoverridden_fields_of_the_file() -> None:
    config = load_architecture_config("unused", str(ARCHITECTURES / "phi-2.json"), {"num_hidden_layers": 2})
    assert (config.hidden_act, config.vocab_size, config.num_hidden_layers) == ("gelu_new", 51200, 2)
    assert config.rope_parameters["partial_rotary_factor"] == 0.4


def test_random_init_is_reproducible_by_seed() -> None:
    a, b = random_model("llama-3.2-1b", seed=1), random_model("llama-3.2-1b", seed=1)
    c = random_model("llama-3.2-1b", seed=2)
    for (name, pa), (_, pb), (_, pc) in zip(a.named_parameters(), b.named_parameters(), c.named_parameters()):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.get_input_embeddings().weight, c.get_input_embeddings().weight)


def test_random_init_does_not_disturb_the_global_rng() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    random_model("gpt2-xl", seed=5)
    assert torch.equal(torch.rand(3), expected)


def test_unknown_override_is_named() -> None:
    with pytest.raises(ValueError, match=r"model\.architecture_overrides: \['n_layers'\] are not fields of GPT2Config"):
        random_model("gpt2-xl", n_layers=2)


def test_missing_architecture_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    with pytest.raises(ConfigurationError, match=r"model\.architecture: .*nope\.json does not exist"):
        load_base_model("unused", random_init=True, architecture=str(missing))


def test_pretrained_folder_loads_frozen_with_its_saved_weights(tiny_model_dir: Path) -> None:
    model = load_base_model(str(tiny_model_dir))
    assert type(model) is LlamaForCausalLM
    assert not any(p.requires_grad for p in model.parameters())
    reloaded = LlamaForCausalLM.from_pretrained(tiny_model_dir)
    assert torch.equal(model.get_input_embeddings().weight, reloaded.get_input_embeddings().weight)


def test_vocabulary_check_rejects_a_tokenizer_larger_than_the_embeddings(tiny_tokenizer) -> None:
    assert len(tiny_tokenizer) == 385
    small = random_model("llama-3.2-1b", vocab_size=384)
    with pytest.raises(ValueError, match=r"tokenizer has 385 tokens but the model's embedding table has 384 rows"):
        check_vocabulary_fits(small, tiny_tokenizer)


def test_vocabulary_check_accepts_a_table_at_least_as_large(tiny_tokenizer) -> None:
    check_vocabulary_fits(random_model("llama-3.2-1b", vocab_size=385), tiny_tokenizer)
    check_vocabulary_fits(random_model("llama-3.2-1b", vocab_size=512), tiny_tokenizer)


def test_load_tokenizer_has_a_pad_token(tiny_model_dir: Path) -> None:
    tokenizer = load_tokenizer(str(tiny_model_dir))
    assert tokenizer.pad_token == "<|im_end|>"
    assert tokenizer.pad_token_id == tokenizer.eos_token_id == 2


def test_load_tokenizer_without_pad_uses_eos(tiny_tokenizer, tmp_path: Path) -> None:
    unpadded = copy.deepcopy(tiny_tokenizer)
    unpadded.pad_token = None
    unpadded.save_pretrained(tmp_path)
    tokenizer = load_tokenizer(str(tmp_path))
    assert tokenizer.pad_token == tokenizer.eos_token == "<|im_end|>"


def test_tokenizer_name_overrides_the_model_source(tiny_model_dir: Path) -> None:
    tokenizer = load_tokenizer("no/such-model", tokenizer_name=str(tiny_model_dir))
    assert len(tokenizer) == 385
