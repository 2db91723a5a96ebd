"""Commands for after training, run through the training CLI: `python -m src.cli <command> ...`.

Each command is a module with `main(argv) -> int`, imported only when it runs, so `fit` never pays
for the imports of `chat` or `export`, and a command whose module is absent fails with its name.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from src.errors import ConfigurationError, TutorTuneError

TOOLS: dict[str, str] = {
    "chat": "src.tools.chat",
    "answer": "src.tools.answer",
    "merge": "src.tools.merge",
    "export": "src.tools.export_gguf",
    "check-gguf": "src.tools.check_gguf",
    "doctor": "src.tools.doctor",
    "lr-find": "src.tools.lr_find",
    "lr-sweep": "src.tools.lr_sweep",
    "compare": "src.tools.compare",
}
"""Command name -> module holding its `main(argv)`."""


def load_tool(name: str):
    """The module of command `name`; a clear error for an unknown name or a module not installed."""
    if name not in TOOLS:
        raise ConfigurationError(f"unknown command {name!r}; available: {', '.join(TOOLS)} (and fit, validate, test, predict)")
    module_name = TOOLS[name]
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name != module_name:
            raise  # a dependency of the command is missing: its own message says which
        raise ConfigurationError(
            f"command {name!r}: its module {module_name} is not part of this installation "
            f"({module_name.replace('.', '/')}.py is missing)"
        ) from None


def run_tool(name: str, argv: Sequence[str]) -> int:
    """Run command `name` with `argv`; a user's mistake (TutorTuneError) is printed, not traced back."""
    try:
        return int(load_tool(name).main(list(argv)) or 0)
    except TutorTuneError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
