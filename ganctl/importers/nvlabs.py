"""NVlabs' StyleGAN2 network files (stylegan2-ada-pytorch, and stylegan3's StyleGAN2 networks)
as ganctl's: the settings from their init arguments, the weights by their own names.

read_snapshot() gives a Snapshot: G, D and G_ema as flat state dicts (the names ganctl's
stylegan2 networks have), the model settings, the augmentation probability and the training
resolution. Nothing in the file runs (unpickle.py).
"""

from __future__ import annotations

import hashlib
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ganctl.errors import CheckpointError
from ganctl.importers.unpickle import Persistent, read

NETWORKS = ("G", "D", "G_ema")
STYLEGAN3_CLASSES = ("SynthesisInput",)  # only stylegan3's -t / -r generators have these
LR_MULTIPLIER = 0.01  # the mapping networks' (NVlabs' default; ganctl builds no other)


@dataclass
class Snapshot:
    """What ganctl takes from an NVlabs network file."""

    source: str  # the file's name
    sha256: str
    settings: dict[str, Any]  # ganctl model settings (Config keys)
    networks: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # G, D, G_ema
    classes: int = 0  # their c_dim (0: unconditional)
    augment_p: float | None = None  # the adaptive augmentation's probability when saved
    dataset: dict[str, Any] = field(default_factory=dict)  # their training_set_kwargs

    @property
    def has_D(self) -> bool:
        return "D" in self.networks


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_snapshot(path: Path, weights: bool = True) -> Snapshot:
    """The networks of the NVlabs file at `path` (a CheckpointError in one line if it is none,
    or one ganctl cannot build)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch's TypedStorage deprecation
        data = read(path)
    name = path.name
    if not isinstance(data, dict) or not isinstance(data.get("G_ema"), Persistent):
        raise CheckpointError(f"{name} is a pickle but no NVlabs network snapshot (a dict with "
                              "G_ema, and G and D from training); give their network .pkl")
    nets = {k: data[k] for k in NETWORKS if isinstance(data.get(k), Persistent)}
    for key, net in nets.items():
        _check_stylegan2(net, key, name)
    settings = _settings(nets, name)
    classes = settings.pop("c_dim")
    snapshot = Snapshot(source=name, sha256=sha256(path), settings=settings, classes=classes,
                        augment_p=_augment_p(data.get("augment_pipe")),
                        dataset=dict(data.get("training_set_kwargs") or {}))
    if weights:
        snapshot.networks = {k: tensors(net) for k, net in nets.items()}
    return snapshot


def _check_stylegan2(net: Persistent, key: str, name: str) -> None:
    found = {p.class_name for p in _tree(net)}
    if found & set(STYLEGAN3_CLASSES):
        raise CheckpointError(f"{name} holds a StyleGAN3 (-t/-r) network, which ganctl does not "
                              "build yet; its StyleGAN2 networks (stylegan2-ada-pytorch, or "
                              "stylegan3's --cfg=stylegan2) import")
    expected = "Discriminator" if key == "D" else "Generator"
    if net.class_name != expected:
        raise CheckpointError(f"{name}: its {key} is a {net.class_name or 'nameless class'}, not "
                              f"NVlabs' StyleGAN2 {expected}")


def _tree(net: Persistent) -> list[Persistent]:
    out = [net]
    for child in net.children().values():
        out += _tree(child)
    return out


def tensors(net: Persistent, prefix: str = "") -> dict[str, torch.Tensor]:
    """The network's parameters and persistent buffers by their state-dict names."""
    state = net.state
    out: dict[str, torch.Tensor] = {}
    skip = set(state.get("_non_persistent_buffers_set") or ())
    for group in ("_parameters", "_buffers"):
        for key, value in (state.get(group) or {}).items():
            if value is None or key in skip:
                continue
            if not isinstance(value, torch.Tensor):
                raise CheckpointError(f"{prefix}{key} is no tensor; the file is damaged")
            out[prefix + key] = value.detach().clone()
    for key, child in net.children().items():
        out.update(tensors(child, f"{prefix}{key}."))
    return out


def _kwargs(net: Persistent, name: str) -> dict[str, Any]:
    kwargs = net.state.get("_init_kwargs")
    if not isinstance(kwargs, dict) or net.state.get("_init_args"):
        raise CheckpointError(f"{name}: its {net.class_name} has no init arguments ganctl can "
                              "read; the file is damaged or not NVlabs'")
    return kwargs


