"""Device choice. Nothing here touches CUDA at import, so --help and the tests run on a CPU."""

from __future__ import annotations

import functools
import os
import platform
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from ganctl.config import PRECISIONS, Config
from ganctl.errors import DeviceError


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps and mps.is_available())


def _freest_cuda() -> int:
    """Index of the visible GPU with the most free memory (CUDA_VISIBLE_DEVICES respected)."""
    free = [torch.cuda.mem_get_info(i)[0] for i in range(torch.cuda.device_count())]
    return max(range(len(free)), key=free.__getitem__)


def resolve_device(spec: str) -> torch.device:
    """'auto' | 'cpu' | 'cuda' | 'cuda:K' | 'mps' -> a device that exists here, or DeviceError."""
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", _freest_cuda())
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "mps":
        if not _mps_available():
            raise DeviceError("--device mps was asked for but this torch sees no Apple MPS "
                              "device; use --device auto or cpu")
        return torch.device("mps")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(f"--device {spec} was asked for but this torch sees no CUDA GPU "
                              "(check the driver and CUDA_VISIBLE_DEVICES); use --device auto or cpu")
        count = torch.cuda.device_count()
        index = int(spec.split(":")[1]) if ":" in spec else _freest_cuda()
        if index >= count:
            raise DeviceError(f"--device {spec} was asked for but only {count} CUDA GPU(s) are "
                              f"visible (cuda:0 to cuda:{count - 1})")
        return torch.device("cuda", index)
    raise DeviceError(f"unknown device {spec!r}; use auto, cpu, cuda, cuda:K or mps")


def memory_format(device: torch.device) -> torch.memory_format:
    """The layout of images and convolution weights: channels_last (NHWC) where convolutions are
    fastest in it (CUDA's tensor cores, the CPU's oneDNN: about 20% more images/s for DCGAN on
    2 cores), torch's default on MPS."""
    return torch.channels_last if device.type in ("cuda", "cpu") else torch.contiguous_format


