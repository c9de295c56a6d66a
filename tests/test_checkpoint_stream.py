"""Streamed verification: a checkpoint's checksum is computed in blocks from one open descriptor,
and only the tensors a command needs are read from that same descriptor, so sampling a
checkpoint with a large D reads and holds G_ema's bytes, not the file's."""

import dataclasses
import hashlib
import json
import os
import struct
import time
import tracemalloc
from pathlib import Path

import pytest
import torch
from helpers import assert_one_line_error, damage, invoke
from safetensors.torch import load_file

from ganctl import __version__, checkpoint
from ganctl.config import Config
from ganctl.errors import CheckpointError
from ganctl.models import build_generator, build_models
from ganctl.sample import load_generator

# d_width 560 gives dcgan's D about 200 MB of weights; G (g_width 8) is about 250 kB
BIG = Config(batch_size=8, g_width=8, d_width=560, device="cpu")
MiB = 1 << 20

pytestmark = pytest.mark.filterwarnings("error::ResourceWarning")


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A checkpoint of G and G_ema (real weights, not the same) and a 200 MB D of zeros, a hole
    in the file (nothing written: its values do not matter); and G_ema's state dict."""
    path = tmp_path_factory.mktemp("big") / "big.safetensors"
    G, G_ema = (build_generator(BIG) for _ in range(2))
    with torch.device("meta"):
        _, D = build_models(BIG)
    tensors = {**checkpoint.module_tensors(G, "G"), **checkpoint.module_tensors(G_ema, "G_ema")}
    sparse_checkpoint(path, tensors, checkpoint.module_tensors(D, "D"), BIG)
    return path, G_ema.state_dict()


def sparse_checkpoint(path: Path, tensors: dict[str, torch.Tensor], zeros: dict[str, torch.Tensor],
                      config: Config) -> None:
    """A checkpoint laid out and checksummed as checkpoint.save does it (written here on its own,
    which also pins the format), with the tensors of `zeros` (meta tensors: their shapes and
    dtypes) last, as zeros left to a hole at the end of the file."""
    entries, data, offset = {}, [], 0
    for name, tensor in {**tensors, **zeros}.items():
        size = tensor.numel() * tensor.element_size()
        entries[name] = {"dtype": checkpoint.dtype_name(tensor.dtype), "shape": list(tensor.shape),
                         "data_offsets": [offset, offset + size]}
        if name in tensors:
            data.append(tensor.detach().reshape(-1).view(torch.uint8).numpy().tobytes())
        offset += size
    written = b"".join(data)
    metadata = {"ganctl.version": __version__, "ganctl.schema": str(checkpoint.SCHEMA),
                "ganctl.config": config.to_json(), "ganctl.step": "1"}
    digest = hashlib.sha256(written)
    zero = memoryview(bytes(checkpoint.BLOCK_BYTES))
    for start in range(len(written), offset, len(zero)):
        digest.update(zero[:min(len(zero), offset - start)])
    digest.update(json.dumps(metadata, sort_keys=True).encode())
    metadata["ganctl.checksum"] = "sha256:" + digest.hexdigest()
    header = json.dumps({"__metadata__": metadata, **entries}).encode()
    header += b" " * (-len(header) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header + written)
        f.truncate(8 + len(header) + offset)


def nbytes(header: checkpoint.Header, prefix: str) -> int:
    return sum(stop - start for name, info in header.tensors.items() if name.startswith(prefix)
               for start, stop in [info["data_offsets"]])


@pytest.fixture
def bytes_read(monkeypatch) -> list[int]:
    """The sizes of every read of a checkpoint's data (the checksum's blocks and the tensors)."""
    reads: list[int] = []
    real = checkpoint.read._read_at

    def counted(fd, view, offset):
        n = real(fd, view, offset)
        reads.append(n)
        return n

    monkeypatch.setattr(checkpoint.read, "_read_at", counted)
    return reads


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_sample_reads_the_file_once_for_the_checksum_and_then_only_g_ema(big, workdir, bytes_read):
    path, _ = big
    header = checkpoint.read_header(path)
    data, g_ema = header.file_size - header.data_start, nbytes(header, "G_ema.")
    assert data > 190 * MiB and g_ema < MiB

    result = invoke("sample", "grid.png", "--ckpt", path, "-n", "4")
    assert result.exit_code == 0, result.output
    assert sum(bytes_read) == data + g_ema  # the stream once, then G_ema's bytes: not D's
    assert max(bytes_read) <= checkpoint.BLOCK_BYTES


