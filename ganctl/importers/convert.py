"""NVlabs' network files as ganctl checkpoints.

`ganctl import` writes one (write_checkpoint); `sample`, `eval`, `export`, `inspect` and
`train --init-from` take a .pkl where they take a checkpoint, through locate(), which imports it
on the fly: into a temporary checkpoint, opened and verified as any other, then deleted (its
open descriptor keeps the bytes; the Header names the .pkl). The checkpoint holds G, D (when the
file has one ganctl builds), G_ema (with mapping.w_avg) at step 0, a config of arch stylegan2
with the network's settings (the rest stylegan2's defaults for its resolution; a conditional
network's classes named "0".."K-1", as NVlabs' files name none), and under ganctl.imported
(JSON) where it came from: the file's name and sha256, the code that wrote it, what it trained
on, its augmentation probability and the notes of what was set aside.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from ganctl import checkpoint, rundir
from ganctl.config import Config
from ganctl.errors import CheckpointError, ConfigError
from ganctl.importers.nvlabs import Snapshot, read_snapshot
from ganctl.models import get_arch

SUFFIXES = (".pkl", ".pickle")  # what names an NVlabs network file where a checkpoint goes
IMPORTED = "ganctl.imported"  # the metadata key of an imported checkpoint's provenance
FORMAT = "NVlabs network pickle"


def is_network_file(target: str | os.PathLike[str] | None) -> bool:
    """Whether a command's target names an NVlabs network file (by its suffix)."""
    return target is not None and Path(os.fspath(target)).suffix.lower() in SUFFIXES


def class_names(count: int) -> tuple[str, ...]:
    """A conditional network's class names: NVlabs' files hold only their number (c_dim)."""
    return tuple(str(i) for i in range(count))


def config_of(snapshot: Snapshot) -> Config:
    """The ganctl config of the file's networks: arch stylegan2 with their settings, the rest
    as `ganctl train --arch stylegan2` at their resolution would have it."""
    from ganctl.settings import resolve_config  # (settings imports this module's locate)

    values = {**snapshot.settings, "conditional": snapshot.classes > 0,
              "classes": class_names(snapshot.classes)}
    try:
        return resolve_config(values)
    except ConfigError as e:
        raise CheckpointError(f"{snapshot.source}: its networks are not ones ganctl builds ({e})"
                              ) from None


def checked_tensors(snapshot: Snapshot, config: Config) -> dict[str, torch.Tensor]:
    """The snapshot's networks as checkpoint tensors (G.*, D.*, G_ema.*), each checked against the
    network `config` builds (built on the meta device): the same names, shapes and dtypes, and
    finite values. A mismatch is a CheckpointError naming the first tensor that differs."""
    arch = get_arch(config.arch)
    try:
        with torch.device("meta"):
            models = {"G": arch.build_generator(config), "D": arch.build_discriminator(config)}
    except Exception as e:  # noqa: BLE001 (settings no check caught: still the file's)
        raise CheckpointError(f"{snapshot.source}: ganctl cannot build its networks "
                              f"({type(e).__name__}: {str(e)[:120]})") from None
    out: dict[str, torch.Tensor] = {}
    for key, tensors in snapshot.networks.items():
        expected = models["D" if key == "D" else "G"].state_dict()
        if expected.keys() != tensors.keys():
            missing = sorted(expected.keys() - tensors.keys())
            what = f"lacks {missing[0]}" if missing else \
                f"has {sorted(tensors.keys() - expected.keys())[0]}, which"
            raise CheckpointError(f"{snapshot.source}: its {key} {what} ganctl's StyleGAN2 of its "
                                  "settings does not have; the file is damaged or not NVlabs'")
        for name, tensor in tensors.items():
            _check_tensor(snapshot.source, f"{key}.{name}", tensor, expected[name])
            out[f"{key}.{name}"] = tensor
    return out


def _check_tensor(source: str, name: str, tensor: torch.Tensor, expected: torch.Tensor) -> None:
    if tensor.shape != expected.shape or tensor.dtype != expected.dtype:
        raise CheckpointError(f"{source}: {name} is {str(tensor.dtype)[6:]} {tuple(tensor.shape)} "
                              f"where its settings make {str(expected.dtype)[6:]} "
                              f"{tuple(expected.shape)}; the file is damaged")
    if not tensor.is_meta and tensor.is_floating_point() and not bool(tensor.isfinite().all()):
        raise CheckpointError(f"{source}: {name} holds NaN or inf; the network diverged or the "
                              "file is damaged")


def provenance(snapshot: Snapshot) -> dict[str, Any]:
    """Where an imported checkpoint came from (its ganctl.imported metadata)."""
    return {"format": FORMAT, "code": snapshot.code, "source": snapshot.source,
            "sha256": snapshot.sha256, "networks": list(snapshot.held),
            "imported": [k for k in ("G", "D", "G_ema") if k in snapshot.networks],
            "classes": snapshot.classes, "augment_p": snapshot.augment_p,
            "dataset": snapshot.dataset, "notes": snapshot.notes}


def _metadata(snapshot: Snapshot) -> dict[str, str]:
    return {IMPORTED: json.dumps(provenance(snapshot)),
            "ganctl.created": datetime.now(UTC).isoformat(timespec="seconds")}


