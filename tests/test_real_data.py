"""The real MNIST idx files and CIFAR-10 JPEGs of ../shared/data, when that folder is there."""

import shutil
from pathlib import Path

import numpy as np
import pytest

from ganctl.config import Config
from ganctl.data import load_dataset, sources

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
pytestmark = pytest.mark.skipif(not SHARED.is_dir(), reason="needs ../shared/data")

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
CIFAR10_MEAN = np.array([0.4914, 0.4822, 0.4465]) * 255  # the published per-channel mean


def test_mnist_from_the_real_idx_files(workdir):
    raw = workdir / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in (SHARED / "mnist").glob("*.gz"):
        shutil.copy(f, raw)
    pixels = sources.read_idx(raw / "train-images-idx3-ubyte.gz")
    assert pixels.shape == (60000, 28, 28) and pixels.mean() == pytest.approx(33.3184, abs=1e-4)
    data = load_dataset(Config(dataset="mnist", channels=1, resolution=32, device="cpu"))
    assert data.images.shape == (60000, 1, 32, 32)
    assert np.bincount(data.labels).tolist() == MNIST_TRAIN_COUNTS
    assert abs(float(data.images.mean()) - 33.32) < 0.5  # resizing 28 -> 32 keeps the mean
    test = load_dataset(Config(dataset="mnist", split="test", channels=1, device="cpu"))
    assert len(test.images) == 10000


def test_cifar10_from_the_real_jpeg_zip(workdir):
    data = load_dataset(Config(dataset=str(SHARED / "cifar10" / "cifar10_train_jpg.zip"),
                               resolution=32, channels=3, device="cpu"))
    assert data.images.shape == (50000, 3, 32, 32)
    assert data.classes == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                            "horse", "ship", "truck"]
    assert np.bincount(data.labels).tolist() == [5000] * 10
    mean = data.images.reshape(50000, 3, -1).mean(axis=(0, 2))
    assert np.abs(mean - CIFAR10_MEAN).max() < 0.2  # JPEG q75 moves it by under 0.05
    assert data.report["skipped"] == 0
