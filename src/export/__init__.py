"""Export a merged model to GGUF, the single-file format of llama.cpp, Ollama and LM Studio."""

from src.export.gguf_writer import SUPPORTED_ARCHITECTURES, export_gguf

__all__ = ["SUPPORTED_ARCHITECTURES", "export_gguf"]
