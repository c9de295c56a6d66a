"""What the tests share (fixtures are in conftest.py): running the CLI (in-process and as a
process) and reading its help, tiny run settings and tiny engine states, checkpoint checks, damage
and forgeries, fault injection from outside the package, miniature datasets written in the exact
on-disk formats the real ones use, and stand-ins for the Inception network, a D and an adaptive
augmentation."""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import os
import pickle
import re
import struct
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch
import typer.main
import typer.testing
from PIL import Image
from torch import nn
from typer.testing import CliRunner

from ganctl import checkpoint, rundir
from ganctl.augment import Augmentation
from ganctl.cli import app
from ganctl.config import Config
from ganctl.data import shapes
from ganctl.engine import loop
from ganctl.engine.state import init_state

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = Path(__file__).resolve().parent / "launch.py"  # ganctl with faults injected, as a process
RNG = np.random.default_rng(0)

# A run small enough for a 2-core CI: 8-channel DCGAN at 32x32, batch 8.
# No curves.png (a draw costs more than the run): tests of it ask for --curves.
TINY = ["--no-curves", "--steps", "4", "--batch-size", "8", "--g-width", "8", "--d-width", "8",
        "--log-every", "2", "--sample-every", "2", "--ckpt-every", "2", "--device", "cpu"]
# checkpoints of about 8 MB: big enough for a slowed write to be caught in the middle
MEDIUM = ["--batch-size", "8", "--g-width", "32", "--d-width", "32", "--log-every", "1",
          "--sample-every", "100000", "--device", "cpu", "--no-curves"]
TINY_NO_STEPS = [a for i, a in enumerate(TINY) if a != "--steps" and TINY[i - 1] != "--steps"]
# smaller still, for the tests of datasets: 4-channel, batch 4, 2 steps
TRAIN2 = ["--steps", "2", "--batch-size", "4", "--g-width", "4", "--d-width", "4",
          "--log-every", "1", "--device", "cpu"]
CPU = torch.device("cpu")
CKPT = "runs/0001-shapes-dcgan/checkpoints/step-000000004.safetensors"  # trained_run's newest


# --- running the CLI --------------------------------------------------------------------------

_COMMAND = typer.main.get_command(app)  # built once per process, not for every call (60 ms each)


class _Runner(CliRunner):
    """typer's CliRunner over the click command built once (the command holds no state between
    calls: each gets its own context)."""

    def invoke(self, app, args=None, **kwargs):  # type: ignore[override]
        real = typer.testing._get_command
        typer.testing._get_command = lambda _: _COMMAND
        try:
            return super().invoke(app, args, **kwargs)
        finally:
            typer.testing._get_command = real


def invoke(*args: object):
    """Run the CLI in-process; stdout and stderr come back separately."""
    return _Runner().invoke(app, [str(a) for a in args])


def assert_one_line_error(result, code: int, *fragments: str) -> None:
    assert result.exit_code == code, result.output
    err = result.stderr.strip()
    assert "Traceback" not in result.output
    if code == 1:
        assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    for fragment in fragments:
        assert fragment in err, err


def assert_clean(result) -> None:
    """Refused as expected: exit 1 or 2, and no bug marker or traceback anywhere."""
    assert result.exit_code in (1, 2), result.output
    assert "unexpected" not in result.output.lower(), result.output
    assert "Traceback" not in result.output


def help_text(*command: str) -> str:
    result = invoke(*command, "--help")
    assert result.exit_code == 0, result.output
    return result.stdout


# options that are switches without a value of their own: nothing to show as a default
SWITCHES = {"--help", "--list-presets", "--print-config", "--resume", "--overwrite", "--json",
            "--debug", "--install-completion", "--show-completion"}


def option_blocks(text: str) -> dict[str, str]:
    """Each option of a rich help screen and the text of its row(s), by long name."""
    blocks: dict[str, str] = {}
    name = None
    for line in text.splitlines():
        found = re.match(r"│ (--[a-z0-9-]+)\s", line)  # a row's first cell (wrapped text is indented)
        if found:
            name = found.group(1)
            blocks[name] = ""
        if name:
            blocks[name] += " " + line.strip("│ ").strip()
    return blocks


