"""Where images come from: torchvision's on-disk formats, image folders and zips.

A Source lists its items and reads one raw item at a time (encoded bytes, or an HWC uint8
array for the array formats); decoding and caching are cache.py's. Nothing here unpickles:
CIFAR's python batches are read by walking their pickle opcodes (pickletools.genops), which
runs no code whatever the file holds.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import io
import os
import struct
import tarfile
import threading
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from pickletools import genops

import numpy as np

from ganctl import fsutil
from ganctl.data import matfile
from ganctl.data.decode import IMAGE_EXTENSIONS, Skip
from ganctl.errors import DataError, DataMissing

DEFAULT_MAX_BYTES = 256 << 20  # --max-file-mb: larger image files are skipped unread
# A whole-dataset file of torchvision's formats (an MNIST idx, a CIFAR batch, an SVHN .mat, a
# partition list): the largest real one is SVHN's extra split, 1.3 GB.
MAX_DATA_FILE = 4 << 30
# What to do about a damaged file: a named dataset's comes again from its download (never over
# the damaged one: that is the user's to delete); a folder's or zip's only the user has.
REFETCH = "delete it and run again with --download, or put an intact copy there"
REPLACE = "replace it with an intact copy"
PIXELS_PER_CIFAR_IMAGE = 3 * 32 * 32
# The image size each named dataset's files hold: anything else (a (N, 784, 1) idx) is damage,
# refused rather than trained on as tall or wide images.
MNIST_SIDES = (28, 28)  # MNIST and Fashion-MNIST
SVHN_SIDES = (32, 32)


def damaged(path: Path, why: str, fix: str = REFETCH) -> DataError:
    """The one-line error for a file that cannot be decoded: which file, what is wrong, and
    what to do. Nothing deletes or replaces it."""
    return DataError(f"{path} is truncated or corrupted ({' '.join(why.split())[:200]}); {fix}")


@dataclass
class Source:
    name: str  # what the user typed: a dataset name or a path
    origin: str  # where it was read from, for messages and reports
    fingerprint: str  # changes when the raw data does
    keys: list[str]  # one per item: its file (or index) for the skip report
    labels: np.ndarray  # (N,) int64 class index, -1 where there is none
    classes: list[str]
    read: Callable[[int], bytes | np.ndarray]
    encoded: bool  # read() gives encoded bytes (True) or an HWC uint8 array (False)
    ignored: list[tuple[str, str]] = field(default_factory=list)  # (file, reason) never read
    sizes: np.ndarray | None = None  # (N,) bytes each read() will hold, when known up front

    def __len__(self) -> int:
        return len(self.keys)


def _hash(*parts: object) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(repr(part).encode())
    return h.hexdigest()[:16]


def _stat_fingerprint(paths: list[Path], *extra: object) -> str:
    """Names, sizes and modification times: cheap, and it notices replaced or edited files."""
    stats = []
    for p in paths:
        st = p.stat()
        stats.append((p.name, st.st_size, st.st_mtime_ns))
    return _hash(stats, *extra)


# --- folders and zips of images ----------------------------------------------------------------

def _is_junk(rel: PurePosixPath) -> bool:
    """OS droppings, skipped silently: hidden files and folders, macOS resource forks."""
    return any(part.startswith(".") or part == "__MACOSX" for part in rel.parts)


def _classes(rel_paths: list[PurePosixPath]) -> tuple[np.ndarray, list[str]]:
    """Label = first folder below the deepest folder all files share; -1 for files at that level."""
    parents = [p.parts[:-1] for p in rel_paths]
    common = 0
    if parents:
        shortest = min(parents, key=len)
        while common < len(shortest) and all(p[common] == shortest[common] for p in parents):
            common += 1
    names = [p[common] if len(p) > common else None for p in parents]
    classes = sorted({n for n in names if n is not None})
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index[n] if n is not None else -1 for n in names], dtype=np.int64), classes


def _split_by_type(rel_paths: list[PurePosixPath]) -> tuple[list[PurePosixPath], list[tuple[str, str]]]:
    images, ignored = [], []
    for rel in rel_paths:
        if _is_junk(rel):
            continue
        if rel.suffix.lower() in IMAGE_EXTENSIONS:
            images.append(rel)
        else:
            ignored.append((str(rel), "not an image file type"))
    return images, ignored


def read_regular(path: Path, max_bytes: int) -> bytes:
    """A regular file's bytes, at most max_bytes of them: a FIFO, device or socket is never
    read, a file larger than max_bytes is skipped without reading it."""
    try:
        return fsutil.read_regular(path, max_bytes)
    except FileNotFoundError:
        raise Skip("missing") from None
    except fsutil.NotRegularFile:
        raise Skip("not a regular file") from None
    except fsutil.FileTooLarge:
        raise Skip("too large") from None
    except OSError as e:
        raise Skip("too deep" if e.errno == errno.ENAMETOOLONG else "unreadable") from None


def _encloses(link: Path, root: Path) -> bool:
    """Whether a symlinked folder leads to the dataset's root or above it (up to /): following
    it would walk far more than the dataset."""
    try:
        return root.resolve().is_relative_to(link.resolve())
    except (OSError, RuntimeError):
        return True


def walk_files(root: Path) -> tuple[list[tuple[PurePosixPath, int, int]], list[tuple[str, str]]]:
    """Every regular file under root as (relative path, size, mtime_ns), and (path, reason) for what was
    passed over. Iterative, so no tree is too deep for it; symlinked folders are followed once
    each (a link back up the tree is not a loop); FIFOs, sockets and devices are never opened."""
    files: list[tuple[PurePosixPath, int, int]] = []
    passed: list[tuple[str, str]] = []
    seen: set[tuple[int, int]] = set()
    stack = [(root, PurePosixPath())]
    while stack:
        folder, rel = stack.pop()
        try:
            st = folder.stat()
            if (st.st_dev, st.st_ino) in seen:
                continue  # reached again through a symlink
            seen.add((st.st_dev, st.st_ino))
            entries = list(os.scandir(folder))
        except OSError as e:
            if rel.parts:
                passed.append((str(rel), "too deep" if e.errno == errno.ENAMETOOLONG
                               else "unreadable folder"))
            continue
        for entry in entries:
            child = rel / entry.name
            try:
                if entry.is_dir():  # follows symlinks; loops end at `seen`
                    if entry.is_symlink() and _encloses(Path(entry.path), root):
                        passed.append((str(child), "link to an enclosing folder"))
                        continue
                    stack.append((Path(entry.path), child))
                elif entry.is_file():
                    st = entry.stat()
                    files.append((child, st.st_size, st.st_mtime_ns))
                elif not entry.is_symlink() or os.path.exists(entry.path):
                    passed.append((str(child), "not a regular file"))
            except OSError:
                passed.append((str(child), "unreadable"))
    return sorted(files), passed


def folder_source(name: str, root: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> Source:
    walked, passed = walk_files(root)
    stats = {rel: (size, mtime) for rel, size, mtime in walked}
    images, ignored = _split_by_type([rel for rel, _, _ in walked])
    ignored += [(f, why) for f, why in passed if not _is_junk(PurePosixPath(f))]
    labels, classes = _classes(images)
    files = [root / rel for rel in images]
    sizes = np.array([stats[rel][0] for rel in images], dtype=np.int64)
    # names, sizes and modification times: cheap, and it notices replaced or edited files
    fingerprint = _hash([(str(rel), stats[rel]) for rel in images], max_bytes)
    return Source(name=name, origin=str(root), fingerprint=fingerprint,
                  keys=[str(r) for r in images], labels=labels, classes=classes,
                  read=lambda i: read_regular(files[i], max_bytes), encoded=True,
                  ignored=ignored, sizes=np.minimum(sizes, max_bytes))


# what zipfile raises for a damaged archive: a bad or lying central directory, a multi-disk
# or otherwise unsupported one, offsets past the end
LOCAL_HEADER = b"PK\x03\x04"  # the signature every member's data starts with
ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, ValueError, EOFError,
              struct.error)


def _check_offsets(archive: zipfile.ZipFile, infos: list[zipfile.ZipInfo]) -> None:
    """BadZipFile unless the first and last members the central directory lists start where it
    says: a directory that points elsewhere (a cut or patched file) would make every member
    unreadable, one skip at a time."""
    assert archive.fp is not None
    for info in {min(infos, key=_offset), max(infos, key=_offset)} if infos else ():
        archive.fp.seek(info.header_offset)
        if archive.fp.read(len(LOCAL_HEADER)) != LOCAL_HEADER:
            raise zipfile.BadZipFile(f"the central directory puts {info.filename!r} at byte "
                                     f"{info.header_offset}, where no member starts")


def _offset(info: zipfile.ZipInfo) -> int:
    return info.header_offset


def zip_source(name: str, path: Path, members: list[str] | None = None,
               labels: np.ndarray | None = None, max_bytes: int = DEFAULT_MAX_BYTES,
               fix: str = REPLACE) -> Source:
    """A zip's images; a member that cannot be read is skipped (counted), a zip that cannot be
    opened is a DataError that says `fix`."""
    try:
        archive = zipfile.ZipFile(path)
        found = archive.infolist()
        _check_offsets(archive, found)
    except ZIP_ERRORS as e:
        raise damaged(path, f"zip: {e}", fix) from None
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}; check it is there and readable") from None
    infos = {i.filename: i for i in found if not i.is_dir()}
    if members is None:
        images, ignored = _split_by_type(sorted(PurePosixPath(n) for n in infos))
        members = [str(p) for p in images]
        labels, classes = _classes(images)
    else:
        ignored, classes = [], []
    lock = threading.Lock()  # one shared file handle: reads are serialised, decoding is not

    def read(i: int) -> bytes:
        info = infos.get(members[i])
        if info is None:
            raise Skip("missing")  # listed (CelebA's partition file) but not in the zip
        if info.file_size > max_bytes:
            raise Skip("too large")
        with lock:
            try:
                with archive.open(info) as member:
                    data = member.read(max_bytes + 1)  # the declared size may lie
            except Exception:  # damaged, encrypted, unsupported compression: skip this member
                raise Skip("unreadable") from None
        if len(data) > max_bytes:
            raise Skip("too large")
        return data

    fingerprint = _hash(path.stat().st_size, [(m, infos[m].CRC, infos[m].file_size)
                                              for m in members if m in infos], max_bytes)
    sizes = np.array([min(infos[m].file_size, max_bytes) if m in infos else 0 for m in members],
                     dtype=np.int64)
    assert labels is not None  # given with members, or derived above
    return Source(name=name, origin=str(path), fingerprint=fingerprint, keys=members,
                  labels=labels, classes=classes, read=read, encoded=True, ignored=ignored,
                  sizes=sizes)


# --- torchvision's formats ------------------------------------------------------------------------------

def extract_missing(archive: Path, root: Path, folder: str) -> None:
    """The regular files under `folder` in a .tar.gz (CIFAR's), written into root/folder where
    there is none yet: a file there, intact or damaged, is left as it is. Members elsewhere, or
    that are links or devices, are passed over; a damaged archive is a DataError naming it."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                rel = PurePosixPath(member.name)
                if not member.isfile() or rel.is_absolute() or rel.parts[:1] != (folder,) \
                        or ".." in rel.parts or member.size > MAX_DATA_FILE:
                    continue
                target = root.joinpath(*rel.parts)
                if target.exists():
                    continue
                source = tar.extractfile(member)
                assert source is not None  # a regular file's
                with source:
                    data = source.read(member.size)
                target.parent.mkdir(parents=True, exist_ok=True)
                fsutil.atomic_write(target, data)
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise damaged(archive, f"tar.gz: {e}") from None
    except OSError as e:
        raise DataError(f"cannot extract {archive} into {root}: {e.strerror or e}; check free "
                        "space and permissions") from None


def _array_source(name: str, origin: str, files: list[Path], images: np.ndarray,
                  labels: np.ndarray, classes: list[str], split: str) -> Source:
    """images: (N, H, W) or (N, H, W, C) uint8."""
    return Source(name=name, origin=origin, fingerprint=_stat_fingerprint(files, split),
                  keys=[f"{split}[{i}]" for i in range(len(images))], labels=labels.astype(np.int64),
                  classes=classes, read=lambda i: images[i], encoded=False)


def read_data_file(path: Path, gunzip: bool = False) -> bytes:
    """A whole-dataset file (decompressed with gunzip), refused beyond MAX_DATA_FILE bytes."""
    try:
        raw = read_regular(path, MAX_DATA_FILE)
    except Skip as skip:
        raise DataError(f"{path} is {skip.reason}, not a dataset file; delete it and download "
                        "again") from None
    return _gunzip(path, raw) if gunzip else raw


def _gunzip(path: Path, raw: bytes) -> bytes:
    """A .gz file's content; a truncated or corrupted one (a cut download, a flipped bit the
    CRC catches) is a DataError naming it, a gzip bomb stops at MAX_DATA_FILE."""
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(raw)) as f:
            out = f.read(MAX_DATA_FILE + 1)
    except (EOFError, zlib.error, gzip.BadGzipFile, OSError) as e:
        raise damaged(path, f"gzip: {e}") from None
    if len(out) > MAX_DATA_FILE:
        raise DataError(f"{path} is too large, not a dataset file; delete it and download again")
    return out


