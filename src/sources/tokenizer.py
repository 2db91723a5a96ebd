"""Where model and tokenizer files come from, shared by the data module and the model builder.

The data module tokenises with the model's tokenizer, so both sides load it here, below both layers.
"""

from __future__ import annotations

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from src.sources.checks import reading_source, refuse_pickle
from src.sources.offline_default import OFFLINE_DEFAULT, ensure_offline_default


def resolve_source(model_name: str, gguf_file: str | None = None) -> tuple[str, str | None]:
    """Map a configured name to what `from_pretrained` takes: (hub id or folder, gguf file or None)."""
    if model_name == OFFLINE_DEFAULT:
        # The dequantised cache is a plain float32 folder: no GGUF parsing after the first run.
        return str(ensure_offline_default()), None
    return model_name, gguf_file


def load_tokenizer(
    model_name: str, gguf_file: str | None = None, tokenizer_name: str | None = None
) -> PreTrainedTokenizerBase:
    """The tokenizer of `tokenizer_name` if given, else of the model; a pad token is always set."""
    key, name = ("model.tokenizer_name", tokenizer_name) if tokenizer_name else ("model.model_name", model_name)
    refuse_pickle(key, name)
    with reading_source(key, name):
        source, gguf = resolve_source(tokenizer_name, None) if tokenizer_name else resolve_source(model_name, gguf_file)
        tokenizer = AutoTokenizer.from_pretrained(source, **({"gguf_file": gguf} if gguf else {}))
    if tokenizer.pad_token is None:
        # Safe because labels are masked by position, never by the pad token's value.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
