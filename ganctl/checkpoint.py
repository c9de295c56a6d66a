"""Checkpoints: one .safetensors file per save, written atomically, read without pickle.

Layout of a file: tensors `G.*`, `D.*`, `G_ema.*` (module state dicts), `opt_G.*`, `opt_D.*`
(optimizer state), `rng.*` and `state.*` (the rest of the training state); string metadata
`ganctl.version`, `ganctl.schema`, `ganctl.config` (JSON), `ganctl.step`, `ganctl.created`,
`ganctl.metrics` (JSON of the last logged record). Nothing here calls torch.load or pickle:
opening a stranger's checkpoint runs no code.
"""

from __future__ import annotations

import json
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes

from ganctl import __version__
from ganctl.errors import CheckpointError

SCHEMA = 1
SUFFIX = ".safetensors"
CKPT_DIR = "checkpoints"
LATEST = "latest"  # a text file naming the newest complete checkpoint
MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit; larger is hostile or corrupt
_STEP_RE = re.compile(r"^step-(\d+)\.safetensors$")


def checkpoint_name(step: int) -> str:
    return f"step-{step:09d}{SUFFIX}"


# --- atomic files -----------------------------------------------------------------------

def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some filesystems (and Windows) cannot open a directory
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that a crash leaves either the old file or the new one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


# --- writing ------------------------------------------------------------------------------

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
    try:
        atomic_write(path, safetensors_bytes(cpu, metadata=metadata))
    except OSError as e:
        raise CheckpointError(f"cannot write checkpoint {path}: {e.strerror}; "
                              "check free space and permissions") from None


def set_latest(ckpt_dir: Path, name: str) -> None:
    atomic_write(ckpt_dir / LATEST, (name + "\n").encode())