def read_idx(path: Path) -> np.ndarray:
    """An MNIST idx file (raw or .gz) of unsigned bytes -> ndarray."""
    raw = read_data_file(path, gunzip=path.suffix == ".gz")
    try:
        if len(raw) < 4 or raw[0:2] != b"\x00\x00" or raw[2] != 0x08:
            raise ValueError("not an idx file of unsigned bytes")
        ndim = raw[3]
        shape = struct.unpack_from(f">{ndim}I", raw, 4)
        data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
        return data.reshape(shape)
    except (ValueError, struct.error) as e:  # a cut header, a size the data does not fill
        raise damaged(path, f"idx: {e}") from None


def class_indices(path: Path, labels: np.ndarray | list, classes: list[str]) -> np.ndarray:
    """Labels as (N,) int64, each a class's index: a damaged file's stray value would reach
    the per-class counts and a conditional model's embedding."""
    if isinstance(labels, list) and not all(type(v) is int for v in labels):
        raise damaged(path, "labels that are not whole numbers")
    if isinstance(labels, list) and not all(0 <= v < len(classes) for v in labels):
        bad = next(v for v in labels if not 0 <= v < len(classes))
        raise damaged(path, f"label {bad} is none of the {len(classes)} classes")
    array = np.asarray(labels)
    if array.ndim != 1 or array.dtype.kind not in "iu":
        raise damaged(path, f"labels of shape {array.shape} and type {array.dtype}, not a list "
                            "of whole numbers")
    outside = (array < 0) | (array >= len(classes))
    if outside.any():
        raise damaged(path, f"label {array[outside][0]} is none of the {len(classes)} classes")
    return array.astype(np.int64)


