"""`auto` precision follows the hardware, read from the CPU's flags and the GPU's compute capability;
base weights take the compute dtype of the precision."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import src.models.precision as precision
from src.models.precision import (
    base_weight_dtype, cpu_flags, cpu_has_fast_bf16, placement, resolve_precision, weight_dtype,
)

AVX2_ONLY = "processor\t: 0\nflags\t\t: fpu sse sse2 avx avx2 fma\n"
AVX512_BF16 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n"
AMX = "processor\t: 0\nflags\t\t: fpu avx2 avx512f amx_tile amx_bf16 amx_int8\n"


def cpuinfo(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cpuinfo"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(("text", "fast"), [(AVX2_ONLY, False), (AVX512_BF16, True), (AMX, True)])
def test_fast_bf16_is_read_from_the_cpu_flags(tmp_path: Path, text: str, fast: bool) -> None:
    assert cpu_has_fast_bf16(cpuinfo(tmp_path, text)) is fast


def test_cpu_flags_are_the_flags_line_split_into_words(tmp_path: Path) -> None:
    assert cpu_flags(cpuinfo(tmp_path, AVX2_ONLY)) == {"fpu", "sse", "sse2", "avx", "avx2", "fma"}
    assert cpu_flags(tmp_path / "missing") == set()


@pytest.mark.parametrize("requested", ["32-true", "bf16-mixed", "16-mixed", 32, None])
def test_explicit_precisions_pass_through(requested: str | int | None) -> None:
    assert resolve_precision(requested, "cpu") == (requested, "as configured")


@pytest.mark.parametrize(("fast", "expected"), [(True, "bf16-mixed"), (False, "32-true")])
def test_auto_on_cpu_uses_bf16_only_where_the_cpu_computes_it_natively(
    monkeypatch: pytest.MonkeyPatch, fast: bool, expected: str
) -> None:
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: fast)
    chosen, why = resolve_precision("auto", "cpu")
    assert chosen == expected
    assert "AVX512-BF16" in why


@pytest.mark.parametrize(("capability", "expected"), [((6, 1), "16-mixed"), ((7, 5), "16-mixed"), ((8, 0), "bf16-mixed"), ((9, 0), "bf16-mixed")])
def test_auto_on_cuda_picks_fp16_before_ampere_and_bf16_after(
    monkeypatch: pytest.MonkeyPatch, capability: tuple[int, int], expected: str
) -> None:
    # Pascal (6.1) and Turing (7.5) emulate bf16, even where torch.cuda.is_bf16_supported() says True.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=0: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=0: "a test GPU")
    assert resolve_precision("auto", "gpu")[0] == expected
    assert resolve_precision("auto", "auto")[0] == expected


def test_auto_with_a_cpu_accelerator_ignores_a_present_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: False)
    assert resolve_precision("auto", "cpu")[0] == "32-true"


@pytest.mark.parametrize(
    ("name", "dtype"),
    [("bf16-mixed", torch.bfloat16), ("bf16-true", torch.bfloat16), ("16-mixed", torch.float16),
     ("16-true", torch.float16), ("32-true", torch.float32), ("64-true", torch.float32), (None, torch.float32)],
)
def test_base_weights_take_the_compute_dtype(name: str | None, dtype: torch.dtype) -> None:
    assert weight_dtype(name) is dtype


@pytest.mark.parametrize(
    ("text", "expected"), [(AVX2_ONLY, "32-true"), (AVX512_BF16, "bf16-mixed"), (AMX, "bf16-mixed")],
    ids=["avx2-only", "avx512-bf16", "amx"],
)
def test_auto_on_each_cpu_kind_reads_that_cpus_flags(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, expected: str
) -> None:
    # The same answer on every machine the suite runs on: /proc/cpuinfo is replaced by each kind's flags.
    monkeypatch.setattr(precision, "CPUINFO", cpuinfo(tmp_path, text))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_precision("auto", "auto")[0] == expected
    assert weight_dtype(expected) == (torch.bfloat16 if expected == "bf16-mixed" else torch.float32)


@pytest.mark.parametrize(("capability", "fast"), [("AVX2", False), ("AVX512", False), ("AMX", True)])
def test_without_proc_cpuinfo_onednns_capability_decides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capability: str, fast: bool
) -> None:
    monkeypatch.setattr(precision, "CPUINFO", tmp_path / "missing")
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    assert cpu_has_fast_bf16() is fast


def test_a_module_outside_a_trainer_is_placed_in_fp32_on_the_cpu_and_inside_one_where_the_trainer_says() -> None:
    assert placement(None) == (torch.device("cpu"), torch.float32)
    trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("meta")), precision="bf16-true")
    assert placement(trainer) == (torch.device("meta"), torch.bfloat16)
    assert placement(trainer, base_weights="float32") == (torch.device("meta"), torch.float32)


@pytest.mark.parametrize("name", ["bf16-mixed", "16-mixed", "32-true", None])
def test_float32_base_weights_stay_float32_whatever_the_compute_dtype(name: str | None) -> None:
    assert base_weight_dtype(name, "float32") is torch.float32
    assert base_weight_dtype(name, "compute") is weight_dtype(name)
