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
"""

from __future__ import annotations

import csv
import fcntl
import hashlib
import io
import json
import math
import os
import re
import threading
import time
import zipfile
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from ganctl import __version__
from ganctl.errors import ConfigError
from ganctl.fsutil import atomic_file, atomic_write, nearest_existing, read_regular, sha256_file
from ganctl.imagefiles import QUALITY, image_bytes
from ganctl.models.base import num_classes
from ganctl.sample import (
    LoadedGenerator,
    check_truncation,
    class_index,
    generate,
    labels_for_seeds,
    seed_latents,
)
from ganctl.seeds import MAX_SEED, SEED_PART

FORMATS = ("png", "jpg", "webp", "npz")
_PIL_FORMAT = {"png": "PNG", "jpg": "JPEG", "webp": "WEBP"}
LOSSY = ("jpg", "webp")
MANIFEST, LABELS = "manifest.json", "labels.csv"
MANIFEST_SCHEMA = 1
MAX_MANIFEST = 64 << 20  # bytes: seeds are kept as ranges, so a real manifest is far smaller
SEED_DIGITS = 10  # seed0000000123.png: fixed, so names stay put when a rerun adds seeds
SHARD_BYTES = 256 << 20  # npz shards of at most this many image bytes ...
MAX_SHARD = 10_000  # ... and at most this many images
MAX_WORKERS = 8
PENDING_PER_WORKER = 4  # write jobs queued or running per worker thread: bounds memory
_TEMP = re.compile(r"^\.(seed\d+\.(?:png|jpg|webp)|images-\d+\.npz|manifest\.json|labels\.csv)"
                   r"\.tmp-(\d+)$")  # fsutil.temp_path of the files written here
_UNSAFE = re.compile(r"[^A-Za-z0-9._+@=, -]")


def image_name(seed: int, fmt: str) -> str:
    """seed0000000123.png: zero-padded to SEED_DIGITS (larger seeds take more digits)."""
    return f"seed{seed:0{SEED_DIGITS}d}.{fmt}"


def shard_name(index: int) -> str:
    return f"images-{index:06d}.npz"


def class_folders(classes: Sequence[str]) -> list[str]:
    """A folder name per class: the name with characters unsafe in paths replaced by '_', no
    leading dot (a hidden folder is not read as a class), unique, never empty."""
    folders: list[str] = []
    for i, name in enumerate(classes):
        folder = _UNSAFE.sub("_", str(name)).strip(" ").lstrip(".")[:100] or f"class_{i}"
        folder = folder if folder not in folders else f"{folder}_{i}"
        folders.append(folder)
    return folders


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
    manifest = _manifest(loaded, fmt, truncation, fixed, quality)
    with _folder_lock(_make_out_dir(out_dir)):
        seeds = _merge(_open_out_dir(out_dir, manifest), asked, fmt, out_dir)
        folders = class_folders(config.classes) if num_classes(config) else []
        _check_places(out_dir, folders)
        manifest.update(seeds=_seed_text(seeds), count=len(seeds))
        _remove_dead_temps(out_dir)
        _write_json(out_dir / MANIFEST, {**manifest, "status": "incomplete"})

        c = labels_for_seeds(seeds, config, class_)
        labels = [-1] * len(seeds) if c is None else c.tolist()
        names = _names(out_dir, seeds, labels, folders, fmt, manifest.get("shard_size", 0))
        units = _missing_units(out_dir, names, seeds, fmt, manifest.get("shard_size", 0),
                               batch_size)
        skipped = len(seeds) - sum(len(u) for u in units)
        if start is not None:
            start(len(seeds))
        if progress is not None and skipped:
            progress(skipped)
        label_of = dict(zip(seeds, labels, strict=True))
        root = os.fspath(out_dir)
        path_of = {seed: f"{root}/{name}" for seed, name in zip(seeds, names, strict=True)}
        written = _produce(loaded, units, label_of, path_of, fmt, quality, truncation, batch_size,
                           device, progress, workers or min(MAX_WORKERS, os.cpu_count() or 1))

        _write_labels(out_dir, seeds, labels, names, config.classes)
        if hasattr(os, "sync"):
            os.sync()  # every image durable (written without an fsync each) before the manifest says so
        _write_json(out_dir / MANIFEST, {**manifest, "status": "complete"})
    seconds = time.perf_counter() - began
    return {"out_dir": str(out_dir), "count": len(seeds), "written": written, "skipped": skipped,
            "seconds": round(seconds, 3), "images_per_s": round(written / seconds, 1),
            "format": fmt, "checkpoint": manifest["checkpoint"], "step": manifest["step"]}


# --- checks and the manifest ------------------------------------------------------------------

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


def _manifest(loaded: LoadedGenerator, fmt: str, truncation: float | None, fixed: int | None,
              quality: int) -> dict:
    """The export's settings (its seeds and count are added once merged with the folder's)."""
    config = loaded.config
    network = {"arch": config.arch, "resolution": config.resolution, "channels": config.channels,
               "z_dim": config.z_dim, "g_width": config.g_width, "conditional": config.conditional,
               "classes": list(config.classes)}
    image_bytes = config.resolution ** 2 * config.channels
    return {"ganctl_export": MANIFEST_SCHEMA, "ganctl_version": __version__,
            "checkpoint": str(loaded.header.path), "step": loaded.header.step,
            "checkpoint_sha256": sha256_file(Path(loaded.header.path)),
            "generator_sha256": _weights_sha256(loaded.G), "network": network,
            "truncation": None if truncation is None else float(truncation),
            "class_index": fixed, "format": fmt, "quality": quality if fmt in LOSSY else None,
            "shard_size": max(1, min(MAX_SHARD, SHARD_BYTES // image_bytes)) if fmt == "npz" else 0}


# what must match for a rerun to add to a folder: the same pixels, the same way written
SETTINGS = ("ganctl_export", "checkpoint_sha256", "generator_sha256", "network", "truncation",
            "class_index", "format", "quality", "shard_size")


def _make_out_dir(out_dir: Path) -> Path:
    """out_dir, made with its missing parents; a file where a folder must be is a clear error."""
    if out_dir.is_symlink():
        raise ConfigError(f"{out_dir} is a symbolic link; give --out-dir the folder it points to "
                          "(ganctl does not write through links)")
    folder = nearest_existing(out_dir)
    if folder is not None and not folder.is_dir():
        what = "the output folder" if folder == out_dir else f"a parent of {out_dir}"
        raise ConfigError(f"{folder} is not a folder ({what}); give --out-dir a new or empty "
                          "folder, or a ganctl export to add to")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create the output folder {out_dir}: {e.strerror or e}") from None
    return out_dir


@contextmanager
def _folder_lock(out_dir: Path) -> Iterator[None]:
    """An exclusive lock on the folder itself (no lock file among the images) for the export's
    length: a second export into it at once is refused, not left to race on the manifest."""
    fd = os.open(out_dir, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"another ganctl sample is writing into {out_dir}; wait for it to "
                              "end (or stop it), then rerun to add to its export") from None
        except OSError:
            pass  # a file system without locks (some network mounts): export unguarded
        yield
    finally:
        os.close(fd)


def _open_out_dir(out_dir: Path, manifest: dict) -> dict | None:
    """The manifest of an export already in out_dir, None for a new or empty folder; any other
    folder with files is refused."""
    if not (out_dir / MANIFEST).exists():
        if any(out_dir.iterdir()):
            raise ConfigError(f"{out_dir} is not empty and holds no export ({MANIFEST}); choose "
                              "an empty or new folder")
        return None
    try:  # a regular file of sane size: a FIFO or a huge file in its place must not hang or fill memory
        previous = json.loads(read_regular(out_dir / MANIFEST, MAX_MANIFEST))
    except (OSError, ValueError, RecursionError):
        previous = None
    if not isinstance(previous, dict) or not previous.get("ganctl_export"):
        raise ConfigError(f"{out_dir / MANIFEST} is not a ganctl export manifest; choose another "
                          "output folder")
    changed = [k for k in SETTINGS if previous.get(k) != manifest[k]]
    if changed:
        what = ", ".join(f"{k} {previous.get(k)!r} -> {manifest[k]!r}" if k in
                         ("truncation", "class_index", "format", "quality") else k for k in changed)
        raise ConfigError(f"{out_dir} holds an export with other settings ({what}); export into "
                          "a new folder, or rerun with the settings of its manifest.json")
    return previous


def _check_places(out_dir: Path, folders: list[str]) -> None:
    """Where the export writes, nothing else may stand: a folder or link named labels.csv, a
    file or link in place of a class folder. Checked before the manifest changes."""
    for name in (LABELS, MANIFEST):
        path = out_dir / name
        if path.is_symlink() or (path.exists() and not path.is_file()):
            raise ConfigError(f"{path} is in the way (not a regular file) where the export writes "
                              f"its {name}; move it away and rerun")
    for folder in folders:
        path = out_dir / folder
        if path.is_symlink() or (path.exists() and not path.is_dir()):
            raise ConfigError(f"{path} is in the way: the class folder there must be a real folder "
                              "(ganctl does not write through links); move it away and rerun")


def _merge(previous: dict | None, seeds: list[int], fmt: str, out_dir: Path) -> list[int]:
    """The seeds the folder will hold: a rerun of images may add `seeds` to those already
    there; npz shards are cut from the seed list, so theirs cannot change."""
    if previous is None:
        return seeds
    try:
        before = _parse_seed_text(previous.get("seeds"), MAX_FOLDER_SEEDS)
    except ValueError as e:
        raise ConfigError(f"{out_dir / MANIFEST} is damaged ({e}); export into a new folder") from None
    if fmt == "npz" and before != seeds:
        raise ConfigError(f"npz shards of seeds {previous.get('seeds')} are there; export the same "
                          "seeds to finish them, or other seeds into a new folder")
    return sorted(set(before) | set(seeds))


def _seed_text(seeds: list[int]) -> str:
    """[0, 1, 2, 3, 7] -> '0-3,7': runs of consecutive seeds as ranges, in the list's order."""
    parts: list[str] = []
    i = 0
    while i < len(seeds):
        j = i
        while j + 1 < len(seeds) and seeds[j + 1] == seeds[j] + 1:
            j += 1
        parts.append(str(seeds[i]) if i == j else f"{seeds[i]}-{seeds[j]}")
        i = j + 1
    return ",".join(parts)


