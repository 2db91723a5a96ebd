"""Export a merged model folder to GGUF for llama.cpp, Ollama and LM Studio.

    python -m src.tools.export_gguf --model_dir merged/ --out tutor.q8_0.gguf --outtype q8_0
"""

from __future__ import annotations

import argparse
import sys

from src.errors import TutorTuneError
from src.export.gguf_tensors import OUTTYPES
from src.export.gguf_writer import export_gguf


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m src.tools.export_gguf", description=__doc__.splitlines()[0])
    parser.add_argument("--model_dir", required=True, help="merged transformers folder (config.json, safetensors, tokenizer)")
    parser.add_argument("--out", required=True, help="GGUF file to write")
    parser.add_argument(
        "--outtype", choices=sorted(OUTTYPES), default="f16", help="f16: the merged model's answers; q8_0: ~half the size"
    )
    parser.add_argument("--name", default=None, help="general.name stored in the file (default: the folder's name)")
    parser.add_argument(
        "--tokenizer_pre",
        default=None,
        help='llama.cpp pre-tokenizer name (detected: "smollm" for SmolLM2, "llama-bpe" for Llama 3, "gpt-2")',
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        path = export_gguf(args.model_dir, args.out, args.outtype, name=args.name, tokenizer_pre=args.tokenizer_pre)
    except TutorTuneError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"{path} ({args.outtype}, {path.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
