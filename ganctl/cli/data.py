"""`ganctl data prepare|info` and `ganctl data cache list|clean`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from ganctl.cli.core import (
    _call,
    _console,
    _emit,
    _fail,
    _json_text,
    _outcome_decided,
    _say,
    app,
)
from ganctl.cli.options import (
    Channels,
    Crop,
    DataDir,
    DatasetOpt,
    Debug,
    Download,
    Json,
    MaxFileMb,
    Resolution,
    Split,
)

# --- data ---------------------------------------------------------------------------------------------

data_app = typer.Typer(help="Prepare and describe datasets (the decode cache). Example: ganctl "
                            "data prepare --dataset cifar10", no_args_is_help=True)
app.add_typer(data_app, name="data")


def _data_report(dataset: str | None, data_dir: str | None, split: str | None,
                 resolution: int | None, channels: int | None, crop: str | None,
                 max_file_mb: int | None, download: bool, json_mode: bool, debug: bool
                 ) -> dict[str, Any]:
    from ganctl import api
    from ganctl.output.progress import RunLog

    return _call(debug, lambda: api.describe_data(
        dataset=dataset, data_dir=data_dir, split=split, resolution=resolution,
        channels=channels, crop=crop, max_file_mb=max_file_mb, download=download,
        log=RunLog(_console(json_mode))))


@data_app.command("prepare")
def data_prepare(
    dataset: DatasetOpt = None, data_dir: DataDir = None, split: Split = None,
    resolution: Resolution = None, channels: Channels = None, crop: Crop = None,
    max_file_mb: MaxFileMb = None, download: Download = True, json_mode: Json = False,
    debug: Debug = False,
) -> None:
    """Decode a dataset into the cache ahead of training (downloading it if needed).

    Example: ganctl data prepare --dataset celeba --resolution 64
    """
    r = _data_report(dataset, data_dir, split, resolution, channels, crop, max_file_mb, download,
                     json_mode, debug)
    _emit(json_mode, r, f"ready: {r['dataset']} {r['count']} images "
                        f"{r['resolution']}x{r['resolution']}x{r['channels']} "
                        f"({r['bytes'] / 1e6:.1f} MB) in {r['cache'] or 'memory (built in)'}")


@data_app.command("info")
def data_info(
    dataset: DatasetOpt = None, data_dir: DataDir = None, split: Split = None,
    resolution: Resolution = None, channels: Channels = None, crop: Crop = None,
    max_file_mb: MaxFileMb = None, download: Download = True, json_mode: Json = False,
    debug: Debug = False,
) -> None:
    """Count, resolution, channels, classes and skipped files of a dataset (decoding it once).

    Example: ganctl data info --dataset ./my_images --json
    """
    r = _data_report(dataset, data_dir, split, resolution, channels, crop, max_file_mb, download,
                     json_mode, debug)
    counts = r.get("class_counts", {})
    from ganctl.text import one_line

    classes = ", ".join(f"{one_line(c)} ({counts[c]})" if c in counts else one_line(c)
                        for c in r["classes"][:20]) + (
        " ..." if len(r["classes"]) > 20 else "")
    skipped = ", ".join(f"{n} {one_line(why)}" for why, n in r["skipped_by_reason"].items())
    lines = [f"dataset     {one_line(r['dataset'])}" + (f" ({r['split']})" if r["split"] else ""),
             f"images      {r['count']}",
             f"resolution  {r['resolution']}x{r['resolution']}, {r['channels']} channel(s), "
             f"crop {r['crop']}",
             f"classes     {len(r['classes'])}" + (f": {classes}" if classes else ""),
             f"skipped     {r['skipped']}" + (f" ({skipped})" if skipped else ""),
             f"cache       {r['cache'] or 'none (generated in memory)'}",
             f"fingerprint {r['fingerprint']}",
             *(f"note        {w}" for w in r["warnings"])]
    _emit(json_mode, r, "\n".join(lines))


cache_app = typer.Typer(help="Show and remove decode caches and cached FID statistics. "
                             "Example: ganctl data cache list", no_args_is_help=True)
data_app.add_typer(cache_app, name="cache")
CacheDir = Annotated[Path | None, typer.Option(
    "--cache-dir", help="The cache folder.", show_default="env GANCTL_CACHE_DIR, else "
    "~/.cache/ganctl/decoded")]


@cache_app.command("list")
def cache_list(cache_dir: CacheDir = None, json_mode: Json = False, debug: Debug = False) -> None:
    """Each decoded dataset and FID statistics file in the cache, with its size and last use.

    Example: ganctl data cache list --json
    """
    from ganctl import api
    from ganctl.data.cachedir import format_caches

    entries = _call(debug, api.caches, cache_dir)
    _outcome_decided()
    if json_mode:
        typer.echo(_json_text({"caches": [e.to_dict() for e in entries],
                               "bytes": sum(e.bytes for e in entries)}))
        return
    typer.echo(format_caches(entries, cache_dir))


@cache_app.command("clean")
def cache_clean(
    names: Annotated[list[str] | None, typer.Argument(
        metavar="[NAME]...", help="Caches to remove, by name or dataset.", show_default="all")] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Remove without asking.")] = False,
    cache_dir: CacheDir = None,
    json_mode: Json = False,
    debug: Debug = False,
) -> None:
    """Remove cached datasets and statistics (all, or those named); asks first unless --yes.
    A run decodes its data again when it next needs it.

    Example: ganctl data cache clean cifar10 --yes
    """
    from ganctl import api
    from ganctl.data.cachedir import format_caches
    from ganctl.text import human_bytes

    entries = _call(debug, api.caches, cache_dir, names)
    busy = [e.name for e in entries if e.state == "writing"]
    for name in busy:  # a run is decoding it now
        _say(f"{name} is being written by a running process: left alone")
    entries = [e for e in entries if e.state != "writing"]
    if not entries:
        _emit(json_mode, {"removed": [], "freed_bytes": 0}, "nothing to remove")
        return
    if not yes:
        if json_mode or not sys.stdin.isatty():
            _fail("removing caches needs --yes when nothing can ask (no terminal, or --json)")
        typer.echo(format_caches(entries, cache_dir))
        what = "this cache" if len(entries) == 1 else f"these {len(entries)} caches"
        if not typer.confirm(f"remove {what}?", default=False):
            _fail("nothing removed")
    freed = _call(debug, api.remove_caches, entries)
    _emit(json_mode, {"removed": [e.name for e in entries], "freed_bytes": freed},
          f"removed {len(entries)} cache{'s' if len(entries) != 1 else ''}, {human_bytes(freed)} freed")