def _parse_seed_text(text: object, limit: int) -> list[int]:
    """_seed_text's inverse; ValueError for text it could not have written, or for more than
    `limit` seeds."""
    if not isinstance(text, str):
        raise ValueError(f"seeds {str(text)[:40]!r} are not text like 0-63,100")
    seeds: list[int] = []
    for part in filter(None, text.split(",")):
        match = SEED_PART.match(part)
        if match is None:
            raise ValueError(f"{part[:40]!r} is not a seed or a range of seeds")
        low, high = int(match[1]), int(match[2] or match[1])
        if not low <= high <= MAX_SEED:
            raise ValueError(f"{part[:40]!r} is not a range of seeds")
        if len(seeds) + high - low + 1 > limit:
            raise ValueError(f"more than {limit:,} seeds")
        seeds.extend(range(low, high + 1))
    return seeds


def _weights_sha256(G: torch.nn.Module) -> str:
    """Of G's tensors as loaded: tells G_ema from G, which come from the same checkpoint."""
    digest = hashlib.sha256()
    for name, tensor in G.state_dict().items():
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _write_json(path: Path, value: dict) -> None:
    atomic_write(path, (json.dumps(value, indent=2) + "\n").encode())


def _remove_dead_temps(out_dir: Path) -> None:
    """Temp files of the writes here that a killed export left behind (a live process's are
    its own: left alone)."""
    folders = [out_dir, *(p for p in out_dir.iterdir() if p.is_dir() and not p.is_symlink())]
    for folder in folders:
        for entry in os.scandir(folder):
            match = _TEMP.match(entry.name)
            if match and entry.is_file(follow_symlinks=False) and not _alive(int(match[2])):
                Path(entry.path).unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # this process writes none yet: a leftover of an earlier call in it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