def _first_existing(candidates: list[Path]) -> Path | None:
    return next((p for p in candidates if p.is_file()), None)


def mnist_source(name: str, dirs: list[Path], split: str, classes: list[str]) -> Source:
    prefix = "train" if split == "train" else "t10k"
    found = {}
    for kind in ("images-idx3", "labels-idx1"):
        base = f"{prefix}-{kind}-ubyte"
        path = _first_existing([d / f for d in dirs for f in (base, base + ".gz")])
        if path is None:
            raise _missing(name, dirs, [base + "[.gz]"])
        found[kind] = path
    images, labels = read_idx(found["images-idx3"]), read_idx(found["labels-idx1"])
    if images.ndim != 3 or images.shape[1:] != MNIST_SIDES or images.shape[0] == 0:
        raise damaged(found["images-idx3"], f"images of shape {images.shape}, not "
                                            f"(N, {', '.join(map(str, MNIST_SIDES))}) with N > 0")
    labels = class_indices(found["labels-idx1"], labels, classes)
    if len(images) != len(labels):
        raise damaged(found["labels-idx1"], f"{len(labels)} labels for the "
                                            f"{len(images)} images of {found['images-idx3'].name}")
    return _array_source(name, str(found["images-idx3"].parent), list(found.values()), images,
                         labels, classes, split)


