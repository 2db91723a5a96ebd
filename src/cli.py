"""Command line: `python -m src.cli {fit,validate,test,predict} --config configs/<name>.yaml`.

After training, the same entry point runs the commands of `src.tools` (chat, answer, merge, export, check-gguf,
doctor, lr-find, lr-sweep) with the same config files: `python -m src.cli chat --config ...`.

The project's own errors (bad data, configuration, model sources, non-finite training) are printed
as one message with a non-zero exit; `--traceback` or `TUTOR_TUNE_TRACEBACK=1` shows the traceback.
"""

from __future__ import annotations

from src import library_noise  # noqa: F401  (first: filters a bitsandbytes import-time notice)

import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from src.data.conversation import DataFormatError
from src.errors import ConfigurationError, ModelSourceError, TutorTuneError
from src.tools import TOOLS, run_tool
from src.training.lightning_cli import cli_main


TRACEBACK_ENV = "TUTOR_TUNE_TRACEBACK"
TRACEBACK_FLAG = "--traceback"
USER_INPUT_ERRORS = (ConfigurationError, DataFormatError, ModelSourceError)
"""Exit code 2 (like a usage error): the input must change. Other project errors exit with 1."""


def run_reporting_errors(entry: Callable[[list[str] | None], Any], argv: Sequence[str] | None = None) -> int:
    """Run `entry(argv)`; a `TutorTuneError` becomes one message on stderr and exit code 2 or 1.

    Anything else is a bug and keeps its traceback. `--traceback` (removed from the arguments) or
    `TUTOR_TUNE_TRACEBACK=1` prints the full traceback of project errors too. With `argv=None` the
    arguments are `sys.argv[1:]` and `entry` receives None (LightningCLI reads `sys.argv` itself).
    """
    given = sys.argv[1:] if argv is None else list(argv)
    show_traceback = TRACEBACK_FLAG in given or os.environ.get(TRACEBACK_ENV, "") not in ("", "0")
    kept = [arg for arg in given if arg != TRACEBACK_FLAG]
    if argv is None:
        sys.argv[1:] = kept
    try:
        entry(None if argv is None else kept)
    except TutorTuneError as error:
        if show_traceback:
            traceback.print_exc()
        print(f"error: {error}", file=sys.stderr)
        if not show_traceback:
            print(f"(full traceback: {TRACEBACK_ENV}=1 or {TRACEBACK_FLAG})", file=sys.stderr)
        return 2 if isinstance(error, USER_INPUT_ERRORS) else 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m src.cli ...`: the LightningCLI, or a command of `src.tools`, with project errors shown as one message."""
    return run_reporting_errors(_dispatch, argv)


def _dispatch(argv: list[str] | None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in TOOLS:
        code = run_tool(args[0], args[1:])
        if code:
            raise SystemExit(code)
        return
    cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
