"""Device choice. Nothing here touches CUDA at import, so --help and the tests run on a CPU."""

from __future__ import annotations

import os

import torch

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
