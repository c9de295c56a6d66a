import re
import struct
from pathlib import Path

import pytest
import torch

from ganctl import checkpoint
from ganctl.config import Config
from ganctl.data import shapes
from ganctl.errors import CheckpointError
from ganctl.losses import bce_d_loss, bce_g_loss
from ganctl.train import init_state, load_state, state_tensors, train_step

CONFIG = Config(batch_size=8, g_width=8, d_width=8, device="cpu")


def trained_state(steps=2):
    state = init_state(CONFIG, torch.device("cpu"), shapes.render(32, 3, n=64))
    for _ in range(steps):
        z = torch.randn(8, CONFIG.z_dim, generator=state.noise)
        train_step(state, state.batches.next(), z, bce_d_loss, bce_g_loss)
        state.step += 1
    return state


def test_round_trip_restores_every_tensor_exactly(tmp_path):
    state = trained_state()
    saved = state_tensors(state)
    path = tmp_path / "c.safetensors"
    checkpoint.save(path, saved, CONFIG.to_json(), state.step)

    loaded = checkpoint.load_tensors(path)
    assert loaded.keys() == saved.keys()
    for name, tensor in saved.items():
        assert loaded[name].dtype == tensor.dtype and torch.equal(loaded[name], tensor), name

    fresh = init_state(CONFIG, torch.device("cpu"), shapes.render(32, 3, n=64))
    load_state(fresh, loaded)
    again = state_tensors(fresh)
    for name, tensor in saved.items():
        assert torch.equal(again[name], tensor), name
    assert fresh.step == 2 and fresh.batches.state() == state.batches.state()
    assert fresh.opt_G.param_groups[0]["lr"] == CONFIG.lr_g


def test_metadata(tmp_path):
    path = tmp_path / "c.safetensors"
    checkpoint.save(path, {"G.w": torch.ones(3)}, CONFIG.to_json(), 7, {"ganctl.x": "y"})
    header = checkpoint.read_header(path)
    assert header.step == 7 and header.config == CONFIG.to_dict()
    assert header.metadata["ganctl.schema"] == "2" and header.metadata["ganctl.x"] == "y"
    assert header.metadata["ganctl.checksum"].startswith("sha256:")
    checkpoint.verify(header)
    assert header.tensors["G.w"]["shape"] == [3] and header.file_size == path.stat().st_size
    assert [p.name for p in tmp_path.iterdir()] == ["c.safetensors"]  # no temp file left


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "c.safetensors"
    checkpoint.save(path, {"G.w": torch.ones(3)}, CONFIG.to_json(), 1)
    before = path.read_bytes()

    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint.os, "fsync", full_disk)
    with pytest.raises(CheckpointError, match="No space left on device"):
        checkpoint.save(path, {"G.w": torch.zeros(3)}, CONFIG.to_json(), 2)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["c.safetensors"]


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "c.safetensors"
    checkpoint.save(path, {"G.w": torch.ones(1)}, CONFIG.to_json(), 1, {"ganctl.schema": "99"})
    with pytest.raises(CheckpointError, match="newer ganctl .schema 99"):
        checkpoint.read_header(path)


def test_huge_header_length_is_refused_without_reading(tmp_path):
    path = tmp_path / "c.safetensors"
    path.write_bytes(struct.pack("<Q", 2**60) + b"{}")
    with pytest.raises(CheckpointError, match="truncated, corrupted or not a safetensors"):
        checkpoint.read_header(path)


def test_prune_keeps_the_newest_up_to_the_current_step(tmp_path):
    for step in (1, 2, 10, 3):
        (tmp_path / checkpoint.checkpoint_name(step)).write_bytes(b"x")
    removed = checkpoint.prune(tmp_path, 2, current=10)
    assert [p.name for p in removed] == ["step-000000001.safetensors", "step-000000002.safetensors"]
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)] == [
        "step-000000003.safetensors", "step-000000010.safetensors"]
    # resumed from step 3 and now at 4: step 10 (a later, abandoned file) is neither counted nor
    # deleted, and the file just written is always kept
    (tmp_path / checkpoint.checkpoint_name(4)).write_bytes(b"x")
    assert [p.name for p in checkpoint.prune(tmp_path, 1, current=4)] == ["step-000000003.safetensors"]
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)] == [
        "step-000000004.safetensors", "step-000000010.safetensors"]


def test_no_pickle_and_no_torch_load_in_the_package():
    package = Path(checkpoint.__file__).parent
    pattern = re.compile(r"torch\.load\(|\bimport pickle\b|pickle\.loads?\(|from pickle ")
    offenders = [f"{p}:{i}" for p in package.rglob("*.py")
                 for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert offenders == []
