"""Silence exactly one harmless library warning that a first run would read as breakage.

bitsandbytes 0.50.2, imported whenever PEFT is (every run, 4-bit or not), logs at import time on CPUs with
AVX512-BF16: "Failed to load CPU gemm_4bit_forward from kernels-community: No module named 'kernels'". The
optional `kernels` package only speeds up 4-bit inference; without it bitsandbytes uses its own kernel.
Only that message with that cause is dropped: a `kernels` that is installed but fails still warns.
Imported for its effect, before anything imports bitsandbytes (logging filters do not apply backwards).
"""

from __future__ import annotations

import logging

BNB_CPU_LOGGER = "bitsandbytes.backends.cpu.ops"
KERNELS_MESSAGE = "Failed to load CPU gemm_4bit_forward from kernels-community"


def is_missing_kernels_notice(record: logging.LogRecord) -> bool:
    """The import-time notice about the optional `kernels` package not being installed, and nothing else."""
    cause = record.args[0] if isinstance(record.args, tuple) and record.args else None
    return (
        str(record.msg).startswith(KERNELS_MESSAGE)
        and isinstance(cause, ModuleNotFoundError)
        and (cause.name or "").split(".")[0] == "kernels"
    )


def _keep(record: logging.LogRecord) -> bool:
    return not is_missing_kernels_notice(record)


def install() -> None:
    """Add the filter to bitsandbytes' CPU logger (created here if bitsandbytes is not imported yet); idempotent."""
    logger = logging.getLogger(BNB_CPU_LOGGER)
    if _keep not in logger.filters:
        logger.addFilter(_keep)


install()
