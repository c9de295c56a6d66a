"""`ganctl data` (info, prepare, cache list|clean), and what `data info` makes of damaged files: a
damaged dataset file named in one line and kept, downloads that only fill in what is missing,
damaged images skipped and counted, and a damaged decode cache built again."""

from __future__ import annotations

import gzip
import io
import json
import pickle
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from helpers import (
    assert_one_line_error,
    idx_bytes,
    image_folder,
    invoke,
    write_celeba,
    write_cifar10,
    write_cifar100,
    write_mnist,
    write_svhn,
)
from PIL import Image

# --- named datasets' files ------------------------------------------------------------------------

@pytest.fixture
def no_downloads(monkeypatch) -> list[str]:
    """Every download torchvision would make is recorded and refused."""
    import torchvision.datasets.utils as tvu

    asked: list[str] = []

    def refuse(url_or_id, root, filename=None, md5=None, *args, **kwargs):
        asked.append(str(filename))
        raise OSError("no network in this test")

    monkeypatch.setattr(tvu, "download_url", refuse)
    monkeypatch.setattr(tvu, "download_file_from_google_drive", refuse)
    return asked


def assert_named_and_kept(result, path: Path, before: bytes, *fragments: str) -> None:
    """Exit 1, one line naming the file, what is wrong and what to do; the file untouched."""
    assert_one_line_error(result, 1, str(path), *fragments)
    assert "unexpected" not in result.stderr
    assert path.read_bytes() == before


def cut(path: Path, keep: float = 0.5) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[: int(len(raw) * keep)])


def flip(path: Path, offset: int, mask: int = 0xFF) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= mask
    path.write_bytes(bytes(raw))


def fails(*args: object):
    """`data info`: progress on stdout, an error alone on stderr."""
    return invoke("data", "info", *args)


MNIST_RAW = Path("MNIST/raw")
CIFAR10 = Path("cifar-10-batches-py")


def _cifar10_batch(labels: list[int], rows: int | None = None) -> bytes:
    """A CIFAR-10 python batch as the original is written (protocol 2, byte-string keys)."""
    data = np.zeros((len(labels) if rows is None else rows, 3072), dtype=np.uint8)
    return pickle.dumps({b"batch_label": b"x", b"labels": labels, b"data": data,
                         b"filenames": [b"f.png"] * len(labels)}, protocol=2)


def _cifar10_meta(names: int) -> bytes:
    return pickle.dumps({b"label_names": [f"c{i}".encode() for i in range(names)]}, protocol=2)


def _svhn_labels_short(root: Path) -> None:
    from scipy import io as sio
    root.mkdir(parents=True)
    images = np.zeros((32, 32, 3, 6), dtype=np.uint8)
    sio.savemat(str(root / "train_32x32.mat"), {"X": images, "y": np.ones((5, 1), np.uint8)})


def _reshape_idx(path: Path, shape: tuple[int, ...]) -> None:
    """The idx file's bytes, in the same gzip or none, with its header giving another shape."""
    gz = path.suffix == ".gz"
    raw = gzip.decompress(path.read_bytes()) if gz else path.read_bytes()
    data = idx_bytes(np.frombuffer(raw[4 + 4 * raw[3]:], dtype=np.uint8).reshape(shape))
    path.write_bytes(gzip.compress(data) if gz else data)


def _svhn_of_size(side: int) -> Callable[[Path], None]:
    def make(root: Path) -> None:
        from scipy import io as sio
        root.mkdir(parents=True)
        sio.savemat(str(root / "train_32x32.mat"), {"X": np.zeros((side, side, 3, 6), np.uint8),
                                                    "y": np.ones((6, 1), np.uint8)})
    return make


def _svhn_of_floats(root: Path) -> None:
    from scipy import io as sio
    root.mkdir(parents=True)
    pixels = np.zeros((32, 32, 3, 6))
    pixels[0, 0, 0, 0] = np.nan
    sio.savemat(str(root / "train_32x32.mat"), {"X": pixels, "y": np.ones((6, 1), np.uint8)})