def describe(device: torch.device) -> str:
    """Human name of the device, e.g. 'cuda:0 (NVIDIA H100 80GB HBM3)'."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def configure_determinism(deterministic: bool) -> None:
    """Exact repeatability on GPUs (slower), or the fastest kernels (cuDNN autotuning)."""
    if deterministic:
        # cuBLAS needs a fixed workspace to be deterministic; set before the first matmul
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    if torch.are_deterministic_algorithms_enabled() != deterministic:
        # only when it changes: the call imports torch's compiler stack, seconds of start-up
        torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = deterministic


# --- precision -------------------------------------------------------------------------------

_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(spec: str, device: torch.device, config: Config) -> str:
    """--precision for `device` and `config`'s model: 'auto' is bf16 on a CUDA GPU with bf16
    (Ampere and newer), bf16 on a CPU with native bf16 for a model it was measured faster for
    (CPU_BF16_FASTER), and fp32 elsewhere (other CPUs and models, MPS, older GPUs: fp16 is
    never chosen for the user, it needs loss scaling and can overflow). The choice depends on
    the machine and the config only, never on a timing, so a run (and a test comparing two) is
    repeatable. An explicit choice the device cannot run is a DeviceError."""
    if spec not in PRECISIONS:
        raise DeviceError(f"unknown precision {spec!r}; use one of {', '.join(PRECISIONS)}")
    if spec == "auto":
        if device.type == "cuda":
            return "bf16" if _cuda_bf16(device) else "fp32"
        return "bf16" if device.type == "cpu" and cpu_bf16_faster(config) else "fp32"
    if spec == "bf16" and device.type == "cuda" and not _cuda_bf16(device):
        raise DeviceError(f"{describe(device)} has no bfloat16 support; use --precision fp16 "
                          "(with loss scaling) or fp32")
    if spec == "fp16" and device.type == "mps":
        raise DeviceError("--precision fp16 needs a CUDA GPU or the CPU here; use fp32 on mps")
    return spec


def _cuda_bf16(device: torch.device) -> bool:
    return torch.cuda.get_device_capability(device)[0] >= 8  # native bf16 from Ampere (sm_80)


# --- bf16 on a CPU ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Bf16Faster:
    """The smallest model of an arch whose train step ran faster in bf16 autocast than in fp32
    on a CPU with native bf16: `resolution` px and base widths (G's and D's) of `width`. Larger
    models do more arithmetic per step, which is what bf16 speeds up; smaller ones were not
    measured (tiny ones spend their step in overheads that casting to bf16 only adds to)."""

    resolution: int
    width: int


# Where auto picks bf16 on a CPU with native bf16; an arch not here stays fp32 (auto must never
# make a run slower, and only these were measured faster). Issue 22: on a CPU with AVX512-BF16 /
# AMX, a DCGAN-64 train step (64 px, widths 64, batch 128, channels_last) ran 1.8x faster in bf16
# than in fp32. benchmarks/cpu_precision.py measures each arch on a new CPU (RESULTS.md has the
# numbers); a row goes here only where it shows bf16 faster.
CPU_BF16_FASTER: dict[str, Bf16Faster] = {"dcgan": Bf16Faster(resolution=64, width=64)}

NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # x86's bf16 arithmetic (Cooper Lake, Zen 4, SPR)
X86 = ("x86_64", "amd64", "i386", "i686")


def cpu_bf16_faster(config: Config) -> bool:
    """Whether bf16 autocast was measured faster than fp32 for `config`'s model on a CPU like
    this one: native bf16 here and a model at least as large as one in CPU_BF16_FASTER."""
    smallest = CPU_BF16_FASTER.get(config.arch)
    return (smallest is not None and config.resolution >= smallest.resolution
            and min(config.g_width, config.d_width) >= smallest.width and cpu_bf16() == "native")


@functools.cache
def cpu_bf16() -> str:
    """How this CPU does bf16 math: 'native' (x86 with AVX512-BF16 or AMX-BF16: oneDNN's bf16
    convolutions outrun fp32 there), 'emulated' (other x86 CPUs: converted to float32 and back,
    slower than fp32) or 'unknown' (ARM, Apple silicon included, and machines where neither
    torch nor the OS says: bf16 was not measured there, so auto keeps fp32). Torch's own CPU
    capabilities where this torch has them, else Linux's /proc/cpuinfo flags; cached (the CPU
    does not change under a process)."""
    if platform.machine().lower() not in X86:
        return "unknown"
    capabilities = getattr(torch.cpu, "get_capabilities", None)  # newer torch only
    flags = ({name for name, on in capabilities().items() if on is True} if capabilities is not None
             else _cpuinfo_flags())
    if flags is None:
        return "unknown"
    return "native" if flags.intersection(NATIVE_BF16_FLAGS) else "emulated"


def cpu_bf16_emulated() -> bool:
    """Whether --precision bf16 is known to be slower than fp32 on this CPU (the run says so)."""
    return cpu_bf16() == "emulated"


def _cpuinfo_flags(path: Path = Path("/proc/cpuinfo")) -> set[str] | None:
    """The first CPU's feature flags from Linux's /proc/cpuinfo; None off Linux."""
    try:
        with path.open() as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.partition(":")[2].split())
    except OSError:
        return None
    return None


class Precision:
    """How a phase's forwards run: `name` is fp32 (strict IEEE float32), tf32 (float32 with
    TensorFloat-32 matmuls and convolutions on CUDA), bf16 or fp16 (autocast: matmuls and
    convolutions in that type, reductions and losses in float32). Weights, optimizer state and
    the EMA stay float32 in every mode."""

    def __init__(self, name: str, device: torch.device) -> None:
        self.name = name
        self.device = device
        self.dtype = _AUTOCAST.get(name)  # None: no autocast

    @property
    def scaled(self) -> bool:
        """Whether gradients need loss scaling (fp16's narrow exponent underflows without it)."""
        return self.name == "fp16"

    def apply(self) -> None:
        """Set torch's float32 matmul/convolution mode on CUDA for this precision (global)."""
        if self.device.type == "cuda":
            fast = self.name != "fp32"  # under autocast, what stays float32 may use TF32 too
            torch.backends.cuda.matmul.allow_tf32 = fast
            torch.backends.cudnn.allow_tf32 = fast

    def autocast(self) -> AbstractContextManager[object]:
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def describe(self) -> str:
        if self.name == "tf32" and self.device.type != "cuda":  # TensorFloat-32 is a CUDA GPU's
            return "fp32 (tf32 asked for: a CUDA GPU's)"
        return {"fp32": "fp32", "tf32": "tf32 (float32 weights, TensorFloat-32 math)",
                "bf16": "bf16 autocast (float32 weights)",
                "fp16": "fp16 autocast with loss scaling (float32 weights)"}[self.name]
