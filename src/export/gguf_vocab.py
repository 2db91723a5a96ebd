"""The tokenizer of a transformers folder as GGUF `tokenizer.*` metadata (byte-level BPE, llama.cpp's "gpt2").

gguf-py's `SpecialVocab` reads merges, special-token ids and the chat template from the folder's
files; what it lacks is the token list with llama.cpp's token types, the pre-tokenizer name and
whether a BOS token is added, which are derived here.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import gguf
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from src.errors import ConfigurationError, ModelSourceError

# The text-splitting regex of Llama 3's tokenizer.json, which llama.cpp calls "llama-bpe".
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
DETECTED_PRE_TOKENIZERS = ("gpt-2", "smollm", "llama-bpe")
"""The `tokenizer.ggml.pre` values recognised from a tokenizer.json; any other is given with `tokenizer_pre`."""


@dataclass
class GGUFVocab:
    tokens: list[str]
    token_types: list[int]
    pre: str
    special: gguf.SpecialVocab
    add_space_prefix: bool

    def add_to(self, writer: gguf.GGUFWriter) -> None:
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(self.pre)
        writer.add_token_list(self.tokens)
        writer.add_token_types(self.token_types)
        writer.add_add_space_prefix(self.add_space_prefix)
        self.special.add_to_gguf(writer, quiet=True)


def token_list(tokenizer: PreTrainedTokenizerBase, vocab_size: int) -> tuple[list[str], list[int]]:
    """One entry per embedding row with llama.cpp's token type.

    Added special tokens (`<|im_end|>`) are CONTROL: llama.cpp matches them whole and hides them
    from output. Other added tokens are USER_DEFINED; rows with no token (an embedding table
    padded past the tokenizer) become `[PAD<i>]` UNUSED placeholders, as llama.cpp's converter writes them.
    """
    by_id = {index: token for token, index in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for index in range(vocab_size):
        if index not in by_id:
            tokens.append(f"[PAD{index}]")
            types.append(gguf.TokenType.UNUSED)
        elif index in added:
            tokens.append(added[index].content)
            types.append(gguf.TokenType.CONTROL if added[index].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[index])
            types.append(gguf.TokenType.NORMAL)
    return tokens, [int(kind) for kind in types]


def detect_pre_tokenizer(tokenizer_json: dict) -> str | None:
    """llama.cpp's name for how this tokenizer splits text before BPE, or None if not recognised.

    A plain byte-level split with the GPT-2 regex is "gpt-2", unless no token of the vocabulary
    holds a digit next to another character: then the merges were learned on digits split one by
    one (SmolLM/SmolLM2), which llama.cpp calls "smollm". (A tokenizer rebuilt from a GGUF file
    by transformers keeps SmolLM2's vocabulary but loses its digit splitter, so the vocabulary is
    the reliable witness.) The Llama 3 split regex is "llama-bpe".
    """
    pre = tokenizer_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [step.get("type") for step in steps]
    splits = [step.get("pattern", {}).get("Regex") for step in steps if step.get("type") == "Split"]
    if splits == [LLAMA3_SPLIT] and kinds[-1] == "ByteLevel":
        return "llama-bpe"
    digits_split = any(step.get("type") == "Digits" and step.get("individual_digits") for step in steps)
    if kinds[-1:] == ["ByteLevel"] and steps[-1].get("use_regex", True) and set(kinds) <= {"ByteLevel", "Digits"}:
        vocab = (tokenizer_json.get("model") or {}).get("vocab") or {}
        digits_alone = not any(len(token) > 1 and re.search(r"\d", token) for token in vocab)
        return "smollm" if digits_split or digits_alone else "gpt-2"
    return None


def read_vocab(model_dir: Path, vocab_size: int, tokenizer_pre: str | None = None) -> GGUFVocab:
    """The folder's tokenizer as GGUF metadata; `tokenizer_pre` overrides the detected pre-tokenizer."""
    tokenizer_file = model_dir / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise ModelSourceError(
            f"{tokenizer_file} is missing: GGUF export needs a fast (tokenizer.json) byte-level BPE tokenizer "
            "saved next to the weights (tokenizer.save_pretrained)"
        )
    tokenizer_json = json.loads(tokenizer_file.read_text(encoding="utf-8"))
    if (tokenizer_json.get("model") or {}).get("type") != "BPE" or "ByteLevel" not in json.dumps(
        tokenizer_json.get("pre_tokenizer")
    ):
        raise ConfigurationError(
            f"{tokenizer_file}: only byte-level BPE tokenizers (GPT-2 style, as SmolLM2 and Llama 3 use) can be "
            "exported; this one is not"
        )
    pre = tokenizer_pre or detect_pre_tokenizer(tokenizer_json)
    if pre is None:
        raise ConfigurationError(
            f"{tokenizer_file}: cannot tell which llama.cpp pre-tokenizer matches this tokenizer's "
            f"pre_tokenizer {tokenizer_json.get('pre_tokenizer')}; pass --tokenizer_pre with llama.cpp's name for it "
            f"(recognised automatically: {', '.join(DETECTED_PRE_TOKENIZERS)})"
        )
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokens, token_types = token_list(tokenizer, vocab_size)
    special = gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=vocab_size)
    # llama.cpp adds a BOS to every prompt unless told otherwise; say what the tokenizer really does.
    probe = tokenizer("a")["input_ids"]
    special.add_special_token["bos"] = bool(tokenizer.bos_token_id is not None and probe[:1] == [tokenizer.bos_token_id])
    # The template training used (the folder's), never one from elsewhere.
    special.chat_template = tokenizer.chat_template
    add_space_prefix = bool(_byte_level_step(tokenizer_json).get("add_prefix_space", False))
    return GGUFVocab(tokens, token_types, pre, special, add_space_prefix)


def _byte_level_step(tokenizer_json: dict) -> dict:
    pre = tokenizer_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    return next((step for step in steps if step.get("type") == "ByteLevel"), {})
