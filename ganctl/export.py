"""Export a generator to a file that runs without ganctl: TorchScript or ONNX.

The exported generator, whatever the architecture:
  inputs   z  (B, z_dim) float32, standard normal latents (ganctl draws one per seed:
              sample.latents_from_seeds)
           c  (B,) int64 class indices, 0 to K-1 (conditional models only; the export's
              "classes" lists their names in index order)
  output   images  (B, C, H, W) float32 in [-1, 1]  (uint8 pixels: (images + 1) * 127.5, rounded)
B is dynamic: the file takes any batch size from 1 up. The export runs on the CPU in float32
whatever device the generator was loaded on, and is checked before it is written: the file is
loaded back (torch.jit.load, or an onnxruntime session on the CPU) and its images compared with
the PyTorch generator's on fixed latents at several batch sizes. A file that differs by more than
TOLERANCE is never written; OUT is replaced atomically, so it holds the old file or the checked one.

Each file carries ganctl's mark (fsutil.mark_json, kind "generator"): in a TorchScript zip the
extra file extra/ganctl.json (torch.jit.load(path, _extra_files={"ganctl.json": ""}) reads it), in
an ONNX model the metadata_props entry "ganctl". An existing OUT is replaced only if it has the
mark: a user's own torch.save zip or ONNX model of the same name is never written over.
"""

from __future__ import annotations

import copy
import importlib.util
import io
import stat
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ganctl.errors import ConfigError, GanctlError, first_line, lookup
from ganctl.fsutil import MARK, MARK_FILE, atomic_write, is_ganctl_file, mark_json
from ganctl.sample import LoadedGenerator, labels_for_seeds, latents_from_seeds

TOLERANCE = 1e-4  # max |exported - PyTorch| over the images' [-1, 1] range
FORMATS = ("torchscript", "onnx")
KIND = "generator"  # the kind in the mark of the files export writes
LABELS = {"torchscript": "a TorchScript file", "onnx": "an ONNX file"}
ONNX_MISSING = ("ONNX export needs the onnx and onnxruntime packages: pip install onnx onnxruntime "
                "(ganctl's 'onnx' extra: pip install 'ganctl[onnx]'), or use --format torchscript")


class Unconditional(nn.Module):
    """G with the fixed signature images = forward(z) that the exported file keeps."""

    def __init__(self, G: nn.Module) -> None:
        super().__init__()
        self.G = G

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.G(z)  # (B, z_dim) -> (B, C, H, W)


