"""The export folder: made and locked for the export's length, checked for anything in the way,
the file each seed goes to (in its class folder; or the npz shard holding it), which of those
files are already whole, and the temp files a killed export left behind.
"""

from __future__ import annotations

import fcntl
import os
import re
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from ganctl.bulk.manifest import MANIFEST
from ganctl.errors import ConfigError
from ganctl.fsutil import nearest_existing

LABELS = "labels.csv"
SEED_DIGITS = 10  # seed0000000123.png: fixed, so names stay put when a rerun adds seeds
_TEMP = re.compile(r"^\.(seed\d+\.(?:png|jpg|webp)|images-\d+\.npz|manifest\.json|labels\.csv)"
                   r"\.tmp-(\d+)$")  # fsutil.temp_path of the files written here
_UNSAFE = re.compile(r"[^A-Za-z0-9._+@=, -]")
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # a PNG's last chunk


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


def make_out_dir(out_dir: Path) -> Path:
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
def folder_lock(out_dir: Path) -> Iterator[None]:
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


def check_places(out_dir: Path, folders: list[str]) -> None:
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


def remove_dead_temps(out_dir: Path) -> None:
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


def file_names(out_dir: Path, seeds: list[int], labels: list[int], folders: list[str], fmt: str,
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


def missing_units(out_dir: Path, names: list[str], seeds: list[int], fmt: str, shard_size: int,
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