def write_checkpoint(snapshot: Snapshot, out: Path) -> Config:
    """Write the snapshot as a ganctl checkpoint at `out`, atomically; its config."""
    config = config_of(snapshot)
    tensors = checked_tensors(snapshot, config)
    checkpoint.save(out, tensors, config.to_json(), 0, _metadata(snapshot))
    return config


def open_network(path: Path, verify: bool = True) -> checkpoint.Header:
    """An NVlabs network file as a checkpoint's Header naming `path`: verified and open (its
    tensors read as any checkpoint's), or with verify=False its metadata alone (the settings;
    the weights are not rebuilt)."""
    snapshot = read_snapshot(path, weights=verify)
    if not verify:
        config = config_of(snapshot)
        checked_tensors(snapshot, config)  # shapes and dtypes, on the meta device
        metadata = {"ganctl.schema": str(checkpoint.SCHEMA), "ganctl.step": "0",
                    "ganctl.config": config.to_json(), **_metadata(snapshot)}
        return checkpoint.Header(path, metadata, {}, path.stat().st_size, 0)
    with tempfile.TemporaryDirectory(prefix="ganctl-import-", ignore_cleanup_errors=True) as temp:
        written = Path(temp) / f"{path.stem}.safetensors"
        write_checkpoint(snapshot, written)
        header = checkpoint.open_checkpoint(written)  # the open file outlives its name
    return replace(header, path=path)


def locate(target: str | os.PathLike[str] | None, say: Callable[[str], None],
           verify: bool = True) -> checkpoint.Header:
    """rundir.locate, and an NVlabs network file (FILE.pkl) imported on the fly."""
    if is_network_file(target):
        assert target is not None
        return open_network(Path(os.fspath(target)), verify)
    return rundir.locate(None if target is None else os.fspath(target), say, verify)


def imported(header: checkpoint.Header) -> dict[str, Any] | None:
    """An imported checkpoint's provenance (None for one ganctl trained)."""
    try:
        value = json.loads(header.metadata.get(IMPORTED) or "null")
    except (ValueError, RecursionError):
        value = None
    if value is None or (isinstance(value, dict) and isinstance(value.get("imported"), list)):
        return value
    raise CheckpointError(f"{header.path} has damaged ganctl metadata ({IMPORTED} is not the record "
                          "of an import); import the network again")


def saved_augment_p(source: dict[str, Any] | None) -> float | None:
    """The adaptive augmentation's p an imported network's file was saved with (its provenance,
    imported()'s), if it holds a number."""
    p = None if source is None else source.get("augment_p")
    return float(p) if isinstance(p, int | float) and not isinstance(p, bool) else None


def check_replaceable(out: Path) -> None:
    """`ganctl import` writes over a checkpoint only if an import wrote it (the same network
    imported again, or another): never over one a run trained, nor any other file."""
    if not out.is_file():
        return
    try:
        source = imported(checkpoint.read_metadata(out))
    except CheckpointError:
        source = None
    if source is None:
        raise ConfigError(f"{out} exists and is not a checkpoint ganctl imported; ganctl import "
                          "replaces only its own imports (never a trained run's checkpoint): "
                          "choose another OUT")


def finetune_settings(header: checkpoint.Header) -> dict[str, Any]:
    """What `train --init-from` an imported network takes besides its model: the small-data
    preset's augmentation (a pretrained network is fine-tuned on few images); refused without a
    D ganctl builds."""
    from ganctl import presets

    source = imported(header)
    if source is None:
        return {}
    if "D" not in (source.get("imported") or ()):
        why = "; ".join(map(str, source.get("notes") or ())) or "the file holds none"
        raise ConfigError(f"--init-from {header.path}: no D to fine-tune ({why[:300]}); fine-tuning "
                          "needs G and D: give a training snapshot with both")
    return {"augment": presets.get("small-data").settings["augment"]}


def describe(path: Path) -> dict[str, Any]:
    """What `ganctl inspect FILE.pkl` shows: the networks the file holds and their settings,
    read without rebuilding the weights (tensors on the meta device); what import would make."""
    snapshot = read_snapshot(path, weights=False)
    config = config_of(snapshot)
    tensors = checked_tensors(snapshot, config)
    with torch.device("meta"):
        arch = get_arch(config.arch)
        parts = {"G": arch.build_generator(config), "D": arch.build_discriminator(config)}
    params = {k: sum(p.numel() for p in net.parameters()) for k, net in parts.items()
              if f"{k}." in {name[:len(k) + 1] for name in tensors}}
    c = config
    return {"path": str(path), **provenance(snapshot), "file_size": path.stat().st_size,
            "params": params, "resolution": c.resolution, "channels": c.channels,
            "z_dim": c.z_dim, "w_dim": c.w_dim or c.z_dim, "class_names": list(c.classes),
            "mapping_layers": c.mapping_layers, "channel_base": c.channel_base,
            "g_width": c.g_width, "d_width": c.d_width if snapshot.has_D else None,
            "reduced_res": c.reduced_res, "conv_clamp": c.conv_clamp,
            "d_arch": c.d_arch if snapshot.has_D else None,
            "mbstd_group": c.mbstd_group if snapshot.has_D else None,
            "config": config.to_dict()}
