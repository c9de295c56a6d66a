"""The checkpoint file: exact round trip, metadata and checksum, atomic writes that survive kill -9
and a full disk, and damaged, forged or hostile files refused with one line by every command that
reads them."""

import json
import os
import random
import re
import shutil
import struct
import time
from pathlib import Path

import pytest
import torch
from helpers import (
    IMAGES,
    MEDIUM,
    TINY,
    _checksum_again,
    _config_edit,
    _forge,
    assert_clean,
    assert_one_line_error,
    damage,
    invoke,
    rewrite,
    start,
    tiny_config,
    valid_steps,
)
from safetensors.torch import save_file

from ganctl import checkpoint, fsutil, info
from ganctl.config import Config
from ganctl.data import shapes
from ganctl.engine.state import init_state, load_state, snapshot, state_tensors
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


@pytest.mark.parametrize("head, kind", [
    (b"PK\x03\x04" + bytes(40), "a zip archive (a TorchScript file"),
    (b"\x80\x04\x95" + bytes(40), "a Python pickle"),
    (b"\x08\x07\x12" + bytes(40), "perhaps an ONNX model"),
    (b'{"steps": 4, "arch": "dcgan"}', "JSON text"),
])
def test_a_file_of_another_kind_is_named_instead_of_a_header_length(tmp_path, head, kind):
    path = tmp_path / "G.pt"
    path.write_bytes(head)
    result = invoke("inspect", path)
    assert_one_line_error(result, 1, f"{path} is not a ganctl checkpoint: it is {kind}",
                          "give a .safetensors checkpoint or a run directory")


def test_no_pickle_and_no_torch_load_in_the_package():
    """Only the NVlabs importer's restricted unpickler (importers/unpickle.py) imports pickle
    and calls torch.load (weights_only, on the storages it has checked)."""
    package = Path(checkpoint.__file__).parent.parent  # all of ganctl
    pattern = re.compile(r"torch\.load\(|\bimport pickle\b|pickle\.loads?\(|from pickle ")
    offenders = {p.relative_to(package).as_posix() for p in package.rglob("*.py")
                 for line in p.read_text().splitlines() if pattern.search(line)}
    assert offenders == {"importers/unpickle.py"}


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
     "checkpoint tensor G_ema.fc.weight is I32, the model needs F32"),
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


# --- dtypes: a same-size swap (the bytes kept, the header's dtype changed, the checksum redone) -----

def swapped(name: str, dtype: torch.dtype):
    """A change for `rewrite`: tensor `name`'s bytes read as `dtype` (of the same size)."""
    return lambda t, m: t.update({name: t[name].view(dtype)})


def assert_refused_unchanged(result, ckpt: Path, before: bytes, *fragments: str) -> None:
    assert_one_line_error(result, 1, *fragments)
    assert "unexpected" not in result.stderr and ckpt.read_bytes() == before


G_EMA_AS_I32 = "checkpoint tensor G_ema.fc.weight is I32, the model needs F32"


@pytest.mark.parametrize("command", [
    ["inspect", "CKPT"], ["inspect", "CKPT", "--no-verify"], ["sample", "x.png", "--ckpt", "CKPT"],
    ["export", "CKPT", "g.pt"], ["eval", "CKPT"], ["resume", "CKPT", "--steps", "6"]])
def test_a_dtype_swapped_network_tensor_is_refused_by_every_command(trained_run, command):
    ckpt = trained_run / "checkpoints" / "step-000000004.safetensors"
    rewrite(ckpt, ckpt, swapped("G_ema.fc.weight", torch.int32))
    before = ckpt.read_bytes()
    result = invoke(*[ckpt if part == "CKPT" else part for part in command])
    assert_refused_unchanged(result, ckpt, before, G_EMA_AS_I32)
    assert not Path("x.png").exists() and not Path("g.pt").exists()


def test_init_from_a_dtype_swapped_checkpoint_is_refused(trained_run, workdir):
    ckpt = trained_run / "checkpoints" / "step-000000004.safetensors"
    rewrite(ckpt, ckpt, swapped("G.fc.weight", torch.int32))
    before = ckpt.read_bytes()
    result = invoke("train", *TINY, "--init-from", ckpt, "--out", "ft")
    assert_refused_unchanged(result, ckpt, before, f"{ckpt}: checkpoint tensor G.fc.weight is I32, "
                                                   "the model needs F32; it cannot be used")
    assert not Path("ft").exists()  # refused from the header, before the data or a run dir