# --- what to write, what is there ----------------------------------------------------------------

def _names(out_dir: Path, seeds: list[int], labels: list[int], folders: list[str], fmt: str,
           shard_size: int) -> list[str]:
    """Each seed's file, relative to out_dir ('cat/seed0000000007.png'): its image, or the shard
    holding it; the class folders made as needed. Plain strings: millions of Path objects took
    most of a 10-million-image export's start."""
    if fmt == "npz":
        return [shard_name(i // shard_size) for i in range(len(seeds))]
    if not folders:
        return [image_name(s, fmt) for s in seeds]
    for k in set(labels):
        (out_dir / folders[k]).mkdir(exist_ok=True)
    return [f"{folders[k]}/{image_name(s, fmt)}" for s, k in zip(seeds, labels, strict=True)]


def _missing_units(out_dir: Path, names: list[str], seeds: list[int], fmt: str, shard_size: int,
                   batch_size: int) -> list[list[int]]:
    """The seeds still to write, in units: batches of images, or whole shards."""
    present = set()
    for folder in {name.rpartition("/")[0] for name in names}:  # a listing per folder, no stat per file
        prefix = f"{folder}/" if folder else ""
        present |= {prefix + e.name for e in os.scandir(out_dir / folder)
                    if e.is_file(follow_symlinks=False)}
    present = {name for name in present.intersection(names) if _whole(out_dir / name, fmt)}
    if fmt == "npz":
        return [seeds[i:i + shard_size] for i in range(0, len(seeds), shard_size)
                if names[i] not in present]
    missing = [s for s, name in zip(seeds, names, strict=True) if name not in present]
    return [missing[i:i + batch_size] for i in range(0, len(missing), batch_size)]


_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # a PNG's last chunk
MAX_FOLDER_SEEDS = 100_000_000  # seeds one export folder may hold (a manifest with more is damaged)


def _whole(path: Path, fmt: str) -> bool:
    """Whether a file of ours ends as a file of its format does (ganctl writes atomically, so
    only someone else cuts one short): PNG's IEND chunk, JPEG's end marker, WebP's RIFF size,
    a zip's end record for npz. Reads its first and last bytes only."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
            size = os.fstat(f.fileno()).st_size
            f.seek(max(size - 22, 0))
            tail = f.read()
    except OSError:
        return False
    if fmt == "png":
        return head.startswith(b"\x89PNG\r\n\x1a\n") and tail.endswith(_PNG_END)
    if fmt in ("jpg", "jpeg"):
        return head.startswith(b"\xff\xd8\xff") and tail.endswith(b"\xff\xd9")
    if fmt == "webp":
        riff = int.from_bytes(head[4:8], "little")
        return head[:4] == b"RIFF" and head[8:12] == b"WEBP" and riff + 8 == size
    if b"PK\x05\x06" not in tail:  # npz: a zip's end-of-central-directory record
        return False
    try:  # a shard is few and large: its member list is read too
        with zipfile.ZipFile(path) as shard:
            return {"images.npy", "seeds.npy", "labels.npy"} <= set(shard.namelist())
    except (OSError, zipfile.BadZipFile, ValueError):
        return False


# --- generate on this thread, encode and write on workers ----------------------------------------

def _produce(loaded: LoadedGenerator, units: list[list[int]], label_of: dict[int, int],
             path_of: dict[int, str], fmt: str, quality: int, truncation: float | None,
             batch_size: int, device: torch.device, progress: Callable[[int], None] | None,
             workers: int) -> int:
    """Generate each unit and hand it to the writers; returns the images written. On any
    exception (a signal's too) the writers stop at the next file and are waited for, so every
    file is whole or absent."""
    stop = threading.Event()
    pending: deque[tuple[Future, int]] = deque()
    written = 0
    files = _Tally()  # images the writers finished, counted file by file

    def settle(limit: int) -> None:
        nonlocal written
        while len(pending) > limit:
            future, n = pending.popleft()
            future.result()
            written += n
            if progress is not None:
                progress(n)

    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ganctl-export")
    try:
        for unit in units:
            images = _generate(loaded, unit, label_of, truncation, batch_size, device)
            for piece, x in _pieces(unit, images, 1 if fmt == "npz" else workers):
                settle(workers * PENDING_PER_WORKER - 1)
                job = (_write_shard if fmt == "npz" else _write_images)
                pending.append((pool.submit(job, piece, x, label_of, path_of, fmt, quality, stop,
                                            files), len(piece)))
        settle(0)
    finally:
        stop.set()  # a no-op when all is done; else the writers finish the file they are on
        pool.shutdown(wait=True, cancel_futures=True)
        if progress is not None and files.count > written:  # stopped: the files of unfinished jobs
            progress(files.count - written)
    return written


class _Tally:
    """A count that writer threads add to."""

    def __init__(self) -> None:
        self.count = 0
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        with self._lock:
            self.count += n


def _generate(loaded: LoadedGenerator, seeds: list[int], label_of: dict[int, int],
              truncation: float | None, batch_size: int, device: torch.device) -> np.ndarray:
    """(n, H, W, C) uint8 images of the seeds."""
    z = seed_latents(loaded.G, seeds, loaded.config.z_dim, truncation)
    c = (torch.tensor([label_of[s] for s in seeds], dtype=torch.int64)
         if num_classes(loaded.config) else None)
    x = generate(loaded.G, z, device, c, batch_size, truncation)  # (N, C, H, W)
    return np.ascontiguousarray(x.permute(0, 2, 3, 1).numpy())  # (N, H, W, C)


def _pieces(seeds: list[int], images: np.ndarray, n: int) -> Iterator[tuple[list[int], np.ndarray]]:
    size = math.ceil(len(seeds) / n)
    for i in range(0, len(seeds), size):
        yield seeds[i:i + size], images[i:i + size]


def encode(image: np.ndarray, fmt: str, quality: int = QUALITY) -> bytes:
    """(H, W, C) uint8 -> the bytes of an image file, encoded as `ganctl sample` encodes its
    files (imagefiles.image_bytes: PNG byte for byte as a grid's cell would be)."""
    return image_bytes(torch.from_numpy(image), _PIL_FORMAT[fmt], quality)


def _write_images(seeds: list[int], images: np.ndarray, label_of: dict[int, int],
                  path_of: dict[int, str], fmt: str, quality: int, stop: threading.Event,
                  files: _Tally) -> None:
    for seed, image in zip(seeds, images, strict=True):
        if stop.is_set():
            return
        _put(Path(path_of[seed]), encode(image, fmt, quality))
        files.add(1)


def _write_shard(seeds: list[int], images: np.ndarray, label_of: dict[int, int],
                 path_of: dict[int, str], fmt: str, quality: int, stop: threading.Event,
                 files: _Tally) -> None:
    if stop.is_set():
        return
    buf = io.BytesIO()
    np.savez(buf, images=images, seeds=np.array(seeds, dtype=np.int64),
             labels=np.array([label_of[s] for s in seeds], dtype=np.int64))
    atomic_write(Path(path_of[seeds[0]]), buf.getbuffer())
    files.add(len(seeds))


def _put(path: Path, data: bytes) -> None:
    """An image file written whole or not at all, without an fsync per file (one fsync each
    made writing the slowest part on a GPU machine's disk: 1,500 img/s against a generator's
    16,000): export_images syncs them all once before its manifest says complete, and a rerun
    redoes any file a power cut left cut short (_whole)."""
    with atomic_file(path, sync_dir=False, sync=False) as f:
        f.write(data)


def _write_labels(out_dir: Path, seeds: list[int], labels: list[int], names: list[str],
                  classes: Sequence[str]) -> None:
    buf = io.StringIO()
    rows = csv.writer(buf, lineterminator="\n")
    rows.writerow(["file", "seed", "class_index", "class_name"])
    for seed, k, name in zip(seeds, labels, names, strict=True):
        rows.writerow([name, seed, "" if k < 0 else k,
                       "" if k < 0 else classes[k]])
    atomic_write(out_dir / LABELS, buf.getvalue().encode())
