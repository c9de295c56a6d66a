"""Frozen pretrained networks a discriminator may stand on (Projected GAN's EfficientNet, say).

A network that uses one subclasses WithFrozen and attaches the backbone's structure by its name
in BACKBONES. The backbone is held outside the module tree: not in parameters(), state_dict() or
modules(), so it is never re-initialised, never spectrally normalised, never given to the
optimizer and never written into a checkpoint; it moves with its owner (the device, the memory
layout) and stays in eval mode. Models do no I/O: its weights are loaded after the networks are
built (load_backbones, through weights.locate: --backbone-weights, the backbone's environment
variable, the cache, download). A checkpoint records each backbone's name and sha256, and resume
refuses a file with another digest (check_recorded). A new backbone is one Backbone entry.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from ganctl.errors import CheckpointError, GanctlError, shorten
from ganctl.fsutil import sha256_file
from ganctl.weights import WeightsFile, locate


@dataclass(frozen=True)
class Backbone:
    name: str
    weights: WeightsFile  # where its safetensors file is found
    build: Callable[[], nn.Module]  # its structure (the weights come from the file)


BACKBONES: dict[str, Backbone] = {}


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
    --backbone-weights flag); their sha256 by name. One-line errors name the file."""
    loaded = {}
    for name, frozen in attached(net).items():
        spec = BACKBONES.get(name)
        if spec is None:
            raise GanctlError(f"backbone {shorten(name)!r} is not one ganctl knows; known: "
                              f"{', '.join(BACKBONES) or 'none'}")
        file = locate(spec.weights, path or None, download)
        loaded[name] = sha256_file(file)
        try:
            frozen.load_state_dict(_read(file, name), strict=True)
        except RuntimeError as e:  # other names or shapes
            raise GanctlError(f"{file} does not hold the weights of backbone {name!r} "
                              f"({shorten(' '.join(str(e).split()), 200)}); give its weights "
                              "file") from None
    return loaded


def _read(file: Path, name: str) -> dict[str, Any]:
    from safetensors import SafetensorError  # noqa: PLC0415
    from safetensors.torch import load_file  # noqa: PLC0415

    try:
        return load_file(file)
    except (SafetensorError, OSError, ValueError) as e:
        raise GanctlError(f"{file} is not a readable safetensors file of backbone {name!r} "
                          f"({shorten(str(e), 200)}); give its weights file") from None


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
