"""Only bitsandbytes' notice about the optional, uninstalled `kernels` package is silenced."""

from __future__ import annotations

import logging

import pytest

from src import library_noise


def record(msg: str, cause: BaseException) -> logging.LogRecord:
    return logging.LogRecord(library_noise.BNB_CPU_LOGGER, logging.WARNING, __file__, 1, msg, (cause,), None)


NOTICE = "Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please make sure you already `pip install kernels`"


def test_the_missing_kernels_notice_is_dropped(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger(library_noise.BNB_CPU_LOGGER)
    with caplog.at_level(logging.WARNING, logger=library_noise.BNB_CPU_LOGGER):
        logger.warning(NOTICE, ModuleNotFoundError("No module named 'kernels'", name="kernels"))
        logger.warning(NOTICE, RuntimeError("kernels 0.10 is too old"))  # installed but broken: a real warning
        logger.warning("something else went wrong: %s", ModuleNotFoundError("x", name="kernels"))
    assert [r.getMessage().split(":")[0] for r in caplog.records] == [
        "Failed to load CPU gemm_4bit_forward from kernels-community", "something else went wrong"]


def test_only_that_cause_counts_as_the_notice() -> None:
    assert library_noise.is_missing_kernels_notice(record(NOTICE, ModuleNotFoundError("m", name="kernels")))
    assert not library_noise.is_missing_kernels_notice(record(NOTICE, ModuleNotFoundError("m", name="torch")))