@pytest.mark.parametrize("change, message", [
    (swapped("rng.torch", torch.int8), "checkpoint tensor rng.torch is I8, resume needs U8"),
    (swapped("state.step", torch.float64), "checkpoint tensor state.step is F64, resume needs I64"),
    (swapped("opt_G.lr.0", torch.int64), "checkpoint tensor opt_G.lr.0 is I64, resume needs F64"),
    (swapped("opt_D.state.0.exp_avg", torch.int32),
     "checkpoint tensor opt_D.state.0.exp_avg is I32, the model needs F32"),
    (swapped("opt_G.state.1.step", torch.int32),
     "checkpoint tensor opt_G.state.1.step is I32, resume needs F32"),
    (lambda t, m: t.update({"opt_G.state.0.exp_avg": t["opt_G.state.0.exp_avg"].flatten()[:5]}),
     "checkpoint tensor opt_G.state.0.exp_avg is (5,), its parameter is"),
    (lambda t, m: t.update({"opt_G.state.x.exp_avg": t.pop("opt_G.state.0.exp_avg")}),
     "checkpoint tensor opt_G.state.x.exp_avg is not the state of one of opt_G's"),
    (lambda t, m: t.update({"opt_D.state.999.exp_avg": t.pop("opt_D.state.0.exp_avg")}),
     "checkpoint tensor opt_D.state.999.exp_avg is not the state of one of opt_D's"),
])
def test_resume_refuses_training_state_of_another_dtype(trained_run, change, message):
    ckpt = trained_run / "checkpoints" / "step-000000004.safetensors"
    rewrite(ckpt, ckpt, change)
    before = ckpt.read_bytes()
    assert_refused_unchanged(invoke("resume", ckpt, "--steps", "6"), ckpt, before, message,
                             "the file is damaged: use an earlier checkpoint")


# --- hostile headers: odd but valid JSON ------------------------------------------------------------

def header(metadata: dict[str, str] | None = None, entries: str = "", repeated: str = "") -> str:
    """Header text: a ganctl checkpoint's metadata changed by `metadata` (key -> JSON value as
    written) and with the `repeated` member after them, and one tensor entry G.w unless
    `entries` (JSON members as written: a repeated key stays, as it does in the file)."""
    values = {"ganctl.schema": '"4"', "ganctl.step": '"1"', "ganctl.config": '"{}"', **(metadata or {})}
    members = ", ".join([f'"{k}": {v}' for k, v in values.items()] + ([repeated] if repeated else []))
    return '{"__metadata__": {' + members + "}, " + (entries or entry()) + "}"


def entry(name: str = '"G.w"', dtype: str = '"F32"', shape: str = "[1]", offsets: str = "[0, 4]",
          more: str = "") -> str:
    return (f'{name}: {{"dtype": {dtype}, "shape": {shape}, "data_offsets": {offsets}'
            + (f", {more}" if more else "") + "}")


def crafted(path: Path, text: str, data: bytes = b"\0" * 4) -> Path:
    """A file with this header text and data section."""
    raw = text.encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


CORRUPTED = "corrupted header (entry 'G.w')"


