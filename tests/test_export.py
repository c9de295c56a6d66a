"""ganctl.export: TorchScript and ONNX files of a generator that give its images (dynamic batch,
class input for conditional models), checked before they are written, never half-written."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import ROOT, TINY, assert_one_line_error, invoke

from ganctl import __version__, checkpoint, export, fsutil, rundir
from ganctl.errors import ConfigError, GanctlError
from ganctl.sample import LoadedGenerator, labels_for_seeds, latents_from_seeds, load_generator, to_uint8

RUNS = {"dcgan": [], "resnet": ["--arch", "resnet"], "mlp": ["--arch", "mlp", "--resolution", "16"],
        "conditional": ["--conditional"],
        # the mapping network inside the file, the synthesis noise its fixed buffers
        "stylegan2": ["--arch", "stylegan2", "--z-dim", "8", "--channel-base", "256"]}
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")


def readme_blocks() -> list[str]:
    """The ```python blocks of README.md's "### export" section, as written there."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### export\n"):]
    section = section[:section.index("\n### ", 1)]
    return [block.split("```", 1)[0] for block in section.split("```python\n")[1:]]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One tiny trained run per kind, trained on first use."""
    root, made = tmp_path_factory.mktemp("export-runs"), {}

    class Runs(dict):
        def __missing__(self, kind: str) -> Path:
            out = root / kind
            result = invoke("train", *TINY, *RUNS[kind], "--out", out)
            assert result.exit_code == 0, result.output
            self[kind] = out
            return out

    return Runs(made)


def loaded_of(run_dir: Path, ema: bool = True) -> LoadedGenerator:
    ckpt = rundir.latest_in_run(run_dir)
    assert ckpt is not None
    return load_generator(checkpoint.open_checkpoint(ckpt), torch.device("cpu"), ema)


def reference(loaded: LoadedGenerator, n: int, start: int = 100) -> tuple[tuple, torch.Tensor]:
    """Inputs of seeds start..start+n-1 (not the ones the export checked) and G's images for them."""
    seeds = range(start, start + n)
    z, c = latents_from_seeds(seeds, loaded.config.z_dim), labels_for_seeds(seeds, loaded.config)
    with torch.no_grad():
        images = loaded.G(z, c)
    return ((z,) if c is None else (z, c)), images


@pytest.mark.parametrize("kind", list(RUNS))
def test_torchscript_gives_the_generators_images_at_any_batch_size(runs, kind, tmp_path):
    loaded = loaded_of(runs[kind])
    out = tmp_path / "G.pt"
    r = export.export_generator(loaded, "torchscript", out, batch=4)
    assert r["out"] == str(out) and r["format"] == "torchscript" and r["bytes"] == out.stat().st_size
    assert r["checked_batch_sizes"] == [4, 7, 1] and r["max_abs_diff"] <= export.TOLERANCE
    assert r["z_dim"] == loaded.config.z_dim and r["step"] == loaded.header.step == 4
    assert r["checkpoint"] == str(loaded.header.path)
    cond = kind == "conditional"
    assert list(r["inputs"]) == (["z", "c"] if cond else ["z"])
    assert r["classes"] == (list(loaded.config.classes) if cond else [])
    G = torch.jit.load(str(out))
    for n in (1, 3, 16):  # none of them the traced 4
        inputs, want = reference(loaded, n)
        with torch.no_grad():
            got = G(*inputs)
        res = loaded.config.resolution
        assert got.shape == (n, loaded.config.channels, res, res) and got.dtype == torch.float32
        assert (got - want).abs().max() <= 1e-4
    assert not list(tmp_path.glob(".*"))  # no temp file left beside it
    assert loaded.G.training is False  # the caller's module is left as it was


def test_conditional_export_takes_the_class(runs, tmp_path):
    loaded = loaded_of(runs["conditional"])
    export.export_generator(loaded, "torchscript", tmp_path / "G.pt")
    G = torch.jit.load(str(tmp_path / "G.pt"))
    z = latents_from_seeds([5, 5], loaded.config.z_dim)
    c = torch.tensor([1, 2])
    with torch.no_grad():
        images, want = G(z, c), loaded.G(z, c)
    # the tiny G's images are all near 0 (|x| ~ 1e-3), so the classes differ by little, but
    # by far more than the TorchScript file differs from G
    assert (images - want).abs().max() <= 1e-6
    assert (images[0] - images[1]).abs().max() > 1e-5  # same z, another class: another image
    with pytest.raises(Exception):  # noqa: B017 (the class is not optional)
        G(z)


@pytest.mark.parametrize("kind", list(RUNS))
def test_onnx_gives_the_generators_images_at_any_batch_size(runs, kind, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    loaded = loaded_of(runs[kind])
    out = tmp_path / "G.onnx"
    r = export.export_generator(loaded, "onnx", out)
    assert r["format"] == "onnx" and r["max_abs_diff"] <= export.TOLERANCE
    assert r["bytes"] == out.stat().st_size
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    names = ["z", "c"] if kind == "conditional" else ["z"]
    assert [i.name for i in session.get_inputs()] == names
    assert [o.name for o in session.get_outputs()] == ["images"]
    for n in (1, 5):
        inputs, want = reference(loaded, n)
        got = session.run(None, {k: x.numpy() for k, x in zip(names, inputs, strict=True)})[0]
        assert got.shape == tuple(want.shape) and got.dtype == np.float32
        assert np.abs(got - want.numpy()).max() <= 1e-4


def test_onnx_opset(runs, tmp_path):
    pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    out = tmp_path / "G.onnx"
    export.export_generator(loaded_of(runs["dcgan"]), "onnx", out, opset=17)
    assert onnx.load(str(out)).opset_import[0].version == 17
    with pytest.raises(ConfigError, match="for --format onnx only"):
        export.export_generator(loaded_of(runs["dcgan"]), "torchscript", tmp_path / "G.pt", opset=17)


def test_readme_snippets_run_as_written(runs, tmp_path, monkeypatch):
    """Each README block runs alone, in a fresh namespace (nothing given to it), on files ganctl
    exported from a 100-d model, and maps images to the pixels ganctl's own samples get."""
    loaded = loaded_of(runs["dcgan"])
    monkeypatch.chdir(tmp_path)
    blocks = readme_blocks()
    assert len(blocks) == 2 and "jit.load" in blocks[0] and "onnxruntime" in blocks[1]
    export.export_generator(loaded, "torchscript", Path("G.pt"))
    scope: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), scope)  # noqa: S102 - the README's own text
    assert tuple(scope["images"].shape) == (16, 3, 32, 32) and scope["pixels"].dtype == torch.uint8
    assert torch.equal(scope["pixels"], to_uint8(scope["images"].detach()).permute(0, 2, 3, 1))
    if sys.modules.get("onnxruntime") is None:
        pytest.importorskip("onnxruntime")
        pytest.importorskip("onnx")
    export.export_generator(loaded, "onnx", Path("G.onnx"))
    scope = {}
    exec(compile(blocks[1], "README.md", "exec"), scope)  # noqa: S102
    with torch.no_grad():
        want = loaded.G(torch.from_numpy(scope["z"]))
    assert np.abs(scope["images"] - want.numpy()).max() <= 1e-4
    pixels = scope["pixels"]
    assert pixels.shape == (16, 32, 32, 3) and pixels.dtype == np.uint8
    assert np.array_equal(pixels, to_uint8(torch.from_numpy(scope["images"])).permute(0, 2, 3, 1).numpy())


def test_export_is_float32_on_the_cpu_whatever_g_was(runs, tmp_path):
    """A generator in float64 (as one on another device) is copied to the CPU in float32 for the
    export; the caller's module keeps its precision."""
    loaded = loaded_of(runs["dcgan"])
    G64 = loaded.G.double()
    r = export.export_generator(LoadedGenerator(G64, loaded.config, loaded.header), "torchscript",
                                tmp_path / "G.pt")
    assert r["max_abs_diff"] <= export.TOLERANCE
    assert next(G64.parameters()).dtype == torch.float64
    z = latents_from_seeds(range(2), loaded.config.z_dim)
    assert torch.jit.load(str(tmp_path / "G.pt"))(z).dtype == torch.float32


def test_no_ema_exports_g(runs, tmp_path):
    loaded = loaded_of(runs["dcgan"], ema=False)
    export.export_generator(loaded, "torchscript", tmp_path / "G.pt")
    inputs, want = reference(loaded, 3)
    assert (torch.jit.load(str(tmp_path / "G.pt"))(*inputs) - want).abs().max() <= 1e-4


def test_missing_onnx_packages_is_one_line_with_the_install(runs, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx raises ImportError
    with pytest.raises(ConfigError) as e:
        export.export_generator(loaded_of(runs["dcgan"]), "onnx", tmp_path / "G.onnx")
    message = str(e.value)
    assert "pip install onnx onnxruntime" in message and "ganctl[onnx]" in message
    assert "\n" not in message and not (tmp_path / "G.onnx").exists()


def test_out_in_a_missing_folder_is_created(runs, tmp_path):
    out = tmp_path / "a" / "b" / "G.pt"
    export.export_generator(loaded_of(runs["dcgan"]), "torchscript", out)
    assert out.is_file()


def test_out_that_is_a_directory_is_an_error(runs, tmp_path):
    with pytest.raises(ConfigError, match="is a directory; give a file name") as e:
        export.export_generator(loaded_of(runs["dcgan"]), "torchscript", tmp_path)
    assert "\n" not in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_unknown_format_and_bad_batch(runs, tmp_path):
    loaded = loaded_of(runs["dcgan"])
    with pytest.raises(ConfigError, match="unknown export format 'onx'.*did you mean 'onnx'"):
        export.export_generator(loaded, "onx", tmp_path / "G")
    with pytest.raises(ConfigError, match="batch 0"):
        export.export_generator(loaded, "torchscript", tmp_path / "G", batch=0)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_a_failed_check_writes_nothing_and_keeps_the_old_file(runs, tmp_path, monkeypatch, fmt):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
        pytest.importorskip("onnx")
    out = tmp_path / "G.bin"
    export.export_generator(loaded_of(runs["dcgan"]), fmt, out)  # the old export, ganctl's own
    old = out.read_bytes()
    monkeypatch.setattr(export, "TOLERANCE", -1.0)  # no file can pass
    with pytest.raises(GanctlError, match="export check failed.*nothing was written") as e:
        export.export_generator(loaded_of(runs["dcgan"]), fmt, out)
    assert "\n" not in str(e.value)
    assert out.read_bytes() == old
    assert [p.name for p in tmp_path.iterdir()] == ["G.bin"]  # no temp file either


def test_a_wrong_file_fails_the_check(runs, tmp_path, monkeypatch):
    """A file that gives other images (here: a traced wrapper that adds 0.01) is refused."""

    class Off(export.Unconditional):
        def forward(self, z: torch.Tensor) -> torch.Tensor:
            return self.G(z) + 0.01

    real_trace = torch.jit.trace
    monkeypatch.setattr(torch.jit, "trace",
                        lambda module, example, **kw: real_trace(Off(module.G).eval(), example, **kw))
    with pytest.raises(GanctlError, match=r"differ from the generator's by 0\.01"):
        export.export_generator(loaded_of(runs["dcgan"]), "torchscript", tmp_path / "G.pt")
    assert list(tmp_path.iterdir()) == []


# --- OUT: only ganctl's own export is replaced ------------------------------------------------

def needs_onnx() -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")


def users_onnx_model(path: Path) -> None:
    """A valid ONNX model of the user's own (y = x + 1), made without ganctl: no mark."""
    onnx = pytest.importorskip("onnx")
    helper = onnx.helper
    one = helper.make_tensor("one", onnx.TensorProto.FLOAT, [1], [1.0])
    graph = helper.make_graph([helper.make_node("Add", ["x", "one"], ["y"])], "mine",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])], [one])
    model = helper.make_model(graph, producer_name="someone")
    helper.set_model_props(model, {"author": "me"})
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def assert_refused_and_kept(result, out: Path, before: bytes, label: str) -> None:
    assert_one_line_error(result, 1, f"{out.name} exists and is not {label} written by ganctl export",
                          "no ganctl mark", "move it away or choose another OUT")
    assert "unexpected" not in result.output
    assert out.read_bytes() == before
    assert not list(out.parent.glob(f".{out.name}.tmp-*"))


def test_a_users_torch_save_zip_at_out_is_refused_and_kept(runs, tmp_path):
    """torch.save writes a zip like TorchScript's: its first bytes prove nothing, the mark does."""
    out = tmp_path / "model.pt"
    torch.save({"weights": torch.arange(6.0)}, out)
    before = out.read_bytes()
    assert before.startswith(b"PK\x03\x04")
    assert_refused_and_kept(invoke("export", runs["dcgan"], out), out, before, "a TorchScript file")
    with pytest.raises(ConfigError, match="model.pt exists and is not a TorchScript file written by"):
        export.export_generator(loaded_of(runs["dcgan"]), "torchscript", out)  # the engine too
    assert out.read_bytes() == before


def test_a_refusal_with_json_is_one_json_document(runs, tmp_path):
    out = tmp_path / "model.pt"
    torch.save([1, 2, 3], out)
    before = out.read_bytes()
    result = invoke("export", runs["dcgan"], out, "--json")
    assert_refused_and_kept(result, out, before, "a TorchScript file")
    doc = json.loads(result.stdout)  # the whole of stdout: one document
    assert doc["exit_code"] == 1 and "exists and is not a TorchScript file written by" in doc["error"]


@pytest.mark.parametrize("content", [b"\x08" + bytes(range(256)) * 40,  # ONNX's first byte, then noise
                                     b"\x08\x07\x3a\xff\xff\xff\xff\x0f",  # a graph past the end
                                     b"\x08" + b"\xff" * 20,  # a varint that never ends
                                     b""])
def test_a_users_onnx_looking_file_is_refused(runs, tmp_path, content):
    out = tmp_path / "G.onnx"
    out.write_bytes(content)
    assert_refused_and_kept(invoke("export", runs["dcgan"], out), out, content, "an ONNX file")


def test_a_users_onnx_model_without_the_mark_is_refused(runs, tmp_path):
    out = tmp_path / "G.onnx"
    users_onnx_model(out)
    before = out.read_bytes()
    assert_refused_and_kept(invoke("export", runs["dcgan"], out), out, before, "an ONNX file")


@pytest.mark.parametrize("cut", ["truncated", "garbage"])
def test_a_broken_zip_at_out_is_refused_without_a_traceback(runs, tmp_path, cut):
    """Half of a real ganctl export (its zip directory gone) or a zip header then noise."""
    out = tmp_path / "G.pt"
    export.export_generator(loaded_of(runs["dcgan"]), "torchscript", out)
    whole = out.read_bytes()
    out.write_bytes(whole[:len(whole) // 2] if cut == "truncated" else b"PK\x03\x04" + b"\x00" * 500)
    before = out.read_bytes()
    assert_refused_and_kept(invoke("export", runs["dcgan"], out), out, before, "a TorchScript file")


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_ganctls_own_export_is_replaced(runs, tmp_path, fmt):
    """Re-running an export over its own output replaces it (a new file, renamed into place)."""
    if fmt == "onnx":
        needs_onnx()
    out = tmp_path / ("G.onnx" if fmt == "onnx" else "G.pt")
    assert invoke("export", runs["dcgan"], out).exit_code == 0
    mark = fsutil.read_mark(out, fmt)
    assert mark == {"ganctl": __version__, "kind": "generator", "format": fmt}
    inode = out.stat().st_ino
    result = invoke("export", runs["dcgan"], out)
    assert result.exit_code == 0, result.output
    assert out.stat().st_ino != inode and fsutil.is_ganctl_file(out, fmt, "generator")
    assert not fsutil.is_ganctl_file(out, fmt, "checkpoint")  # another kind's file is not this one
    other = "torchscript" if fmt == "onnx" else "onnx"
    assert not fsutil.is_ganctl_file(out, other, "generator")


def test_the_marked_files_still_load_and_check_without_ganctl(runs, tmp_path):
    """The mark changes nothing for a user: torch.jit.load alone loads the TorchScript file (and
    reads the mark as an extra file); the ONNX file passes onnx.checker and runs in onnxruntime."""
    loaded = loaded_of(runs["dcgan"])
    export.export_generator(loaded, "torchscript", tmp_path / "G.pt")
    extra = {fsutil.MARK_FILE: ""}
    G = torch.jit.load(str(tmp_path / "G.pt"), _extra_files=extra)
    assert json.loads(extra[fsutil.MARK_FILE])["kind"] == "generator"
    inputs, want = reference(loaded, 2)
    assert (G(*inputs) - want).abs().max() <= 1e-4
    needs_onnx()
    import onnx
    import onnxruntime

    export.export_generator(loaded, "onnx", tmp_path / "G.onnx")
    model = onnx.load(str(tmp_path / "G.onnx"))
    onnx.checker.check_model(model, full_check=True)
    assert {p.key: json.loads(p.value)["kind"] for p in model.metadata_props} == {"ganctl": "generator"}
    session = onnxruntime.InferenceSession(str(tmp_path / "G.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_modelmeta().custom_metadata_map["ganctl"].startswith("{")
    got = session.run(None, {"z": inputs[0].numpy()})[0]
    assert np.abs(got - want.numpy()).max() <= 1e-4


class Counting:
    """A file that counts the bytes read from it."""

    def __init__(self, f) -> None:
        self.f, self.bytes_read = f, 0

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.bytes_read += len(data)
        return data

    def seek(self, *args: int) -> int:
        return self.f.seek(*args)

    def tell(self) -> int:
        return self.f.tell()

    def fileno(self) -> int:
        return self.f.fileno()

    def __enter__(self) -> Counting:
        return self

    def __exit__(self, *exc: object) -> None:
        self.f.close()


@pytest.fixture
def opened(monkeypatch) -> list[Counting]:
    """The files fsutil opens to read a mark, counting what is read from them."""
    files: list[Counting] = []
    real = fsutil.open_regular

    def counting(path: Path) -> Counting:
        files.append(Counting(real(path)))
        return files[-1]

    monkeypatch.setattr(fsutil, "open_regular", counting)
    return files


def test_the_onnx_mark_is_found_past_a_2_gib_graph_in_a_few_reads(tmp_path, opened):
    """A sparse file: ir_version, a 2 GiB graph field, then the mark. Finding the mark under the
    read budget proves the graph was skipped, not read."""
    out = tmp_path / "big.onnx"
    size = 2 << 30
    key, value = b"ganctl", json.dumps({"ganctl": "0", "kind": "generator"}).encode()
    entry = b"\x0a" + bytes([len(key)]) + key + b"\x12" + bytes([len(value)]) + value
    with open(out, "wb") as f:
        f.write(b"\x08\x07" + b"\x3a" + varint(size))  # field 1 = 7; field 7, length 2 GiB
        f.seek(size, 1)
        f.write(b"\x72" + varint(len(entry)) + entry)  # field 14, length-delimited
    assert fsutil.is_ganctl_file(out, "onnx", "generator")
    assert [f.bytes_read for f in opened] == [8 + 2 + len(entry)]  # 8 before the graph, 2 + entry after


def test_the_read_budget_bounds_a_zip_that_holds_the_mark(runs, tmp_path, monkeypatch):
    """The mark of a real export is found within the budget; with a budget too small for its zip
    directory, the read stops and the file counts as unmarked."""
    out = tmp_path / "G.pt"
    export.export_generator(loaded_of(runs["dcgan"]), "torchscript", out)
    assert fsutil.is_ganctl_file(out, "torchscript", "generator")
    monkeypatch.setattr(fsutil, "MARK_READ_BUDGET", 100)
    assert not fsutil.is_ganctl_file(out, "torchscript", "generator")


def test_a_zip_whose_directory_claims_gigabytes_is_refused_unread(tmp_path, opened):
    """A zip's end record claiming a 1 GiB directory in a sparse 1 GiB file: refused within the
    read budget instead of reading the directory."""
    out = tmp_path / "bomb.pt"
    size = 1 << 30
    with open(out, "wb") as f:
        f.write(b"PK\x03\x04")  # a zip from its first byte, as ganctl's own are
        f.seek(size)
        # end of central directory: 65535 entries, a directory of `size` bytes at offset 0
        f.write(b"PK\x05\x06" + struct.pack("<HHHHIIH", 0, 0, 0xFFFF, 0xFFFF, size, 0, 0))
    assert fsutil.read_mark(out, "torchscript") is None
    assert fsutil.MARK_READ_BUDGET < opened[0].bytes_read <= fsutil.MARK_READ_BUDGET + 1  # stopped there


def test_a_zip_or_protobuf_holding_a_mark_is_not_therefore_a_model(tmp_path):
    """A mark counts inside a TorchScript archive (one folder with its data.pkl, constants.pkl,
    version and code/, the zip from the first byte) or an ONNX model (ir_version and a graph):
    a user's zip that happens to hold extra/ganctl.json, the same zip after a text of theirs, or a
    protobuf of nothing but the mark, are not ganctl's."""
    import zipfile

    mark = json.dumps({"ganctl": __version__, "kind": "generator", "format": "torchscript"})
    notes = tmp_path / "notes.pt"
    with zipfile.ZipFile(notes, "w") as z:
        z.writestr("docs/notes.txt", "my notes")
        z.writestr("docs/extra/ganctl.json", mark)
    prefixed = tmp_path / "prefixed.pt"
    prefixed.write_bytes(b"my text\n" * 250 + notes.read_bytes())
    assert fsutil.read_mark(notes, "torchscript") is None
    assert fsutil.read_mark(prefixed, "torchscript") is None
    key, value = b"ganctl", mark.encode()
    entry = b"\x0a" + bytes([len(key)]) + key + b"\x12" + bytes([len(value)]) + value
    only = tmp_path / "only.onnx"
    only.write_bytes(b"\x72" + varint(len(entry)) + entry)
    assert fsutil.read_mark(only, "onnx") is None


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)