_LIST_KEYS = frozenset({"labels", "fine_labels", "coarse_labels", "label_names",
                        "fine_label_names", "coarse_label_names"})
_INT_OPS = frozenset({"BININT1", "BININT2", "BININT", "INT", "LONG1"})
# Python 3 writes bytes at protocol 2 as _codecs.encode('<text>', 'latin1'): the codec name,
# the tuple and the call sit between a key and its list.
# Protocols 4 and 5 cut long lists into FRAMEs, which say nothing about the data.
_STRUCTURE_OPS = frozenset({"BINPUT", "LONG_BINPUT", "PUT", "MEMOIZE", "BINGET", "LONG_BINGET",
                            "GET", "TUPLE2", "REDUCE", "FRAME", "PROTO"})
_CODEC_NAMES = frozenset({"latin1", "latin-1"})


def read_cifar_pickle(path: Path) -> dict[str, list]:
    """The pixel bytes and lists of a CIFAR python batch, read from its opcodes, not unpickled.

    Returns {'data': [bytes], 'labels' / 'fine_labels' / 'label_names' ...: [items]}: the longest
    byte string is the (N, 3072) pixel array, and a key string is followed by its list's items.
    """
    out: dict[str, list] = {"data": [b""]}
    key: str | None = None  # the list being read, if any
    inside = False  # between the list's opening (EMPTY_LIST / MARK) and its APPEND(S)
    try:
        for op, arg, _ in genops(read_data_file(path)):
            name = op.name
            if key is not None and inside and name in _INT_OPS:
                out[key].append(int(arg))  # type: ignore[arg-type]  # an int opcode's argument
            elif isinstance(arg, (str, bytes, bytearray)) and "GLOBAL" not in name:
                raw = arg.encode("latin-1") if isinstance(arg, str) else bytes(arg)
                text = raw.decode("latin-1")
                if key is not None and text in _CODEC_NAMES:
                    continue
                if key is not None and inside and text not in _LIST_KEYS:
                    out[key].append(text)
                    continue
                key = text if text in _LIST_KEYS else None
                if key is not None:
                    out[key], inside = [], False
                elif len(raw) > len(out["data"][0]):
                    out["data"] = [raw]
            elif name in ("EMPTY_LIST", "MARK"):
                inside = True
            elif name in ("APPENDS", "APPEND"):
                inside = False
            elif name not in _STRUCTURE_OPS:
                key = None
    except (ValueError, EOFError, struct.error) as e:  # genops' cut or unknown opcodes, bad text
        raise damaged(path, f"pickle: {e}") from None
    return out


