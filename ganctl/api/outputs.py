"""The files the generator is written to: what OUT may be, checked before anything is read or
generated. OUT may be a new file (its missing folders are made) or one ganctl replaces: an
image over an image (fsutil.is_replaceable; never a run's metrics or a checkpoint), a model file
over ganctl's own export (export.check_replaceable: its mark, never a user's model), an imported
network over a checkpoint ganctl imported (never one it trained); never a
link (its target or the link would be lost), a folder or a device, nor a path under a file, nor
a hidden name without a suffix (".png" is a name, not a format), nor a read-only file."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ganctl.api.checks import PathLike, path
from ganctl.errors import ConfigError, GanctlError, UsageError, os_error_message
from ganctl.fsutil import is_replaceable, nearest_existing

EXPORT_FORMATS = ("torchscript", "onnx")
# a suffix that says the export's format; another (.zip, .bin, none) does not
SUFFIX_FORMATS = {".onnx": "onnx", **dict.fromkeys((".pt", ".pth", ".ts", ".jit"), "torchscript")}
EXAMPLES = {"image": "grid.png", "onnx": "G.onnx", "torchscript": "G.pt",
            "checkpoint": "net.safetensors"}


def check_out(out: PathLike, fmt: str = "image") -> Path:
    """OUT as a Path, once it may be written (see the module's docstring); `fmt`: image,
    torchscript, onnx or checkpoint (ganctl import's). A trailing / names a folder, which is a usage error."""
    path("out", out, "a file's path", required=True)
    text = os.fspath(out)
    if text.endswith(("/", os.sep)):
        raise UsageError(f"{text} names a folder; give a file's name, like {text}{EXAMPLES[fmt]}",
                         "OUT")
    try:
        _check_path(Path(text), fmt)
    except OSError as e:  # a name too long for the file system, a folder that cannot be read ...
        raise GanctlError(os_error_message(e)) from None
    return Path(text)


def _check_path(out: Path, fmt: str) -> None:
    if out.name.startswith(".") and not out.suffix:
        raise ConfigError(f"{out} is a hidden file's name with no suffix; name the file like "
                          f"out{out.name}")
    if out.is_symlink():
        raise ConfigError(f"{out} is a symbolic link; give the path of a file (ganctl does not "
                          "write through or over links)")
    if out.exists() and not out.is_file():
        raise ConfigError(f"{out} exists and is not a regular file (a folder, FIFO or device); "
                          "choose another name")
    if out.is_file() and not out.stat().st_mode & stat.S_IWUSR:  # (root may write it anyway)
        raise ConfigError(f"{out} is read-only; make it writable (chmod u+w) to have it replaced, "
                          "or choose another name")
    if fmt == "image" and out.is_file() and not is_replaceable(out):
        raise ConfigError(f"{out} exists and is not an image; ganctl replaces only a file of the "
                          "kind it writes (not a run's files or a checkpoint): choose another name")
    if fmt == "checkpoint":
        from ganctl.importers.convert import check_replaceable as replaceable_import

        replaceable_import(out)
    elif fmt != "image":
        from ganctl.export import check_replaceable

        check_replaceable(out, fmt)
    folder = nearest_existing(out.parent)
    if folder is not None and not folder.is_dir():
        raise ConfigError(f"{folder} is a file, not a folder; choose OUT in a folder")


def export_target(out: PathLike, fmt: str | None) -> tuple[Path, str]:
    """OUT of an export and its format: `fmt`, else what OUT's suffix says, else torchscript;
    a suffix and a format that contradict each other are a usage error."""
    path("out", out, "a file's path", required=True)
    if fmt is not None and fmt not in EXPORT_FORMATS:
        raise UsageError(f"{fmt!r} is not torchscript or onnx", "--format")
    target = Path(os.fspath(out))
    named = SUFFIX_FORMATS.get(target.suffix.lower())
    fmt = fmt or named or "torchscript"
    if named is not None and named != fmt:
        raise UsageError(f"{target} is named for {named} but --format is {fmt}", "--format")
    if target.suffix.lower() == ".safetensors":
        raise ConfigError(f"{target} is a checkpoint's name: export writes a generator, never over "
                          "a checkpoint; give OUT ending in .pt or .onnx (usage: ganctl export "
                          "[CKPT|RUN_DIR] OUT)")
    return check_out(out, fmt), fmt
