"""Bulk export: many generated images as files, a folder that trains as a `--dataset`.

One file per seed (`seed0000000123.png`; in class sub-folders for conditional models) or shards
of arrays (`images-000000.npz`), `labels.csv` and `manifest.json`. The generator runs on the
main thread while worker threads encode and write (PIL releases the GIL while it encodes); at
most a few batches wait, so memory stays bounded whatever the count.

Resumable: every file is written atomically (temp file in the same folder, rename), so a file
under its final name is complete, and a rerun skips it; the images are made durable together
(one sync) before the manifest says complete, and a rerun redoes a file that does not end as its
format does (a power cut before that sync). The manifest is written first
(status "incomplete") and names the settings; a rerun with other settings into the same folder
is refused rather than mixing images of two models.

The folder's manifest is manifest.py's, its files and lock folder.py's, the generating and
writing threads write.py's; this module checks a request and runs an export through them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from ganctl.bulk.folder import (
    check_places,
    class_folders,
    file_names,
    folder_lock,
    make_out_dir,
    missing_units,
    remove_dead_temps,
)
from ganctl.bulk.manifest import MANIFEST, manifest_for, merge_seeds, open_out_dir, seed_text, write_json
from ganctl.bulk.write import produce, write_labels
from ganctl.errors import ConfigError
from ganctl.imagefiles import QUALITY
from ganctl.models.base import num_classes
from ganctl.sample import LoadedGenerator, check_truncation, class_index, labels_for_seeds
from ganctl.seeds import MAX_SEED

FORMATS = ("png", "jpg", "webp", "npz")
MAX_WORKERS = 8


def export_images(loaded: LoadedGenerator, seeds: list[int], out_dir: Path, fmt: str = "png", *,
                  truncation: float | None = None, class_: int | str | None = None,
                  batch_size: int = 256, device: torch.device,
                  progress: Callable[[int], None] | None = None,
                  start: Callable[[int], None] | None = None, workers: int = 0,
                  quality: int = QUALITY) -> dict:
    """Write an image per seed into out_dir (see the module's docstring); files already there
    are kept. Once every setting is checked and the folder scanned, `start(count)` is called
    with the images the folder will hold (a rerun may add seeds to those of the earlier call);
    then `progress(k)` as k more of them are done (those already there first). `workers`
    threads encode and write (0: up to MAX_WORKERS, one per CPU). A second export into the same
    folder at the same time is refused."""
    began = time.perf_counter()
    fmt = _check_format(fmt, quality, batch_size)
    out_dir = Path(out_dir)
    config = loaded.config
    if truncation is not None:
        truncation = check_truncation(truncation)
    labels_for_seeds([0], config, class_)  # the class fits the model, before anything is written
    fixed = None if class_ is None else class_index(class_, config.classes)
    asked = _unique(seeds)
    manifest = manifest_for(loaded, fmt, truncation, fixed, quality)
    with folder_lock(make_out_dir(out_dir)):
        seeds = merge_seeds(open_out_dir(out_dir, manifest), asked, fmt, out_dir)
        folders = class_folders(config.classes) if num_classes(config) else []
        check_places(out_dir, folders)
        manifest.update(seeds=seed_text(seeds), count=len(seeds))
        remove_dead_temps(out_dir)
        write_json(out_dir / MANIFEST, {**manifest, "status": "incomplete"})

        c = labels_for_seeds(seeds, config, class_)
        labels = [-1] * len(seeds) if c is None else c.tolist()
        names = file_names(out_dir, seeds, labels, folders, fmt, manifest.get("shard_size", 0))
        units = missing_units(out_dir, names, seeds, fmt, manifest.get("shard_size", 0),
                              batch_size)
        skipped = len(seeds) - sum(len(u) for u in units)
        if start is not None:
            start(len(seeds))
        if progress is not None and skipped:
            progress(skipped)
        label_of = dict(zip(seeds, labels, strict=True))
        root = os.fspath(out_dir)
        path_of = {seed: f"{root}/{name}" for seed, name in zip(seeds, names, strict=True)}
        written = produce(loaded, units, label_of, path_of, fmt, quality, truncation, batch_size,
                          device, progress, workers or min(MAX_WORKERS, os.cpu_count() or 1))

        write_labels(out_dir, seeds, labels, names, config.classes)
        if hasattr(os, "sync"):
            os.sync()  # every image durable (written without an fsync each) before the manifest says so
        write_json(out_dir / MANIFEST, {**manifest, "status": "complete"})
    seconds = time.perf_counter() - began
    return {"out_dir": str(out_dir), "count": len(seeds), "written": written, "skipped": skipped,
            "seconds": round(seconds, 3), "images_per_s": round(written / seconds, 1),
            "format": fmt, "checkpoint": manifest["checkpoint"], "step": manifest["step"]}


def _check_format(fmt: str, quality: int, batch_size: int) -> str:
    fmt = {"jpeg": "jpg"}.get(str(fmt).lower(), str(fmt).lower())
    if fmt not in FORMATS:
        raise ConfigError(f"unknown image format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
        raise ConfigError(f"quality {quality!r} must be a whole number from 1 to 100 (jpg, webp)")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch size {batch_size!r} must be a whole number from 1 up")
    return fmt


def _unique(seeds: Sequence[int]) -> list[int]:
    """The seeds, each checked and once, in their order."""
    if isinstance(seeds, (str, bytes)) or not len(seeds):
        raise ConfigError("give one seed or more to export, like range(50000) or [3, 1, 4]")
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s <= MAX_SEED:
            raise ConfigError(f"seed {s!r} is not a whole number from 0 to 2**63 - 1")
    return list(dict.fromkeys(seeds))
