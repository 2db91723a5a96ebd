"""The base model's greedy replies to a list of prompts, generated once and reused from disk.

Replay training and the base model's evaluations need the same replies in every run; generating
them costs minutes on a CPU. They are stored under `<cache_root>/replies/<sha256>.json`, keyed by
everything the replies depend on: the model (its source and revision, or a fingerprint of its
weights), the prompts, the prompt format (chat template, system prompt), `max_new_tokens` and the
precision. Any change to one of them is another key, hence a fresh generation.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from transformers import PreTrainedTokenizerBase

from src.data.chat_format import ChatFormatter
from src.errors import TutorTuneError
from src.evaluation.answers import conversation_replies
from src.models.lora import base_model_outputs
from src.sources.offline_default import cache_root

log = logging.getLogger(__name__)

_SAMPLED = 256  # values read from each tensor's start and end: enough to tell checkpoints apart, cheap


def weights_fingerprint(model: torch.nn.Module) -> str:
    """A short hash of every tensor's name, shape, dtype and first and last values.

    Reading all 135M parameters would take seconds; two random initialisations or two fine-tunes
    already differ in their first values. Quantised tensors are read as raw bytes. LoRA tensors are
    left out: base replies come with the adapter off, and a fresh adapter's random A must not make
    every run a cache miss. Names are read without PEFT's wrapping (`base_model.model.`, `.base_layer`),
    so the same base weights match whichever layers, if any, carry an adapter."""
    digest = hashlib.sha256()
    for wrapped_name, tensor in model.state_dict().items():
        if "lora_" in wrapped_name:
            continue
        name = wrapped_name.removeprefix("base_model.model.").replace(".base_layer.", ".")
        flat = tensor.detach().reshape(-1)
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        for part in (flat[:_SAMPLED], flat[-_SAMPLED:]):
            digest.update(part.cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def prompt_format_key(formatter: ChatFormatter) -> dict[str, Any]:
    """What decides the token ids of a prompt besides its text."""
    return {"chat_template": formatter.chat_template, "system_prompt": formatter.system_prompt,
            "tokenizer": type(formatter.tokenizer).__name__, "vocab_size": len(formatter.tokenizer)}


def base_reply_key(
    model: torch.nn.Module,
    formatter: ChatFormatter,
    max_new_tokens: int,
    precision: str | int | None,
    model_source: str | None = None,
    revision: str | None = None,
) -> dict[str, Any]:
    """The key for a model's replies; with no `model_source` the weights themselves identify it."""
    identity = {"source": model_source, "revision": revision} if model_source else {"weights": weights_fingerprint(model)}
    return {"model": identity, "format": prompt_format_key(formatter), "max_new_tokens": max_new_tokens,
            "precision": str(precision)}


class ReplyCache:
    """Replies stored per key under `folder` (default `<cache_root>/replies`)."""

    def __init__(self, folder: str | Path | None = None) -> None:
        self.folder = Path(folder) if folder is not None else cache_root() / "replies"

    def path_for(self, key: dict[str, Any], prompts: Sequence[str]) -> Path:
        blob = json.dumps({"key": key, "prompts": list(prompts)}, sort_keys=True, ensure_ascii=False)
        return self.folder / f"{hashlib.sha256(blob.encode()).hexdigest()}.json"

    def get_or_generate(
        self, key: dict[str, Any], prompts: Sequence[str], generate: Callable[[list[str]], list[str]], label: str = "base"
    ) -> list[str]:
        """The cached replies for (key, prompts), or `generate(prompts)` stored for next time."""
        path = self.path_for(key, prompts)
        if path.is_file():
            try:
                stored = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
                raise TutorTuneError(
                    f"{path}: the reply cache file is unreadable ({type(error).__name__}: {error}); delete it and "
                    "the replies are generated again"
                ) from error
            stored = stored if isinstance(stored, dict) else {}
            replies = stored.get("replies")
            if stored.get("prompts") == list(prompts) and isinstance(replies, list) and len(replies) == len(prompts):
                log.info("reusing %d cached %s replies from %s", len(replies), label, path)
                return replies
            raise TutorTuneError(f"{path}: the reply cache file does not match its key; delete it to regenerate")
        started = time.perf_counter()
        replies = list(generate(list(prompts)))
        seconds = time.perf_counter() - started
        if len(replies) != len(prompts):
            raise ValueError(f"generate returned {len(replies)} replies for {len(prompts)} prompts")
        self._write(path, {"key": key, "prompts": list(prompts), "replies": replies})
        log.info("generated %d %s replies in %.1f s, cached in %s", len(replies), label, seconds, path)
        return replies

    def _write(self, path: Path, content: dict[str, Any]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # A scratch file renamed into place: a run killed mid-write never leaves half a cache entry.
        handle, scratch = tempfile.mkstemp(prefix=".replies-", dir=path.parent)
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                json.dump(content, out, ensure_ascii=False, indent=1)
            os.replace(scratch, path)
        except BaseException:
            # An interrupted write (Ctrl-C, full disk) removes its scratch file too; SIGKILL leaves only a
            # hidden `.replies-*` file, which no key ever names.
            Path(scratch).unlink(missing_ok=True)
            raise


def greedy_replies(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    formatter: ChatFormatter,
    prompts: Sequence[str],
    max_new_tokens: int,
    batch_size: int = 16,
) -> list[str]:
    """Greedy replies to single-turn user prompts, formatted as training formats them."""
    conversations = [[{"role": "user", "content": p}] for p in prompts]
    return conversation_replies(model, tokenizer, formatter, conversations, max_new_tokens, batch_size)


def cached_base_replies(
    model: PeftModel, formatter: ChatFormatter, prompts: Sequence[str], max_new_tokens: int, precision: str,
    model_source: str | None, label: str, cache: ReplyCache | None, batch_size: int = 32,
) -> list[str]:
    """The base model's (adapter off) greedy replies to `prompts`, from `cache` when a run made them
    (None: generated every time)."""

    def generate(batch: list[str]) -> list[str]:
        with base_model_outputs(model):
            return greedy_replies(model, formatter.tokenizer, formatter, batch, max_new_tokens, batch_size)

    if cache is None:
        return generate(list(prompts))
    key = base_reply_key(model, formatter, max_new_tokens, precision, model_source=model_source)
    return cache.get_or_generate(key, prompts, generate, label=label)