class Conditional(nn.Module):
    """G with the fixed signature images = forward(z, c)."""

    def __init__(self, G: nn.Module) -> None:
        super().__init__()
        self.G = G

    def forward(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.G(z, c)  # (B, z_dim), (B,) int64 -> (B, C, H, W)


Inputs = tuple[torch.Tensor, ...]  # (z,) or (z, c)


def export_generator(loaded: LoadedGenerator, fmt: str, out: Path, *, batch: int = 4,
                     opset: int | None = None) -> dict:
    """Write `loaded`'s generator to `out` as TorchScript or ONNX (see the module's docstring for
    the inputs and output), after checking the file gives the generator's images; `batch` is the
    batch size it is traced at (the check also runs 1 and batch + 3), `opset` the ONNX opset
    (default: torch's). Returns what was written, for --json."""
    lookup({f: f for f in FORMATS}, fmt, "export format")
    if isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= 4096:
        raise ConfigError(f"batch {batch!r} must be a whole number from 1 to 4096 (the batch size "
                          "the export is traced at; the file takes any)")
    if opset is not None and fmt != "onnx":
        raise ConfigError("an opset is for --format onnx only; leave it out for torchscript")
    if opset is not None and (isinstance(opset, bool) or not isinstance(opset, int)):
        raise ConfigError(f"opset {opset!r} must be a whole number, like 17")
    out = Path(out)
    if out.is_dir():
        raise ConfigError(f"output {out} is a directory; give a file name, like "
                          f"{out / ('G.onnx' if fmt == 'onnx' else 'G.pt')}")
    check_replaceable(out, fmt)
    if fmt == "onnx":
        _require_onnx()
    started = time.perf_counter()
    config = loaded.config
    cond = labels_for_seeds([0], config) is not None
    # eval as a whole: the ONNX exporter puts the wrapper back in the mode it found it in, and
    # a wrapper left in training mode would take G's BatchNorm to batch statistics with it
    wrapper = (Conditional if cond else Unconditional)(_cpu_float32(loaded.G)).eval()
    sizes = list(dict.fromkeys((batch, batch + 3, 1)))  # traced, then larger and smaller ones
    examples = {n: _inputs(loaded, n) for n in sizes}
    names = ["z", "c"] if cond else ["z"]
    with warnings.catch_warnings():
        # torch 2.9+ calls jit.trace and the TorchScript ONNX exporter deprecated; the check
        # below, not the tracer's warnings, is what says the file is right
        warnings.simplefilter("ignore")
        if fmt == "torchscript":
            data, run = _torchscript(wrapper, examples[batch])
        else:
            data, run = _onnx(wrapper, examples[batch], names, opset)
        diff = _check(wrapper, run, examples, fmt, out)
    check_replaceable(out, fmt)  # again: a file may have been put there while the export ran
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(out, data)
    except OSError as e:
        raise ConfigError(f"cannot write {out}: {e.strerror or e}") from None
    inputs = {"z": {"shape": ["B", config.z_dim], "dtype": "float32"}}
    if cond:
        inputs["c"] = {"shape": ["B"], "dtype": "int64"}
    return {"out": str(out), "format": fmt, "max_abs_diff": diff, "checked_batch_sizes": sizes,
            "inputs": inputs,
            "outputs": {"images": {"shape": ["B", config.channels, config.resolution,
                                             config.resolution], "dtype": "float32",
                                   "range": [-1, 1]}},
            "z_dim": config.z_dim, "classes": list(config.classes) if cond else [],
            "resolution": config.resolution, "channels": config.channels,
            "checkpoint": str(loaded.header.path), "step": loaded.header.step, "bytes": len(data),
            "seconds": round(time.perf_counter() - started, 3)}


def check_replaceable(out: Path, fmt: str) -> None:
    """OUT may be new, or ganctl's own export in this format (its mark says so); anything else
    there (a user's torch.save file or ONNX model, an export from a ganctl that wrote no mark, a
    link, a FIFO) raises ConfigError, and is left as it was."""
    if out.is_symlink():
        raise ConfigError(f"{out} is a symbolic link; give the path of a file (ganctl does not "
                          "write through or over links)")
    if out.exists() and not is_ganctl_file(out, fmt, KIND):
        raise ConfigError(f"{out} exists and is not {LABELS[fmt]} written by ganctl export (it has "
                          "no ganctl mark); move it away or choose another OUT")
    if out.is_file() and not out.stat().st_mode & stat.S_IWUSR:  # (root may write it anyway)
        raise ConfigError(f"{out} is read-only; make it writable (chmod u+w) to have it replaced, "
                          "or choose another name")


def _require_onnx() -> None:
    try:
        for name in ("onnx", "onnxruntime"):
            importlib.import_module(name)
    except ImportError:
        raise ConfigError(ONNX_MISSING) from None


def _cpu_float32(G: nn.Module) -> nn.Module:
    """A copy of G on the CPU in float32 and eval mode, frozen: the caller's module (on any device,
    in any precision) is left as it was."""
    G = copy.deepcopy(G).to("cpu", torch.float32).eval()
    return G.requires_grad_(False)


def _inputs(loaded: LoadedGenerator, n: int) -> Inputs:
    """The fixed inputs of seeds 0..n-1: their latents (and classes, seed mod K)."""
    seeds = range(n)
    z = latents_from_seeds(seeds, loaded.config.z_dim)  # (n, z_dim) float32
    c = labels_for_seeds(seeds, loaded.config)  # (n,) int64 or None
    return (z,) if c is None else (z, c)


Runner = Callable[[Inputs], torch.Tensor]  # runs the exported file on inputs -> images


def _torchscript(wrapper: nn.Module, example: Inputs) -> tuple[bytes, Runner]:
    with torch.no_grad():
        traced = torch.jit.trace(wrapper, example, check_trace=False)  # check_trace: _check does
    buf = io.BytesIO()
    torch.jit.save(traced, buf, _extra_files={MARK_FILE: mark_json(KIND, format="torchscript")})
    data = buf.getvalue()
    # DESIGN's "nothing calls torch.load" is about checkpoints, which a stranger may hand over:
    # this loads back the TorchScript file made just above, from its bytes, to check it
    loaded = torch.jit.load(io.BytesIO(data), map_location="cpu")

    def run(inputs: Inputs) -> torch.Tensor:
        with torch.no_grad():
            return loaded(*inputs)

    return data, run


def _onnx(wrapper: nn.Module, example: Inputs, names: list[str], opset: int | None
          ) -> tuple[bytes, Runner]:
    onnx = importlib.import_module("onnx")  # optional packages (ganctl's 'onnx' extra)
    onnxruntime = importlib.import_module("onnxruntime")
    try:
        model = onnx.load_from_string(_onnx_bytes(wrapper, example, names, opset))
        mark = model.metadata_props.add()
        mark.key, mark.value = MARK, mark_json(KIND, format="onnx")
        data = model.SerializeToString()
        onnx.checker.check_model(model)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        session = onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except GanctlError:
        raise
    except Exception as e:  # an opset the exporter or onnxruntime lacks, an op with no ONNX form
        hint = "" if importlib.util.find_spec("onnxscript") else ", or pip install onnxscript"
        raise ConfigError(f"ONNX export failed: {first_line(e)}; try another --opset, or --format "
                          f"torchscript{hint}") from None

    def run(inputs: Inputs) -> torch.Tensor:
        feed = {name: x.numpy() for name, x in zip(names, inputs, strict=True)}
        return torch.from_numpy(session.run(["images"], feed)[0])

    return data, run


def _onnx_bytes(wrapper: nn.Module, example: Inputs, names: list[str], opset: int | None) -> bytes:
    """The ONNX model: torch's TorchScript-based exporter with a dynamic batch axis; where this
    torch no longer has it and onnxscript is installed, the torch.export-based one with a dynamic
    batch dimension. Written to a temporary folder (the exporters take a path) and read back."""
    with tempfile.TemporaryDirectory(prefix="ganctl-export-") as folder:
        path = Path(folder) / "G.onnx"
        try:
            with torch.no_grad():
                torch.onnx.export(wrapper, example, str(path), dynamo=False, input_names=names,
                                  output_names=["images"], opset_version=opset,
                                  dynamic_axes={name: {0: "B"} for name in [*names, "images"]})
        except Exception as legacy:
            if importlib.util.find_spec("onnxscript") is None:  # what the newer exporter needs
                raise
            try:
                batch = torch.export.Dim("B", min=1, max=65536)
                torch.onnx.export(wrapper, example, str(path), dynamo=True, input_names=names,
                                  output_names=["images"], opset_version=opset, external_data=False,
                                  dynamic_shapes={name: {0: batch} for name in names},
                                  verbose=False)  # its progress lines would break --json
            except Exception:
                raise legacy from None  # the first exporter's error names what it could not do
        return path.read_bytes()


def _check(wrapper: nn.Module, run: Runner, examples: dict[int, Inputs], fmt: str, out: Path) -> float:
    """The largest |exported - PyTorch| over every batch size of `examples`; a GanctlError if one
    is over TOLERANCE or has the wrong shape (nothing has been written yet)."""
    worst = 0.0
    for n, inputs in examples.items():
        with torch.no_grad():
            want = wrapper(*inputs)  # (n, C, H, W)
        if not torch.isfinite(want).all():
            raise GanctlError(f"the generator's own images are not finite (NaN or inf) for seeds "
                              f"0-{n - 1}: this checkpoint is broken; export an earlier one")
        got = run(inputs)
        if got.shape != want.shape or got.dtype != torch.float32:
            raise GanctlError(f"export check failed: the {fmt} file gives {got.dtype} "
                              f"{tuple(got.shape)} images at batch size {n}, not float32 "
                              f"{tuple(want.shape)}; nothing was written to {out}")
        diff = (got - want).abs().max().item()
        if not diff <= TOLERANCE:  # NaN fails too
            raise GanctlError(f"export check failed: the {fmt} file's images differ from the "
                              f"generator's by {diff:.3g} (more than {TOLERANCE:g}) at batch size "
                              f"{n}; nothing was written to {out}")
        worst = max(worst, diff)
    return worst
