"""Fixtures; shared helpers are in helpers.py. Torch runs one thread here and in every process
a test starts (the suite's speed on a 2-core machine, and its numbers independent of cores)."""

from __future__ import annotations

import os

os.environ["OMP_NUM_THREADS"] = "1"  # before torch is imported; inherited by subprocesses
os.environ["MKL_NUM_THREADS"] = "1"

import shutil  # noqa: E402
import signal  # noqa: E402
import urllib.request  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from helpers import TINY, invoke, refuse_download, write_feature_net  # noqa: E402

torch.set_num_threads(1)

# The suite sends stop signals on purpose. Started in the background or under nohup, this
# process (and every one it starts) would inherit SIGINT or SIGHUP ignored, which ganctl rightly
# keeps ignored: give them back their defaults here, in every worker.
signal.signal(signal.SIGINT, signal.default_int_handler)
signal.signal(signal.SIGHUP, signal.SIG_DFL)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: takes a minute or so; started first, so that the "
                                       "other workers run the rest meanwhile")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: slow first


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working directory whose ./runs is the runs root; data and caches inside it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GANCTL_RUNS", raising=False)
    monkeypatch.setenv("GANCTL_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("GANCTL_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


@pytest.fixture(scope="session")
def _trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    result = invoke("train", *TINY, "--out", run_dir)
    assert result.exit_code == 0, result.output
    return run_dir


@pytest.fixture
def trained_run(_trained: Path, workdir: Path) -> Path:
    """A copy of a 4-step tiny run at ./runs/0001-shapes-dcgan, the only run under ./runs."""
    run_dir = workdir / "runs" / "0001-shapes-dcgan"
    shutil.copytree(_trained, run_dir)
    return run_dir


@pytest.fixture
def run(_trained: Path, workdir: Path) -> Path:
    """The same run at ./r, named by a relative path as a user names a run."""
    shutil.copytree(_trained, workdir / "r")
    return Path("r")


@pytest.fixture
def fake_net(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stand-in feature network in the float299 form, found through GANCTL_INCEPTION; the user
    cache is an empty temp dir and nothing is downloaded."""
    path = write_feature_net(tmp_path / "nets" / "fake.pt")
    monkeypatch.setenv("GANCTL_INCEPTION", str(path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(urllib.request, "urlopen", refuse_download)
    return path
