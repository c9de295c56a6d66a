"""Checkpoints: one .safetensors file per save, written atomically, read without pickle.

Layout of a file: tensors `G.*`, `D.*`, `G_ema.*` (module state dicts), `opt_G.*`, `opt_D.*`
(optimizer state), `rng.*` and `state.*` (the rest of the training state); string metadata
`ganctl.version`, `ganctl.schema`, `ganctl.config` (JSON), `ganctl.step`, `ganctl.created`,
`ganctl.metrics` (JSON of the last logged record). Nothing here calls torch.load or pickle:
opening a stranger's checkpoint runs no code.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes

from ganctl import __version__, testhooks
from ganctl.errors import CheckpointError

SCHEMA = 2  # 2: ganctl.checksum, a sha256 of the data section, is in the metadata
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


def atomic_write(path: Path, *chunks: bytes | memoryview) -> None:
    """Write the chunks to `path` so that a crash at any moment leaves the old file or the new one:
    a temp file in the same directory, fsync, rename over the target, fsync of the directory."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    delay = testhooks.slow_write_seconds(sum(len(c) for c in chunks))
    try:
        with open(tmp, "wb") as f:
            for chunk in chunks:
                if delay:  # tests: leave time to kill the writer mid-file
                    step = len(chunk) // 10 + 1
                    for i in range(0, len(chunk), step):
                        f.write(chunk[i:i + step])
                        f.flush()
                        time.sleep(delay / 10 / len(chunks))
                else:
                    f.write(chunk)
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


def set_latest(ckpt_dir: Path, name: str) -> None:
    atomic_write(ckpt_dir / LATEST, (name + "\n").encode())


def prune(ckpt_dir: Path, keep: int, current: int) -> list[Path]:
    """Delete step checkpoints older than `current` (the one just written) beyond the newest
    `keep` up to it (keep=0: delete none). Files of later steps, left by a run resumed from an
    older checkpoint, are not counted and not touched: the run overwrites them as it gets there."""
    if keep <= 0:
        return []
    upto = [p for p in list_checkpoints(ckpt_dir) if _step_of(p) <= current]
    old = upto[:-keep]
    for path in old:
        path.unlink(missing_ok=True)
    return old


def _step_of(path: Path) -> int:
    m = _STEP_RE.match(path.name)
    return int(m.group(1)) if m else -1


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


def check_shapes(module: torch.nn.Module, header: Header, prefix: str) -> None:
    """Compare a module's state dict (built on the meta device: no memory) with the header's
    tensors, before anything of the size the config asks for is allocated."""
    lead = prefix + "."
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    stored = {k[len(lead):]: tuple(v["shape"]) for k, v in header.tensors.items() if k.startswith(lead)}
    if expected.keys() != stored.keys():
        missing = sorted(expected.keys() - stored.keys())
        what = f"missing {lead}{missing[0]}" if missing else \
            f"unexpected {lead}{sorted(stored.keys() - expected.keys())[0]}"
        raise CheckpointError(f"checkpoint does not match its config's model ({what})")
    for k, shape in expected.items():
        if stored[k] != shape:
            raise CheckpointError(f"checkpoint tensor {lead}{k} is {stored[k]}, the config's model "
                                  f"needs {shape}")


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
    data_start: int  # 8 + header length: where the tensor bytes begin

    @property
    def step(self) -> int:
        return int(self.metadata["ganctl.step"])

    @property
    def config(self) -> dict[str, Any]:
        return json.loads(self.metadata["ganctl.config"])

    @property
    def metrics(self) -> dict[str, Any] | None:
        """The last logged record, or None (absent or not a JSON object: it is informative only)."""
        try:
            value = json.loads(self.metadata.get("ganctl.metrics") or "null")
        except (ValueError, RecursionError):
            return None
        return value if isinstance(value, dict) else None


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
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise CheckpointError(f"{path} has a corrupted header (not JSON); "
                              "it is not a usable checkpoint") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} has a corrupted header; it is not a usable checkpoint")
    metadata = header.pop("__metadata__", None) or {}
    _check_metadata(path, metadata)
    _check_tensor_entries(path, header)
    return Header(path, metadata, header, size, 8 + n)


_DTYPES = frozenset({"BOOL", "U8", "I8", "U16", "I16", "U32", "I32", "U64", "I64", "F16", "BF16",
                     "F32", "F64", "F8_E4M3", "F8_E5M2"})


def _check_tensor_entries(path: Path, tensors: dict[str, Any]) -> None:
    for name, info in tensors.items():
        shape = info.get("shape") if isinstance(info, dict) else None
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (isinstance(info, dict) and info.get("dtype") in _DTYPES
                and isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)
                and isinstance(offsets, list) and len(offsets) == 2
                and all(type(o) is int for o in offsets) and 0 <= offsets[0] <= offsets[1]):
            raise CheckpointError(f"{path} has a corrupted header (entry {name[:80]!r}); it is not "
                                  "a usable checkpoint")