def test_loading_g_ema_holds_about_its_bytes_not_the_files(big):
    path, g_ema = big
    tracemalloc.start()
    try:
        with checkpoint.open_checkpoint(path) as header:
            loaded = load_generator(header, torch.device("cpu"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # the checksum's block buffer and G_ema's tensors; the file is 200 MB
    assert peak < checkpoint.BLOCK_BYTES + 4 * MiB, peak
    assert_same(loaded.G.state_dict(), g_ema)


# every dtype a safetensors file can hold, with 0-d and empty tensors: each must come back as the
# reference reader (safetensors itself) reads it, bit for bit
EVERY_DTYPE = {
    "bool": torch.tensor([True, False, True]),
    "u8": torch.arange(250, 256, dtype=torch.uint8),
    "i8": torch.tensor([-128, -1, 0, 127], dtype=torch.int8),
    "f8e4m3": torch.linspace(-2, 2, 5).to(torch.float8_e4m3fn),
    "f8e5m2": torch.linspace(-2, 2, 5).to(torch.float8_e5m2),
    "u16": torch.tensor([0, 1, 65535], dtype=torch.uint16),
    "i16": torch.tensor([-32768, 258, 32767], dtype=torch.int16),
    "f16": torch.tensor([1.5, -0.0, 65504.0], dtype=torch.float16),
    "bf16": torch.tensor([1.5, -3.0, 1e30], dtype=torch.bfloat16),
    "u32": torch.tensor([0, 2**32 - 1, 0x01020304], dtype=torch.uint32),
    "i32": torch.tensor([[-(2**31), 0x01020304], [7, 2**31 - 1]], dtype=torch.int32),
    "f32": torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(1)),
    "u64": torch.tensor([0, 2**64 - 1, 0x0102030405060708], dtype=torch.uint64),
    "i64": torch.tensor(-(2**63)),
    "f64": torch.tensor([1 / 3, float("inf"), float("nan")], dtype=torch.float64),
    "empty": torch.zeros(0, 3),
    "scalar": torch.tensor(2.5),
}


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape, name
        assert torch.equal(a[name].reshape(-1).view(torch.uint8), b[name].reshape(-1).view(torch.uint8)), name


def test_streamed_tensors_are_what_safetensors_reads(tmp_path):
    path = tmp_path / "c.safetensors"
    checkpoint.save(path, EVERY_DTYPE, Config().to_json(), 3)
    with checkpoint.open_checkpoint(path) as header:
        streamed = checkpoint.load_tensors(header)
        some = checkpoint.load_tensors(header, ("u", "f8"))
    assert_same(streamed, load_file(str(path)))
    assert_same(streamed, {k: v.contiguous() for k, v in EVERY_DTYPE.items()})
    assert sorted(some) == ["f8e4m3", "f8e5m2", "u16", "u32", "u64", "u8"]
    assert_same(checkpoint.load_tensors(path), streamed)  # unverified, from the path


def test_a_checkpoint_written_before_verifies_and_loads_as_safetensors_reads_it(trained_run):
    ckpt = trained_run / "checkpoints" / "step-000000004.safetensors"  # written by `ganctl train`
    with checkpoint.open_checkpoint(ckpt) as header:
        assert header.step == 4
        assert_same(checkpoint.load_tensors(header), load_file(str(ckpt)))


def test_descriptors_are_closed(tmp_path):
    path = tmp_path / "c.safetensors"
    checkpoint.save(path, {"G_ema.w": torch.arange(6.0), "D.w": torch.zeros(10_000)},
                    Config().to_json(), 1)
    before = open_descriptors()
    with checkpoint.open_checkpoint(path) as header:
        assert open_descriptors() == before + 1
        checkpoint.load_tensors(header, ("G_ema.",))
    assert open_descriptors() == before
    with pytest.raises(ValueError, match="closed before it was read"):
        checkpoint.load_tensors(header)

    header = checkpoint.open_checkpoint(path)  # dropped: its descriptor goes with it
    loaded = dataclasses.replace(header, blob=None)  # as sample and resume let it go
    del header
    assert open_descriptors() == before and loaded.blob is None

    damage(path, "corrupted")
    with pytest.raises(CheckpointError, match="does not match its checksum"):
        checkpoint.open_checkpoint(path)
    assert open_descriptors() == before


def test_a_checkpoint_pruned_or_replaced_after_verification_loads_what_was_verified(tmp_path):
    path, other = tmp_path / "c.safetensors", tmp_path / "other.safetensors"
    checkpoint.save(path, {"G_ema.w": torch.arange(6.0)}, Config().to_json(), 1)
    checkpoint.save(other, {"G_ema.w": -torch.arange(6.0)}, Config().to_json(), 2)
    with checkpoint.open_checkpoint(path) as header:
        os.replace(other, path)  # a trainer's atomic write over it
        assert torch.equal(checkpoint.load_tensors(header)["G_ema.w"], torch.arange(6.0))
    with checkpoint.open_checkpoint(path) as header:
        path.unlink()  # pruned (--keep)
        assert torch.equal(checkpoint.load_tensors(header)["G_ema.w"], -torch.arange(6.0))


def test_a_checkpoint_written_to_in_place_after_verification_is_refused(tmp_path):
    path = tmp_path / "c.safetensors"
    checkpoint.save(path, {"G_ema.w": torch.arange(6.0)}, Config().to_json(), 1)
    with checkpoint.open_checkpoint(path) as header:
        with open(path, "r+b") as f:
            f.seek(-4, os.SEEK_END)
            f.write(b"\xff\xff\xff\xff")
            f.write(b"more")
        with pytest.raises(CheckpointError, match="was written to while it was read; try again"):
            checkpoint.load_tensors(header)


def test_sample_of_a_checkpoint_written_to_while_verified_fails_in_one_line(tmp_path, workdir,
                                                                           monkeypatch):
    path = tmp_path / "c.safetensors"
    checkpoint.save(path, {"G_ema.w": torch.arange(6.0)}, Config().to_json(), 1)
    real = checkpoint.read._data_digest

    def appended(fd, start):
        with open(path, "ab") as f:
            f.write(b"late")
        return real(fd, start)

    monkeypatch.setattr(checkpoint.read, "_data_digest", appended)
    assert_one_line_error(invoke("sample", "x.png", "--ckpt", path), 1, "try again")


def test_a_write_in_place_whose_mtime_is_put_back_is_refused(tmp_path):
    path = tmp_path / "c.safetensors"
    checkpoint.save(path, {"G_ema.w": torch.arange(6.0)}, Config().to_json(), 1)
    time.sleep(0.05)  # past the file system's clock tick: the write's ctime is a later one
    with checkpoint.open_checkpoint(path) as header:
        st = os.stat(path)
        with open(path, "r+b") as f:  # the same size, other bytes
            f.seek(-4, os.SEEK_END)
            f.write(b"\xff\xff\xff\xff")
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # size and mtime as they were
        assert (os.stat(path).st_size, os.stat(path).st_mtime_ns) == (st.st_size, st.st_mtime_ns)
        with pytest.raises(CheckpointError, match="was written to while it was read; try again"):
            checkpoint.load_tensors(header)


def test_a_checkpoint_linked_or_pruned_after_verification_still_loads(tmp_path):
    path = tmp_path / "c.safetensors"
    checkpoint.save(path, {"G_ema.w": torch.arange(6.0)}, Config().to_json(), 1)
    time.sleep(0.05)
    with checkpoint.open_checkpoint(path) as header:
        os.link(path, tmp_path / "backup.safetensors")  # a hard link: ctime and link count change
        assert torch.equal(checkpoint.load_tensors(header)["G_ema.w"], torch.arange(6.0))
        time.sleep(0.05)
        path.unlink()
        (tmp_path / "backup.safetensors").unlink()  # its last name gone: the bytes stay ours
        assert torch.equal(checkpoint.load_tensors(header)["G_ema.w"], torch.arange(6.0))