def start(*args: object, cwd: Path, slow_write: float | None = None) -> subprocess.Popen:
    """ganctl as a process (through tests/launch.py, which can slow checkpoint writes so that a
    kill lands in the middle of one)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
    if slow_write is not None:
        env["GANCTL_TEST_SLOW_WRITE"] = str(slow_write)
    return subprocess.Popen([sys.executable, str(LAUNCH), *map(str, args)], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def wait_for_step(stream, step: int) -> None:
    """Read progress lines from a process's stream until `step` is logged."""
    for line in stream:
        if line.startswith(f"step {step}/"):
            return
    raise AssertionError(f"process ended before step {step}")


# --- faults from outside the package ----------------------------------------------------------

def nan_step(real_step, state, phases):
    """real_step(state, phases) with a NaN real batch, as a broken data pipeline would make it."""
    clean = state.batches.next
    state.batches.next = lambda: dataclasses.replace(b := clean(), x=b.x * float("nan"))
    try:
        return real_step(state, phases)
    finally:
        del state.batches.next


def nan_batches(monkeypatch, steps: set[int] | None = None, start_at: int | None = None
                ) -> list[int]:
    """From now on in this test, the real batch of each step in `steps` (once each) or of every
    step from `start_at` on is NaN, as a broken data pipeline would make it. Returns the list of
    steps poisoned so far."""
    real_step = loop.train_step
    fired: list[int] = []

    def poisoned(state, phases):
        n = state.step + 1
        if (steps and n in steps and n not in fired) or (start_at is not None and n >= start_at):
            fired.append(n)
            return nan_step(real_step, state, phases)
        return real_step(state, phases)

    monkeypatch.setattr(loop, "train_step", poisoned)
    return fired


def signal_at(monkeypatch, step: int, *signums: int) -> None:
    """Send this process `signums` right after training step `step`, once (as a scheduler
    would)."""
    real_step = loop.train_step
    sent: list[int] = []

    def stepped(state, phases):
        stats = real_step(state, phases)
        if state.step == step and not sent:
            for signum in signums:
                sent.append(signum)
                os.kill(os.getpid(), signum)
        return stats

    monkeypatch.setattr(loop, "train_step", stepped)


# --- tiny configs and states, for the engine without the command line ------------------------

IMAGES = np.random.default_rng(0).integers(0, 256, (32, 3, 32, 32), dtype=np.uint8)


def tiny_config(**changes) -> Config:
    return Config(g_width=8, d_width=8, batch_size=8, z_dim=16, **changes)


CLASSES = ("a", "b", "c")


def small(arch, loss, conditional, **extra):
    return Config(arch=arch, loss=loss, conditional=conditional, classes=CLASSES,
                  resolution=32, g_width=4, d_width=4, z_dim=8, batch_size=4, device="cpu",
                  r1=1.0, r2=1.0, r1_every=2, augment="diffaug", **extra)


def state_of(config):
    images = shapes.render(32, 3, n=64)
    labels = torch.arange(64) % 3
    return init_state(config, torch.device("cpu"), images, labels)


# --- run directories and checkpoints ------------------------------------------------------------

def valid_steps(run_dir: Path) -> list[int]:
    """Steps of the run's checkpoints, each verified (raises if one is damaged)."""
    out = []
    for path in rundir.list_checkpoints(run_dir / rundir.CKPT_DIR):
        out.append(checkpoint.open_checkpoint(path).step)
    return out


def verifying_steps(ckpt_dir: Path) -> list[int]:
    """Steps of the checkpoints that verify, skipping damaged ones."""
    out = []
    for path in rundir.list_checkpoints(ckpt_dir):
        try:
            out.append(checkpoint.open_checkpoint(path).step)
        except Exception:
            pass
    return out


def final_tensors(run_dir: Path) -> tuple[int, dict[str, torch.Tensor]]:
    ckpt = rundir.latest_in_run(run_dir)
    assert ckpt is not None
    return checkpoint.read_header(ckpt).step, checkpoint.load_tensors(ckpt)


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def events(run_dir: Path) -> list[dict]:
    return [r for r in rundir.read_metrics(run_dir) if "event" in r]


def damage(path: Path, how: str) -> None:
    raw = bytearray(path.read_bytes())
    if how == "truncated":
        path.write_bytes(bytes(raw[: len(raw) - 1000]))
    elif how == "corrupted":
        raw[-5] ^= 0xFF
        path.write_bytes(bytes(raw))
    elif how == "huge header":
        path.write_bytes(struct.pack("<Q", 2**62) + bytes(raw[8:]))


