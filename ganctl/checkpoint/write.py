"""Writing a checkpoint: the tensors and ganctl's metadata as one safetensors file, with the
checksum of its data and metadata in the metadata, written atomically.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import torch
from safetensors.torch import save as safetensors_bytes

from ganctl import __version__
from ganctl.checkpoint.header import SCHEMA
from ganctl.errors import CheckpointError
from ganctl.fsutil import atomic_write


def save(path: Path, tensors: dict[str, torch.Tensor], config_json: str, step: int,
         extra: dict[str, str] | None = None) -> None:
    """Write a checkpoint atomically. Tensors are copied to the CPU, contiguous."""
    metadata = {
        "ganctl.version": __version__,
        "ganctl.schema": str(SCHEMA),
        "ganctl.config": config_json,
        "ganctl.step": str(step),
        **(extra or {}),
    }
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    body = safetensors_bytes(cpu, metadata=metadata)
    (n,) = struct.unpack("<Q", body[:8])
    header = json.loads(body[8:8 + n])
    data = memoryview(body)[8 + n:]
    # The checksum covers the data section and the rest of the metadata (the config, the step):
    # neither depends on the header entry the checksum goes in.
    header["__metadata__"]["ganctl.checksum"] = _checksum(data, header["__metadata__"])
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # safetensors aligns the data section to 8 bytes
    try:
        atomic_write(path, struct.pack("<Q", len(raw)) + raw, data)
    except OSError as e:
        raise CheckpointError(f"cannot write checkpoint {path}: {e.strerror}; "
                              "check free space and permissions") from None


def _checksum(data: bytes | memoryview, metadata: dict[str, str]) -> str:
    """sha256 of the data section, then of the other metadata as sorted JSON."""
    digest = hashlib.sha256(data)
    rest = {k: v for k, v in metadata.items() if k != "ganctl.checksum"}
    digest.update(json.dumps(rest, sort_keys=True).encode())
    return "sha256:" + digest.hexdigest()
