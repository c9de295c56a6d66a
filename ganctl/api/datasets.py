"""Datasets and their caches from Python, as `ganctl data` shows them: describe_data() decodes a
dataset into the cache (downloading a named one if needed) and says what it holds; caches()
lists the cache folder's entries and remove_caches() removes them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ganctl.api.checks import PathLike, console, flag, ganctl_errors, got, path, plain
from ganctl.data.cachedir import Cached, clean_caches, list_caches, select_caches
from ganctl.errors import ConfigError
from ganctl.output.progress import RunLog


@ganctl_errors
def describe_data(*, dataset: str | None = None, data_dir: PathLike | None = None,
                  split: str | None = None, resolution: int | None = None,
                  channels: int | None = None, crop: str | None = None,
                  max_file_mb: int | None = None, download: bool = True, quiet: bool = False,
                  log: RunLog | None = None) -> dict[str, Any]:
    """A dataset as `ganctl data info --json` describes it, decoded once into the cache: count,
    resolution, channels, crop, classes (with counts), files skipped and why, fingerprint,
    cache file, bytes, label warnings. The settings are a run's (defaults: the dataset's).

    Example: ganctl.api.describe_data(dataset="cifar10")["count"]
    """
    from ganctl.data import default_split, load_dataset
    from ganctl.settings import resolve_config

    flag("download", download)
    flag("quiet", quiet)
    if log is not None and not isinstance(log, RunLog):
        raise ConfigError(f"log must be a ganctl.output.progress.RunLog (or None), got {got(log)}")
    values = {k: plain(v) for k, v in (("dataset", dataset), ("split", split), ("resolution", resolution),
                                ("channels", channels), ("crop", crop),
                                ("max_file_mb", max_file_mb), ("data_dir", data_dir))
              if v is not None}
    config = resolve_config({**values, "batch_size": 1})
    data = load_dataset(config, download, (log or RunLog(console(quiet))).task)
    report = data.report
    return {"dataset": config.dataset, "split": config.split or default_split(config.dataset),
            "count": len(data.images), "resolution": config.resolution,
            "channels": config.channels, "crop": config.crop, "classes": data.classes,
            "skipped": report.get("skipped", 0),
            "skipped_by_reason": report.get("skipped_by_reason", {}),
            "fingerprint": data.fingerprint, "cache": report.get("cache"),
            "bytes": int(data.images.nbytes), **data.label_report(),
            "warnings": data.label_warnings()}


@ganctl_errors
def caches(cache_dir: PathLike | None = None, names: list[str] | None = None) -> list[Cached]:
    """The decoded datasets and FID statistics in the cache folder (default: env
    GANCTL_CACHE_DIR, else ~/.cache/ganctl/decoded), or those `names` pick (a cache's name or its
    dataset's: a name that picks none is an error listing what there is)."""
    path("cache_dir", cache_dir, "the cache folder")
    if names is not None and (not isinstance(names, (list, tuple))
                              or not all(isinstance(n, str) for n in names)):
        raise ConfigError(f"names must be a list of cache or dataset names, got {got(names)}")
    if cache_dir is not None and not os.path.isdir(cache_dir):  # a mistyped folder is not empty
        raise ConfigError(f"{os.fspath(cache_dir)} is not a folder; give the cache folder "
                          "(default: env GANCTL_CACHE_DIR, else ~/.cache/ganctl/decoded)")
    entries = list_caches(None if cache_dir is None else Path(os.fspath(cache_dir)))
    return select_caches(entries, names) if names else entries


@ganctl_errors
def remove_caches(entries: list[Cached] | list[str], cache_dir: PathLike | None = None) -> int:
    """Remove caches: caches() entries, or names as caches(names=) takes them (a cache's name or
    its dataset's); returns the bytes freed. One being written by a running process, or
    changed since it was listed, is left alone.

    Example: ganctl.api.remove_caches(["cifar10"])
    """
    if not isinstance(entries, (list, tuple)) or not all(
            isinstance(e, (Cached, str)) for e in entries):
        raise ConfigError(f"entries must be a list of caches() entries or of cache names, got "
                          f"{got(entries)}")
    names = [e for e in entries if isinstance(e, str)]
    chosen = [e for e in entries if isinstance(e, Cached)]
    if names:
        chosen += caches(cache_dir, names)
    return clean_caches([e for e in chosen if e.state != "writing"])