def _mat_version_73(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[124:126] = b"\x00\x02"  # what MATLAB 7.3 (an HDF5 file) writes
    path.write_bytes(bytes(raw))


def _zip_central_directory_lies(path: Path) -> None:
    """The end record points the central directory 7 bytes away from where it is."""
    raw = bytearray(path.read_bytes())
    end = raw.rfind(b"PK\x05\x06")
    offset = struct.unpack_from("<I", raw, end + 16)[0]
    struct.pack_into("<I", raw, end + 16, offset - 7)
    path.write_bytes(bytes(raw))


DAMAGED: dict[str, tuple[str, Callable[[Path], object], Path, Callable[[Path], None], str]] = {
    "mnist .gz cut short": (
        "mnist", write_mnist, MNIST_RAW / "train-images-idx3-ubyte.gz", cut,
        "gzip: Compressed file ended"),
    "mnist .gz with a bad CRC": (
        "mnist", write_mnist, MNIST_RAW / "train-labels-idx1-ubyte.gz",
        lambda p: flip(p, len(p.read_bytes()) - 6), "gzip: CRC check failed"),
    "mnist .gz that is not gzip": (
        "mnist", write_mnist, MNIST_RAW / "train-images-idx3-ubyte.gz",
        lambda p: p.write_bytes(b"<html>503</html>"), "gzip: Not a gzipped file"),
    "mnist .gz whose deflate stream is garbled": (
        "mnist", write_mnist, MNIST_RAW / "train-images-idx3-ubyte.gz",
        lambda p: p.write_bytes(p.read_bytes()[:10] + b"\xff" * 40 + p.read_bytes()[50:]), "gzip: "),
    "mnist idx with its header cut": (
        "mnist", lambda r: write_mnist(r, gz=False), MNIST_RAW / "train-labels-idx1-ubyte",
        lambda p: p.write_bytes(p.read_bytes()[:6]), "idx: "),
    "mnist idx of the wrong size": (
        "mnist", lambda r: write_mnist(r, gz=False), MNIST_RAW / "train-images-idx3-ubyte", cut,
        "idx: cannot reshape"),
    "mnist labels outside 0-9": (
        "mnist", lambda r: write_mnist(r, gz=False), MNIST_RAW / "train-labels-idx1-ubyte",
        lambda p: p.write_bytes(idx_bytes(np.full(10, 200, dtype=np.uint8))),
        "label 200 is none of the 10 classes"),
    "mnist images of 784x1 (tall)": (
        "mnist", write_mnist, MNIST_RAW / "train-images-idx3-ubyte.gz",
        lambda p: _reshape_idx(p, (10, 784, 1)), "images of shape (10, 784, 1), not (N, 28, 28)"),
    "mnist images of 1x784 (wide)": (
        "mnist", lambda r: write_mnist(r, gz=False), MNIST_RAW / "train-images-idx3-ubyte",
        lambda p: _reshape_idx(p, (10, 1, 784)), "images of shape (10, 1, 784), not (N, 28, 28)"),
    "fashion-mnist images of 14x56": (
        "fashion-mnist", lambda r: write_mnist(r, "FashionMNIST"),
        Path("FashionMNIST/raw/train-images-idx3-ubyte.gz"), lambda p: _reshape_idx(p, (10, 14, 56)),
        "images of shape (10, 14, 56), not (N, 28, 28)"),
    "mnist images of 4 dimensions": (
        "mnist", write_mnist, MNIST_RAW / "train-images-idx3-ubyte.gz",
        lambda p: _reshape_idx(p, (10, 28, 28, 1)), "images of shape (10, 28, 28, 1)"),
    "mnist labels of 2 dimensions": (
        "mnist", write_mnist, MNIST_RAW / "train-labels-idx1-ubyte.gz",
        lambda p: _reshape_idx(p, (10, 1)), "labels of shape (10, 1)"),
    "cifar10 batch cut short": (
        "cifar10", write_cifar10, CIFAR10 / "data_batch_1", cut, "pickle: "),
    "cifar10 batch of garbage": (
        "cifar10", write_cifar10, CIFAR10 / "data_batch_3",
        lambda p: p.write_bytes(bytes(range(256)) * 8), "pickle: "),
    "cifar10 label 10 of 10 classes": (
        "cifar10", write_cifar10, CIFAR10 / "data_batch_2",
        lambda p: p.write_bytes(_cifar10_batch([1, 2, 10, 3])), "label 10 is none of the 10 classes"),
    "cifar10 pixels for fewer images than labels": (
        "cifar10", write_cifar10, CIFAR10 / "data_batch_5",
        lambda p: p.write_bytes(_cifar10_batch([1, 2, 3, 4], rows=3)), "bytes of pixels for 4 labels"),
    "cifar10 meta of 9 class names": (
        "cifar10", write_cifar10, CIFAR10 / "batches.meta",
        lambda p: p.write_bytes(_cifar10_meta(9)), "9 label_names, not cifar10's 10"),
    "cifar100 meta cut short": (
        "cifar100", write_cifar100, Path("cifar-100-python/meta"), cut, "pickle: "),
    "svhn .mat cut short": (
        "svhn", write_svhn, Path("train_32x32.mat"), cut, ".mat: "),
    "svhn .mat with X flagged complex (crashed scipy)": (
        "svhn", write_svhn, Path("train_32x32.mat"), lambda p: flip(p, 145, 0x08),
        ".mat: a complex array"),
    "svhn .mat with fewer labels than images": (
        "svhn", _svhn_labels_short, Path("train_32x32.mat"), lambda p: None,
        "y is not 6 labels from 1 to 10"),
    "svhn .mat of 28x28 images": (
        "svhn", _svhn_of_size(28), Path("train_32x32.mat"), lambda p: None,
        "X of shape (28, 28, 3, 6), not (32, 32, 3, N)"),
    "svhn .mat of float pixels with NaN": (
        "svhn", _svhn_of_floats, Path("train_32x32.mat"), lambda p: None,
        "X holds values that are not pixels from 0 to 255"),
    "svhn .mat of MATLAB 7.3": (
        "svhn", write_svhn, Path("train_32x32.mat"), _mat_version_73, "not a MATLAB 5 .mat file"),
    "celeba partition naming a path": (
        "celeba", write_celeba, Path("celeba/list_eval_partition.txt"),
        lambda p: p.write_text("../../../etc/passwd 0\n"), "line 1 is not '<file> <0|1|2>'"),
    "celeba zip cut short": (
        "celeba", lambda r: write_celeba(r, zipped=True), Path("celeba/img_align_celeba.zip"), cut,
        "zip: "),
    "celeba zip whose central directory lies": (
        "celeba", lambda r: write_celeba(r, zipped=True), Path("celeba/img_align_celeba.zip"),
        _zip_central_directory_lies, "zip: "),
}


@pytest.mark.parametrize("case", DAMAGED)
def test_a_damaged_dataset_file_is_named_in_one_line_and_kept(workdir, no_downloads, case):
    dataset, make, relative, damage, fragment = DAMAGED[case]
    make(workdir / "data")
    path = workdir / "data" / relative
    damage(path)
    before = path.read_bytes()
    result = fails("--dataset", dataset)  # downloads allowed: a damaged file is no reason for one
    assert_named_and_kept(result, path, before, "is truncated or corrupted", fragment,
                          "delete it and run again with --download, or put an intact copy there")
    assert no_downloads == []


def test_a_download_fills_in_a_missing_mnist_file_and_leaves_a_damaged_one(workdir, monkeypatch):
    import torchvision.datasets.utils as tvu

    write_mnist(workdir / "data")
    raw = workdir / "data" / MNIST_RAW
    intact = (raw / "train-labels-idx1-ubyte.gz").read_bytes()
    (raw / "train-labels-idx1-ubyte.gz").unlink()
    cut(raw / "train-images-idx3-ubyte.gz")
    damaged = (raw / "train-images-idx3-ubyte.gz").read_bytes()
    asked = []

    def fake_download(url, root, filename=None, md5=None):
        asked.append(filename)
        (Path(root) / filename).write_bytes(intact)

    monkeypatch.setattr(tvu, "download_url", fake_download)
    result = fails("--dataset", "mnist")
    assert_named_and_kept(result, raw / "train-images-idx3-ubyte.gz", damaged, "gzip: ")
    assert asked == ["train-labels-idx1-ubyte.gz.part"]  # only what was missing, by way of .part
    assert (raw / "train-labels-idx1-ubyte.gz").read_bytes() == intact
    assert not list(raw.glob("*.part"))


def info(*args: object):
    """`data info --json`: the report on stdout, progress and notes on stderr."""
    return invoke("data", "info", *args, "--json")


def _cifar_archive(workdir: Path) -> Path:
    """cifar-10-python.tar.gz in the data dir, as its download leaves it, the folder not yet
    extracted."""
    write_cifar10(workdir / "made")
    archive = workdir / "data" / "cifar-10-python.tar.gz"
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(workdir / "made" / CIFAR10, arcname=str(CIFAR10))
    return archive


def test_a_cifar_archive_already_there_is_extracted_not_downloaded(workdir, no_downloads):
    _cifar_archive(workdir)
    result = info("--dataset", "cifar10")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["count"] == 20 and no_downloads == []
    for name in ("data_batch_1", "batches.meta", "test_batch"):
        assert (workdir / "data" / CIFAR10 / name).read_bytes() == \
            (workdir / "made" / CIFAR10 / name).read_bytes()


def test_a_damaged_cifar_archive_is_named_and_kept(workdir, no_downloads):
    archive = _cifar_archive(workdir)
    cut(archive, 0.6)
    before = archive.read_bytes()
    result = fails("--dataset", "cifar10")
    assert_named_and_kept(result, archive, before, "is truncated or corrupted (tar.gz: ",
                          "delete it and run again with --download")
    assert no_downloads == []


def test_extracting_an_archive_fills_in_and_never_replaces_a_damaged_batch(workdir, no_downloads):
    _cifar_archive(workdir)
    folder = workdir / "data" / CIFAR10
    folder.mkdir()
    (folder / "data_batch_1").write_bytes(b"\x80\x02}q\x00(")  # a cut pickle
    result = fails("--dataset", "cifar10")  # data_batch_2 ... are missing: they are extracted
    assert_named_and_kept(result, folder / "data_batch_1", b"\x80\x02}q\x00(", "pickle: ")
    made = workdir / "made" / CIFAR10
    assert (folder / "data_batch_2").read_bytes() == (made / "data_batch_2").read_bytes()


def test_a_gzip_bomb_is_refused_before_it_fills_memory(workdir, monkeypatch):
    from ganctl.data import datafile

    write_mnist(workdir / "data")
    path = workdir / "data" / MNIST_RAW / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(b"\0" * 5000))
    monkeypatch.setattr(datafile, "MAX_DATA_FILE", 4096)
    result = fails("--dataset", "mnist", "--no-download")
    assert_one_line_error(result, 1, str(path), "is too large")


