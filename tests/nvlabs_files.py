"""NVlabs network files made by the tests, without NVlabs' code: ganctl's own StyleGAN2 networks
pickled as stylegan2-ada-pytorch pickles them (every module a torch_utils.persistence object of
its class name and state, init arguments as their train.py writes them, EasyDicts, tensors as
torch pickles them), and any global (a payload such as os.system) wherever a test puts it.

Used by test_importer.py (the reader and its security) and test_cli_import.py (the commands).
"""

from __future__ import annotations

import io
import os
import pickle
import struct
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from ganctl.config import Config
from ganctl.models import get_arch

PERSISTENCE = ("torch_utils.persistence", "_reconstruct_persistent_obj")
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
# a tiny StyleGAN2 at 32x32 (16 feature maps, z and w of 8)
TINY = {"arch": "stylegan2", "resolution": 32, "channels": 3, "z_dim": 8, "w_dim": 8,
        "mapping_layers": 2, "channel_base": 512, "g_width": 16, "d_width": 16, "reduced_res": 0,
        "conv_clamp": 0.0, "mbstd_group": 4, "d_arch": "resnet", "spectral_norm": "off"}


class Global:
    """A global as a pickle names it (module, name): what a file may name, whatever exists."""

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name

    def __call__(self, *args: Any) -> Any:  # (save_reduce wants a callable)
        raise AssertionError("a test's Global is never called")


class Call:
    """Pickles as a call of `function` (a Global, or a real function such as os.system) with
    `args`: what a file makes its reader call."""

    def __init__(self, function: Any, *args: Any) -> None:
        self.function, self.args = function, args


def call(module: str, name: str, *args: Any) -> Call:
    return Call(Global(module, name), *args)


class Raw:
    """Opcodes written as they are (bytes of a pickle's middle), for tricks no object makes."""

    def __init__(self, data: bytes) -> None:
        self.data = data


class _Pickler(pickle._Pickler):
    dispatch = dict(pickle._Pickler.dispatch)

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, Call):
            return obj.function, obj.args
        return NotImplemented

    def save_global_name(self, obj: Global) -> None:
        if self.proto >= 4:
            self.save(obj.module)
            self.save(obj.name)
            self.write(pickle.STACK_GLOBAL)
        else:
            self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
        self.memoize(obj)

    def save_raw(self, obj: Raw) -> None:
        self.write(obj.data)


_Pickler.dispatch[Global] = _Pickler.save_global_name
_Pickler.dispatch[Raw] = _Pickler.save_raw


def dumps(obj: Any, protocol: int = 4) -> bytes:
    buffer = io.BytesIO()
    _Pickler(buffer, protocol=protocol).dump(obj)
    return buffer.getvalue()


def easydict(**values: Any) -> Call:
    return call("dnnlib.util", "EasyDict", dict(values))


def persistent(class_name: str, state: dict[str, Any]) -> Call:
    """An NVlabs persistent object: their loader would exec module_src; ganctl's never reads it."""
    meta = {"type": "class", "version": 6, "module_src": "raise SystemExit('module source run')",
            "class_name": class_name, "state": state}
    return call(*PERSISTENCE, meta)