def verify(header: Header) -> None:
    """Check the data section is complete and matches the checksum in the metadata."""
    path = header.path
    expected = max((info["data_offsets"][1] for info in header.tensors.values()), default=0)
    actual = header.file_size - header.data_start
    if actual < expected:
        raise CheckpointError(f"{path} is truncated ({actual} of {expected} data bytes); use an "
                              "earlier checkpoint")
    if actual > expected:
        raise CheckpointError(f"{path} is corrupted ({actual - expected} bytes past its data)")
    checksum = header.metadata.get("ganctl.checksum")
    if checksum is None:
        if int(header.metadata["ganctl.schema"]) >= 2:
            raise CheckpointError(f"{path} is damaged: its metadata lacks ganctl.checksum")
        return  # schema 1 files had no checksum
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            f.seek(header.data_start)
            while block := f.read(8 << 20):
                digest.update(block)
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror}") from None
    rest = {k: v for k, v in header.metadata.items() if k != "ganctl.checksum"}
    digest.update(json.dumps(rest, sort_keys=True).encode())
    if "sha256:" + digest.hexdigest() != checksum:
        raise CheckpointError(f"{path} is corrupted: its data does not match its checksum; use an "
                              "earlier checkpoint")


def _checksum(data: bytes | memoryview, metadata: dict[str, str]) -> str:
    """sha256 of the data section, then of the other metadata as sorted JSON."""
    digest = hashlib.sha256(data)
    rest = {k: v for k, v in metadata.items() if k != "ganctl.checksum"}
    digest.update(json.dumps(rest, sort_keys=True).encode())
    return "sha256:" + digest.hexdigest()


def open_checkpoint(path: Path) -> Header:
    """The header of a checkpoint whose data has been verified against its checksum."""
    header = read_header(path)
    verify(header)
    return header


def newest_valid(run_dir: Path, say: Callable[[str], None], verify: bool = True
                 ) -> tuple[Path, Header]:
    """The newest checkpoint of a run that verifies, saying which newer ones were passed over."""
    candidates = []
    if (named := latest_in_run(run_dir)) is not None:
        candidates.append(named)
    candidates += [p for p in reversed(list_checkpoints(run_dir / CKPT_DIR)) if p not in candidates]
    for path in candidates:
        try:
            return path, open_checkpoint(path) if verify else read_header(path)
        except CheckpointError as e:
            say(f"skipping {path.name}: {e}")
    raise CheckpointError(f"run {run_dir} has no valid checkpoint" + (
        " (every one failed verification)" if candidates else " yet"))


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

def remove_temp_files(ckpt_dir: Path) -> None:
    """Temp files a killed writer left behind: never a checkpoint, only half of one."""
    for path in ckpt_dir.glob(".*.tmp-*"):
        path.unlink(missing_ok=True)


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
        name = pointer.read_bytes().decode("utf-8", errors="replace").strip()
        if _STEP_RE.match(name) and (ckpt_dir / name).is_file():  # a damaged pointer is ignored
            return ckpt_dir / name
    found = list_checkpoints(ckpt_dir)
    return found[-1] if found else None


def runs_root() -> Path:
    return Path(os.environ.get("GANCTL_RUNS", "runs"))


def newest_run(root: Path) -> Path:
    """The run under `root` whose newest checkpoint file was written last."""
    newest: dict[Path, int] = {}
    if root.is_dir():
        for run_dir in root.iterdir():
            files = list_checkpoints(run_dir / CKPT_DIR) if run_dir.is_dir() else []
            if files:
                newest[run_dir] = max(p.stat().st_mtime_ns for p in files)
    if not newest:
        raise CheckpointError(f"no checkpoints found under {root}/; train one with "
                              "`ganctl train` or pass a checkpoint path")
    return max(newest, key=newest.__getitem__)


def locate(target: str | Path | None, say: Callable[[str], None], verify: bool = True) -> Header:
    """The verified checkpoint a command was pointed at: a file as given; for a run directory
    (or, with no target, the newest run under the runs root) its newest checkpoint that verifies.
    With verify=False only headers are read (and checked)."""
    if target is None:
        return newest_valid(newest_run(runs_root()), say, verify)[1]
    path = Path(target)
    if path.name == LATEST and path.parent.name == CKPT_DIR:  # the pointer: its run
        path = path.parent.parent
    elif path.name == CKPT_DIR and path.is_dir():  # a run's checkpoints/: the run
        path = path.parent
    if path.is_dir():
        if (path / CKPT_DIR).is_dir() or (path / "config.json").is_file():
            return newest_valid(path, say, verify)[1]
        raise CheckpointError(f"{path} is a directory but not a ganctl run (no {CKPT_DIR}/ "
                              "or config.json in it)")
    if not path.exists():
        raise CheckpointError(f"{path} does not exist; pass a .safetensors checkpoint or a run "
                              "directory")
    return open_checkpoint(path) if verify else read_header(path)


def run_dir_of(ckpt: Path) -> Path:
    """The run directory a checkpoint file belongs to (<run>/checkpoints/<file>)."""
    if ckpt.parent.name != CKPT_DIR:
        raise CheckpointError(f"{ckpt} is not inside a run's {CKPT_DIR}/ directory; "
                              "resume needs the run directory around it")
    return ckpt.parent.parent
