"""The named datasets' files, as torchvision lays them out: MNIST's idx, CIFAR's python
batches, SVHN's .mat, CelebA's images with their partition list.

Each is a Source of its split, every label checked against the dataset's classes and every
image size against the dataset's; a damaged file is a DataError naming it, a missing one
DataMissing (which a download may fill in).
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

from ganctl.data import matfile
from ganctl.data.cifarfile import read_cifar_pickle
from ganctl.data.datafile import MAX_DATA_FILE, read_data_file
from ganctl.data.folders import zip_source
from ganctl.data.sources import (
    DEFAULT_MAX_BYTES,
    REFETCH,
    Source,
    damaged,
    hash_of,
    read_regular,
    stat_fingerprint,
)
from ganctl.errors import DataMissing

PIXELS_PER_CIFAR_IMAGE = 3 * 32 * 32
# The image size each named dataset's files hold: anything else (a (N, 784, 1) idx) is damage,
# refused rather than trained on as tall or wide images.
MNIST_SIDES = (28, 28)  # MNIST and Fashion-MNIST
SVHN_SIDES = (32, 32)


def _array_source(name: str, origin: str, files: list[Path], images: np.ndarray,
                  labels: np.ndarray, classes: list[str], split: str) -> Source:
    """images: (N, H, W) or (N, H, W, C) uint8."""
    return Source(name=name, origin=origin, fingerprint=stat_fingerprint(files, split),
                  keys=[f"{split}[{i}]" for i in range(len(images))], labels=labels.astype(np.int64),
                  classes=classes, read=lambda i: images[i], encoded=False)


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
        fingerprint = hash_of(stat_fingerprint([partition]), os.stat(images_dir).st_mtime_ns,
                            stat_fingerprint([f for f in files if f.exists()]), split, max_bytes)

        def read(i: int) -> bytes:
            return read_regular(files[i], max_bytes)  # Skip("missing"): listed, not on disk

        return Source(name=name, origin=str(images_dir), fingerprint=fingerprint, keys=names,
                      labels=labels, classes=[], read=read, encoded=True)
    src = zip_source(name, archive, [f"img_align_celeba/{n}" for n in names], labels, max_bytes,
                     fix=REFETCH)
    src.fingerprint = hash_of(src.fingerprint, stat_fingerprint([partition]), split)
    return src


def _is_file_name(name: str) -> bool:
    """A plain file name: a partition list that names a path (../x, /etc/x) is not CelebA's."""
    return name not in (".", "..") and not any(c in name for c in "/\\\0")


def _missing(name: str, dirs: list[Path], files: list[str]) -> DataMissing:
    where = " or ".join(str(d) for d in dirs)
    return DataMissing(f"dataset {name!r} not found: looked in {where} for {', '.join(files)}")
