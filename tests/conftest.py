from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ganctl.cli import app

# A run small enough for a 2-core CI: 8-channel DCGAN at 32x32, batch 8.
TINY = ["--steps", "4", "--batch-size", "8", "--g-width", "8", "--d-width", "8",
        "--log-every", "2", "--sample-every", "2", "--ckpt-every", "2", "--device", "cpu"]


def invoke(*args: str):
    """Run the CLI in-process; stdout and stderr come back separately."""
    return CliRunner().invoke(app, [str(a) for a in args])


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
