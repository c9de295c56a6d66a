"""Datasets: the registry of names, image folders and zips, and loading through the cache.

`--dataset NAME` is one of DATASETS (torchvision's on-disk layouts under the data dir,
downloaded when missing unless --no-download); `--dataset PATH` is a folder or .zip of
images. Everything but the built-in shapes is decoded once into the decode cache (cache.py)
and trained from there.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ganctl.config import REAL_PRESET, SHAPES_PRESET, Config
from ganctl.data import cache, datafile, folders, named, shapes, sources
from ganctl.data.batches import Batch, Batches
from ganctl.data.decode import Skip, is_gray, open_image
from ganctl.errors import DataError, DataMissing, did_you_mean, lookup, shorten
from ganctl.text import one_line

__all__ = ["Batch", "Batches", "DATASETS", "ImageSet", "load_dataset", "open_source", "preset"]

MNIST_CLASSES = [str(d) for d in range(10)]
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot"]
FOLDER_PRESET = {"resolution": 64, **REAL_PRESET}
CHANNEL_PROBE = 64  # files looked at to decide a folder's default channels and resolution
MIN_PROBED = 32  # the smallest default resolution a folder's images give (dcgan's smallest)
SYSTEM_FOLDERS = frozenset({"proc", "sys", "dev"})  # kernel views, never a dataset


@dataclass(frozen=True)
class ImageSet:
    images: np.ndarray | torch.Tensor  # (N, C, H, W) uint8
    fingerprint: str  # changes when the images (or how they were decoded) do
    labels: np.ndarray | None = None  # (N,) int64, -1 where there is no class
    classes: list[str] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)  # count, skipped files, cache path

    def label_report(self) -> dict[str, Any]:
        """For labelled data: images per class, and images in no class (label -1: files beside
        the class folders rather than in one)."""
        if not self.classes or self.labels is None:
            return {}
        labels = np.asarray(self.labels)
        counts = np.bincount(labels[labels >= 0], minlength=len(self.classes))
        return {"class_counts": dict(zip(self.classes, counts.tolist(), strict=True)),
                "unlabelled": int((labels < 0).sum())}

    def label_warnings(self) -> list[str]:
        """One line per surprise in the labels: images outside the classes, empty classes (their
        names escaped: a folder name may hold a newline or a terminal escape)."""
        report = self.label_report()
        lines = []
        if report.get("unlabelled"):
            lines.append(f"{report['unlabelled']} images are beside the class folders, in no class "
                         "(label -1)")
        empty = [one_line(name) for name, n in report.get("class_counts", {}).items() if n == 0]
        if empty:
            lines.append(f"{len(empty)} class(es) have no usable image: {', '.join(empty[:5])}"
                         + (" ..." if len(empty) > 5 else ""))
        return lines


@dataclass(frozen=True)
class DatasetSpec:
    open: Callable[[Path, str, int], sources.Source] | None  # (data dir, split, max bytes) -> source
    download: Callable[[Path, str], None] | None = None
    splits: tuple[str, ...] = ()
    preset: dict[str, Any] = field(default_factory=dict)
    how_to_get: str = ""
    description: str = ""


# --- downloads (torchvision's utilities and file lists; imported only when used) ----------------
# A download fills in what is missing and never replaces a file that is there: a damaged one is
# the user's to delete (the reader names it). Each file arrives under a .part name and is renamed
# once its checksum matched, so a cut download never looks like the dataset's file.

def _download_to(target: Path, url: str, md5: str) -> None:
    """url into target (by way of target.part), unless target exists."""
    from torchvision.datasets.utils import download_url
    if target.exists():
        return
    part = target.with_name(target.name + ".part")
    download_url(url, str(target.parent), part.name, md5)  # raises on a bad checksum
    os.replace(part, target)


def _download_cifar(cls_name: str) -> Callable[[Path, str], None]:
    def download(root: Path, split: str) -> None:
        import torchvision.datasets as tvd
        cls = getattr(tvd, cls_name)
        _download_to(root / cls.filename, cls.url, cls.tgz_md5)
        datafile.extract_missing(root / cls.filename, root, cls.base_folder)
    return download


def _download_mnist(cls_name: str) -> Callable[[Path, str], None]:
    def download(root: Path, split: str) -> None:
        import torchvision.datasets as tvd
        cls = getattr(tvd, cls_name)
        raw = root / cls_name / "raw"
        for filename, md5 in cls.resources:  # the .gz files, read as they are
            if (raw / filename.removesuffix(".gz")).exists():
                continue
            errors = []
            for mirror in cls.mirrors:
                try:
                    _download_to(raw / filename, mirror + filename, md5)
                    break
                except Exception as e:  # next mirror
                    errors.append(f"{mirror}: {e}")
            else:
                raise OSError("; ".join(errors))
    return download


def _download_svhn(root: Path, split: str) -> None:
    import torchvision.datasets as tvd
    url, filename, md5 = tvd.SVHN.split_list[split]
    _download_to(root / filename, url, md5)


CELEBA_FILES = ("img_align_celeba.zip", "list_eval_partition.txt")  # what training reads
CELEBA_MANUAL = ("get img_align_celeba.zip and list_eval_partition.txt by hand (the CelebA page "
                 "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html links its Google Drive and "
                 "Baidu folders: 'Img/img_align_celeba.zip', 'Eval/list_eval_partition.txt') into "
                 "DIR/celeba/, so that DIR/celeba/img_align_celeba.zip and "
                 "DIR/celeba/list_eval_partition.txt exist, then run the command again")


def _download_celeba(root: Path, split: str) -> None:
    """CelebA's two files from its Google Drive (torchvision's ids and md5s, through gdown),
    into root/celeba/. Google Drive refuses large files for a day once many have fetched them."""
    import torchvision.datasets as tvd
    from torchvision.datasets.utils import download_file_from_google_drive
    folder = root / tvd.CelebA.base_folder
    for file_id, md5, filename in tvd.CelebA.file_list:
        if filename not in CELEBA_FILES or (folder / filename).exists() or (
                filename == CELEBA_FILES[0] and (folder / "img_align_celeba").is_dir()):
            continue  # not needed, or there (gdown writes a temp file and renames it)
        try:
            download_file_from_google_drive(file_id, str(folder), filename, md5)
        except Exception as e:  # gdown's quota refusal, a network error, a bad checksum
            text = " ".join(str(e).split())
            quota = any(word in text.lower() for word in ("too many users", "quota",
                                                          "cannot retrieve the public link"))
            why = ("Google Drive refused it (CelebA's daily download quota; it usually lifts "
                   "within a day)" if quota else f"{type(e).__name__}: {text[:200]}")
            raise DataError(f"downloading CelebA's {filename} into {folder} failed: {why}; "
                            + CELEBA_MANUAL.replace("DIR", str(root))) from None


# --- the registry -------------------------------------------------------------------------------

def _mnist(folder: str, classes: list[str]) -> Callable[[Path, str, int], sources.Source]:
    return lambda root, split, _: named.mnist_source(
        folder.lower(), [root / folder / "raw", root / folder.lower(), root], split, classes)


def _cifar10(root: Path, split: str, _: int) -> sources.Source:
    files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    return named.cifar_source("cifar10", root / "cifar-10-batches-py", files, "batches.meta",
                              "labels", "label_names", split, count=10)


def _cifar100(root: Path, split: str, _: int) -> sources.Source:
    return named.cifar_source("cifar100", root / "cifar-100-python", [split], "meta",
                              "fine_labels", "fine_label_names", split, count=100)


DATASETS: dict[str, DatasetSpec] = {
    "shapes": DatasetSpec(
        open=None,
        preset=SHAPES_PRESET,
        description="built-in coloured shapes, generated on the fly (no download)"),
    "celeba": DatasetSpec(
        open=lambda root, split, max_bytes: named.celeba_source("celeba", root / "celeba", split,
                                                                 max_bytes),
        download=_download_celeba, splits=("train", "valid", "test", "all"),
        preset={"resolution": 64, "channels": 3, **REAL_PRESET},
        how_to_get="CelebA's Google Drive often refuses downloads (quota): " + CELEBA_MANUAL,
        description="CelebA aligned faces, center crop 178, 202,599 images"),
    "cifar10": DatasetSpec(
        open=_cifar10, download=_download_cifar("CIFAR10"), splits=("train", "test"),
        preset={"resolution": 32, "channels": 3, **REAL_PRESET},
        how_to_get="get cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html "
                   "and extract it in DIR",
        description="CIFAR-10, 32x32 colour, 10 classes"),
    "cifar100": DatasetSpec(
        open=_cifar100, download=_download_cifar("CIFAR100"), splits=("train", "test"),
        preset={"resolution": 32, "channels": 3, **REAL_PRESET},
        how_to_get="get cifar-100-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html "
                   "and extract it in DIR",
        description="CIFAR-100, 32x32 colour, 100 classes"),
    "mnist": DatasetSpec(
        open=_mnist("MNIST", MNIST_CLASSES), download=_download_mnist("MNIST"),
        splits=("train", "test"), preset={"resolution": 32, "channels": 1, **REAL_PRESET},
        how_to_get="get the four *-ubyte.gz files of MNIST into DIR/MNIST/raw/",
        description="MNIST digits, 28x28 grey, resized to 32"),
    "fashion-mnist": DatasetSpec(
        open=_mnist("FashionMNIST", FASHION_CLASSES), download=_download_mnist("FashionMNIST"),
        splits=("train", "test"), preset={"resolution": 32, "channels": 1, **REAL_PRESET},
        how_to_get="get the four *-ubyte.gz files of Fashion-MNIST into DIR/FashionMNIST/raw/",
        description="Fashion-MNIST, 28x28 grey, resized to 32"),
    "svhn": DatasetSpec(
        open=lambda root, split, _: named.svhn_source("svhn", root / f"{split}_32x32.mat", split),
        download=_download_svhn, splits=("train", "test", "extra"),
        preset={"resolution": 32, "channels": 3, **REAL_PRESET},
        how_to_get="get train_32x32.mat (test_32x32.mat, extra_32x32.mat for those splits) from "
                   "http://ufldl.stanford.edu/housenumbers/ "
                   "into DIR",
        description="SVHN house numbers, 32x32 colour"),
}


def default_data_dir() -> Path:
    if env := os.environ.get("GANCTL_DATA_DIR"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ganctl" / "datasets"


def data_dir_of(config: Config) -> Path:
    return Path(config.data_dir).expanduser() if config.data_dir else default_data_dir()


def is_path(name: str) -> bool:
    return name not in DATASETS


def _spec(name: str) -> DatasetSpec:
    return lookup(DATASETS, name, "dataset", DataError)


def _path_source(name: str, max_bytes: int) -> sources.Source:
    path = Path(name).expanduser()
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError):  # a symlink loop
        raise DataError(f"--dataset {name} cannot be resolved (a symlink loop?); pass the folder "
                        "or .zip of images itself") from None
    if len(resolved.parts) > 1 and resolved.parts[1] in SYSTEM_FOLDERS:
        raise DataError(f"--dataset {name} is in /{resolved.parts[1]}, a system folder, not a "
                        "folder of images; pass the folder that holds them")
    for what, place in (("the filesystem root", resolved.anchor),
                        ("your home directory", os.path.expanduser("~"))):
        if str(resolved) == os.path.realpath(place):
            raise DataError(f"--dataset {name} is {what}, not a folder of images; pass the folder "
                            "that holds them")
    if path.is_dir():
        return folders.folder_source(name, path, max_bytes)
    if path.is_file() and path.suffix.lower() == ".zip":
        return folders.zip_source(name, path, max_bytes=max_bytes)
    if path.exists():
        raise DataError(f"--dataset {name} is a file but not a .zip; pass a folder of images or a zip")
    raise DataError(f"unknown dataset {shorten(name)}{did_you_mean(name, DATASETS)}: not one of "
                    f"{', '.join(sorted(DATASETS))}, and no such folder or .zip")


def default_split(name: str) -> str | None:
    """The split a named dataset uses when none is given (None: it has no splits)."""
    if is_path(name):
        return None
    splits = _spec(name).splits
    return splits[0] if splits else None


def open_source(config: Config, download: bool = True) -> sources.Source:
    """The raw source of a non-built-in dataset, downloading a named one if it is missing."""
    max_bytes = config.max_file_mb << 20
    if is_path(config.dataset):
        if config.split:
            raise DataError(f"--split applies to named datasets; {config.dataset} is a path")
        return _path_source(config.dataset, max_bytes)
    spec = _spec(config.dataset)
    assert spec.open is not None
    root = data_dir_of(config)
    split = config.split or spec.splits[0]
    if split not in spec.splits:
        raise DataError(f"{config.dataset} has no split {split!r}; choose one of {', '.join(spec.splits)}")
    try:
        return spec.open(root, split, max_bytes)
    except DataMissing as missing:
        if not download or spec.download is None:
            raise DataError(f"{missing}; {spec.how_to_get.replace('DIR', str(root))} "
                            "(or drop --no-download)") from None
        try:
            spec.download(root, split)
        except DataError:
            raise  # the download's own one-line account
        except Exception as e:  # network, checksum ...
            text = " ".join(str(e).split())[:300]
            raise DataError(f"{missing}, and downloading it failed ({type(e).__name__}: {text}); "
                            f"{spec.how_to_get.replace('DIR', str(root))}") from None
        return spec.open(root, split, max_bytes)


def _probe(source: sources.Source, largest: int) -> tuple[int, int]:
    """A folder's or zip's default (channels, resolution) from its first few readable images:
    3 channels unless every one is grayscale; the resolution their median shorter side rounds
    up to as a power of two, from MIN_PROBED (32) to `largest` (FOLDER_PRESET's 64 for the
    2015-2018 architectures: 32x32 images, such as a bulk export of a 32x32 model, train at 32;
    28x28 ones at 32; photos at 64; stylegan2 takes photos at their size, up to 1024)."""
    gray, sides = True, list[int]()
    for i in range(len(source)):
        if len(sides) >= CHANNEL_PROBE:
            break
        try:
            image = open_image(source.read(i))  # type: ignore[arg-type]
        except (Skip, OSError):  # unreadable or not an image: the build skips it too
            continue
        gray = gray and is_gray(image)
        sides.append(min(image.size))
    if not sides:
        return 3, FOLDER_PRESET["resolution"]
    side = sorted(sides)[len(sides) // 2]
    resolution = MIN_PROBED
    while resolution < min(side, largest):
        resolution *= 2
    return (1 if gray else 3), resolution


def preset(name: str, values: dict[str, Any] | None = None, largest: int = 0) -> dict[str, Any]:
    """The defaults dataset `name` brings; for a folder or zip, channels and resolution come
    from its images (_probe: at most `largest` px, by default FOLDER_PRESET's), unless given."""
    if not is_path(name):
        return dict(_spec(name).preset)
    values = values or {}
    out = dict(FOLDER_PRESET)
    if "channels" not in values or "resolution" not in values:
        channels, resolution = _probe(_path_source(name, sources.DEFAULT_MAX_BYTES),
                                      largest or FOLDER_PRESET["resolution"])
        out["channels"] = values.get("channels", channels)
        out["resolution"] = values.get("resolution", resolution)
    return out


def load_dataset(config: Config, download: bool = True,
                 progress: Callable[[str, int], cache.Progress] | None = None) -> ImageSet:
    """The dataset at the config's resolution, channels and crop, decoded through the cache."""
    if config.dataset == "shapes":
        if config.split:
            raise DataError(f"shapes has no split {config.split!r}; it is one generated set")
        images = shapes.render(config.resolution, config.channels)
        fingerprint = f"shapes-v{shapes.VERSION}-n{shapes.SIZE}-s{shapes.SEED}"
        data = ImageSet(images, fingerprint, shapes.labels().numpy(), list(shapes.CLASSES),
                        report={"count": len(images), "skipped": 0})
    else:
        source = open_source(config, download)
        decoded = cache.load_or_build(source, config.resolution, config.channels, config.crop,
                                      progress_factory=progress)
        report = {**decoded.meta, "cache": str(decoded.path)}
        data = ImageSet(decoded.images, decoded.fingerprint, decoded.labels, decoded.classes, report)
    if len(data.images) < config.batch_size:
        raise DataError(f"dataset {config.dataset!r} has {len(data.images)} images, fewer than "
                        f"batch_size {config.batch_size}; lower --batch-size")
    return data
