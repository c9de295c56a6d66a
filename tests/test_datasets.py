"""Datasets (ganctl/data/): the real on-disk formats, CelebA's download, folders and zips of odd or
hostile files (huge, special, trees that loop), the decode cache, the built-in shapes, and batches
with their labels."""

import json
import os
import pickle
import shutil
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import (
    GOOD_IN_ODD_FOLDER,
    IMAGES,
    TINY,
    TRAIN2,
    assert_clean,
    assert_one_line_error,
    image_folder,
    invoke,
    jpeg_bytes,
    read_json,
    write_celeba,
    write_cifar10,
    write_cifar100,
    write_mnist,
    write_odd_folder,
    write_svhn,
    zip_folder,
)
from PIL import Image

from ganctl import checkpoint
from ganctl import data as datasets
from ganctl.config import Config
from ganctl.data import Batches, cache, datafile, folders, load_dataset, shapes, sources
from ganctl.data.cifarfile import read_cifar_pickle
from ganctl.errors import DataError


def train_ok(*args):
    result = invoke("train", *TRAIN2, *args)
    assert result.exit_code == 0, result.output
    return result


def report(run_dir):
    return json.loads((run_dir / "data_report.json").read_text())


def info(*args):
    result = invoke("data", "info", *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


# --- torchvision formats --------------------------------------------------------------------

def test_celeba_layout_splits_and_center_crop(workdir):
    write_celeba(workdir / "data")
    train_ok("--dataset", "celeba", "--out", "r")
    rep = report(workdir / "r")
    assert rep["count"] == 8 and rep["resolution"] == 64 and rep["channels"] == 3
    assert info("--dataset", "celeba", "--split", "valid")["count"] == 2
    assert info("--dataset", "celeba", "--split", "all")["count"] == 12
    images = np.load(rep["cache"], mmap_mode="r")
    # the red bands above and below the 178x178 center are cropped away: only blue remains
    assert images[:, 0].max() < 40 and images[:, 2].min() > 150


def test_celeba_images_read_from_the_zip(workdir):
    write_celeba(workdir / "data", zipped=True)
    assert info("--dataset", "celeba")["count"] == 8


def test_cifar10_python_batches(workdir):
    images, labels = write_cifar10(workdir / "data")
    train_ok("--dataset", "cifar10", "--out", "r")
    rep = report(workdir / "r")
    assert rep["count"] == 20 and rep["classes"][:2] == ["airplane", "automobile"]
    cached = np.load(rep["cache"], mmap_mode="r")
    assert np.array_equal(cached, images.transpose(0, 3, 1, 2))  # 32x32 is kept byte for byte
    stem = rep["cache"][: -len(".images.npy")]
    assert np.load(stem + ".labels.npy").tolist() == labels
    assert info("--dataset", "cifar10", "--split", "test")["count"] == 4


def test_cifar100(workdir):
    fine = write_cifar100(workdir / "data")
    doc = info("--dataset", "cifar100")
    assert doc["count"] == 6 and len(doc["classes"]) == 100
    assert np.load(doc["cache"][: -len(".images.npy")] + ".labels.npy").tolist() == fine


@pytest.mark.parametrize("name, folder, gz", [("mnist", "MNIST", True),
                                              ("fashion-mnist", "FashionMNIST", False)])
def test_mnist_idx_files(workdir, name, folder, gz):
    images = write_mnist(workdir / "data", folder, gz=gz)
    train_ok("--dataset", name, "--out", "r")
    rep = report(workdir / "r")
    assert (rep["count"], rep["channels"], rep["resolution"]) == (10, 1, 32)
    cached = np.load(rep["cache"], mmap_mode="r")
    assert cached.shape == (10, 1, 32, 32)
    assert abs(cached.mean() - images.mean()) < 3  # resized 28 -> 32, not padded
    assert info("--dataset", name, "--split", "test", "--resolution", "64")["count"] == 4


def test_svhn_mat(workdir):
    pytest.importorskip("scipy")
    images = write_svhn(workdir / "data")
    train_ok("--dataset", "svhn", "--out", "r")
    rep = report(workdir / "r")
    cached = np.load(rep["cache"], mmap_mode="r")
    assert np.array_equal(cached, images.transpose(0, 3, 1, 2))
    assert np.load(rep["cache"][: -len(".images.npy")] + ".labels.npy").tolist() == [0, 1, 2, 3, 4, 5]


def test_missing_dataset_with_no_download_says_what_to_do(workdir):
    result = invoke("train", "--dataset", "celeba", "--no-download")
    assert result.exit_code == 1
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1
    for fragment in ("dataset 'celeba' not found", str(workdir / "data" / "celeba"),
                     "img_align_celeba", "list_eval_partition.txt", "mmlab.ie.cuhk.edu.hk",
                     "Google Drive"):
        assert fragment in err, err
    result = invoke("data", "info", "--dataset", "mnist", "--no-download")
    assert result.exit_code == 1 and "train-images-idx3-ubyte" in result.stderr


def test_failed_download_is_one_line(workdir, monkeypatch):
    def offline(root, split):
        raise OSError("Name or service not known")

    spec = datasets.DATASETS["cifar10"]
    monkeypatch.setitem(datasets.DATASETS, "cifar10",
                        datasets.DatasetSpec(**{**spec.__dict__, "download": offline}))
    result = invoke("train", "--dataset", "cifar10")
    assert result.exit_code == 1
    assert "downloading it failed (OSError: Name or service not known)" in result.stderr
    assert "cifar-10-python.tar.gz" in result.stderr


def test_download_fills_the_layout_then_trains(workdir, monkeypatch):
    def fake_download(root, split):  # what torchvision's download leaves on disk
        write_mnist(root)

    spec = datasets.DATASETS["mnist"]
    monkeypatch.setitem(datasets.DATASETS, "mnist",
                        datasets.DatasetSpec(**{**spec.__dict__, "download": fake_download}))
    train_ok("--dataset", "mnist", "--out", "r")
    assert report(workdir / "r")["count"] == 10


def test_bad_split_and_unknown_path(workdir):
    write_mnist(workdir / "data")
    result = invoke("train", "--dataset", "mnist", "--split", "valid")
    assert result.exit_code == 1 and "no split 'valid'; choose one of train, test" in result.stderr
    result = invoke("train", "--dataset", "./nowhere")
    assert result.exit_code == 1 and "no such folder or .zip" in result.stderr


# --- folders and zips ----------------------------------------------------------------------------

def test_folder_of_odd_files_trains_and_reports_skips(workdir):
    expected = write_odd_folder(workdir / "imgs")
    result = train_ok("--dataset", "imgs", "--resolution", "32", "--out", "r")
    rep = report(workdir / "r")
    assert rep["count"] == GOOD_IN_ODD_FOLDER
    assert rep["skipped_by_reason"] == expected and rep["skipped"] == 4
    assert sorted((s["file"], s["reason"]) for s in rep["skipped_files"]) == [
        ("a/cut.jpg", "truncated"), ("a/empty.jpg", "empty file"), ("b/fake.png", "not an image"),
        ("notes.txt", "not an image file type")]
    assert rep["classes"] == ["a", "b"] and rep["channels"] == 3
    # the fingerprint resume checks (and inspect shows) is the content's, not the cache file's key
    header = checkpoint.read_header(workdir / "r/checkpoints/step-000000002.safetensors")
    assert rep["fingerprint"] == header.metadata["ganctl.dataset_fingerprint"] != rep["cache_key"]
    assert rep["cache"].endswith(f"-{rep['cache_key']}.images.npy")
    summary = [line for line in result.stdout.splitlines() if line.startswith("skipped")]
    assert summary == ["skipped 4 of 17 files (1 empty file, 1 not an image, 1 not an image file "
                       "type, 1 truncated): see r/data_report.json"]


def test_zip_matches_the_folder(workdir):
    write_odd_folder(workdir / "imgs")
    zip_folder(workdir / "imgs", workdir / "imgs.zip", prefix="top/")  # one shared top folder
    folder, archive = info("--dataset", "imgs"), info("--dataset", "imgs.zip")
    for key in ("count", "skipped", "skipped_by_reason", "classes", "channels"):
        assert folder[key] == archive[key], key
    a = np.load(folder["cache"], mmap_mode="r")
    b = np.load(archive["cache"], mmap_mode="r")
    assert np.array_equal(a, b)
    assert folder["resolution"] == 64  # a folder's default


def test_odd_modes_decode_to_what_they_show(workdir):
    write_odd_folder(workdir / "imgs")
    doc = info("--dataset", "imgs", "--resolution", "32")
    stem = doc["cache"][: -len(".images.npy")]
    images = np.load(doc["cache"]).astype(np.int64)
    labels = np.load(stem + ".labels.npy")
    names = ["a/alpha.png", "a/deep.png", "a/gray.png", "a/palette.png", "a/photo.jpg",
             "a/print.jpg", "b/anim.gif", "b/bitmap.bmp", "b/gray_alpha.png", "b/mono.png",
             "b/nested/deep/more.JPG", "b/scan.tiff", "b/web.webp"]  # the order of the source
    img = dict(zip(names, images, strict=True))
    assert images.shape == (13, 3, 32, 32) and labels.tolist() == [0] * 6 + [1] * 7
    gray = sorted(n for n, x in img.items() if (x[0] == x[1]).all() and (x[1] == x[2]).all())
    assert gray == ["a/deep.png", "a/gray.png", "b/gray_alpha.png", "b/mono.png"]
    reference = img["b/bitmap.bmp"]  # lossless, same pixels as alpha.png and scan.tiff
    assert np.array_equal(img["a/alpha.png"], reference) and np.array_equal(img["b/scan.tiff"], reference)
    assert np.abs(img["a/print.jpg"] - reference).mean() < 12  # CMYK converted back to RGB
    assert np.array_equal(img["b/web.webp"], reference)  # lossless WebP
    assert 100 < img["a/deep.png"].mean() < 155  # 16-bit scaled to 8 bits, not clipped to white
    assert img["b/anim.gif"].mean() < 200  # the first frame, not the white second one
    assert set(np.unique(img["b/mono.png"])) - {0, 255}  # resized, but from 0/255 pixels
    assert img["a/palette.png"].max() == 255  # index 0 is transparent: composited on white


def test_crop_none_pads_instead_of_cropping(workdir):
    from PIL import Image
    (workdir / "wide").mkdir()
    Image.new("RGB", (64, 32), (255, 255, 255)).save(workdir / "wide" / "w.png")
    center = np.load(info("--dataset", "wide", "--resolution", "32")["cache"])
    padded = np.load(info("--dataset", "wide", "--resolution", "32", "--crop", "none")["cache"])
    assert center.min() == 255  # all white
    assert padded[0, :, 0].max() == 0 and padded[0, :, 16].min() == 255  # black bars top, white middle


def test_channels_come_from_the_data(workdir):
    from PIL import Image
    (workdir / "g").mkdir()
    for i in range(3):
        Image.new("L", (32, 32), i * 80).save(workdir / "g" / f"{i}.png")
    assert info("--dataset", "g")["channels"] == 1
    assert info("--dataset", "g", "--channels", "3")["channels"] == 3
    Image.new("RGB", (32, 32), (9, 99, 199)).save(workdir / "g" / "c.png")
    assert info("--dataset", "g")["channels"] == 3


def test_no_usable_image_is_an_error(workdir):
    (workdir / "bad").mkdir()
    (workdir / "bad" / "x.jpg").write_bytes(b"")
    (workdir / "bad" / "y.png").write_text("nope")
    result = invoke("train", "--dataset", "bad")
    assert result.exit_code == 1
    assert "has no usable image" in result.stderr and "1 empty file, 1 not an image" in result.stderr
    assert not (workdir / "runs").exists()


# --- the cache ------------------------------------------------------------------------------------

def test_cache_is_reused_and_notices_a_changed_source(workdir, monkeypatch):
    write_odd_folder(workdir / "imgs")
    first = info("--dataset", "imgs", "--resolution", "32")
    built = []
    real_build = cache.build
    monkeypatch.setattr(cache, "build", lambda *a, **k: built.append(1) or real_build(*a, **k))
    again = info("--dataset", "imgs", "--resolution", "32")
    assert built == [] and again["fingerprint"] == first["fingerprint"]
    (workdir / "imgs" / "a" / "gray.png").write_bytes((workdir / "imgs" / "b" / "bitmap.bmp").read_bytes())
    changed = info("--dataset", "imgs", "--resolution", "32")
    assert built == [1] and changed["fingerprint"] != first["fingerprint"]
    other_size = info("--dataset", "imgs", "--resolution", "64")
    assert other_size["fingerprint"] != changed["fingerprint"]


def test_resume_refuses_a_changed_dataset(workdir):
    from PIL import Image
    image_folder(workdir / "imgs", 6)
    train_ok("--dataset", "imgs", "--resolution", "32", "--out", "r")
    Image.new("RGB", (32, 32), (0, 0, 255)).save(workdir / "imgs" / "new.png")
    result = invoke("resume", "r", "--steps", "3")
    assert result.exit_code == 1
    assert "changed since this run started" in result.stderr and "--allow-data-change" in result.stderr
    result = invoke("resume", "r", "--steps", "3", "--allow-data-change")
    assert result.exit_code == 0, result.output


def test_streamed_batches_equal_resident_ones():
    images = np.arange(20 * 3 * 4 * 4, dtype=np.int64).reshape(20, 3, 4, 4).astype(np.uint8)
    cpu = torch.device("cpu")
    resident = Batches(images, 6, seed=3, device=cpu, mirror=True, resident=True)
    streamed = Batches(images, 6, seed=3, device=cpu, mirror=True, resident=False)
    a = [resident.next().x for _ in range(7)]
    b = [streamed.next().x for _ in range(7)]
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    # mirroring flips some images and not others, and the data order resumes exactly
    flat = torch.cat(a)
    originals = torch.from_numpy(images).float() / 127.5 - 1
    flipped = sum(any(torch.equal(x, o.flip(-1)) for o in originals) for x in flat)
    assert 0 < flipped < len(flat)
    again = Batches(images, 6, seed=3, device=cpu, mirror=True, resident=False)
    again.load_state(*streamed.state())
    resident.load_state(*streamed.state())
    assert torch.equal(again.next().x, resident.next().x)
    streamed.close()
    again.close()


def test_load_dataset_engine_api(workdir):
    write_mnist(workdir / "data")
    data = load_dataset(Config(dataset="mnist", channels=1, batch_size=2))
    assert data.images.shape == (10, 1, 32, 32) and data.classes[0] == "0"
    with pytest.raises(DataError, match="fewer than batch_size 64"):
        load_dataset(Config(dataset="mnist", channels=1, batch_size=64))


def test_a_loader_error_surfaces_and_close_returns(monkeypatch):
    images = np.zeros((8, 1, 2, 2), dtype=np.uint8)
    batches = Batches(images, 2, seed=0, device=torch.device("cpu"), resident=False)
    batches.next()

    def broken(self, epoch):
        raise OSError("disk went away")

    monkeypatch.setattr(Batches, "_epoch_order", broken)
    batches.load_state(1, 0)  # restarts the loader thread, which now fails
    for _ in range(2):
        with pytest.raises(OSError, match="disk went away"):
            batches.next()
    batches.close()  # does not hang


def test_small_data_is_resident_huge_data_streams(monkeypatch):
    images = np.zeros((8, 1, 2, 2), dtype=np.uint8)
    assert Batches(images, 2, seed=0, device=torch.device("cpu")).resident
    monkeypatch.setattr("ganctl.data.batches._free_bytes", lambda device: 60)  # 64 bytes > half
    batches = Batches(images, 2, seed=0, device=torch.device("cpu"))
    assert not batches.resident
    batches.close()


# --- labels -------------------------------------------------------------------------------------

def check_labels(batch, classes=3):
    """Image i of image_folder(classes=3) is red i*25 in folder c{i % 3}."""
    red = ((batch.x[:, 0, 0, 0] + 1) * 127.5).round().long()
    assert batch.c is not None and torch.equal(batch.c, (red // 25) % classes), (red, batch.c)


@pytest.mark.parametrize("resident", [True, False])
def test_labels_from_class_folders_arrive_with_their_images(workdir, resident):
    image_folder(workdir / "imgs", 9, classes=3)
    data = load_dataset(Config(dataset=str(workdir / "imgs"), resolution=32, batch_size=4))
    assert data.classes == ["c0", "c1", "c2"]
    batches = Batches(data.images, 4, seed=1, device=torch.device("cpu"), mirror=True,
                      resident=resident, labels=data.labels)
    for _ in range(5):  # across epochs of two batches
        check_labels(batches.next())
    position = batches.state()
    again = Batches(data.images, 4, seed=1, device=torch.device("cpu"), resident=resident,
                    labels=data.labels)
    again.load_state(*position)
    a, b = batches.next(), again.next()
    check_labels(b)
    assert torch.equal(a.c, b.c)
    batches.close()
    again.close()


def test_class_names_reach_the_config_and_labels_the_step_after_resume(workdir, monkeypatch):
    from ganctl.engine import step

    image_folder(workdir / "imgs", 9, classes=3)
    args = ["--dataset", "imgs", "--resolution", "32", "--batch-size", "4", "--g-width", "4",
            "--d-width", "4", "--ckpt-every", "2", "--device", "cpu", "--out", "r"]
    assert invoke("train", *args, "--steps", "2").exit_code == 0
    assert read_json(workdir / "r" / "config.json")["classes"] == ["c0", "c1", "c2"]
    assert checkpoint.read_header(workdir / "r/checkpoints/step-000000002.safetensors").config[
        "classes"] == ["c0", "c1", "c2"]
    seen = []
    real_draw = step.draw
    monkeypatch.setattr(step, "draw", lambda state, keep_graph: seen.append(
        inputs := real_draw(state, keep_graph)) or inputs)
    result = invoke("resume", "r", "--steps", "5")
    assert result.exit_code == 0, result.output
    assert len(seen) == 3
    for inputs in seen:
        check_labels(inputs.real)
        assert inputs.c is inputs.real.c


def test_unlabelled_data_has_no_labels(workdir):
    image_folder(workdir / "flat", 4)
    data = load_dataset(Config(dataset=str(workdir / "flat"), resolution=32, batch_size=4))
    assert data.classes == []
    assert Batches(data.images, 4, seed=0, device=torch.device("cpu")).next().c is None


# --- the built-in dataset and batches -------------------------------------------------------------

def test_shapes_dataset_is_deterministic_and_varied():
    a, b = shapes.render(32, 3, n=256), shapes.render(32, 3, n=256)
    assert a is b  # drawn once per process
    shapes.render.cache_clear()
    b = shapes.render(32, 3, n=256)
    assert a.dtype == torch.uint8 and a.shape == (256, 3, 32, 32) and torch.equal(a, b)
    assert shapes.render(32, 1, n=8).shape == (8, 1, 32, 32)
    # every image has a bright shape on a darker background
    flat = a.float().amax(1).flatten(1)  # (n, H*W) brightest channel
    assert (flat.amax(1) > 180).all() and (flat.median(1).values < 120).all()
    assert len({tuple(img[:, 16, 16].tolist()) for img in a}) > 100  # not one picture


def test_shapes_labels_are_the_shapes_drawn(monkeypatch):
    drawn = []
    real = shapes._coverage
    monkeypatch.setattr(shapes, "_coverage", lambda kind, *a: drawn.append(kind) or real(kind, *a))
    shapes.render.cache_clear()
    shapes.render(16, 3, n=300)  # two chunks
    shapes.render.cache_clear()
    labels = shapes.labels(300)
    assert torch.equal(torch.cat(drawn), labels) and labels.dtype == torch.int64
    assert torch.equal(shapes.labels(), shapes.labels())  # the same for every call
    assert torch.equal(shapes.labels()[:300], labels)  # and independent of n's tail
    assert torch.bincount(shapes.labels()).min() > shapes.SIZE // 4  # every shape, about a third


def test_dataset_registry_loads_at_the_config_size():
    data = load_dataset(Config(resolution=64, channels=1))
    assert data.images.shape == (shapes.SIZE, 1, 64, 64)
    assert data.classes == list(shapes.CLASSES) and data.labels.shape == (shapes.SIZE,)


def test_batches_are_reproducible_and_resumable():
    images = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 1, 2, 2)

    def draw(batches, k):  # k batches, as the image indices they hold
        return [[round((v + 1) * 127.5) for v in batches.next().x[:, 0, 0, 0].tolist()]
                for _ in range(k)]

    a = Batches(images, 3, seed=1, device=torch.device("cpu"))
    seq = draw(a, 7)
    for epoch in (seq[0:3], seq[3:6]):  # 3 batches of distinct images; the 10th is dropped
        assert len({i for batch in epoch for i in batch}) == 9
    assert seq[0:3] != seq[3:6]  # a new order each epoch
    assert draw(Batches(images, 3, seed=1, device=torch.device("cpu")), 7) == seq
    assert draw(Batches(images, 3, seed=2, device=torch.device("cpu")), 3) != seq[:3]
    b = Batches(images, 3, seed=1, device=torch.device("cpu"))
    draw(b, 4)
    c = Batches(images, 3, seed=1, device=torch.device("cpu"))
    c.load_state(*b.state())
    assert draw(c, 3) == seq[4:7]
    x = Batches(images, 10, seed=0, device=torch.device("cpu")).next().x
    assert x.min() == -1.0 and x.max() == pytest.approx(9 / 127.5 - 1)  # uint8 -> [-1, 1]


# --- cases found in review ------------------------------------------------------------------------

def test_moved_data_and_another_working_directory(workdir, monkeypatch):
    write_mnist(workdir / "dA")
    assert invoke("train", *TINY, "--steps", "1", "--dataset", "mnist", "--data-dir", "dA",
                  "--batch-size", "4", "--out", "m").exit_code == 0
    shutil.copytree(workdir / "dA", workdir / "dB")  # new modification times, same content
    result = invoke("resume", "m", "--data-dir", "dB", "--steps", "2")
    assert result.exit_code == 0, result.output
    image_folder(workdir / "imgs", 4)
    assert invoke("train", *TINY, "--steps", "1", "--dataset", "imgs", "--resolution", "32",
                  "--batch-size", "4", "--out", "f").exit_code == 0
    (workdir / "elsewhere").mkdir()
    monkeypatch.chdir(workdir / "elsewhere")
    result = invoke("resume", workdir / "f", "--steps", "2")
    assert result.exit_code == 0, result.output
    assert read_json(workdir / "f" / "config.json")["dataset"] == str(workdir / "imgs")


def test_bad_zip_members_are_skipped_not_fatal(workdir):
    image_folder(workdir / "src", 3, size=(16, 16))
    with zipfile.ZipFile(workdir / "z.zip", "w") as z:
        for p in sorted((workdir / "src").iterdir()):
            z.write(p, p.name)
    raw = bytearray((workdir / "z.zip").read_bytes())
    header = raw.find(b"PK\x03\x04")  # mark the first member encrypted (flag bit 0)
    raw[header + 6] |= 1
    central = raw.find(b"PK\x01\x02")
    raw[central + 8] |= 1
    (workdir / "z.zip").write_bytes(bytes(raw))
    doc = info("--dataset", "z.zip")
    assert doc["count"] == 2 and doc["skipped_by_reason"] == {"unreadable": 1}


def test_celeba_partition_naming_a_missing_image(workdir):
    folder = write_celeba(workdir / "data", zipped=True)
    with open(folder / "list_eval_partition.txt", "a") as f:
        f.write("999999.jpg 0\n")
    doc = info("--dataset", "celeba")
    assert doc["count"] == 8 and doc["skipped_by_reason"] == {"missing": 1}
    (folder / "list_eval_partition.txt").write_text("000001.jpg zero\n")
    result = invoke("data", "info", "--dataset", "celeba")
    assert result.exit_code == 1 and "line 1 is not '<file> <0|1|2>'" in result.stderr


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_cifar_parser_reads_long_lists_at_every_protocol(tmp_path, protocol):
    labels = (np.arange(50000) % 100).tolist()  # long enough to be cut into frames
    batch = {"fine_labels": labels, "coarse_labels": [x // 5 for x in labels],
             "data": np.zeros((50000, 16), dtype=np.uint8)}
    (tmp_path / "train").write_bytes(pickle.dumps(batch, protocol=protocol))
    out = read_cifar_pickle(tmp_path / "train")
    assert out["fine_labels"] == labels and len(out["data"][0]) == 50000 * 16


def test_data_dir_expands_the_home_directory(workdir, monkeypatch):
    monkeypatch.setenv("HOME", str(workdir / "home"))
    write_mnist(workdir / "home" / "dsets")
    result = invoke("data", "info", "--dataset", "mnist", "--data-dir", "~/dsets", "--no-download")
    assert result.exit_code == 0, result.output


def test_images_outside_the_classes_and_empty_classes_are_reported(workdir):
    image_folder(workdir / "mixed", 6, classes=2)
    image_folder(workdir / "mixed", 2)  # two more beside the class folders
    (workdir / "mixed" / "empty").mkdir()
    (workdir / "mixed" / "empty" / "bad.png").write_text("not an image")
    doc = info("--dataset", "mixed", "--resolution", "32")
    assert doc["class_counts"] == {"c0": 3, "c1": 3, "empty": 0} and doc["unlabelled"] == 2
    assert doc["warnings"] == ["2 images are beside the class folders, in no class (label -1)",
                               "1 class(es) have no usable image: empty"]
    human = invoke("data", "info", "--dataset", "mixed", "--resolution", "32").stdout
    assert "c0 (3), c1 (3), empty (0)" in human and "note        2 images are beside" in human
    result = train_ok("--dataset", "mixed", "--resolution", "32", "--out", "r")
    assert "in no class (label -1): see r/data_report.json" in result.stdout
    assert report(workdir / "r")["unlabelled"] == 2


@pytest.mark.parametrize(("size", "mode", "expected"), [
    ((32, 32), "RGB", (3, 32)),  # a bulk export of a 32x32 model trains at 32, not 64
    ((28, 28), "L", (1, 32)),  # MNIST-sized: up to dcgan's smallest
    ((8, 8), "RGB", (3, 32)),
    ((48, 48), "RGB", (3, 64)),
    ((100, 80), "RGB", (3, 64)),  # the shorter side, rounded up, at most 64
    ((512, 512), "RGB", (3, 64)),
])
def test_a_folders_default_resolution_and_channels_follow_its_images(tmp_path, size, mode, expected):
    from PIL import Image  # noqa: PLC0415

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(5):
        Image.new(mode, size, color=i * 40 if mode == "L" else (i * 40, 0, 0)).save(folder / f"{i}.png")
    got = datasets.preset(str(folder))
    assert (got["channels"], got["resolution"]) == expected
    given = datasets.preset(str(folder), {"resolution": 128})
    assert (given["channels"], given["resolution"]) == (expected[0], 128)  # the user's stands


def test_train_on_a_folder_of_32px_images_defaults_to_32(tmp_path, workdir):
    from PIL import Image  # noqa: PLC0415

    for i in range(8):
        Image.new("RGB", (32, 32), color=(i * 30, 10, 10)).save(workdir / f"{i}.png")
    result = invoke("train", "--print-config", "--json", "--dataset", str(workdir))
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["config"]["resolution"] == 32
    assert doc["sources"]["resolution"].startswith("dataset ")


def _gray_tiff(pixels: np.ndarray) -> np.ndarray:
    """pixels (I;16, I or F by their dtype) through a TIFF file and the decoder, at their size."""
    import io

    from PIL import Image  # noqa: PLC0415

    from ganctl.data.decode import decode

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="TIFF")
    return decode(buffer.getvalue(), pixels.shape[0], 1, "center")[0]


@pytest.mark.parametrize(("dtype", "low", "high", "expected"), [
    (np.float32, 0.0, 0.5, (0, 128)),  # floats in [0, 1]
    (np.float32, 0.0, 100.0, (0, 100)),  # floats of 8-bit values
    (np.float32, 250.0, 1000.0, (64, 255)),  # of any other range: its own brightest is white
    (np.float32, -3.0, 1e6, (0, 255)),  # below 0: black
    (np.float32, 0.0, float(np.finfo(np.float32).max), (0, 255)),  # no overflow on the way
    (np.uint16, 0, 200, (0, 200)),  # I;16 holding 8-bit values
    (np.uint16, 1000, 65535, (4, 255)),  # I;16 over its range
    (np.int32, -5, 2**31 - 1, (0, 255)),  # I: 32-bit, scaled by its brightest
    (np.int32, 50_000, 100_000, (128, 255)),
])
def test_16_bit_32_bit_and_float_grayscale_scale_to_what_they_show(dtype, low, high, expected):
    """Half the image at `low`, half at `high`: each keeps its brightness within the range its
    type and values say, never wrapping, overflowing or warning."""
    import warnings

    pixels = np.full((8, 8), low, dtype=dtype)
    pixels[:, 4:] = high
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = _gray_tiff(pixels)
    assert (got[:, :4] == expected[0]).all() and (got[:, 4:] == expected[1]).all(), got


def test_class_names_and_paths_with_control_characters_stay_on_one_line(workdir):
    """A folder name may hold a newline or a terminal escape: what ganctl.data writes for
    people (the decoding line, label warnings, the skip summary) shows it escaped, on one line;
    the JSON report keeps the names as they are."""
    root = workdir / "x\ny"
    image_folder(root / "c", 2, size=(8, 8))
    (root / "a\nb").mkdir()
    (root / "a\nb" / "bad.png").write_text("not an image")
    (root / "\x1b[31mred").mkdir()
    (root / "\x1b[31mred" / "bad.png").write_text("not an image")
    result = invoke("data", "info", "--dataset", root, "--resolution", "32", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["classes"] == ["\x1b[31mred", "a\nb", "c"]
    assert doc["warnings"] == ["2 class(es) have no usable image: \\x1b[31mred, a\\nb"]
    decoding = [line for line in result.stderr.splitlines() if line.startswith("decoding")]
    assert len(decoding) == 1 and "x\\ny" in decoding[0], result.stderr
    assert cache.skip_summary({**doc, "skipped_by_reason": {"not\nan image": 2}}) == \
        "skipped 2 of 4 files (2 not\\nan image)"


# --- hostile files: reads are bounded, special files never opened, trees that loop walked once ----

def test_a_64_gib_sparse_file_among_images_is_skipped_as_too_large_unread(workdir):
    folder = image_folder(workdir / "imgs", 4)
    with open(folder / "huge.png", "wb") as f:
        f.truncate(64 << 30)  # sparse: no disk used, but 64 GiB if anything read it
    doc = info("--dataset", "imgs")
    assert doc["count"] == 4 and doc["skipped_by_reason"] == {"too large": 1}


def test_the_file_size_limit_is_a_flag(workdir):
    folder = image_folder(workdir / "imgs", 4)
    noise = np.random.default_rng(0).integers(0, 256, (700, 700, 3), dtype=np.uint8)
    Image.fromarray(noise).save(folder / "big.png")  # about 1.5 MB of incompressible PNG
    assert (folder / "big.png").stat().st_size > 1 << 20
    assert info("--dataset", "imgs", "--max-file-mb", "1")["skipped_by_reason"] == {"too large": 1}
    assert info("--dataset", "imgs")["count"] == 5  # 256 MB by default
    assert_clean(invoke("data", "info", "--dataset", "imgs", "--max-file-mb", "0"))


def test_zip_members_declared_larger_than_the_limit_are_skipped(workdir):
    folder = image_folder(workdir / "imgs", 4)
    noise = np.random.default_rng(0).integers(0, 256, (700, 700, 3), dtype=np.uint8)
    Image.fromarray(noise).save(folder / "big.png")
    with zipfile.ZipFile(workdir / "z.zip", "w") as z:
        for p in sorted(folder.iterdir()):
            z.write(p, p.name)
    assert info("--dataset", "z.zip", "--max-file-mb", "1")["skipped_by_reason"] == {"too large": 1}


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifos_and_sockets_in_a_dataset_are_skipped_never_opened(workdir):
    folder = image_folder(workdir / "imgs", 4)
    os.mkfifo(folder / "pipe.png")
    os.mkfifo(folder / "pipe.txt")
    doc = info("--dataset", "imgs")  # would hang for ever if the FIFO were opened
    assert doc["count"] == 4
    assert doc["skipped_by_reason"] == {"not a regular file": 2}


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_in_place_of_an_mnist_file_is_refused_not_read(workdir):
    write_mnist(workdir / "data", gz=False)
    target = workdir / "data" / "MNIST" / "raw" / "train-images-idx3-ubyte"
    target.unlink()
    os.mkfifo(target)
    result = invoke("data", "info", "--dataset", "mnist", "--no-download")
    assert_clean(result)


def test_a_huge_mnist_file_is_refused_in_one_line(workdir):
    write_mnist(workdir / "data", gz=False)
    with open(workdir / "data" / "MNIST" / "raw" / "train-images-idx3-ubyte", "r+b") as f:
        f.truncate(64 << 30)
    result = invoke("data", "info", "--dataset", "mnist", "--no-download")
    assert_one_line_error(result, 1, "train-images-idx3-ubyte is too large")


def test_a_very_deep_tree_and_symlink_loops_are_walked(workdir):
    folder = image_folder(workdir / "imgs", 2)
    deep = str(folder)
    for _ in range(1100):  # deeper than Python's recursion limit (pathlib's mkdir recurses)
        deep += "/d"
        os.mkdir(deep)
    try:
        Image.new("RGB", (8, 8), (1, 2, 3)).save(Path(deep) / "bottom.png")
        (folder / "up").symlink_to(folder, target_is_directory=True)  # a loop
        (folder / "d" / "again").symlink_to(folder / "d", target_is_directory=True)
        (folder / "dangling.png").symlink_to(folder / "nowhere.png")
        files, passed = folders.walk_files(folder)
        names = [str(rel) for rel, _, _ in files]
        assert names.count("000.png") == 1 and len(names) == 3, names[:5]
        assert any(n.endswith("bottom.png") for n in names)
        assert ("dangling.png", "not a regular file") not in passed  # a broken link is no file
        doc = info("--dataset", "imgs")
        assert doc["count"] == 3
    finally:  # shutil.rmtree (pytest's clean-up) recurses too: take the tree down from below
        for made in (Path(deep) / "bottom.png", folder / "d" / "again"):
            made.unlink(missing_ok=True)
        while deep != str(folder):
            os.rmdir(deep)
            deep = os.path.dirname(deep)


def test_a_symlink_to_an_enclosing_folder_is_not_followed(workdir):
    folder = image_folder(workdir / "imgs", 3)
    (folder / "up").symlink_to(workdir, target_is_directory=True)
    (folder / "root").symlink_to("/", target_is_directory=True)
    files, passed = folders.walk_files(folder)
    assert len(files) == 3
    assert sorted(f for f, why in passed if why == "link to an enclosing folder") == ["root", "up"]
    assert_one_line_error(invoke("data", "info", "--dataset", "/proc/self"), 1, "system folder")


@pytest.mark.parametrize("where", ["/", "~"])
def test_the_root_or_the_home_directory_is_not_scanned(workdir, where):
    result = invoke("train", "--dataset", where, *TRAIN2)
    assert_one_line_error(result, 1, "not a folder of images")


def test_any_decoder_failure_is_a_counted_skip(workdir, monkeypatch):
    folder = image_folder(workdir / "imgs", 6)
    real_decode = cache.decode

    def flaky(raw, *args):
        image = real_decode(raw, *args)
        marker = int(image[0, 0, 0])  # each image has its own red value
        if marker == 25:
            raise MemoryError
        if marker == 50:
            raise ZeroDivisionError("a decoder's own bug")
        return image

    monkeypatch.setattr(cache, "decode", flaky)
    doc = info("--dataset", str(folder))
    assert doc["count"] == 4
    assert doc["skipped_by_reason"] == {"decoder error (ZeroDivisionError)": 1, "out of memory": 1}


def test_decode_threads_hold_a_bounded_number_of_raw_bytes(monkeypatch):
    size = 100_000
    held, peak, lock = [0], [0], threading.Lock()
    image = jpeg_bytes(Image.new("RGB", (8, 8), (9, 9, 9)))

    def read(i):
        with lock:
            held[0] += size
            peak[0] = max(peak[0], held[0])
        try:
            threading.Event().wait(0.002)
            return image
        finally:
            with lock:
                held[0] -= size

    n = 300
    source = sources.Source(name="x", origin="x", fingerprint="f", keys=[str(i) for i in range(n)],
                            labels=np.full(n, -1), classes=[], read=read, encoded=True,
                            sizes=np.full(n, size))
    monkeypatch.setattr(cache, "RAW_BUDGET", 3 * size)
    monkeypatch.setattr(cache, "CHUNK", 8)
    chunks = list(cache._decode_all(source, 8, 3, "center", workers=8))
    assert sum(len(c) for c in chunks) == n
    assert 0 < peak[0] <= 3 * size


def test_a_cache_of_the_wrong_shape_is_rebuilt(workdir):
    image_folder(workdir / "imgs", 5)
    first = info("--dataset", "imgs")
    images = Path(first["cache"])
    np.save(images, np.zeros((5, 3, 7, 7), dtype=np.uint8))  # the index lies about its contents
    again = info("--dataset", "imgs")
    assert again["count"] == 5 and again["fingerprint"] == first["fingerprint"]
    r = first["resolution"]
    assert np.load(images, mmap_mode="r").shape == (5, 3, r, r)
    np.save(images, np.zeros((5, 3, r, r), dtype=np.float32))
    assert info("--dataset", "imgs")["fingerprint"] == first["fingerprint"]
    Path(str(images).replace(".images.npy", ".json")).write_text("[1, 2]")
    assert info("--dataset", "imgs")["fingerprint"] == first["fingerprint"]


def test_a_huge_file_size_limit_does_not_reserve_memory(workdir):
    image_folder(workdir / "imgs", 4)
    assert info("--dataset", "imgs", "--max-file-mb", str(1 << 20))["count"] == 4


def test_read_regular_refuses_what_is_not_a_plain_file(tmp_path):
    (tmp_path / "f").write_bytes(b"x" * 10)
    assert sources.read_regular(tmp_path / "f", 10) == b"x" * 10
    with pytest.raises(sources.Skip, match="too large"):
        sources.read_regular(tmp_path / "f", 9)
    with pytest.raises(sources.Skip, match="missing"):
        sources.read_regular(tmp_path / "nope", 9)
    with pytest.raises(sources.Skip, match="not a regular file"):
        sources.read_regular(tmp_path, 9)
    with pytest.raises(DataError, match="too large"):
        (tmp_path / "g.gz").write_bytes(__import__("gzip").compress(b"\0" * 3000))
        monkeypatch = pytest.MonkeyPatch()
        monkeypatch.setattr(datafile, "MAX_DATA_FILE", 1000)
        try:
            datafile.read_data_file(tmp_path / "g.gz", gunzip=True)  # a gzip bomb stops early
        finally:
            monkeypatch.undo()
    assert datasets.DATASETS["celeba"].download is not None


# --- CelebA's download ----------------------------------------------------------------------------

def _fake_celeba_files(folder: Path, filename: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"{i:06d}.jpg" for i in range(1, 9)]
    if filename == "img_align_celeba.zip":
        with zipfile.ZipFile(folder / filename, "w") as z:
            for i, name in enumerate(names):
                z.writestr(f"img_align_celeba/{name}",
                           jpeg_bytes(Image.new("RGB", (178, 218), (i * 30, 80, 120))))
    else:
        (folder / filename).write_text("".join(f"{n} 0\n" for n in names))


def test_celeba_downloads_the_two_files_it_needs_into_its_layout(workdir, monkeypatch):
    import torchvision.datasets.utils as tvu
    requested = []

    def fake_drive(file_id, root, filename=None, md5=None):
        requested.append((file_id, Path(root), filename, md5))
        _fake_celeba_files(Path(root), filename)

    monkeypatch.setattr(tvu, "download_file_from_google_drive", fake_drive)
    result = invoke("train", "--dataset", "celeba", *TRAIN2, "--resolution", "32", "--out", "r")
    assert result.exit_code == 0, result.output
    folder = workdir / "data" / "celeba"
    assert [(r[1], r[2]) for r in requested] == [(folder, "img_align_celeba.zip"),
                                                 (folder, "list_eval_partition.txt")]
    assert requested[0][0] == "0B7EVK8r0v71pZjFTYXZWM3FlRnM" and len(requested[0][3]) == 32
    assert json.loads((workdir / "r" / "data_report.json").read_text())["count"] == 8


def test_a_google_drive_quota_refusal_is_one_line_with_the_manual_way(workdir, monkeypatch):
    import gdown.exceptions
    import torchvision.datasets.utils as tvu

    def refused(file_id, root, filename=None, md5=None):
        raise gdown.exceptions.FileURLRetrievalError(
            "Failed to retrieve file url:\n\n\tToo many users have viewed or downloaded this file "
            "recently. Please try accessing the file again later.\n\nYou may still be able to "
            f"access the file from the browser:\n\n\thttps://drive.google.com/uc?id={file_id}\n")

    monkeypatch.setattr(tvu, "download_file_from_google_drive", refused)
    result = invoke("train", "--dataset", "celeba")
    assert_one_line_error(result, 1, "Google Drive refused it", "quota", "img_align_celeba.zip",
                          "list_eval_partition.txt", str(workdir / "data" / "celeba"),
                          "mmlab.ie.cuhk.edu.hk")


def test_gdown_is_a_dependency():
    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    deps = text.split("dependencies = [", 1)[1].split("]", 1)[0]
    assert '"gdown' in deps
    import gdown  # noqa: F401  installed with ganctl


# --- labels and layout ----------------------------------------------------------------------------

def test_conditional_training_needs_every_image_in_a_class(workdir):
    image_folder(workdir / "flat", 8)
    assert_one_line_error(invoke("train", *TINY, "--conditional", "--dataset", "flat",
                                 "--resolution", "32", "--out", "r"), 1,
                          "--conditional needs labelled data", "flat' has no classes")
    image_folder(workdir / "mixed", 6, classes=2)
    image_folder(workdir / "mixed", 2)
    assert_one_line_error(invoke("train", *TINY, "--conditional", "--dataset", "mixed",
                                 "--resolution", "32", "--out", "r"), 1,
                          "2 images of", "are beside the class folders")
    assert not (workdir / "r").exists()


def test_channels_last_batches_hold_the_same_images():
    plain = Batches(IMAGES, 8, 0, torch.device("cpu"), mirror=True)
    last = Batches(IMAGES, 8, 0, torch.device("cpu"), mirror=True,
                   memory_format=torch.channels_last)
    a, b = plain.next().x, last.next().x
    assert b.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(a, b)