# --- folders and zips of the user's images: damaged members are skipped and counted ---------------

def _png(width: int, height: int) -> bytes:
    """A grayscale PNG whose header says width x height (its data may not fill it)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0"))
            + chunk(b"IEND", b""))


def _bad_images() -> dict[str, bytes]:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 200, 30)).save(buffer, format="PNG")
    whole = buffer.getvalue()
    return {"cut.png": whole[: len(whole) // 2], "empty-0x0.png": _png(0, 0),
            "giant.png": _png(100_000, 100_000), "tall.png": _png(1, 1 << 30)}


BAD_IMAGE_REASONS = {"truncated": 1, "not an image": 1, "too large": 2}


def test_damaged_images_in_a_folder_are_skipped_and_counted(workdir):
    folder = image_folder(workdir / "imgs", 3)
    for name, data in _bad_images().items():
        (folder / name).write_bytes(data)
    result = info("--dataset", folder)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["count"] == 3 and doc["skipped_by_reason"] == BAD_IMAGE_REASONS
    assert all((folder / name).exists() for name in _bad_images())


def test_a_folder_of_only_damaged_images_is_one_line(workdir):
    folder = workdir / "imgs"
    folder.mkdir()
    for name, data in _bad_images().items():
        (folder / name).write_bytes(data)
    result = fails("--dataset", folder)
    assert_one_line_error(result, 1, f"has no usable image in {folder}", "1 truncated",
                          "replace the damaged ones")
    assert "unexpected" not in result.stderr


def test_damaged_zip_members_are_skipped_and_counted(workdir):
    image_folder(workdir / "src", 3, size=(16, 16))
    members = {p.name: p.read_bytes() for p in sorted((workdir / "src").iterdir())}
    with zipfile.ZipFile(workdir / "z.zip", "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
        z.writestr("bomb.png", b"\0" * (3 << 20))  # 3 MB of zeros in a few kB: over --max-file-mb 1
        z.writestr("garbled.png", members["000.png"])
        for name, data in _bad_images().items():
            z.writestr(name, data)
    raw = bytearray((workdir / "z.zip").read_bytes())
    garbled = raw.find(b"garbled.png") + len("garbled.png") + 5  # inside its deflate stream
    raw[garbled] ^= 0xFF
    (workdir / "z.zip").write_bytes(bytes(raw))
    result = info("--dataset", workdir / "z.zip", "--max-file-mb", "1")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    reasons = dict(BAD_IMAGE_REASONS)
    reasons["too large"] += 1
    assert doc["count"] == 3 and doc["skipped_by_reason"] == {**reasons, "unreadable": 1}


@pytest.mark.parametrize("damage", ["cut", "central directory lies", "not a zip"])
def test_a_damaged_zip_dataset_is_named_in_one_line_and_kept(workdir, damage):
    image_folder(workdir / "src", 3, size=(16, 16))
    path = workdir / "imgs.zip"
    with zipfile.ZipFile(path, "w") as z:
        for p in sorted((workdir / "src").iterdir()):
            z.write(p, p.name)
    {"cut": cut, "central directory lies": _zip_central_directory_lies,
     "not a zip": lambda p: p.write_bytes(b"PK\x03\x04 and then nothing")}[damage](path)
    before = path.read_bytes()
    result = fails("--dataset", path)
    assert_named_and_kept(result, path, before, "is truncated or corrupted (zip: ",
                          "replace it with an intact copy")


def _float_tiff(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.float32), "F").save(path)


def test_float_images_with_nan_or_inf_are_skipped_and_counted_without_warnings(workdir):
    """No brightness stands for NaN or infinity: such an image is skipped with its reason, like
    any other unusable one, and numpy's 'invalid value encountered in cast' never reaches the
    terminal (nor becomes an error where warnings are errors)."""
    import warnings

    folder = image_folder(workdir / "imgs", 3)
    for name, bad in (("nan.tif", np.nan), ("inf.tif", np.inf), ("minus-inf.tiff", -np.inf)):
        pixels = np.full((16, 16), 0.5)
        pixels[3, 4] = bad
        _float_tiff(folder / name, pixels)
    _float_tiff(folder / "largest.tif", np.full((16, 16), np.finfo(np.float32).max))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a decode thread's warning: a failure
        result = info("--dataset", folder)
    assert result.exit_code == 0, result.output
    assert "Warning" not in result.stderr and "decode.py" not in result.stderr
    doc = json.loads(result.stdout)
    assert doc["count"] == 4 and doc["skipped_by_reason"] == {"non-finite pixels": 3}
    largest = np.load(doc["cache"])[3]  # sorted names: 000, 001, 002, largest, ...
    assert (largest == 255).all()  # as bright as its type goes: white, not an overflow


# --- the decode cache: ganctl's own files, built again when damaged -------------------------------

def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


CACHE_DAMAGE: dict[str, Callable[[dict[str, Path]], None]] = {
    "images cut short": lambda f: cut(f["images.npy"], 0.7),
    "images header garbled": lambda f: f["images.npy"].write_bytes(
        b"\x93NUMPY\x01\x00\x10\x00{'descr': garbage" + f["images.npy"].read_bytes()[26:]),
    "images of another shape": lambda f: f["images.npy"].write_bytes(
        _npy(np.zeros((4, 3, 8, 8), dtype=np.uint8))),
    "labels outside the classes": lambda f: f["labels.npy"].write_bytes(
        _npy(np.array([0, 1, 99, 0], dtype=np.int64))),
    "labels missing": lambda f: f["labels.npy"].unlink(),
    "json not UTF-8": lambda f: f["json"].write_bytes(b"\xff\xfe{"),
    "json cut short": lambda f: cut(f["json"]),
    "json nested too deep": lambda f: f["json"].write_text("[" * 100_000 + "]" * 100_000),
    "json of another shape": lambda f: f["json"].write_text('{"classes": 3}'),
    "json listing 100,000 classes": lambda f: _edit_json(f["json"], classes=["a"] * 100_000),
    "json listing the classes in another order": lambda f: _edit_json(f["json"], classes=["c1", "c0"]),
    "json of another version": lambda f: _edit_json(f["json"], version=1),
    "json of another cache's key": lambda f: _edit_json(f["json"], fingerprint="0" * 16),
    "json whose skip report does not add up": lambda f: _edit_json(
        f["json"], skipped=2, skipped_by_reason={"not an\nimage": 5}),
    "json whose skip report is no table": lambda f: _edit_json(f["json"], skipped_by_reason=3),
}


def _edit_json(path: Path, **changes: object) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


@pytest.mark.parametrize("damage", CACHE_DAMAGE)
def test_a_damaged_decode_cache_is_built_again_and_said_so(workdir, damage):
    folder = image_folder(workdir / "imgs", 4, classes=2)
    first = info("--dataset", folder)
    assert first.exit_code == 0, first.output
    stem = json.loads(first.stdout)["cache"][: -len(".images.npy")]
    files = {part: Path(f"{stem}.{part}") for part in ("json", "images.npy", "labels.npy")}
    CACHE_DAMAGE[damage](files)
    again = info("--dataset", folder)
    assert again.exit_code == 0, again.output
    assert "its cache there was damaged" in again.stderr and "decoding it again" in again.stderr
    assert "unexpected" not in again.stderr
    assert json.loads(again.stdout)["count"] == 4
    assert json.loads(again.stdout)["class_counts"] == {"c0": 2, "c1": 2}
    third = info("--dataset", folder)  # the rebuilt one is whole: used as it is
    assert third.exit_code == 0 and "decoding" not in third.stderr, third.output


@pytest.mark.parametrize("part", ["images.npy", "labels.npy", "json"])
def test_a_folder_in_the_way_of_the_decode_cache_is_named_and_left_alone(workdir, part):
    """Not 'free space': something is where the cache's file goes. Said before decoding (a large
    dataset would decode for hours, then fail), with the advice that fits: move it away."""
    folder = image_folder(workdir / "imgs", 4, classes=2)
    first = info("--dataset", folder)
    stem = json.loads(first.stdout)["cache"][: -len(".images.npy")]
    blocker = Path(f"{stem}.{part}")
    blocker.unlink()
    blocker.mkdir()
    (blocker / "keep.txt").write_text("the user's")
    result = fails("--dataset", folder)
    assert_one_line_error(result, 1, f"{blocker} is a folder, in the way of the decode cache",
                          "move it away, or set GANCTL_CACHE_DIR elsewhere")
    assert "free space" not in result.stderr and "unexpected" not in result.stderr
    assert "decoding" not in result.stdout
    assert (blocker / "keep.txt").read_text() == "the user's"


@pytest.mark.parametrize("code, advice", [
    ("ENOSPC", "free space there, or set GANCTL_CACHE_DIR elsewhere"),
    ("EDQUOT", "free space there"),
    ("EACCES", "make {cache} writable, or set GANCTL_CACHE_DIR elsewhere"),
    ("EROFS", "make {cache} writable"),
    ("EISDIR", "something is in the way at {cache}/x.json (a folder or file where ganctl writes): "
               "move it away, or set GANCTL_CACHE_DIR elsewhere"),
    ("ENOTDIR", "a file stands where a folder of {cache}/x.json should be: move it away"),
    ("EIO", "check the disk and free space there, or set GANCTL_CACHE_DIR elsewhere"),
])
def test_a_cache_that_cannot_be_written_gets_the_advice_that_fits(workdir, monkeypatch, code, advice):
    import errno

    from ganctl.data import cache

    def refuse(path, data):
        raise OSError(getattr(errno, code), "refused", str(workdir / "tmp"), None,
                      str(workdir / "CACHE" / "x.json"))

    monkeypatch.setattr(cache, "atomic_write", refuse)
    monkeypatch.setenv("GANCTL_CACHE_DIR", str(workdir / "CACHE"))
    result = fails("--dataset", image_folder(workdir / "imgs", 4))
    assert_one_line_error(result, 1, "cannot write the decode cache in",
                          advice.format(cache=workdir / "CACHE"))


# --- the commands' own output ---------------------------------------------------------------------

def test_data_prepare_builds_the_cache(workdir):
    write_mnist(workdir / "data")
    result = invoke("data", "prepare", "--dataset", "mnist")
    assert result.exit_code == 0, result.output
    assert "ready: mnist 10 images 32x32x1" in result.stdout
    assert list((workdir / "cache").glob("mnist-*.images.npy"))


def test_data_info_shows_a_class_name_with_a_line_break_on_its_one_line(workdir):
    image_folder(workdir / "nl" / "a\nb", 2, size=(8, 8))
    image_folder(workdir / "nl" / "c", 2, size=(8, 8))
    result = invoke("data", "info", "--dataset", "nl")
    assert result.exit_code == 0, result.output
    assert "classes     2: a\\nb (2), c (2)" in result.stdout.splitlines()


def test_cache_clean_asks_unless_yes(workdir, monkeypatch):
    monkeypatch.setenv("GANCTL_CACHE_DIR", str(workdir / "cache"))
    folder = Path("imgs")
    folder.mkdir()
    for i in range(8):
        Image.new("RGB", (32, 32), (i * 30, 0, 0)).save(folder / f"{i}.png")
    assert invoke("data", "prepare", "--dataset", str(folder)).exit_code == 0
    listed = json.loads(invoke("data", "cache", "list", "--json").stdout)
    assert [c["kind"] for c in listed["caches"]] == ["decoded"] and listed["bytes"] > 0
    # no terminal to ask on: refused, nothing removed
    assert_one_line_error(invoke("data", "cache", "clean"), 1, "needs --yes")
    assert len(json.loads(invoke("data", "cache", "list", "--json").stdout)["caches"]) == 1
    result = invoke("data", "cache", "clean", "imgs", "--yes", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["freed_bytes"] == listed["bytes"]
    assert json.loads(invoke("data", "cache", "list", "--json").stdout)["caches"] == []
    assert_one_line_error(invoke("data", "cache", "clean", "nope", "--yes"), 1, "no cache of 'nope'")
