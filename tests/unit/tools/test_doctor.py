"""`doctor` reads the machine and names a fix for each problem; a CPU-only machine is not a problem."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from src.tools import doctor

SMI_CSV = "0, NVIDIA GeForce GTX 1050 Ti, 550.54.14, 4096, 6.1\n1, NVIDIA A100-SXM4-40GB, 550.54.14, 40960, 8.0\n"
SMI_BANNER = "| NVIDIA-SMI 550.54.14    Driver Version: 550.54.14    CUDA Version: 12.4     |"


def test_nvidia_smi_output_is_read_per_gpu_with_the_drivers_cuda_version() -> None:
    gpus = doctor.parse_smi_gpus(SMI_CSV)
    assert [(g.index, g.name, g.memory_mib, g.compute_capability) for g in gpus] == [
        (0, "NVIDIA GeForce GTX 1050 Ti", 4096, "6.1"),
        (1, "NVIDIA A100-SXM4-40GB", 40960, "8.0"),
    ]
    assert doctor.parse_driver_cuda(SMI_BANNER) == "12.4"
    assert doctor.parse_smi_gpus("") == []


def test_a_cpu_only_torch_next_to_a_gpu_gets_the_wheel_the_driver_runs() -> None:
    [finding] = doctor.driver_findings(None, "12.4", doctor.parse_smi_gpus(SMI_CSV), torch_sees_gpu=False)
    assert "CPU-only wheel" in finding.problem
    assert finding.fix.endswith("--index-url https://download.pytorch.org/whl/cu126"), "12.x drivers run any 12.x build"
    [newer] = doctor.driver_findings(None, "12.8", doctor.parse_smi_gpus(SMI_CSV), torch_sees_gpu=False)
    assert newer.fix.endswith("/whl/cu128")


def test_a_torch_built_for_a_newer_cuda_than_the_driver_blocks_with_both_fixes() -> None:
    [finding] = doctor.driver_findings("13.0", "12.4", doctor.parse_smi_gpus(SMI_CSV), torch_sees_gpu=False)
    assert finding.blocking and "CUDA 13.0" in finding.problem and "12.4" in finding.problem
    assert "update the NVIDIA driver" in finding.fix and finding.fix.endswith("/whl/cu126")


def test_no_driver_and_no_gpu_is_reported_without_a_problem() -> None:
    [finding] = doctor.driver_findings(None, None, [], torch_sees_gpu=False)
    assert finding.problem is None and "no NVIDIA driver or GPU" in finding.value


def test_a_gpu_without_kernels_in_this_build_is_named_with_the_cu126_fix() -> None:
    problem, fix = doctor.kernel_problem(6, 1, ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"])
    assert "sm_61" in problem and "/whl/cu126" in fix
    assert doctor.kernel_problem(8, 9, ["sm_75", "sm_80", "sm_86", "sm_90"]) == (None, None)  # 8.9 runs sm_86 code
    assert doctor.kernel_problem(12, 0, ["sm_90", "sm_120"]) == (None, None)


def test_cpu_extensions_and_the_precision_auto_picks_come_from_the_cpu_flags(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("model name\t: Test CPU\nflags\t\t: fpu sse avx2 avx512f avx512_bf16\n", encoding="utf-8")
    findings = {f.topic: f for f in doctor.cpu_findings(cpuinfo)}
    assert "Test CPU" in findings["CPU"].value
    assert findings["CPU extensions"].value == "avx2 yes, avx512f yes, avx512_bf16 yes, amx_bf16 no, amx_tile no"
    old = tmp_path / "old"
    old.write_text("flags\t: fpu sse sse2\n", encoding="utf-8")
    assert "no AVX2" in {f.topic: f for f in doctor.cpu_findings(old)}["CPU extensions"].problem


def test_little_free_disk_is_a_problem_with_the_folders_to_move(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(doctor.shutil, "disk_usage", lambda path: type("U", (), {"total": 100 * 2**30, "free": 2**30})())
    [finding] = doctor.disk_findings([tmp_path / "not-yet" / "cache"])
    assert "1.0 GiB free" in finding.value and "TUTOR_TUNE_CACHE" in finding.fix


def test_pins_that_differ_are_warnings_and_missing_packages_block(tmp_path: Path) -> None:
    requirements = tmp_path / "requirements.txt"
    requirements.write_text(f"# comment\ntorch=={torch.__version__}\nno-such-package-xyz==1.0\n", encoding="utf-8")
    findings = doctor.package_findings(requirements)
    assert [(f.topic, f.blocking) for f in findings] == [("no-such-package-xyz", True)]
    assert findings[0].fix == "pip install no-such-package-xyz==1.0"


def test_doctor_on_a_cpu_only_machine_reports_no_gpu_and_succeeds(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setattr(doctor.shutil, "which", lambda name: None)  # no nvidia-smi
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(doctor, "cpp_compiler", lambda: "g++")
    assert doctor.main([]) == 0
    out = capsys.readouterr().out
    assert "none visible to torch" in out and "no NVIDIA driver or GPU" in out
    topics = ("Python", "torch", "4-bit", "CPU extensions", "CPU precision", "C++ compiler", "disk", "offline default")
    for topic in topics:
        assert f"  {topic} " in out, topic


def test_a_cpu_machine_without_a_cpp_compiler_is_told_whether_the_default_job_needs_one() -> None:
    missing = doctor.compiler_finding(None, "bf16-mixed")
    assert missing.blocking and "model.compile auto" in missing.problem and "apt install g++" in missing.fix
    not_needed = doctor.compiler_finding(None, "32-true")  # AVX2-only CPUs train in float32, eagerly
    assert not not_needed.blocking and not_needed.problem is None and "not needed" in not_needed.value
    found = doctor.compiler_finding("g++", "bf16-mixed")
    assert found.problem is None and found.value.startswith("g++")
