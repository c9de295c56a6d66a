"""Device choice. Nothing here touches CUDA at import, so --help and the tests run on a CPU."""

from __future__ import annotations

import os
from contextlib import AbstractContextManager, nullcontext

import torch

from ganctl.config import PRECISIONS
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


def resolve_precision(spec: str, device: torch.device) -> str:
    """--precision for `device`: 'auto' is bf16 on a CUDA GPU with bf16 (Ampere and newer) and
    fp32 elsewhere (CPU, MPS, older GPUs: fp16 is never chosen for the user, it needs loss
    scaling and can overflow); an explicit choice the device cannot run is a DeviceError."""
    if spec not in PRECISIONS:
        raise DeviceError(f"unknown precision {spec!r}; use one of {', '.join(PRECISIONS)}")
    if spec == "auto":
        return "bf16" if device.type == "cuda" and _cuda_bf16(device) else "fp32"
    if spec == "bf16" and device.type == "cuda" and not _cuda_bf16(device):
        raise DeviceError(f"{describe(device)} has no bfloat16 support; use --precision fp16 "
                          "(with loss scaling) or fp32")
    if spec == "fp16" and device.type == "mps":
        raise DeviceError("--precision fp16 needs a CUDA GPU or the CPU here; use fp32 on mps")
    return spec


def _cuda_bf16(device: torch.device) -> bool:
    return torch.cuda.get_device_capability(device)[0] >= 8  # native bf16 from Ampere (sm_80)


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
        return {"fp32": "fp32", "tf32": "tf32 (float32 weights, TensorFloat-32 math)",
                "bf16": "bf16 autocast (float32 weights)",
                "fp16": "fp16 autocast with loss scaling (float32 weights)"}[self.name]