def prune(ckpt_dir: Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` step checkpoints (keep=0: delete none)."""
    if keep <= 0:
        return []
    old = list_checkpoints(ckpt_dir)[:-keep]
    for path in old:
        path.unlink(missing_ok=True)
    return old


# --- optimizer state as flat tensors --------------------------------------------------------

def optimizer_tensors(opt: torch.optim.Optimizer, prefix: str) -> dict[str, torch.Tensor]:
    """`{prefix}.lr.{g}` per param group and `{prefix}.state.{i}.{key}` per parameter."""
    sd = opt.state_dict()
    out = {f"{prefix}.lr.{g}": torch.tensor(group["lr"], dtype=torch.float64)
           for g, group in enumerate(sd["param_groups"])}
    for index, entries in sd["state"].items():
        for key, value in entries.items():
            out[f"{prefix}.state.{index}.{key}"] = torch.as_tensor(value)
    return out


def load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                   prefix: str) -> None:
    sd = opt.state_dict()
    state: dict[int, dict[str, torch.Tensor]] = {}
    lead = f"{prefix}.state."
    for name, value in tensors.items():
        if name.startswith(lead):
            index, key = name[len(lead):].split(".", 1)
            state.setdefault(int(index), {})[key] = value
    for g, group in enumerate(sd["param_groups"]):
        group["lr"] = float(_require(tensors, f"{prefix}.lr.{g}"))
    sd["state"] = state
    try:
        opt.load_state_dict(sd)
    except (ValueError, KeyError, RuntimeError) as e:
        raise CheckpointError(f"optimizer state {prefix} does not fit the model: {e}") from None


def _require(tensors: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    try:
        return tensors[name]
    except KeyError:
        raise CheckpointError(f"checkpoint lacks tensor {name!r}; it is incomplete") from None


def module_tensors(module: torch.nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v for k, v in module.state_dict().items()}


def load_module(module: torch.nn.Module, tensors: dict[str, torch.Tensor], prefix: str) -> None:
    lead = prefix + "."
    sd = {k[len(lead):]: v for k, v in tensors.items() if k.startswith(lead)}
    expected = module.state_dict()
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    if missing or unexpected:
        what = f"missing {lead}{missing[0]}" if missing else f"unexpected {lead}{unexpected[0]}"
        raise CheckpointError(f"checkpoint does not match its config's model ({what})")
    for k, v in sd.items():
        if v.shape != expected[k].shape or v.dtype != expected[k].dtype:
            raise CheckpointError(
                f"checkpoint tensor {lead}{k} is {v.dtype} {tuple(v.shape)}, the model needs "
                f"{expected[k].dtype} {tuple(expected[k].shape)}"
            )
    module.load_state_dict(sd)


# --- reading ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Header:
    path: Path
    metadata: dict[str, str]
    tensors: dict[str, dict[str, Any]]  # name -> {"dtype": .., "shape": [..], "data_offsets": ..}
    file_size: int

    @property
    def step(self) -> int:
        return int(self.metadata["ganctl.step"])

    @property
    def config(self) -> dict[str, Any]:
        return json.loads(self.metadata["ganctl.config"])

    @property
    def metrics(self) -> dict[str, Any] | None:
        raw = self.metadata.get("ganctl.metrics")
        return json.loads(raw) if raw else None

    def numel(self, prefix: str) -> int:
        total = 0
        for name, info in self.tensors.items():
            if name.startswith(prefix):
                n = 1
                for d in info["shape"]:
                    n *= d
                total += n
        return total


def read_header(path: Path) -> Header:
    """Parse only the safetensors header (8-byte length + JSON) and check it is ganctl's."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path} is truncated or not a safetensors file")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER_BYTES or 8 + n > size:
                raise CheckpointError(
                    f"{path} has a header of {n} bytes in a {size}-byte file: "
                    "truncated, corrupted or not a safetensors file")
            raw = f.read(n)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path} is a directory, not a checkpoint file") from None
    except PermissionError:
        raise CheckpointError(f"cannot read {path}: permission denied") from None
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(f"{path} has a corrupted header (not JSON); "
                              "it is not a usable checkpoint") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} has a corrupted header; it is not a usable checkpoint")
    metadata = header.pop("__metadata__", None) or {}
    _check_metadata(path, metadata)
    return Header(path, metadata, header, size)


def _check_metadata(path: Path, metadata: Any) -> None:
    if not isinstance(metadata, dict) or "ganctl.schema" not in metadata:
        raise CheckpointError(f"{path} is a safetensors file but not a ganctl checkpoint")
    try:
        schema = int(metadata["ganctl.schema"])
        int(metadata["ganctl.step"])
        config = json.loads(metadata["ganctl.config"])
    except (KeyError, ValueError, TypeError):
        raise CheckpointError(f"{path} has damaged ganctl metadata") from None
    if schema > SCHEMA:
        raise CheckpointError(
            f"{path} was written by a newer ganctl (schema {schema}, this one reads "
            f"{SCHEMA}); upgrade ganctl to read it")
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} has damaged ganctl metadata (config is not a table)")


def load_tensors(path: Path, prefixes: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """Tensors of the file (only those starting with one of `prefixes`, if given), on CPU."""
    try:
        with safe_open(str(path), framework="pt") as f:
            names = [k for k in f.keys() if not prefixes or k.startswith(prefixes)]
            return {k: f.get_tensor(k) for k in names}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path} cannot be read ({e}); it is truncated or "
                              "corrupted") from None


# --- finding checkpoints ----------------------------------------------------------------------

def list_checkpoints(ckpt_dir: Path) -> list[Path]:
    """Step checkpoints in `ckpt_dir`, oldest step first."""
    if not ckpt_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in ckpt_dir.iterdir() if (m := _STEP_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_in_run(run_dir: Path) -> Path | None:
    """The checkpoint `latest` names, else the highest step file; None if the run has none."""
    ckpt_dir = run_dir / CKPT_DIR
    pointer = ckpt_dir / LATEST
    if pointer.is_file():
        named = ckpt_dir / pointer.read_text().strip()
        if named.is_file():
            return named
    found = list_checkpoints(ckpt_dir)
    return found[-1] if found else None


def runs_root() -> Path:
    return Path(os.environ.get("GANCTL_RUNS", "runs"))


def newest_checkpoint(root: Path) -> Path:
    """The most recently written latest checkpoint of any run under `root`."""
    candidates = []
    if root.is_dir():
        for run_dir in root.iterdir():
            if run_dir.is_dir() and (ckpt := latest_in_run(run_dir)) is not None:
                candidates.append(ckpt)
    if not candidates:
        raise CheckpointError(f"no checkpoints found under {root}/; train one with "
                              "`ganctl train` or pass a checkpoint path")
    return max(candidates, key=lambda p: p.stat().st_mtime_ns)


def resolve_checkpoint(target: str | Path | None) -> Path:
    """A checkpoint file from a file path, a run directory, or (None) the newest under the root."""
    if target is None:
        return newest_checkpoint(runs_root())
    path = Path(target)
    if path.is_dir():
        if (path / CKPT_DIR).is_dir() or (path / "config.json").is_file():
            ckpt = latest_in_run(path)
            if ckpt is None:
                raise CheckpointError(f"run {path} has no checkpoint yet")
            return ckpt
        raise CheckpointError(f"{path} is a directory but not a ganctl run (no {CKPT_DIR}/ "
                              "or config.json in it)")
    if not path.exists():
        raise CheckpointError(f"{path} does not exist; pass a .safetensors checkpoint or a run "
                              "directory")
    return path


def run_dir_of(ckpt: Path) -> Path:
    """The run directory a checkpoint file belongs to (<run>/checkpoints/<file>)."""
    if ckpt.parent.name != CKPT_DIR:
        raise CheckpointError(f"{ckpt} is not inside a run's {CKPT_DIR}/ directory; "
                              "resume needs the run directory around it")
    return ckpt.parent.parent