def _settings(nets: dict[str, Persistent], name: str) -> dict[str, Any]:
    """ganctl's model settings from G_ema's (and D's) init arguments; whatever ganctl would
    build differently is refused, naming it."""
    g = _kwargs(nets["G_ema"], name)
    mapping = dict(g.get("mapping_kwargs") or {})
    synthesis = dict(g.get("synthesis_kwargs") or {})
    _refuse_unknown(mapping, ("num_layers", "lr_multiplier"), "G's mapping_kwargs", name)
    _refuse_unknown(synthesis, ("channel_base", "channel_max", "num_fp16_res", "conv_clamp",
                                "architecture"), "G's synthesis_kwargs", name)
    if synthesis.get("architecture", "skip") != "skip":
        raise CheckpointError(f"{name}: G's architecture is {synthesis['architecture']!r}; "
                              "ganctl builds the skip generator every NVlabs config uses")
    if mapping.get("lr_multiplier", LR_MULTIPLIER) != LR_MULTIPLIER:
        raise CheckpointError(f"{name}: G's mapping lr_multiplier is {mapping['lr_multiplier']}; "
                              f"ganctl builds {LR_MULTIPLIER}")
    resolution = int(g["img_resolution"])
    if resolution < 4 or 2 ** int(math.log2(resolution)) != resolution:
        raise CheckpointError(f"{name}: its resolution {resolution} is no power of two")
    settings: dict[str, Any] = {
        "arch": "stylegan2", "resolution": resolution, "channels": int(g["img_channels"]),
        "z_dim": int(g["z_dim"]), "w_dim": int(g["w_dim"]),
        "conditional": int(g.get("c_dim", 0)) > 0,
        "mapping_layers": int(mapping.get("num_layers", 8)),
        "channel_base": int(synthesis.get("channel_base", 32768)),
        "g_width": int(synthesis.get("channel_max", 512)),
        "reduced_res": int(synthesis.get("num_fp16_res", 0)),
        "conv_clamp": float(synthesis.get("conv_clamp") or 0.0),
        "spectral_norm": "off", "c_dim": int(g.get("c_dim", 0)),
    }
    if "D" in nets:
        settings.update(_d_settings(_kwargs(nets["D"], name), settings, name))
    else:
        settings["d_width"] = settings["g_width"]
    return settings


def _d_settings(d: dict[str, Any], g: dict[str, Any], name: str) -> dict[str, Any]:
    _refuse_unknown(d, ("c_dim", "img_resolution", "img_channels", "architecture",
                        "channel_base", "channel_max", "num_fp16_res", "conv_clamp", "cmap_dim",
                        "block_kwargs", "mapping_kwargs", "epilogue_kwargs"), "D's arguments", name)
    epilogue = dict(d.get("epilogue_kwargs") or {})
    _refuse_unknown(epilogue, ("mbstd_group_size", "mbstd_num_channels"), "D's epilogue_kwargs", name)
    for key in ("block_kwargs", "mapping_kwargs"):
        if d.get(key):
            raise CheckpointError(f"{name}: D's {key} {dict(d[key])} differ from NVlabs' defaults, "
                                  "which ganctl builds")
    if d.get("cmap_dim") is not None or epilogue.get("mbstd_num_channels", 1) != 1:
        raise CheckpointError(f"{name}: D's cmap_dim or mbstd_num_channels differ from NVlabs' "
                              "defaults, which ganctl builds")
    architecture = d.get("architecture", "resnet")
    if architecture not in ("resnet", "orig"):
        raise CheckpointError(f"{name}: D's architecture is {architecture!r}; ganctl builds resnet "
                              "and orig")
    same = {"img_resolution": g["resolution"], "img_channels": g["channels"], "c_dim": g["c_dim"],
            "channel_base": g["channel_base"], "num_fp16_res": g["reduced_res"],
            "conv_clamp": g["conv_clamp"] or None}
    for key, value in same.items():
        theirs = d.get(key, {"channel_base": 32768, "num_fp16_res": 0, "conv_clamp": None,
                             "c_dim": 0}.get(key))
        if theirs != value and not (key == "conv_clamp" and theirs is not None
                                     and float(theirs) == value):
            raise CheckpointError(f"{name}: D's {key} ({theirs}) differs from G's ({value}); "
                                  "ganctl builds them alike")
    return {"d_width": int(d.get("channel_max", 512)), "d_arch": architecture,
            "mbstd_group": int(epilogue.get("mbstd_group_size", 4))}


def _refuse_unknown(kwargs: dict[str, Any], known: tuple[str, ...], what: str, name: str) -> None:
    unknown = sorted(set(kwargs) - set(known))
    if unknown:
        raise CheckpointError(f"{name}: {what} has {', '.join(map(str, unknown))}, which ganctl's "
                              "StyleGAN2 does not build")


def _augment_p(pipe: Any) -> float | None:
    if not isinstance(pipe, Persistent):
        return None
    p = (pipe.state.get("_buffers") or {}).get("p")
    return float(p) if isinstance(p, torch.Tensor) and p.numel() == 1 else None
