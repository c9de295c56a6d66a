"""The checkpoint file: exact round trip, metadata and checksum, atomic writes, and damaged or
hostile files refused with one line by every command that reads them."""

import json
import re
import struct
from pathlib import Path

import pytest
import torch
from helpers import damage, invoke, rewrite
from safetensors.torch import save_file

from ganctl import checkpoint, fsutil
from ganctl.config import Config
from ganctl.data import shapes
from ganctl.engine.state import init_state, load_state, state_tensors
from ganctl.engine.step import train_step
from ganctl.errors import CheckpointError

CONFIG = Config(batch_size=8, g_width=8, d_width=8, device="cpu")


def trained_state(steps=2):
    state = init_state(CONFIG, torch.device("cpu"), shapes.render(32, 3, n=64))
    for _ in range(steps):
        train_step(state, state.loss.phases())
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
    assert header.metadata["ganctl.schema"] == "4" and header.metadata["ganctl.x"] == "y"
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

    monkeypatch.setattr(fsutil.os, "fsync", full_disk)
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


def test_no_pickle_and_no_torch_load_in_the_package():
    package = Path(checkpoint.__file__).parent
    pattern = re.compile(r"torch\.load\(|\bimport pickle\b|pickle\.loads?\(|from pickle ")
    offenders = [f"{p}:{i}" for p in package.rglob("*.py")
                 for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert offenders == []


# --- damaged and hostile files ---------------------------------------------------------------------

@pytest.mark.parametrize("how, message", [
    ("truncated", "is truncated"), ("corrupted", "does not match its checksum"),
    ("huge header", "truncated, corrupted or not a safetensors file")])
def test_damaged_checkpoint_is_refused_by_every_command(trained_run, how, message):
    ckpt = trained_run / "checkpoints" / "step-000000004.safetensors"
    damage(ckpt, how)
    for command in (["inspect", ckpt], ["sample", "x.png", "--ckpt", ckpt],
                    ["resume", ckpt, "--steps", "6"]):
        result = invoke(*command)
        assert result.exit_code == 1, result.output
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("change, message", [
    (lambda t, m: t.update({"G_ema.fc.weight": t["G_ema.fc.weight"].int()}),
     "G_ema.fc.weight is torch.int32"),
    (lambda t, m: t.update({"G_ema.fc.weight": t["G_ema.fc.weight"][:3]}),
     "G_ema.fc.weight is (3, 100), the config's model needs (512, 100)"),
    (lambda t, m: t.pop("G_ema.bn0.running_mean"), "missing G_ema.bn0.running_mean"),
    (lambda t, m: m.update({"ganctl.config": json.dumps({**json.loads(m["ganctl.config"]),
                                                         "evil": 1})}), "unknown config key 'evil'"),
    (lambda t, m: m.update({"ganctl.schema": "99"}), "newer ganctl (schema 99"),
    (lambda t, m: m.update({"ganctl.config": json.dumps({**json.loads(m["ganctl.config"]),
                                                         "g_width": 2 ** 20})}),
     "g_width must be a whole number from 1 to 4096, got 1048576"),
])
def test_hostile_checkpoints_are_refused(trained_run, workdir, change, message):
    bad = workdir / "bad.safetensors"
    rewrite(trained_run / "checkpoints" / "step-000000004.safetensors", bad, change)
    result = invoke("sample", "x.png", "--ckpt", bad)
    assert result.exit_code == 1 and message in result.stderr, result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("metrics", ["[1, 2]", "{bad"])
def test_hostile_metrics_metadata_is_ignored(trained_run, workdir, metrics):
    bad = workdir / "bad.safetensors"
    rewrite(trained_run / "checkpoints" / "step-000000004.safetensors", bad,
            lambda t, m: m.update({"ganctl.metrics": metrics}))
    result = invoke("inspect", bad)
    assert result.exit_code == 0 and "step" in result.stdout and "Traceback" not in result.output


def test_a_foreign_safetensors_file_and_a_malformed_header(workdir):
    save_file({"w": torch.zeros(2)}, str(workdir / "foreign.safetensors"), metadata={"a": "b"})
    header = json.dumps({"__metadata__": {"ganctl.schema": "2", "ganctl.step": "1",
                                          "ganctl.config": "{}"},
                         "G.w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}).encode()
    (workdir / "bad.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 4)
    (workdir / "junk.safetensors").write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{oops")
    (workdir / "tiny.safetensors").write_bytes(b"abc")
    for name, message in (("foreign", "not a ganctl checkpoint"), ("bad", "corrupted header"),
                          ("junk", "corrupted header"), ("tiny", "truncated")):
        for command in (["inspect", f"{name}.safetensors"],
                        ["sample", "x.png", "--ckpt", f"{name}.safetensors"]):
            result = invoke(*command)
            assert result.exit_code == 1 and message in result.stderr, result.output


def test_tampered_config_fails_the_checksum(trained_run):
    ckpt = trained_run / "checkpoints" / "step-000000004.safetensors"
    raw = ckpt.read_bytes()
    ckpt.write_bytes(raw.replace(b'\\"seed\\": 0', b'\\"seed\\": 7', 1))
    assert raw != ckpt.read_bytes()
    result = invoke("inspect", ckpt)
    assert result.exit_code == 1 and "does not match its checksum" in result.stderr


def test_inspect_no_verify_reads_the_header_alone(trained_run):
    ckpt = trained_run / "checkpoints" / "step-000000004.safetensors"
    damage(ckpt, "corrupted")
    assert invoke("inspect", ckpt).exit_code == 1
    result = invoke("inspect", ckpt, "--no-verify", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["step"] == 4