@pytest.mark.parametrize("text, message", [
    (header({"ganctl.step": "1"}),
     "has damaged ganctl metadata (ganctl.step is a number, not a string); use an earlier checkpoint"),
    (header({"ganctl.schema": "4"}), "(ganctl.schema is a number, not a string)"),
    (header({"ganctl.version": '["0.1"]'}), "(ganctl.version is a list, not a string)"),
    (header({"ganctl.created": "null"}), "(ganctl.created is null, not a string)"),
    (header({"ganctl.metrics": '{"loss": 1}'}), "(ganctl.metrics is an object, not a string)"),
    (header({"ganctl.device": "true"}), "(ganctl.device is true or false, not a string)"),
    (header({"ganctl.step": '"-1"'}), "(ganctl.step is '-1', not a whole number)"),
    (header({"ganctl.step": '"4\\n"'}), "(ganctl.step is '4\\n', not a whole number)"),
    (header({"ganctl.config": '"[]"'}), "(ganctl.config is not a JSON table)"),
    (header({"ganctl.version": '"\\ud800"'}), "(ganctl.version is not UTF-8 text)"),
    (header(repeated='"ganctl.step": "2"'), "corrupted header (key ganctl.step is in it twice)"),
    (header(entries=f"{entry()}, {entry()}"), "corrupted header (key G.w is in it twice)"),
    (header(entries='"G.w": ["F32", [1], [0, 4]]'), CORRUPTED),
    (header(entries=entry(shape="[true]")), CORRUPTED),
    (header(entries=entry(offsets="[0.0, 4.0]")), CORRUPTED),
    (header(entries=entry(dtype='["F32"]')), CORRUPTED),
    (header(entries=entry(more='"x": 1')), CORRUPTED),
    (header(entries=entry(name='"G.w\\n\\u001b[2J"')), "corrupted header (entry 'G.w\\n\\x1b[2J')"),
    (header(entries=entry(name='"G.\\udc80"')), "corrupted header (entry 'G.\\udc80')"),
    (header(entries=entry(name='""')), "corrupted header (entry '')"),
])
def test_odd_but_valid_json_headers_are_refused_in_one_line(workdir, text, message):
    bad = crafted(workdir / "bad.safetensors", text)
    for command in (["inspect", bad], ["inspect", bad, "--no-verify"], ["sample", "x.png", "--ckpt", bad],
                    ["resume", bad, "--steps", "6"]):
        result = invoke(*command)
        assert_one_line_error(result, 1, str(bad), message)
        assert "unexpected" not in result.stderr
    with pytest.raises(CheckpointError, match=re.escape(message)):
        checkpoint.read_header(bad)


def test_a_fid_that_is_not_a_number_is_none(tmp_path):
    path = tmp_path / "c.safetensors"
    for value, fid in (("true", None), ('"3"', None), ("2", 2.0), ("1.5", 1.5)):
        checkpoint.save(path, {"G.w": torch.ones(1)}, CONFIG.to_json(), 1,
                        {"ganctl.eval": f'{{"fid": {value}}}'})
        assert checkpoint.read_header(path).fid == fid


# --- forged files with a valid checksum: every value in its range before anything is written ------