def rewrite(src: Path, dst: Path, change) -> None:
    """A checkpoint with its tensors or metadata changed, but a correct checksum."""
    header = checkpoint.read_header(src)
    tensors = checkpoint.load_tensors(src)
    meta = {k: v for k, v in header.metadata.items() if k != "ganctl.checksum"}
    change(tensors, meta)
    checkpoint.save(dst, tensors, meta.pop("ganctl.config"), int(meta.pop("ganctl.step")), meta)


def _forge(src: Path, dst: Path, edit) -> None:
    """Rewrite a checkpoint's header (dict) with `edit`, keeping its data bytes."""
    raw = src.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    data = raw[8 + n:]
    data = edit(header, data) or data
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    dst.write_bytes(struct.pack("<Q", len(text)) + text + data)


def _checksum_again(header, data):
    from ganctl.checkpoint.write import _checksum
    header["__metadata__"]["ganctl.checksum"] = _checksum(data, header["__metadata__"])


def _config_edit(**changes):
    def edit(header, data):
        meta = header["__metadata__"]
        meta["ganctl.config"] = json.dumps({**json.loads(meta["ganctl.config"]), **changes})
        _checksum_again(header, data)
    return edit


def read_json(path: Path):
    return json.loads(Path(path).read_text())


# a step's record in metrics.jsonl
RECORD = {"step": 10, "time": 0.0, "loss_D": 1.25, "loss_G": 0.5, "D_real": 0.6, "D_fake": 0.4,
          "img_per_s": 321.0}


# --- datasets on disk ------------------------------------------------------------------------------

def image_folder(root: Path, n: int, size: tuple[int, int] = (32, 32), classes: int = 0) -> Path:
    """n solid-colour PNGs (each a different red), in `classes` class folders c0, c1 ... (round
    robin) or directly in root."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        folder = root / f"c{i % classes}" if classes else root
        folder.mkdir(exist_ok=True)
        Image.new("RGB", size, (i * 25 % 256, 255 - i * 25 % 256, 60)).save(folder / f"{i:03d}.png")
    return root


def jpeg_bytes(image: Image.Image, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=95, **kwargs)
    return buf.getvalue()


def write_celeba(root: Path, splits=(0,) * 8 + (1,) * 2 + (2,) * 2, zipped=False) -> Path:
    """torchvision's CelebA layout: root/celeba/img_align_celeba/*.jpg and its .txt files.

    Each 178x218 image is blue with red bands of 20 rows at top and bottom: the 178x178
    center crop is blue alone.
    """
    folder = root / "celeba"
    folder.mkdir(parents=True)
    names = [f"{i + 1:06d}.jpg" for i in range(len(splits))]
    pixels = np.zeros((218, 178, 3), dtype=np.uint8)
    pixels[:, :, 2] = 200
    pixels[:20], pixels[-20:] = (200, 0, 0), (200, 0, 0)
    blobs = {n: jpeg_bytes(Image.fromarray(pixels)) for n in names}
    if zipped:
        with zipfile.ZipFile(folder / "img_align_celeba.zip", "w") as z:
            for n, b in blobs.items():
                z.writestr(f"img_align_celeba/{n}", b)
    else:
        (folder / "img_align_celeba").mkdir()
        for n, b in blobs.items():
            (folder / "img_align_celeba" / n).write_bytes(b)
    (folder / "list_eval_partition.txt").write_text(
        "".join(f"{n} {s}\n" for n, s in zip(names, splits, strict=True)))
    attrs = " ".join(f"Attr{i}" for i in range(40))
    (folder / "list_attr_celeba.txt").write_text(
        f"{len(names)}\n{attrs}\n" + "".join(f"{n} " + " ".join(["-1"] * 40) + "\n" for n in names))
    (folder / "identity_CelebA.txt").write_text("".join(f"{n} {i}\n" for i, n in enumerate(names)))
    (folder / "list_bbox_celeba.txt").write_text(
        f"{len(names)}\nimage_id x_1 y_1 width height\n" + "".join(f"{n} 0 0 178 218\n" for n in names))
    (folder / "list_landmarks_align_celeba.txt").write_text(
        f"{len(names)}\nlefteye_x lefteye_y\n" + "".join(f"{n} 69 109\n" for n in names))
    return folder


def write_cifar10(root: Path, per_batch: int = 4) -> tuple[np.ndarray, list[int]]:
    """cifar-10-batches-py/ with data_batch_1..5, test_batch and batches.meta, as the original
    (protocol 2, byte-string keys). Returns the training images (N, 32, 32, 3) and labels."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    images, labels = [], []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = RNG.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        batch_labels = RNG.integers(0, 10, per_batch).tolist()
        batch = {b"batch_label": name.encode(), b"labels": batch_labels, b"data": data,
                 b"filenames": [f"img_{i}.png".encode() for i in range(per_batch)]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
        if name != "test_batch":
            images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            labels += batch_labels
    meta = {b"num_cases_per_batch": per_batch,
            b"label_names": [c.encode() for c in ("airplane", "automobile", "bird", "cat", "deer",
                                                  "dog", "frog", "horse", "ship", "truck")],
            b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return np.concatenate(images), labels


def write_cifar100(root: Path, n: int = 6) -> list[int]:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    fine = []
    for name in ("train", "test"):
        labels = RNG.integers(0, 100, n).tolist()
        batch = {"filenames": [f"f{i}.png" for i in range(n)], "batch_label": name,
                 "fine_labels": labels, "coarse_labels": [x // 5 for x in labels],
                 "data": RNG.integers(0, 256, (n, 3072), dtype=np.uint8)}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=4))
        fine = labels if name == "train" else fine
    meta = {"fine_label_names": [f"class{i}" for i in range(100)],
            "coarse_label_names": [f"super{i}" for i in range(20)]}
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=4))
    return fine