def cifar_source(name: str, folder: Path, files: list[str], meta: str, label_key: str,
                 names_key: str, split: str, count: int) -> Source:
    """CIFAR's python batches of `count` classes, every label checked against the meta file's
    class names."""
    paths = [folder / f for f in files]
    missing = [p.name for p in paths + [folder / meta] if not p.is_file()]
    if missing:
        raise _missing(name, [folder], missing)
    classes = [str(c) for c in read_cifar_pickle(folder / meta).get(names_key, [])]
    if len(classes) != count:
        raise damaged(folder / meta, f"{len(classes)} {names_key}, not {name}'s {count}")
    images, labels = [], []
    for path in paths:
        batch = read_cifar_pickle(path)
        batch_labels = class_indices(path, batch.get(label_key, []), classes)
        data = batch["data"][0]
        if not len(batch_labels) or len(data) != len(batch_labels) * PIXELS_PER_CIFAR_IMAGE:
            raise damaged(path, f"{len(data)} bytes of pixels for {len(batch_labels)} {label_key}")
        # (N, 3072) rows are channel-planar 32x32 RGB -> (N, 32, 32, 3)
        pixels = np.frombuffer(data, dtype=np.uint8).reshape(-1, 3, 32, 32)
        images.append(pixels.transpose(0, 2, 3, 1))
        labels.append(batch_labels)
    return _array_source(name, str(folder), paths, np.concatenate(images), np.concatenate(labels),
                         classes, split)


SVHN_LABELS = (1, 10)  # SVHN writes digit 0 as label 10