def forged(path: Path, change) -> None:
    """`path` with its header (a dict, metadata under __metadata__) changed in place by `change`,
    the checksum redone as checkpoint.save does it: for what `rewrite` cannot save (a shape torch
    cannot make)."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    head, data = json.loads(raw[8:8 + n]), raw[8 + n:]
    change(head, len(data))
    head["__metadata__"]["ganctl.checksum"] = checkpoint.write._checksum(data, head["__metadata__"])
    text = json.dumps(head, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


def files_of(run_dir: Path) -> dict[str, bytes]:
    """Every file of a run and its bytes: what a refused command must leave as it was."""
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


def assert_refused_leaving_the_run(result, run_dir: Path, before: dict[str, bytes], *fragments) -> None:
    assert_one_line_error(result, 1, *fragments, "use an earlier checkpoint")
    assert "unexpected" not in result.stderr
    assert files_of(run_dir) == before  # metrics.jsonl neither trimmed nor written to


@pytest.mark.parametrize("shape, message", [
    ([2**62, 2**62, 0], "tensor zzz.zero declares a shape of more than 2**50 bytes"),
    ([2**49, 0], "tensor zzz.zero declares a shape of more than 2**50 bytes"),  # F32: 2**51 bytes
    ([1] * 8 + [0], "tensor zzz.zero declares 9 dimensions"),
])
def test_an_empty_tensor_of_an_impossible_shape_is_refused_by_every_command(trained_run, shape,
                                                                            message):
    ckpt = trained_run / "checkpoints" / "step-000000002.safetensors"
    forged(ckpt, lambda head, end: head.update(
        {"zzz.zero": {"dtype": "F32", "shape": shape, "data_offsets": [end, end]}}))
    before = files_of(trained_run)
    for command in (["inspect", ckpt], ["inspect", ckpt, "--no-verify"], ["sample", "x.png", "--ckpt", ckpt],
                    ["export", ckpt, "g.pt"], ["resume", ckpt, "--steps", "6"]):
        result = invoke(*command)
        assert_refused_leaving_the_run(result, trained_run, before, f"{ckpt} has a corrupted header",
                                       message)
    assert not Path("x.png").exists() and not Path("g.pt").exists()


def nan_in(name: str, value: float = float("nan"), where: slice = slice(None)):
    """A change for `rewrite`: tensor `name` with `value` written over part of it."""
    def change(t, m):
        t[name] = t[name].clone()
        t[name].view(-1)[where] = value
    return change


def set_to(name: str, value) -> object:
    return lambda t, m: t.update({name: torch.tensor(value, dtype=t[name].dtype)})


def added(name: str, tensor: torch.Tensor) -> object:
    return lambda t, m: t.update({name: tensor})


STATE = "the file is damaged: use an earlier checkpoint"


@pytest.mark.parametrize("change, message", [
    (set_to("state.step", -100), "checkpoint tensor state.step is -100: a step must be from 0 to 6"),
    (set_to("state.step", 2**62), "checkpoint tensor state.step is 4611686018427387904: a step must"),
    (set_to("state.step", 3), "checkpoint tensor state.step is 3, its header's step is 2"),
    (set_to("state.data_index", -8), "checkpoint tensor state.data_index is -8: 2 steps reach "
                                     "positions 0 to 16 in an epoch"),
    (set_to("state.data_index", 2**40), "state.data_index is 1099511627776: 2 steps reach"),
    (set_to("state.data_epoch", -1), "tensor state.data_epoch is -1: 2 steps reach epochs 0 to 2;"),
    (set_to("state.data_epoch", 2**62), "state.data_epoch is 4611686018427387904"),
    (set_to("opt_G.lr.0", 0.0), "checkpoint tensor opt_G.lr.0 is 0.0: a learning rate must be a positive"),
    (set_to("opt_D.lr.0", -2e-4), "checkpoint tensor opt_D.lr.0 is -0.0002: a learning rate"),
    (set_to("opt_G.lr.0", float("nan")), "checkpoint tensor opt_G.lr.0 is nan: a learning rate"),
    (set_to("opt_D.lr.0", float("inf")), "checkpoint tensor opt_D.lr.0 is inf: a learning rate"),
    (set_to("opt_G.state.1.step", -1.0), "opt_G.state.1.step is -1.0: Adam's step must be a whole number"),
    (set_to("opt_G.state.1.step", float("inf")), "opt_G.state.1.step is inf: Adam's step"),
    (set_to("opt_D.state.0.step", 1.5), "opt_D.state.0.step is 1.5: Adam's step"),
    (nan_in("opt_G.state.0.exp_avg", float("inf"), slice(3, 4)),
     "opt_G holds NaN or inf optimizer state (opt_G.state.0.exp_avg): the run diverged or the file "
     "is damaged"),
    (nan_in("opt_D.state.7.exp_avg_sq", -1.0, slice(0, 1)),
     "checkpoint tensor opt_D.state.7.exp_avg_sq holds negative numbers, where Adam keeps means of "
     "squares"),
    (nan_in("G.fc.weight"), "G holds NaN or inf weights (G.fc.weight): the run diverged or the file "
                            "is damaged"),
    (nan_in("D.fc.weight", float("-inf"), slice(5, 6)), "D holds NaN or inf weights (D.fc.weight)"),
    (nan_in("D.features.3.running_var"), "D holds NaN or inf weights (D.features.3.running_var)"),
    (nan_in("G_ema.fc.weight"), "G_ema holds NaN or inf weights (G_ema.fc.weight)"),
    (added("zzz.extra", torch.zeros(1)), "checkpoint tensor zzz.extra is no part of a ganctl training state"),
    (added("loss.p", torch.zeros(())), "checkpoint tensor loss.p is no part of a ganctl training state"),
    (added("state.drawn", torch.tensor(9)), "tensor state.drawn is no part of a ganctl training state"),
    (added("opt_G.lr.7", torch.tensor(1e-3, dtype=torch.float64)),
     "checkpoint tensor opt_G.lr.7 is not part of opt_G's state"),
    (added("opt_G.state.0.momentum", torch.zeros(512, 100)),
     "checkpoint tensor opt_G.state.0.momentum is not state that Adam keeps"),
    (added("opt_D.state." + "9" * 5000 + ".step", torch.tensor(1.0)),
     "is not the state of one of opt_D's 8 parameters"),
    (added("amp.G.scale", torch.tensor(0.0, dtype=torch.float64)),
     "checkpoint tensor amp.G.scale is 0.0: a loss scale must be a positive number"),
    (added("amp.D.growth_tracker", torch.tensor(-1)),
     "checkpoint tensor amp.D.growth_tracker is -1: a count must be a whole number from 0 up"),
])
def test_resume_refuses_a_state_out_of_its_range_before_writing_anything(trained_run, change, message):
    ckpt = trained_run / "checkpoints" / "step-000000002.safetensors"  # metrics.jsonl goes on to 4
    rewrite(ckpt, ckpt, change)
    before = files_of(trained_run)
    assert_refused_leaving_the_run(invoke("resume", ckpt, "--steps", "6"), trained_run, before,
                                   f"{ckpt}: ", message)


@pytest.mark.parametrize("command, name", [
    (["sample", "x.png", "--ckpt", "CKPT"], "G_ema"),
    (["sample", "x.png", "--ckpt", "CKPT", "--no-ema"], "G"),
    (["export", "CKPT", "g.pt"], "G_ema"), (["export", "CKPT", "g.pt", "--no-ema"], "G"),
    (["eval", "CKPT"], "G_ema")])
def test_a_generator_of_nan_or_inf_weights_is_refused_by_the_commands_that_run_it(trained_run, command,
                                                                                 name):
    ckpt = trained_run / "checkpoints" / "step-000000004.safetensors"
    rewrite(ckpt, ckpt, lambda t, m: [nan_in(f"{g}.fc.weight", v, slice(1, 2))(t, m)
                                      for g, v in (("G_ema", float("nan")), ("G", float("inf")))])
    before = files_of(trained_run)
    result = invoke(*[ckpt if part == "CKPT" else part for part in command])
    assert_refused_leaving_the_run(
        result, trained_run, before, f"error: {ckpt}: {name} holds NaN or inf weights ({name}.fc.weight): "
        "the run diverged or the file is damaged; use an earlier checkpoint")
    assert not Path("x.png").exists() and not Path("g.pt").exists()


def test_the_api_refuses_a_generator_of_nan_weights_with_the_clis_message(trained_run):
    import ganctl

    ckpt = trained_run / "checkpoints" / "step-000000004.safetensors"
    rewrite(ckpt, ckpt, nan_in("G_ema.fc.weight"))
    with pytest.raises(CheckpointError, match=re.escape(f"{ckpt}: G_ema holds NaN or inf weights")):
        ganctl.load(ckpt)


def test_a_huge_process_count_is_read_as_one_and_resume_goes_on(trained_run):
    ckpt = trained_run / "checkpoints" / "step-000000004.safetensors"
    rewrite(ckpt, ckpt, lambda t, m: m.update({"ganctl.world_size": "9" * 5000}))
    result = invoke("inspect", ckpt, "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["processes"] == 1, result.output
    result = invoke("resume", ckpt, "--steps", "5")
    assert result.exit_code == 0 and "unexpected" not in result.output, result.output
    assert "trained on" not in result.output  # one process, as this one


@pytest.mark.parametrize("text, processes", [("4", 4), ("0", 1), ("-2", 1), ("٣", 1), ("9" * 9, 10**9 - 1),
                                             ("1" + "0" * 9, 1), ("9" * 5000, 1), ("", 1)])
def test_trained_processes_reads_a_small_whole_number_else_one(tmp_path, text, processes):
    path = tmp_path / "c.safetensors"
    checkpoint.save(path, {"G.w": torch.ones(1)}, CONFIG.to_json(), 1, {"ganctl.world_size": text})
    assert info.trained_processes(checkpoint.read_header(path)) == processes


# --- kills and full disks while saving ------------------------------------------------------------

def test_kill_9_during_a_checkpoint_write_keeps_the_previous_one(workdir):
    proc = start("train", *MEDIUM, "--steps", "100000", "--ckpt-every", "2", "--out", "r",
                 cwd=workdir, slow_write=1)
    ckpt_dir = workdir / "r" / "checkpoints"
    deadline = time.time() + 120
    while time.time() < deadline:  # the step-2 file is complete and step 4 is being written
        if (ckpt_dir / "latest").exists() and list(ckpt_dir.glob(".step-000000004*.tmp-*")):
            break
        time.sleep(0.02)
    time.sleep(random.Random(9).uniform(0.05, 0.5))
    proc.kill()
    proc.communicate(timeout=60)
    assert (ckpt_dir / "latest").read_text().strip() == "step-000000002.safetensors"
    assert valid_steps(workdir / "r") == [2]
    assert list(ckpt_dir.glob(".*.tmp-*"))  # the half-written file, never renamed into place
    assert invoke("sample", "-n", "4", "s.png", "--ckpt", "r").exit_code == 0
    result = invoke("resume", "r", "--steps", "3", "--ckpt-every", "1000")
    assert result.exit_code == 0, result.output
    assert valid_steps(workdir / "r") == [2, 3] and not list(ckpt_dir.glob(".*.tmp-*"))


def test_a_full_disk_while_saving_keeps_the_last_checkpoint(workdir, monkeypatch):
    from ganctl import fsutil
    real_fsync = os.fsync

    def fsync(fd):  # the disk is full when the second checkpoint is written
        if "step-000000004.safetensors" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(28, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(fsutil.os, "fsync", fsync)
    result = invoke("train", *TINY, "--out", "r")
    assert result.exit_code == 1
    assert "cannot write checkpoint" in result.stderr and "No space left on device" in result.stderr
    ckpt_dir = workdir / "r" / "checkpoints"
    assert (ckpt_dir / "latest").read_text().strip() == "step-000000002.safetensors"
    assert valid_steps(workdir / "r") == [2] and not list(ckpt_dir.glob(".*tmp*"))


# --- metadata of every JSON type ------------------------------------------------------------------

JSON_VALUES = [None, [], {}, "64", 1e308, True, -1, [1, 2], {"a": 1}, 2**70]


@pytest.mark.parametrize("value", JSON_VALUES, ids=repr)
def test_checkpoint_config_values_of_any_json_type(trained_run, workdir, value):
    ckpt = trained_run / "checkpoints" / "step-000000004.safetensors"

    def change(tensors, meta):
        config = json.loads(meta["ganctl.config"])
        config["g_width"] = value
        meta["ganctl.config"] = json.dumps(config)

    rewrite(ckpt, workdir / "forged.safetensors", change)
    for command in (["inspect", "forged.safetensors"], ["sample", "o.png", "--ckpt", "forged.safetensors"],
                    ["resume", "forged.safetensors"]):
        assert_clean(invoke(*command))


@pytest.mark.parametrize("value", JSON_VALUES + ["{", '"\\ud800"', "[" * 100000], ids=lambda v: repr(v)[:20])
def test_checkpoint_metadata_fields_of_any_json_type(trained_run, workdir, value):
    ckpt = trained_run / "checkpoints" / "step-000000004.safetensors"

    def change(tensors, meta):
        meta["ganctl.config"] = value if isinstance(value, str) else json.dumps(value)

    rewrite(ckpt, workdir / "forged.safetensors", change)
    assert_clean(invoke("sample", "o.png", "--ckpt", "forged.safetensors"))
    result = invoke("inspect", "forged.safetensors")  # {} is a config: all defaults
    assert result.exit_code in (0, 1) and "unexpected" not in result.output
    assert "Traceback" not in result.output


# --- headers against their bytes ------------------------------------------------------------------

def _in_bounds_giant(header, data):
    """A config of widths 3000 (within the bounds) with every tensor's shape scaled to match,
    the offsets left alone, and the checksum recomputed: a 1 MB file that claims gigabytes."""
    from ganctl.config import Config
    from ganctl.models import build_models
    meta = header["__metadata__"]
    config = json.loads(meta["ganctl.config"])
    config.update(g_width=3000, d_width=3000)
    meta["ganctl.config"] = json.dumps(config)
    import torch
    with torch.device("meta"):
        G, D = build_models(Config.from_dict(config))
    for prefix, net in (("G", G), ("D", D), ("G_ema", G)):
        for k, v in net.state_dict().items():
            header[f"{prefix}.{k}"]["shape"] = list(v.shape)
    _checksum_again(header, data)


def _shared_span(header, data):
    names = sorted(k for k in header if k != "__metadata__")
    header[names[1]]["data_offsets"] = header[names[0]]["data_offsets"]


def _dtype_changed(header, data):
    name = next(k for k, v in header.items() if k != "__metadata__" and v["dtype"] == "F32")
    header[name]["dtype"] = "F16"


def _gap(header, data):
    name = min((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])
    start, stop = header[name]["data_offsets"]
    header[name]["data_offsets"] = [start + 8, stop + 8]


def _trailing(header, data):
    _checksum_again(header, data + b"\0" * 8)
    return data + b"\0" * 8


@pytest.mark.parametrize("edit, message", [
    (_in_bounds_giant, "declares F32"), (_shared_span, "is corrupted"),
    (_dtype_changed, "declares F16"), (_gap, "gaps"), (_trailing, "8 bytes past its data"),
])
def test_headers_that_disagree_with_their_bytes_are_refused_before_anything_is_built(
        trained_run, workdir, edit, message):
    ckpt = trained_run / "checkpoints" / "step-000000004.safetensors"
    _forge(ckpt, workdir / "f.safetensors", edit)
    for command in (["inspect", "f.safetensors"], ["inspect", "f.safetensors", "--no-verify"],
                    ["sample", "o.png", "--ckpt", "f.safetensors"], ["resume", "f.safetensors"],
                    ["eval", "f.safetensors", "--num", "2"]):
        result = invoke(*command)
        assert_one_line_error(result, 1, message)


@pytest.mark.parametrize("changes, message", [
    ({"arch": "resnet"}, "does not match its config's model"),
    ({"z_dim": 50}, "the config's model needs"),
    ({"conditional": True}, "does not match its config's model"),
    ({"resolution": 64}, "does not match its config's model"),
    ({"arch": "biggan"}, "unknown arch 'biggan'"), ({"loss": "foo"}, "unknown loss 'foo'"),
    ({"augment": "diffaug:foo"}, "unknown policy 'foo'"),
    ({"classes": [str(i) for i in range(200_000)]}, "at most 100000 class names"),
])
def test_a_config_edited_out_of_step_with_its_tensors_is_refused_by_every_command(
        trained_run, workdir, changes, message):
    run = workdir / "run"
    shutil.copytree(trained_run, run)
    ckpt = run / "checkpoints" / "step-000000004.safetensors"
    _forge(ckpt, ckpt, _config_edit(**changes))
    for command in (["inspect", ckpt], ["sample", "o.png", "--ckpt", ckpt], ["resume", ckpt]):
        result = invoke(*command)
        assert_one_line_error(result, 1, "step-000000004.safetensors", message)
    assert not (workdir / "o.png").exists()


def test_a_checkpoint_without_a_checksum_is_not_trusted(trained_run, workdir):
    ckpt = trained_run / "checkpoints" / "step-000000004.safetensors"

    def drop(header, data):
        del header["__metadata__"]["ganctl.checksum"]
        header["__metadata__"]["ganctl.schema"] = "1"

    _forge(ckpt, workdir / "f.safetensors", drop)
    for command in (["inspect", "f.safetensors"], ["sample", "o.png", "--ckpt", "f.safetensors"],
                    ["resume", "f.safetensors"]):
        assert_one_line_error(invoke(*command), 1, "has no checksum", "--no-verify")
    assert invoke("inspect", "f.safetensors", "--no-verify").exit_code == 0


def test_a_huge_file_is_refused_by_its_header_not_read(trained_run):
    ckpt = trained_run / "checkpoints" / "step-000000009.safetensors"
    with open(ckpt, "wb") as f:
        f.write((trained_run / "checkpoints" / "step-000000004.safetensors").read_bytes())
        f.truncate(10 << 30)  # sparse: 10 GB of holes after a valid checkpoint's bytes
    result = invoke("inspect", ckpt)
    assert_one_line_error(result, 1, "bytes past its data")
    result = invoke("sample", "o.png", "--ckpt", trained_run, "--json")  # falls back to step 4
    assert result.exit_code == 0 and json.loads(result.stdout)["step"] == 4


# --- optimizer state ------------------------------------------------------------------------------

def test_loaded_optimizer_moments_take_their_parameters_layout():
    state = init_state(tiny_config(), torch.device("cpu"), IMAGES)
    train_step(state, state.loss.phases())
    saved = snapshot(state)
    other = init_state(tiny_config(), torch.device("cpu"), IMAGES)
    other.D.to(memory_format=torch.channels_last)  # as on a GPU
    load_state(other, saved)
    for p in other.D.parameters():
        for value in other.opt_D.state[p].values():
            if value.shape == p.shape:
                assert value.stride() == p.stride()
    train_step(other, other.loss.phases())  # the fused update takes them