def idx_bytes(array: np.ndarray) -> bytes:
    """The MNIST idx format: 0, 0, dtype 0x08 (ubyte), ndim, big-endian sizes, data."""
    return bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_mnist(root: Path, folder: str = "MNIST", n: int = 10, gz: bool = True) -> np.ndarray:
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    images = RNG.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = (np.arange(n) % 10).astype(np.uint8)
    for prefix, imgs, labs in (("train", images, labels), ("t10k", images[:4], labels[:4])):
        for kind, array in ((f"{prefix}-images-idx3-ubyte", imgs), (f"{prefix}-labels-idx1-ubyte", labs)):
            data = idx_bytes(array)
            if gz:
                (raw / f"{kind}.gz").write_bytes(gzip.compress(data))
            else:
                (raw / kind).write_bytes(data)
    return images


def write_svhn(root: Path, n: int = 6) -> np.ndarray:
    from scipy import io as sio
    root.mkdir(parents=True, exist_ok=True)
    images = RNG.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    labels = np.array([[10], [1], [2], [3], [4], [5]][:n], dtype=np.uint8)  # 10 means digit 0
    sio.savemat(str(root / "train_32x32.mat"), {"X": images.transpose(1, 2, 3, 0), "y": labels})
    return images


def save(image: Image.Image, path: Path, **kwargs) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)