def svhn_source(name: str, path: Path, split: str) -> Source:
    """SVHN's X, (H, W, 3, N) uint8, and y, N labels 1..10, from its MATLAB 5 file (matfile.py:
    no C reader sees the file)."""
    if not path.is_file():
        raise _missing(name, [path.parent], [path.name])
    try:
        arrays = matfile.read_mat(read_data_file(path), MAX_DATA_FILE)
    except ValueError as e:
        raise damaged(path, f".mat: {e}") from None
    pixels, y = arrays.get("X"), arrays.get("y")
    if pixels is None or y is None:
        raise damaged(path, "no X and y arrays")
    if pixels.ndim != 4 or pixels.shape[:3] != (*SVHN_SIDES, 3) or pixels.shape[3] == 0 \
            or pixels.dtype.kind not in "iuf":
        raise damaged(path, f"X of shape {pixels.shape}, not "
                            f"({', '.join(map(str, SVHN_SIDES))}, 3, N) with N > 0")
    if pixels.dtype != np.uint8 and not _whole_in(pixels, 0, 255):  # astype would wrap them
        raise damaged(path, "X holds values that are not pixels from 0 to 255")
    y = y.reshape(-1)
    low, high = SVHN_LABELS
    if len(y) != pixels.shape[3] or not _whole_in(y, low, high):
        raise damaged(path, f"y is not {pixels.shape[3]} labels from {low} to {high}")
    images = np.ascontiguousarray(pixels.transpose(3, 0, 1, 2))  # (H, W, 3, N) -> (N, H, W, 3)
    labels = y.astype(np.int64) % 10
    return _array_source(name, str(path.parent), [path], images.astype(np.uint8), labels,
                         [str(d) for d in range(10)], split)


def _whole_in(array: np.ndarray, low: int, high: int) -> bool:
    """Every value a whole number from low to high (NaN compares false: no numpy warning)."""
    return bool(((array >= low) & (array <= high) & (array == np.round(array))).all())


CELEBA_SPLITS = {"train": 0, "valid": 1, "test": 2}


def celeba_source(name: str, folder: Path, split: str, max_bytes: int = DEFAULT_MAX_BYTES) -> Source:
    partition = folder / "list_eval_partition.txt"
    images_dir = folder / "img_align_celeba"
    archive = folder / "img_align_celeba.zip"
    if not partition.is_file() or not (images_dir.is_dir() or archive.is_file()):
        raise _missing(name, [folder], ["img_align_celeba/ (or img_align_celeba.zip)",
                                        "list_eval_partition.txt"])
    wanted = None if split == "all" else CELEBA_SPLITS[split]
    names = []
    text = read_data_file(partition).decode("utf-8", errors="replace")
    for number, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or parts[1] not in ("0", "1", "2") or not _is_file_name(parts[0]):
            raise damaged(partition, f"line {number} is not '<file> <0|1|2>'")
        if wanted is None or int(parts[1]) == wanted:
            names.append(parts[0])
    labels = np.full(len(names), -1, dtype=np.int64)
    if images_dir.is_dir():
        files = [images_dir / n for n in names]
        fingerprint = _hash(_stat_fingerprint([partition]), os.stat(images_dir).st_mtime_ns,
                            _stat_fingerprint([f for f in files if f.exists()]), split, max_bytes)

        def read(i: int) -> bytes:
            return read_regular(files[i], max_bytes)  # Skip("missing"): listed, not on disk

        return Source(name=name, origin=str(images_dir), fingerprint=fingerprint, keys=names,
                      labels=labels, classes=[], read=read, encoded=True)
    src = zip_source(name, archive, [f"img_align_celeba/{n}" for n in names], labels, max_bytes,
                     fix=REFETCH)
    src.fingerprint = _hash(src.fingerprint, _stat_fingerprint([partition]), split)
    return src


def _is_file_name(name: str) -> bool:
    """A plain file name: a partition list that names a path (../x, /etc/x) is not CelebA's."""
    return name not in (".", "..") and not any(c in name for c in "/\\\0")


def _missing(name: str, dirs: list[Path], files: list[str]) -> DataMissing:
    where = " or ".join(str(d) for d in dirs)
    return DataMissing(f"dataset {name!r} not found: looked in {where} for {', '.join(files)}")
