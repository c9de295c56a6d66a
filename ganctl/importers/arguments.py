"""NVlabs' init arguments (a persistent network's `_init_kwargs`) as ganctl's model settings.

Their StyleGAN2 comes in two code bases whose files differ in form and defaults:
stylegan2-ada-pytorch's Generator takes `mapping_kwargs` and `synthesis_kwargs` (defaults: no
fp16 blocks, no clamp), stylegan3's `networks_stylegan2.Generator` the synthesis arguments at
its top level (defaults: 4 fp16 blocks, clamp 256); a file leaves out what its train.py did not
set, so the form tells which defaults hold. Their TensorFlow converter (legacy.py) writes every
argument out. An argument that changes what the networks compute must be one ganctl builds (a
ConfigError-free Config follows); one that only steers their training (w_avg_beta,
freeze_layers, fused_modconv_default, fp16_channels_last) is read and set aside.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ganctl.config import MAX_CLASSES
from ganctl.errors import CheckpointError

ADA, SG3 = "stylegan2-ada-pytorch", "stylegan3"
FILTER = [1, 3, 3, 1]  # their resample_filter, the only one ganctl builds
LR_MULTIPLIER = 0.01  # their mapping networks' (ganctl builds no other)
D_MAPPING_LAYERS = 8  # a conditional D's class mapping (models.stylegan2.D_MAPPING_LAYERS)
MBSTD_GROUP = 4  # their train.py's, when their file says None (the whole batch)
PRECISION: dict[str, dict[str, Any]] = {ADA: {"num_fp16_res": 0, "conv_clamp": None},
             SG3: {"num_fp16_res": 4, "conv_clamp": 256}}
TRAINING_ONLY = frozenset({"w_avg_beta", "freeze_layers", "fused_modconv_default",
                           "fp16_channels_last"})
# the arguments a part takes and, for those ganctl builds one way, that way (None: read below)
MAPPING = {"num_layers": None, "embed_features": None, "layer_features": None,
           "activation": "lrelu", "lr_multiplier": LR_MULTIPLIER}
SYNTHESIS = {"channel_base": None, "channel_max": None, "num_fp16_res": None, "conv_clamp": None,
             "architecture": "skip", "resample_filter": FILTER, "use_noise": True,
             "activation": "lrelu", "kernel_size": 3}
G_TOP = ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels", "mapping_kwargs")
D_TOP = {"c_dim": None, "img_resolution": None, "img_channels": None, "architecture": None,
         "channel_base": None, "channel_max": None, "num_fp16_res": None, "conv_clamp": None,
         "cmap_dim": None, "block_kwargs": None, "mapping_kwargs": None, "epilogue_kwargs": None}
D_BLOCK = {"activation": "lrelu", "resample_filter": FILTER}
D_EPILOGUE = {"mbstd_group_size": None, "mbstd_num_channels": 1, "activation": "lrelu"}


class Unbuildable(Exception):
    """A network ganctl's StyleGAN2 does not build; the message says which argument (the caller
    names the file)."""


def generator_settings(kwargs: Mapping[str, Any], name: str) -> tuple[dict[str, Any], str]:
    """ganctl's model settings (Config keys, plus c_dim) from G's init arguments, and the code
    base that wrote them (ADA or SG3)."""
    base = ADA if "synthesis_kwargs" in kwargs else SG3
    top = dict(kwargs)
    synthesis = dict(_part(top.pop("synthesis_kwargs", {}), "G's synthesis_kwargs", name)) \
        if base == ADA else {k: top.pop(k) for k in list(top) if k not in G_TOP}
    mapping = _part(top.get("mapping_kwargs", {}), "G's mapping_kwargs", name)
    _known(top, G_TOP, "G's arguments", name)
    w_dim = _whole(top, "w_dim", None, "G", name)
    _check(mapping, MAPPING, "G's mapping_kwargs", name)
    for key in ("layer_features", *(("embed_features",) if top.get("c_dim") else ())):
        if mapping.get(key) not in (None, w_dim):
            raise Unbuildable(f"G's mapping {key} is {_text(mapping[key])}, not w_dim {w_dim}, "
                              "which ganctl builds")
    _check(synthesis, SYNTHESIS, "G's synthesis arguments", name)
    resolution = _whole(top, "img_resolution", None, "G", name)
    if resolution < 4 or 2 ** round(math.log2(resolution)) != resolution:
        raise Unbuildable(f"its resolution {resolution} is no power of two")
    precision = {**PRECISION[base], **synthesis}
    classes = _whole(top, "c_dim", 0, "G", name)
    if classes > MAX_CLASSES:  # before anything is made per class (their names)
        raise CheckpointError(f"{name}: G's c_dim is {classes}, more classes than ganctl holds "
                              f"({MAX_CLASSES}); the file is damaged or not NVlabs'")
    return {
        "arch": "stylegan2", "resolution": resolution,
        "channels": _whole(top, "img_channels", None, "G", name),
        "z_dim": _whole(top, "z_dim", None, "G", name), "w_dim": w_dim,
        "c_dim": classes, "conditional": bool(classes),
        "mapping_layers": _whole(mapping, "num_layers", 8, "G's mapping", name),
        "channel_base": _whole(synthesis, "channel_base", 32768, "G", name),
        "g_width": _whole(synthesis, "channel_max", 512, "G", name),
        "reduced_res": _whole(precision, "num_fp16_res", 0, "G", name),
        "conv_clamp": _clamp(precision.get("conv_clamp"), "G", name),
        "spectral_norm": "off",
    }, base


def discriminator_settings(kwargs: Mapping[str, Any], g: dict[str, Any], base: str, name: str
                           ) -> tuple[dict[str, Any], list[str]]:
    """ganctl's D settings (d_width, d_arch, mbstd_group) from D's init arguments and notes on
    what was set aside; Unbuildable if ganctl's D (one channel_base, fp16 blocks and clamp with
    G, NVlabs' default class mapping) cannot be theirs."""
    d = dict(kwargs)
    _check(d, D_TOP, "D's arguments", name)
    _check(_part(d.get("block_kwargs", {}), "D's block_kwargs", name), D_BLOCK, "D's block_kwargs",
           name)
    epilogue = _part(d.get("epilogue_kwargs", {}), "D's epilogue_kwargs", name)
    _check(epilogue, D_EPILOGUE, "D's epilogue_kwargs", name)
    precision = {**PRECISION[base], **d}
    same = {"img_resolution": ("resolution", None), "img_channels": ("channels", None),
            "c_dim": ("c_dim", 0), "channel_base": ("channel_base", 32768),
            "num_fp16_res": ("reduced_res", precision["num_fp16_res"])}
    for key, (ours, default) in same.items():
        if _whole(d, key, default, "D", name) != g[ours]:
            raise Unbuildable(f"D's {key} ({d.get(key, default)}) differs from G's ({g[ours]}); "
                              "ganctl builds them alike")
    if _clamp(precision.get("conv_clamp"), "D", name) != g["conv_clamp"]:
        raise Unbuildable(f"D's conv_clamp ({precision.get('conv_clamp')}) differs from G's; ganctl "
                          "builds them alike")
    width = _whole(d, "channel_max", 512, "D", name)
    if g["c_dim"]:
        _class_mapping(d, g, width, name)
    architecture = d.get("architecture", "resnet")
    if architecture not in ("resnet", "orig"):
        raise Unbuildable(f"D's architecture is {_text(architecture)}; ganctl builds resnet and "
                          "orig")
    notes, group = [], epilogue.get("mbstd_group_size", 4)
    if group is None:  # the whole batch in their code
        notes.append(f"D's minibatch-stddev group is None (the whole batch); ganctl uses "
                     f"{MBSTD_GROUP}, as NVlabs' train.py does when it fine-tunes")
        group = MBSTD_GROUP
    settings = {"d_width": width, "d_arch": architecture,
                "mbstd_group": _whole({"g": group}, "g", None, "D's mbstd_group_size", name)}
    return settings, notes


