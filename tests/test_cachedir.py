"""The cache folder as `ganctl data cache list|clean` shows it (ganctl/data/cachedir.py): decode
caches and FID statistics by name, kind and state, cleaned without touching anything else."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import image_folder

from ganctl.config import Config
from ganctl.data import cachedir, load_dataset
from ganctl.errors import DataError
from ganctl.metrics.stats import FeatureStats, save_stats


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def fake_stats(cache_dir: Path, dataset: str) -> Path:
    path = cache_dir / f"{Path(dataset).name}-0123456789abcdef{cachedir.STATS_SUFFIX}"
    d = 4
    save_stats(path, FeatureStats(6, np.zeros(d), np.eye(d), np.zeros((6, d), np.float32)),
               {"dataset": dataset, "resolution": 32, "channels": 3, "crop": "center"})
    return path


def test_caches_are_listed_and_cleaned_leaving_everything_else(workdir):
    imgs = image_folder(workdir / "imgs", 6)
    data = load_dataset(Config(dataset=str(imgs), resolution=32, batch_size=2))  # decoded, kept open
    load_dataset(Config(dataset=str(imgs), resolution=16, batch_size=2))
    cache_dir = workdir / "cache"
    stats = fake_stats(cache_dir, str(imgs))
    # someone else's files in the cache dir, named like ganctl's or not
    foreign = [cache_dir / "notes.txt", cache_dir / "mine-0123456789abcdef.json",
               cache_dir / "x-0123456789abcdef.stats.safetensors"]
    for path in foreign:
        path.write_text('{"fingerprint": "something else"}')
    outside = workdir / "outside.npy"
    np.save(outside, np.zeros(3))
    (cache_dir / "link-0123456789abcdef.images.npy").symlink_to(outside)
    # a build that died (its temp file: no process, untouched for an hour) and one going on now
    stale = cache_dir / f".gone-1111111111111111.raw.tmp-{dead_pid()}"
    stale.write_bytes(b"r" * 700)
    os.utime(stale, (time.time() - 3600,) * 2)
    (cache_dir / "gone-1111111111111111.images.npy").write_bytes(cachedir.NPY_MAGIC + b"x" * 100)
    live = cache_dir / f".busy-2222222222222222.raw.tmp-{os.getpid()}"
    live.write_bytes(b"b" * 300)

    entries = cachedir.list_caches()
    assert sorted((e.slug, e.kind, e.state) for e in entries) == [
        ("busy", "decoded", "writing"), ("gone", "decoded", "partial"),
        ("imgs", "decoded", "complete"), ("imgs", "decoded", "complete"),
        ("imgs", "fid_stats", "complete")]
    assert [e.name for e in entries] == sorted(e.name for e in entries)
    decoded = {e.source["resolution"]: e for e in entries if e.kind == "decoded" and e.source}
    assert decoded[32].source == {"dataset": str(imgs), "origin": str(imgs), "count": 6,
                                  "resolution": 32, "channels": 3, "crop": "center"}
    assert [f.path.name.split(".", 1)[1] for f in decoded[32].files] == [
        "json", "images.npy", "labels.npy"]  # the "done" file first
    assert decoded[32].bytes == sum(f.path.stat().st_size for f in decoded[32].files)
    assert json.loads(json.dumps(decoded[32].to_dict()))["files"][0] == decoded[32].files[0].path.name
    (fid,) = [e for e in entries if e.kind == "fid_stats"]
    assert fid.source["count"] == 6 and fid.bytes == stats.stat().st_size
    assert "FID statistics" in cachedir.format_caches(entries)

    with pytest.raises(DataError, match="no cache of 'celeba'; cached: busy, gone, imgs"):
        cachedir.select_caches(entries, ["celeba"])
    assert cachedir.clean_caches([decoded[16]]) == decoded[16].bytes  # a subset, by itself
    assert not any(f.path.exists() for f in decoded[16].files)
    assert len(cachedir.select_caches(cachedir.list_caches(), ["imgs"])) == 2  # its other caches

    pixels = int(data.images.sum())
    listed = cachedir.list_caches()
    assert cachedir.clean_caches(listed) == sum(e.bytes for e in listed if e.state != "writing")
    assert sorted(p.name for p in cache_dir.iterdir()) == sorted(
        [p.name for p in foreign] + ["link-0123456789abcdef.images.npy", live.name])
    assert outside.is_file() and [e.state for e in cachedir.list_caches()] == ["writing"]
    assert int(data.images.sum()) == pixels  # a run using the cache reads on from its memory map


def test_an_old_temp_file_is_a_dead_build_whatever_its_pid(workdir):
    cache_dir = workdir / "cache"
    cache_dir.mkdir()
    hour_ago = time.time() - 3600
    # PIDs alive now (init, this process) that are not the writers: PIDs are reused
    for name, pid in (("init", 1), ("reused", os.getpid())):
        old = cache_dir / f".{name}-0123456789abcdef.npy.tmp-{pid}"
        old.write_bytes(b"x" * 10)
        os.utime(old, (hour_ago, hour_ago))
    # one being written now, by a process of another machine (a shared disk): its PID is dead here
    (cache_dir / f".remote-0123456789abcdef.raw.tmp-{dead_pid()}").write_bytes(b"y" * 10)
    assert [(e.slug, e.state) for e in cachedir.list_caches()] == [
        ("init", "partial"), ("remote", "writing"), ("reused", "partial")]
    one = [e for e in cachedir.list_caches() if e.slug == "init"]
    assert cachedir.format_caches(one).splitlines()[-1] == f"10 B in 1 cache in {cache_dir}"
    assert cachedir.clean_caches(cachedir.list_caches()) == 20
    assert [(e.slug, e.state) for e in cachedir.list_caches()] == [("remote", "writing")]


def test_clean_frees_exactly_what_it_listed_and_spares_a_replaced_file(workdir):
    imgs = image_folder(workdir / "imgs", 4)
    load_dataset(Config(dataset=str(imgs), resolution=32, batch_size=2))
    stats = fake_stats(workdir / "cache", str(imgs))
    entries = cachedir.list_caches()
    decoded = next(e for e in entries if e.kind == "decoded")
    images = next(f.path for f in decoded.files if f.path.name.endswith(".images.npy"))
    # a new build put its file in place since the listing (the user took a while to say yes)
    np.save(images.with_name("new.npy"), np.zeros(5, np.uint8))
    os.replace(images.with_name("new.npy"), images)
    expected = sum(f.bytes for e in entries for f in e.files if f.path != images)
    assert cachedir.clean_caches(entries) == expected
    assert [p.name for p in (workdir / "cache").iterdir()] == [images.name]
    assert not stats.exists()
    # without the rest of its set, the new file is a partial cache: the next clean takes it
    size = images.stat().st_size
    assert [(e.state, e.bytes) for e in cachedir.list_caches()] == [("partial", size)]
    assert cachedir.clean_caches(cachedir.list_caches()) == size and not images.exists()
    assert cachedir.list_caches() == [] and cachedir.format_caches([]) == (
        f"no caches in {workdir / 'cache'}")