def module_state(module: nn.Module, kwargs: dict[str, Any] | None = None,
                 extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """A torch module's __dict__ as NVlabs' pickles hold it: parameters, buffers, children (each
    persistent), init arguments."""
    return {"training": False,
            "_parameters": OrderedDict(module._parameters),
            "_buffers": OrderedDict(module._buffers),
            "_non_persistent_buffers_set": set(module._non_persistent_buffers_set),
            "_modules": OrderedDict((k, as_persistent(m)) for k, m in module._modules.items()),
            "_init_args": (), "_init_kwargs": kwargs if kwargs is not None else {},
            **(extra or {})}


def as_persistent(module: nn.Module, kwargs: dict[str, Any] | None = None) -> Call:
    return persistent(type(module).__name__, module_state(module, kwargs))


def config(**changes: Any) -> Config:
    values = {**TINY, **changes}
    if values.get("conditional") and "classes" not in values:
        values["classes"] = tuple(str(i) for i in range(10))
    return Config(**values)


def networks(cfg: Config, seed: int = 0) -> dict[str, nn.Module]:
    """G, D and G_ema of `cfg`, every weight and buffer random (w_avg and noise included)."""
    torch.manual_seed(seed)
    arch = get_arch("stylegan2")
    G, D, G_ema = arch.build_generator(cfg), arch.build_discriminator(cfg), arch.build_generator(cfg)
    for net in (G, D, G_ema):
        with torch.no_grad():
            for name, tensor in net.state_dict().items():
                if tensor.is_floating_point() and not name.endswith("resample_filter"):
                    tensor.copy_(torch.randn_like(tensor) * 0.3)
    return {"G": G.eval(), "D": D.eval(), "G_ema": G_ema.eval()}


def g_kwargs(cfg: Config, form: str = "ada") -> dict[str, Any]:
    """G's init arguments as stylegan2-ada-pytorch's train.py (ada), stylegan3's (sg3: synthesis
    arguments at the top, fp16 and clamp left to their defaults when `cfg` has theirs) or their
    TensorFlow converter (tf: every argument written out) records them."""
    c_dim = len(cfg.classes) if cfg.conditional else 0
    top = {"z_dim": cfg.z_dim, "c_dim": c_dim, "w_dim": cfg.w_dim, "img_resolution": cfg.resolution,
           "img_channels": cfg.channels}
    synthesis = {"channel_base": cfg.channel_base, "channel_max": cfg.g_width,
                 "num_fp16_res": cfg.reduced_res, "conv_clamp": cfg.conv_clamp or None}
    mapping: dict[str, Any] = {"num_layers": cfg.mapping_layers}
    if form == "sg3":
        for key, default in (("num_fp16_res", 4), ("conv_clamp", 256)):
            if synthesis[key] == default:
                del synthesis[key]
        return {**top, "mapping_kwargs": easydict(**mapping), **synthesis,
                "fused_modconv_default": "inference_only"}
    if form == "tf":
        mapping.update(embed_features=None, layer_features=None, activation="lrelu",
                       lr_multiplier=0.01, w_avg_beta=0.995)
        synthesis.update(architecture="skip", resample_filter=[1, 3, 3, 1], use_noise=True,
                         activation="lrelu")
    return {**top, "mapping_kwargs": easydict(**mapping), "synthesis_kwargs": easydict(**synthesis)}


def d_kwargs(cfg: Config, form: str = "ada", mbstd: Any = "cfg") -> dict[str, Any]:
    c_dim = len(cfg.classes) if cfg.conditional else 0
    kwargs: dict[str, Any] = {
        "c_dim": c_dim, "img_resolution": cfg.resolution, "img_channels": cfg.channels,
        "architecture": cfg.d_arch, "channel_base": cfg.channel_base, "channel_max": cfg.d_width,
        "num_fp16_res": cfg.reduced_res, "conv_clamp": cfg.conv_clamp or None,
        "block_kwargs": easydict(), "mapping_kwargs": easydict(),
        "epilogue_kwargs": easydict(mbstd_group_size=cfg.mbstd_group if mbstd == "cfg" else mbstd)}
    if form == "tf":
        kwargs.update(cmap_dim=None, block_kwargs=easydict(activation="lrelu",
                                                           resample_filter=[1, 3, 3, 1],
                                                           freeze_layers=0),
                      mapping_kwargs=easydict(num_layers=0, embed_features=None,
                                              layer_features=None, activation="lrelu",
                                              lr_multiplier=0.1),
                      epilogue_kwargs=easydict(mbstd_group_size=mbstd if mbstd != "cfg" else
                                               cfg.mbstd_group, mbstd_num_channels=1,
                                               activation="lrelu"))
    return kwargs


def augment_pipe(p: float = 0.25) -> Call:
    return persistent("AugmentPipe", {"_parameters": OrderedDict(), "_modules": OrderedDict(),
                                      "_buffers": OrderedDict(p=torch.tensor(p)),
                                      "_init_kwargs": {"xflip": 1}, "_init_args": ()})


def snapshot(cfg: Config | None = None, nets: dict[str, nn.Module] | None = None,
             form: str = "ada", **entries: Any) -> dict[str, Any]:
    """A training snapshot as their training loop pickles it; `entries` add to or replace its
    keys (None removes one)."""
    cfg = cfg or config()
    nets = nets or networks(cfg)
    data: dict[str, Any] = {
        "G": as_persistent(nets["G"], g_kwargs(cfg, form)),
        "D": as_persistent(nets["D"], d_kwargs(cfg, form)),
        "G_ema": as_persistent(nets["G_ema"], g_kwargs(cfg, form)),
        "augment_pipe": augment_pipe(),
        "training_set_kwargs": easydict(class_name="training.dataset.ImageFolderDataset",
                                        path="~/datasets/made.zip", use_labels=cfg.conditional,
                                        max_size=100, xflip=False, resolution=cfg.resolution)}
    data.update(entries)
    return {k: v for k, v in data.items() if v is not None}


def write(path: Path, obj: Any, protocol: int = 4) -> Path:
    path.write_bytes(dumps(obj, protocol))
    return path


# --- torch's storages, as torch.storage._load_from_bytes reads them -----------------------------

def legacy_storage(values: torch.Tensor, object_pickle: bytes | None = None,
                   numel: int | None = None) -> bytes:
    """A float32 storage in torch's legacy format (five pickles, the count, the data), with its
    fourth pickle (the storage's persistent id) replaced by `object_pickle` if given."""
    key = "1"
    head = [pickle.dumps(LEGACY_MAGIC, protocol=2), pickle.dumps(1001, protocol=2),
            pickle.dumps({"protocol_version": 1001, "little_endian": True,
                          "type_sizes": {"short": 2, "int": 4, "long": 4}}, protocol=2)]
    ident = object_pickle if object_pickle is not None else (
        b"\x80\x02(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x00"
        + key.encode() + b"X\x03\x00\x00\x00cpu" + b"M" + struct.pack("<H", values.numel())
        + b"NtQ.")
    data = values.float().contiguous().numpy().tobytes()
    count = values.numel() if numel is None else numel
    return b"".join(head) + ident + pickle.dumps([key], protocol=2) + struct.pack("<q", count) + data


def tensor_from(storage_bytes: bytes, size: tuple[int, ...]) -> Call:
    """A tensor as torch pickles it, over a storage given as bytes."""
    stride = tuple(int(torch.tensor(size[i + 1:]).prod()) for i in range(len(size)))
    return call("torch._utils", "_rebuild_tensor_v2",
                call("torch.storage", "_load_from_bytes", storage_bytes), 0, size, stride, False,
                OrderedDict())


def touch(marker: Path) -> dict[str, Call]:
    """Payloads that would each write `marker` if anything ran them: a shell, eval, a process,
    an open file and a pathlib write."""
    return {"os.system": Call(os.system, f"touch {marker}"),
            "builtins.eval": Call(eval, f"open({str(marker)!r}, 'w').close()"),
            "subprocess.Popen": Call(__import__("subprocess").Popen, ["touch", str(marker)]),
            "builtins.open": Call(open, str(marker), "w"),
            "pathlib.Path.write_text": Call(Path.write_text, marker, "ran")}


# the name each payload's global has in a pickle (os.system is posix.system on Linux)
NAMED = {"os.system": f"{os.system.__module__}.system", "builtins.eval": "builtins.eval",
         "subprocess.Popen": "subprocess.Popen", "builtins.open": "io.open",
         "pathlib.Path.write_text": "pathlib.Path.write_text"}


# NVlabs' reference networks with their own outputs (../shared/models/nvlabs; tests skip without)
SHARED = Path(__file__).resolve().parents[2] / "shared" / "models" / "nvlabs"
NO_SHARED = pytest.mark.skipif(not SHARED.is_dir(), reason=f"no NVlabs fixtures at {SHARED}")