def _class_mapping(d: dict[str, Any], g: dict[str, Any], width: int, name: str) -> None:
    """A conditional D's class mapping: NVlabs' default, which ganctl builds."""
    cmap = min(g["channel_base"] // 4, width)
    theirs = d.get("cmap_dim")
    if theirs is not None and not (type(theirs) is int and theirs == cmap):
        raise Unbuildable(f"D's cmap_dim is {_text(theirs)}, not {cmap}; ganctl builds {cmap}")
    mapping = _part(d.get("mapping_kwargs", {}), "D's mapping_kwargs", name)
    layers = mapping.get("num_layers", D_MAPPING_LAYERS)
    if layers != D_MAPPING_LAYERS or any(mapping.get(k) not in (None, cmap)
                                         for k in ("embed_features", "layer_features")):
        raise Unbuildable(f"D's class mapping has {_text(layers)} layers (features "
                          f"{_text(mapping.get('layer_features'))}); ganctl builds "
                          f"{D_MAPPING_LAYERS} of {cmap}")
    _check(mapping, MAPPING, "D's mapping_kwargs", name)


def _part(value: Any, what: str, name: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise CheckpointError(f"{name}: {what} is no table of arguments; the file is damaged or "
                              "not NVlabs'")
    return value


def _known(kwargs: Mapping[str, Any], known: tuple[str, ...] | dict[str, Any], what: str,
           name: str) -> None:
    unknown = sorted(set(kwargs) - set(known) - TRAINING_ONLY)
    if unknown:
        shown = ", ".join(repr(k[:40]) for k in unknown[:4])
        raise Unbuildable(f"{what} include {shown}, which ganctl's StyleGAN2 does not build")


def _check(kwargs: Mapping[str, Any], spec: dict[str, Any], what: str, name: str) -> None:
    """Only the arguments of `spec` (and training-only ones), each fixed one as ganctl builds."""
    _known(kwargs, spec, what, name)
    for key, value in spec.items():
        if value is None or key not in kwargs:
            continue
        given = kwargs[key]
        same = list(given) == value if isinstance(value, list) and isinstance(given, list | tuple) \
            else type(given) is type(value) and given == value
        if not same:
            raise Unbuildable(f"{what}: {key} is {_text(given)}, where ganctl builds {value}")


MAX_WHOLE = 2**31 - 1  # past any network's size (ganctl's bounds come after, with their words)


def _text(value: Any) -> str:
    """A value from the file, short, for a one-line message (an int of 5,000 digits has no str)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_WHOLE:
        return f"an integer of {value.bit_length()} bits"
    try:
        text = repr(value) if isinstance(value, str) else str(value)
    except (ValueError, RecursionError):  # (a list holding such an int, a list inside itself)
        return f"a {type(value).__name__}"
    return text if len(text) <= 40 else text[:40] + "..."


def _whole(kwargs: Mapping[str, Any], key: str, default: int | None, who: str, name: str) -> int:
    value = kwargs.get(key, default)
    if type(value) is not int or not 0 <= value <= MAX_WHOLE:
        raise CheckpointError(f"{name}: {who}'s {key} is {_text(value)}, not a whole number; the "
                              "file is damaged or not NVlabs'")
    return value


def _clamp(value: Any, who: str, name: str) -> float:
    """conv_clamp as ganctl's setting (0: none)."""
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= MAX_WHOLE:
        raise CheckpointError(f"{name}: {who}'s conv_clamp is {_text(value)}, not a positive "
                              "number; the file is damaged or not NVlabs'")
    return float(value)
