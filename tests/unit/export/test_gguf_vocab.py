"""The tokenizer as GGUF metadata: tokens and their llama.cpp types, pre-tokenizer, BOS rule, chat template."""

from __future__ import annotations

import json

import gguf
import pytest
from tokenizers import AddedToken

from src.errors import ConfigurationError
from src.export.gguf_vocab import LLAMA3_SPLIT, detect_pre_tokenizer, read_vocab, token_list


def byte_level(vocab: dict[str, int], *steps: dict) -> dict:
    """A tokenizer.json: `steps`, then a byte-level step that applies GPT-2's regex unless a Split did the splitting."""
    regex = not any(step["type"] == "Split" for step in steps)
    return {
        "model": {"type": "BPE", "vocab": vocab},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [*steps, {"type": "ByteLevel", "use_regex": regex}]},
    }


@pytest.mark.parametrize(
    ("tokenizer_json", "expected"),
    [
        # GPT-2's regex keeps digit runs together, and the vocabulary has merged digits: "gpt-2"
        ({"model": {"vocab": {"Ġ4": 0, "42": 1}}, "pre_tokenizer": {"type": "ByteLevel", "use_regex": True}}, "gpt-2"),
        # SmolLM2's own tokenizer.json: each digit split off before the byte-level step
        (byte_level({"4": 0}, {"type": "Digits", "individual_digits": True}), "smollm"),
        # SmolLM2's tokenizer rebuilt by transformers from a GGUF: no digit splitter, but no merged digits either
        ({"model": {"vocab": {"4": 0, "2": 1, "Ġt": 2}}, "pre_tokenizer": {"type": "ByteLevel"}}, "smollm"),
        (byte_level({}, {"type": "Split", "pattern": {"Regex": LLAMA3_SPLIT}, "behavior": "Isolated"}), "llama-bpe"),
        (byte_level({}, {"type": "Split", "pattern": {"Regex": r"\p{N}{1,2}"}, "behavior": "Isolated"}), None),
        ({"model": {"vocab": {}}, "pre_tokenizer": {"type": "Metaspace"}}, None),
    ],
)
def test_pre_tokenizer_is_recognised_from_tokenizer_json(tokenizer_json, expected):
    assert detect_pre_tokenizer(tokenizer_json) == expected


def test_token_types_follow_llama_cpp(tiny_tokenizer):
    tokenizer = tiny_tokenizer.__class__.from_pretrained(tiny_tokenizer.name_or_path)
    tokenizer.add_tokens([AddedToken("<calc>", special=False, normalized=False)])
    size = len(tokenizer) + 2  # an embedding table padded past the tokenizer
    tokens, types = token_list(tokenizer, size)
    assert len(tokens) == len(types) == size
    assert tokens[tokenizer.eos_token_id] == "<|im_end|>" and types[tokenizer.eos_token_id] == gguf.TokenType.CONTROL
    calc = tokenizer.convert_tokens_to_ids("<calc>")
    assert tokens[calc] == "<calc>" and types[calc] == gguf.TokenType.USER_DEFINED
    assert tokens[-2:] == [f"[PAD{size - 2}]", f"[PAD{size - 1}]"]
    assert types[-2:] == [gguf.TokenType.UNUSED] * 2
    plain = tokenizer.convert_tokens_to_ids("Ġ")
    assert types[plain] == gguf.TokenType.NORMAL


def test_vocab_carries_the_folders_chat_template_special_ids_and_merges(tmp_path, tiny_tokenizer):
    tiny_tokenizer.save_pretrained(tmp_path)
    vocab = read_vocab(tmp_path, len(tiny_tokenizer))
    assert vocab.special.chat_template == tiny_tokenizer.chat_template
    assert vocab.special.special_token_ids["eos"] == tiny_tokenizer.eos_token_id
    assert vocab.special.special_token_ids["bos"] == tiny_tokenizer.bos_token_id
    assert vocab.special.special_token_ids["pad"] == tiny_tokenizer.pad_token_id
    # The tokenizer adds no BOS by itself (the chat template writes <|im_start|>): llama.cpp must be told.
    assert vocab.special.add_special_token["bos"] is False
    merges = json.loads((tmp_path / "tokenizer.json").read_text())["model"]["merges"]
    assert len(vocab.special.merges) == len(merges) > 0
    assert vocab.add_space_prefix is False


def test_given_pre_tokenizer_wins_over_detection(tmp_path, tiny_tokenizer):
    tiny_tokenizer.save_pretrained(tmp_path)
    assert read_vocab(tmp_path, len(tiny_tokenizer), tokenizer_pre="llama-bpe").pre == "llama-bpe"


def test_unrecognised_pre_tokenizer_asks_for_the_flag(tmp_path, tiny_tokenizer):
    tiny_tokenizer.save_pretrained(tmp_path)
    data = json.loads((tmp_path / "tokenizer.json").read_text())
    data["pre_tokenizer"] = byte_level({}, {"type": "Split", "pattern": {"Regex": r"\p{N}{1,2}"}, "behavior": "Isolated"})[
        "pre_tokenizer"
    ]
    (tmp_path / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(ConfigurationError, match="--tokenizer_pre"):
        read_vocab(tmp_path, len(tiny_tokenizer))


def test_non_bpe_tokenizers_are_refused(tmp_path, tiny_tokenizer):
    tiny_tokenizer.save_pretrained(tmp_path)
    data = json.loads((tmp_path / "tokenizer.json").read_text())
    data["model"]["type"] = "Unigram"
    (tmp_path / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(ConfigurationError, match="byte-level BPE"):
        read_vocab(tmp_path, len(tiny_tokenizer))