def write_odd_folder(root: Path) -> dict[str, int]:
    """Every image kind the loader must take, and every kind of bad file it must skip.

    Returns the expected skip counts by reason. Two classes: a/ and b/.
    """
    rgb = Image.fromarray(RNG.integers(0, 256, (40, 60, 3), dtype=np.uint8))  # non-square
    a, b = root / "a", root / "b"
    save(rgb, a / "photo.jpg", quality=90)
    save(rgb.convert("L"), a / "gray.png")
    save(rgb.convert("RGBA"), a / "alpha.png")
    save(rgb.convert("P"), a / "palette.png", transparency=0)
    save(Image.fromarray(RNG.integers(0, 65536, (32, 32), dtype=np.uint16)), a / "deep.png")
    save(rgb.convert("CMYK"), a / "print.jpg")
    save(rgb, b / "web.webp", lossless=True)
    save(rgb, b / "bitmap.bmp")
    frames = [rgb.convert("P"), Image.new("RGB", (60, 40), "white").convert("P")]
    frames[0].save(b / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
    save(rgb, b / "scan.tiff")
    save(rgb.convert("1"), b / "mono.png")
    save(rgb.convert("LA"), b / "gray_alpha.png")
    save(rgb, b / "nested" / "deep" / "more.JPG")  # upper-case extension, nested folder
    # the bad ones
    (a / "empty.jpg").write_bytes(b"")
    whole = jpeg_bytes(Image.fromarray(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)))
    (a / "cut.jpg").write_bytes(whole[: len(whole) // 2])
    (b / "fake.png").write_text("this is not a png")
    (root / "notes.txt").write_text("hello")
    (root / ".DS_Store").write_bytes(b"\x00\x01junk")  # hidden: ignored silently
    return {"empty file": 1, "truncated": 1, "not an image": 1, "not an image file type": 1}


GOOD_IN_ODD_FOLDER = 13


def zip_folder(folder: Path, out: Path, prefix: str = "") -> Path:
    with zipfile.ZipFile(out, "w") as z:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                z.write(p, prefix + p.relative_to(folder).as_posix())
    return out


# --- a stand-in for the Inception network ------------------------------------------------------------

class _FakeInception(torch.nn.Module):
    """The float299 form: float RGB in [-1, 1] at 299x299 -> 2048 non-negative features (a fixed
    random projection of an 8x8 colour layout): cheap, deterministic, and it tells images apart."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.register_buffer("proj", torch.randn(3 * 8 * 8, 2048, generator=g) / 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[1] == 3 and x.shape[2] == 299 and x.shape[3] == 299
        return self.features(x)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(torch.nn.functional.adaptive_avg_pool2d(x, 8).flatten(1) @ self.proj)


class _FakeNVlabs(_FakeInception):
    """The nvlabs form: uint8 RGB of any size, resized inside, return_features=True."""

    def forward(self, img: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        x = torch.nn.functional.interpolate(img.to(torch.float32), size=(299, 299), mode="bilinear",
                                            align_corners=False)
        features = self.features(x / 127.5 - 1)
        return features if return_features else features[:, :1008]


class _NotInception(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, :10]


def write_feature_net(path: Path, form: str = "float299") -> Path:
    """A TorchScript file like one of the accepted forms ("float299", "nvlabs"), or "other"."""
    module = {"float299": _FakeInception, "nvlabs": _FakeNVlabs, "other": _NotInception}[form]()
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script is deprecated
        torch.jit.script(module).save(str(path))
    return path


def refuse_download(*args, **kwargs):
    raise AssertionError("no download in these tests")


# --- stand-ins for a D and for an adaptive augmentation ------------------------------------------

class LinearD(nn.Module):
    """D(x) = <w, x>: its gradient in x is w everywhere, of norm |w|."""

    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(w.clone())

    def forward(self, x, c=None):
        return x.flatten(1) @ self.w


TARGET = 0.6  # the share of reals D should call real; above it, augment more


class ToyAdaptive(Augmentation):
    """Flips each image left-right with probability p, and moves p by 0.05 toward making D's
    mean sign on reals TARGET, every 2 steps (adaptive augmentation in miniature)."""

    feedback_names = ("signs", "count")
    interval = 2

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("p", torch.tensor(0.5))

    def forward(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        flip = torch.rand(x.shape[0], device=x.device, generator=generator) < self.p
        return torch.where(flip[:, None, None, None], x.flip(3), x)

    def measure(self, real_logits: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"signs": real_logits.sign().sum(), "count": torch.tensor(float(len(real_logits)))}

    def feedback(self, totals: dict[str, torch.Tensor]) -> None:
        seen.append({k: float(v) for k, v in totals.items()})
        rate = totals["signs"] / totals["count"]
        self.p.add_(0.05 * torch.sign(rate - TARGET)).clamp_(0, 1)


seen: list[dict[str, float]] = []  # what ToyAdaptive.feedback was given, in order


SYNCS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "cpu", "numpy")


def spy_host_reads(monkeypatch) -> list[str]:
    """Record every call of a tensor method that reads a value back to the host (SYNCS) made
    from ganctl's own code; the list fills while the spies are on (monkeypatch.undo ends them)."""
    import inspect

    from ganctl.engine import compiled

    calls: list[str] = []
    package = str(Path(compiled.__file__).resolve().parents[1])

    def spy(name):
        original = getattr(torch.Tensor, name)

        def wrapper(self, *args, **kwargs):
            caller = inspect.stack()[1].filename
            if caller.startswith(package):
                calls.append(f"{name} from {caller}")
            return original(self, *args, **kwargs)
        return wrapper

    for name in SYNCS:
        monkeypatch.setattr(torch.Tensor, name, spy(name))
    return calls
