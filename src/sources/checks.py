"""Check configured model, tokenizer and adapter sources before loading, and explain failures.

Three things a user meets here, each turned into one message naming the config key:
- pickle files (`.bin`, `.pt`, `.ckpt`...): unpickling runs arbitrary code, so weights load from
  safetensors only;
- an adapter trained on another base model: PEFT would load it, or fail deep inside with a shape
  mismatch, and either way the numbers would mean nothing;
- a hub id without network access (or `HF_HUB_OFFLINE=1`): transformers' message does not say that
  the project has an offline default.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import huggingface_hub
from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, OfflineModeIsEnabled, RepositoryNotFoundError

from src.errors import ConfigurationError, ModelSourceError, TutorTuneError
from src.sources.offline_default import OFFLINE_DEFAULT

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
RANDOM_INIT_OVERLAY = "configs/overlays/random_init.yaml"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


def refuse_pickle(key: str, value: str | None) -> None:
    """A config value naming a pickle file (or a folder holding only pickled weights) is refused."""
    if value is None:
        return
    path = Path(value)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        resume = " A Lightning checkpoint (.ckpt) resumes a run with --ckpt_path instead." if path.suffix.lower() == ".ckpt" else ""
        raise ConfigurationError(
            f"{key}: {value} is a pickle file ({path.suffix}); loading one can run arbitrary code, so weights are "
            f"read from safetensors only. Point {key} at a folder with *.safetensors weights (convert a trusted "
            f"file once with transformers' save_pretrained(safe_serialization=True)).{resume}"
        )
    if path.is_dir():
        pickled = sorted(p.name for p in path.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES and "model" in p.name)
        if pickled and not any(path.glob("*.safetensors")):
            raise ConfigurationError(
                f"{key}: {value} holds only pickled weights ({', '.join(pickled)}) and no *.safetensors; loading "
                "pickles can run arbitrary code, so weights are read from safetensors only. Convert a trusted "
                "folder once: load it and save_pretrained(folder, safe_serialization=True)."
            )


def check_adapter(adapter_path: str, model_name: str, resolved_source: str | None) -> None:
    """The adapter folder exists, holds safetensors weights, and was trained on the configured base model.

    `resolved_source` is what `model_name` loads from (the offline default's cache folder), or None
    for random weights, whose adapters record no base model worth comparing.
    """
    refuse_pickle("model.adapter_path", adapter_path)
    folder = Path(adapter_path)
    if not folder.is_dir():
        hint = "" if folder.is_absolute() else f" (relative paths start from {Path.cwd()})"
        raise ModelSourceError(f"model.adapter_path: {adapter_path} does not exist{hint}; expected a PEFT adapter folder such as <run>/adapters/best")
    if not (folder / ADAPTER_CONFIG).is_file():
        inside = sorted(p.name for p in folder.iterdir() if (p / ADAPTER_CONFIG).is_file())
        hint = f"; the adapters inside it are {', '.join(inside)}: use {folder / inside[0]}" if inside else ""
        raise ModelSourceError(f"model.adapter_path: {adapter_path} has no {ADAPTER_CONFIG}, so it is not a PEFT adapter folder{hint}")
    if not (folder / ADAPTER_WEIGHTS).is_file():
        raise ConfigurationError(
            f"model.adapter_path: {adapter_path} has no {ADAPTER_WEIGHTS}; adapters are loaded from safetensors only "
            "(pickled adapter_model.bin files can run arbitrary code). Re-save it with PEFT's save_pretrained."
        )
    try:
        trained_on = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ModelSourceError(f"model.adapter_path: {folder / ADAPTER_CONFIG} is not valid JSON ({error}); re-save the adapter") from None
    if resolved_source is None or not trained_on or same_model(trained_on, model_name, resolved_source):
        return
    raise ConfigurationError(
        f"model.adapter_path: the adapter {adapter_path} was trained on {trained_on}, but model.model_name is "
        f"{model_name}; an adapter only fits the base model it was trained on. Set model.model_name to "
        f"{trained_on}, or use an adapter trained on {model_name}."
    )


def same_model(recorded: str, model_name: str, resolved_source: str) -> bool:
    """Whether an adapter's recorded base is the configured model: same name, same folder, or a copy of
    it under the same final name (a hub id and its downloaded folder, a cache moved to another machine)."""
    if recorded in (model_name, resolved_source):
        return True
    recorded_path, source_path = Path(recorded), Path(resolved_source)
    if recorded_path.exists() and source_path.exists() and recorded_path.resolve() == source_path.resolve():
        return True
    return recorded_path.name.lower() == source_path.name.lower() and bool(recorded_path.name)


@contextmanager
def reading_source(key: str, name: str) -> Iterator[None]:
    """Turn transformers' OSErrors for `name` (set by config `key`) into a `ModelSourceError` that says what to do."""
    try:
        yield
    except TutorTuneError:
        raise
    except OSError as error:
        raise ModelSourceError(_explain(key, name, error)) from error


def _explain(key: str, name: str, error: OSError) -> str:
    causes = _chain(error)
    path = Path(name).expanduser()
    if path.exists():
        return f"{key}: {name} cannot be loaded: {error}"
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        return f"{key}: the folder {name} does not exist (relative paths start from {Path.cwd()})"
    if any(isinstance(c, (LocalEntryNotFoundError, OfflineModeIsEnabled)) for c in causes) or _network_error(causes):
        why = "HF_HUB_OFFLINE=1 is set" if huggingface_hub.constants.HF_HUB_OFFLINE else "no network connection"
        return (
            f"{key}: {name} is not a local folder, and this machine is offline ({why}) so the Hugging Face Hub "
            f"cannot be reached. Use the offline default, which needs no network: {key}={OFFLINE_DEFAULT}; or "
            f"random weights of the configured architecture: add --config {RANDOM_INIT_OVERLAY}; or download "
            f"{name} once while online."
        )
    if any(isinstance(c, RepositoryNotFoundError) for c in causes):
        return f"{key}: {name} is neither a local folder nor a model on the Hugging Face Hub; check the spelling"
    if any(isinstance(c, EntryNotFoundError) for c in causes) or "safetensors" in str(error):
        return (
            f"{key}: {name} has no safetensors weights; pickled weights (.bin) can run arbitrary code when loaded "
            "and are refused. Use a model published as safetensors."
        )
    return f"{key}: cannot load {name}: {error}"


def _chain(error: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _network_error(causes: list[BaseException]) -> bool:
    # httpx and requests both name their failures ConnectError/ConnectionError/Timeout: match by
    # name rather than importing whichever HTTP client this huggingface_hub version uses.
    return any(type(c).__name__ in ("ConnectError", "ConnectionError", "ConnectTimeout", "Timeout") for c in causes)
