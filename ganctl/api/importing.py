"""Other tools' networks from Python: import_network() reads an NVlabs StyleGAN2 pickle without
running anything in it and writes it as a ganctl checkpoint, as `ganctl import` does."""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path
from typing import Any

from ganctl.api.checks import Notes, PathLike, callback, ganctl_errors, path
from ganctl.api.outputs import check_out
from ganctl.checkpoint import SUFFIX
from ganctl.errors import ConfigError, UsageError
from ganctl.importers.convert import check_replaceable, write_checkpoint
from ganctl.importers.nvlabs import read_snapshot


@ganctl_errors
def import_network(source: PathLike, out: PathLike | None = None, *,
                   notes: Notes | None = None) -> dict[str, Any]:
    """`ganctl import`: the NVlabs network file `source` (a stylegan2-ada-pytorch or stylegan3
    StyleGAN2 .pkl: G, D, G_ema, their settings, w_avg) as a ganctl checkpoint `out` (default:
    the source's name with .safetensors, beside it), written atomically. Nothing in the file
    runs: it is read by a restricted unpickler (ganctl.importers). `out` may replace only a
    checkpoint an import wrote. `notes` (default: warnings) hears what was set aside (a D ganctl
    does not build, say). Returns what `--json` prints.

    Example: ganctl.api.import_network("ffhq.pkl", "ffhq.safetensors")
    """
    path("source", source, "an NVlabs network .pkl", required=True)
    path("out", out, "the checkpoint to write (.safetensors)")
    callback("notes", notes)
    src = Path(os.fspath(source))
    target = _out(src, out)
    started = time.perf_counter()
    snapshot = read_snapshot(src)
    target.parent.mkdir(parents=True, exist_ok=True)  # (OUT's missing folders, as sample's)
    check_replaceable(target)  # again: a file made at OUT while the source was read is kept
    config = write_checkpoint(snapshot, target)
    for note in snapshot.notes:
        if notes is not None:
            notes(note)
        else:
            warnings.warn(note, stacklevel=3)
    return {"out": str(target), "source": str(src), "sha256": snapshot.sha256,
            "code": snapshot.code, "networks": list(snapshot.held),
            "imported": list(snapshot.networks), "arch": config.arch,
            "resolution": config.resolution, "channels": config.channels, "z_dim": config.z_dim,
            "w_dim": config.w_dim or config.z_dim, "classes": list(config.classes),
            "augment_p": snapshot.augment_p, "bytes": target.stat().st_size,
            "seconds": round(time.perf_counter() - started, 3), "notes": snapshot.notes}


def _out(source: Path, out: PathLike | None) -> Path:
    """OUT: named .safetensors, not the source, and a file an import may write (check_out); by
    default the source's name with .safetensors, in its folder, which must then be writable."""
    if out is None:
        target = source.with_suffix(SUFFIX)
        folder = target.parent
        if folder.is_dir() and not os.access(folder, os.W_OK | os.X_OK):
            raise ConfigError(f"cannot write {target} beside {source.name} ({folder} is read-only); "
                              f"give OUT: ganctl import {source} OUT{SUFFIX}")
    else:
        target = check_out(out, "checkpoint")  # (first: a trailing / names a folder)
        if target.suffix.lower() != SUFFIX:
            raise UsageError(f"{target.name}: a checkpoint's name ends in {SUFFIX}", "OUT")
    if source.suffix.lower() == SUFFIX:
        raise UsageError(f"{source} is a checkpoint already; ganctl import reads NVlabs network "
                         ".pkl files", "FILE")
    if target.exists() and source.exists() and target.resolve() == source.resolve():
        raise ConfigError(f"{target} is the file being imported; give OUT another name")
    return check_out(target, "checkpoint")
