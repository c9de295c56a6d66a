"""The run configuration: one typed, frozen dataclass, validated at construction.

Precedence when a run starts: built-in defaults < dataset preset < config file < flags.
The resolved config is written to the run's config.json and into every checkpoint, so a
model is rebuilt from the file alone.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import re
import sys
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ganctl.errors import ConfigError, did_you_mean, first_line, shorten
from ganctl.fsutil import NotRegularFile, read_regular

# Fields that `ganctl resume` may change: run length, intervals, evaluation and where it runs.
# Everything else is fixed by the checkpoint so the run continues as it started.
# dataset, data_dir and inception too: files may live elsewhere on another machine (the data's
# content fingerprint is checked, the feature network's sha256 recorded with every score).
# precision and compile too: a run may move to another machine (a CPU, an older GPU).
RESUME_OVERRIDABLE = frozenset(
    {"dataset", "steps", "log_every", "sample_every", "ckpt_every", "keep", "device", "data_dir",
     "eval_every", "eval_num", "eval_num_real", "eval_metrics", "inception", "max_file_mb",
     "precision", "compile", "compile_mode", "tensorboard", "wandb", "wandb_project", "sync_bn", "curves",
     "backbone_weights"}
)
CROPS = ("center", "none")
SPECTRAL_NORM = ("auto", "on", "off")
PRECISIONS = ("auto", "fp32", "tf32", "bf16", "fp16")
COMPILE = ("auto", "on", "off")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
BATCH_AUTO = 0  # batch_size 0: the largest power of two that fits the GPU, found at the start
MAX_D_STEPS = 100  # D updates per G update; WGAN-GP uses 5 (a step must stay interruptible)
MAX_STEP = 999_999_999  # checkpoint names carry nine digits
# (lowest, highest) of every numeric field: far beyond any real run, low enough that no value
# reaches torch as an absurd allocation or an overflow. Floats: lr 0 is refused separately.
BOUNDS: dict[str, tuple[float, float]] = {
    "resolution": (1, 4096), "z_dim": (1, 16384),
    "g_width": (1, 4096), "d_width": (1, 4096), "batch_size": (1, 65536),
    "steps": (1, MAX_STEP), "seed": (0, 2**32 - 1), "d_steps": (1, MAX_D_STEPS),
    "r1_every": (1, MAX_STEP), "log_every": (1, MAX_STEP), "sample_every": (1, MAX_STEP),
    "ckpt_every": (1, MAX_STEP), "keep": (0, 1_000_000), "eval_every": (0, MAX_STEP),
    "eval_num": (2, 10_000_000), "eval_num_real": (0, 100_000_000),
    "max_file_mb": (1, 1 << 20),
    "lr_g": (0.0, 10.0), "lr_d": (0.0, 10.0), "r1": (0.0, 1e6), "r2": (0.0, 1e6), "gp": (0.0, 1e6),
}
_BOUND_HINTS = {"keep": " (0 keeps every checkpoint)", "eval_every": " (0: no evaluation)",
                "eval_num_real": " (0: all)", "batch_size": ", or auto (the largest that fits)"}

# What the datasets bring when nobody says otherwise (ganctl.data; here, where `--help` reads
# them without importing torch): the built-in shapes are small enough that `ganctl train` shows
# learning on a laptop CPU in minutes, at lr 5e-4 (not the article's 2e-4: its shapes come out
# in 1,500 steps, not blobs); a real dataset trains for longer.
SHAPES_PRESET = {"resolution": 32, "channels": 3, "g_width": 32, "d_width": 32, "steps": 1500,
                 "sample_every": 250, "ckpt_every": 500, "lr_g": 5e-4, "lr_d": 5e-4}
REAL_PRESET = {"steps": 20000, "sample_every": 1000, "ckpt_every": 2000, "log_every": 100}

_DEVICE_RE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


@dataclass(frozen=True)
class Config:
    # data
    dataset: str = "shapes"  # a name (see `ganctl data info --help`) or a folder / .zip of images
    data_dir: str = ""  # where named datasets live; "" = env GANCTL_DATA_DIR or the user cache
    split: str = ""  # "" = the dataset's training split
    resolution: int = 32
    channels: int = 3
    crop: str = "center"  # non-square images: "center" crops to a square, "none" pads
    mirror: bool = False  # flip a random half of each epoch's images horizontally
    classes: tuple[str, ...] = ()  # class names of the data, filled in from it (empty: unlabelled)
    # model
    preset: str = ""  # the named preset the run started from (informative: its values are here)
    arch: str = "dcgan"  # dcgan, resnet, mlp
    z_dim: int = 100
    g_width: int = 64  # G's base width (DCGAN's ngf: channels of its last hidden layer)
    d_width: int = 64  # D's base width (DCGAN's ndf: channels of its first layer)
    conditional: bool = False  # G and D take the class: conditional BatchNorm and projection D
    spectral_norm: str = "auto"  # on every layer of D: on, off, auto (on for resnet)
    # objective and optimiser (the article's: Adam, lr 2e-4, betas (0.5, 0.999))
    loss: str = "bce"
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    d_steps: int = 1  # D updates (each on a fresh real batch) per G update
    r1: float = 0.0  # R1 penalty weight gamma on reals (0: none)
    r2: float = 0.0  # R2: the same on fakes
    r1_every: int = 16  # lazy regularisation: R1/R2 every N steps, weighted by N
    gp: float = 10.0  # WGAN-GP's gradient penalty weight (loss wgan-gp only)
    augment: str = ""  # "" or diffaug[:translation,color,cutout] (DiffAugment)
    ema_decay: float = 0.999  # G_ema <- decay * G_ema + (1 - decay) * G
    deterministic: bool = False  # deterministic GPU kernels: exact resume there too, slower
    batch_size: int = 64
    steps: int = 2000  # total length of the run, for train and resume alike
    seed: int = 0
    # intervals and where it runs (these may change on resume)
    log_every: int = 50
    sample_every: int = 500
    ckpt_every: int = 1000
    keep: int = 3  # newest checkpoints kept; 0 keeps all
    device: str = "auto"
    # how the step runs (a run records what "auto" became on its device)
    # auto (bf16 on GPUs that have it, and on native-bf16 CPUs where device.CPU_BF16_FASTER
    # measured it faster; else fp32), fp32, tf32, bf16, fp16
    precision: str = "auto"
    compile: str = "auto"  # torch.compile of G and D: auto (on for CUDA), on, off
    compile_mode: str = "default"  # torch.compile's mode (reduce-overhead: CUDA graphs)
    sync_bn: bool = False  # several processes: BatchNorm statistics over the global batch
    # evaluation during training (0: none); an evaluation step is also a checkpoint step
    eval_every: int = 0
    eval_num: int = 10000  # fakes per evaluation
    eval_num_real: int = 0  # real images for the statistics; 0: all of them
    eval_metrics: str = "fid"  # comma-separated: fid, kid, pr
    inception: str = ""  # the feature network's file; "": GANCTL_INCEPTION, the cache, download
    # a frozen backbone's weights file (an architecture whose D stands on one); "": its
    # environment variable, the cache, download
    backbone_weights: str = ""
    max_file_mb: int = 256  # dataset files larger than this are skipped as "too large", unread
    # watching the run (optional extras; they may be switched on or off on resume)
    curves: bool = True  # RUN/curves.png redrawn at sample steps (matplotlib: ~0.4 s a draw)
    tensorboard: bool = False  # scalars and sample grids to RUN/tensorboard/
    wandb: bool = False  # the same to Weights & Biases
    wandb_project: str = ""  # "": ganctl
    # fine-tuning: the checkpoint whose G, D and G_ema weights the run started from ("": none)
    init_from: str = ""

    def __post_init__(self) -> None:
        for f in fields(self):
            _check_type(f.name, getattr(self, f.name), str(f.type))
            if f.type == "float":  # 1 in a TOML file means 1.0; keep config.json typed
                object.__setattr__(self, f.name, float(getattr(self, f.name)))
            elif f.type.startswith("tuple"):  # a JSON list
                object.__setattr__(self, f.name, tuple(getattr(self, f.name)))
        _check_bounds(self)
        if not self.dataset.strip():
            raise ConfigError("dataset is empty; give a name (see --help) or a folder, e.g. '.'")
        if self.crop not in CROPS:
            raise ConfigError(f"crop must be one of {', '.join(CROPS)}, got {shown(self.crop)}")
        if self.channels not in (1, 3):
            raise ConfigError(f"channels must be 1 or 3, got {shown(self.channels)}")
        for name in ("beta1", "beta2", "ema_decay"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.spectral_norm not in SPECTRAL_NORM:
            raise ConfigError(f"spectral_norm must be one of {', '.join(SPECTRAL_NORM)}, got "
                              f"{shown(self.spectral_norm)}")
        for name, choices in (("precision", PRECISIONS), ("compile", COMPILE),
                              ("compile_mode", COMPILE_MODES)):
            if getattr(self, name) not in choices:
                raise ConfigError(f"{name} must be one of {', '.join(choices)}, got "
                                  f"{shown(getattr(self, name))}")
        if self.eval_num_real == 1:
            raise ConfigError(f"eval_num_real must be 0 (all) or at least 2, got {self.eval_num_real}")
        if not _DEVICE_RE.fullmatch(self.device):  # fullmatch: "cpu\n" is no device
            raise ConfigError(f"device {shown(self.device)} is not one of auto, cpu, cuda, cuda:K, mps")

    def to_dict(self) -> dict[str, Any]:
        """JSON-shaped: tuples (class names) as lists."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> Config:
        check_keys(values, source)
        return cls(**values)

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)


FIELD_NAMES = tuple(f.name for f in fields(Config))


def check_keys(values: dict[str, Any], source: str) -> None:
    unknown = sorted(set(values) - set(FIELD_NAMES))
    if unknown:
        raise ConfigError(
            f"unknown config key {shorten(unknown[0])} in {source}{did_you_mean(unknown[0], FIELD_NAMES)}; "
            f"known keys: {', '.join(FIELD_NAMES)}"
        )


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a flat TOML (or JSON) file of config keys; validates the keys, not the values."""
    path = Path(path)
    try:
        text = read_regular(path, 1 << 20).decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist; check the path") from None
    except NotRegularFile:
        raise ConfigError(f"config file {path} is not a regular file (a FIFO?); pass a TOML "
                          "or JSON file") from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text") from None
    try:
        values = (json.loads(text, object_pairs_hook=_refuse_duplicates) if path.suffix == ".json"
                  else tomllib.loads(text))
    except DuplicateKey as e:  # TOML refuses them itself; JSON would keep the last silently
        raise ConfigError(f"config file {path} gives {shorten(e.key)} twice; keep one") from None
    except ValueError as e:  # TOMLDecodeError, JSONDecodeError, a number of over 4300 digits
        raise ConfigError(f"config file {path} is not valid {_kind(path)}: "
                          f"{first_line(e)}") from None
    except RecursionError:
        raise ConfigError(f"config file {path} is nested too deeply; write flat keys") from None
    flat = "a flat object of keys" if _kind(path) == "JSON" else "flat `key = value` lines"
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must hold {flat}")
    keys = [k.replace("-", "_") for k in values]
    if twice := sorted({k for k in keys if keys.count(k) > 1}):
        raise ConfigError(f"config file {path} gives {twice[0]} twice (as - and _); keep one")
    values = {k.replace("-", "_"): v for k, v in values.items()}
    for key, value in values.items():
        if isinstance(value, dict) and key not in FIELD_TYPES:  # a [section] header
            raise ConfigError(f"config file {path}: {key} is a table; write {flat}")
    check_keys(values, str(path))
    check_types(values, f"config file {path}")
    return values


class DuplicateKey(Exception):
    """A JSON object that gives one key twice (json.loads would keep the last of them)."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json.loads' object_pairs_hook: a key given twice is refused, as TOML and checkpoint headers
    refuse it, instead of the last one winning unseen."""
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise DuplicateKey(key)
        seen.add(key)
    return dict(pairs)


def _kind(path: Path) -> str:
    return "JSON" if path.suffix == ".json" else "TOML"


FIELD_TYPES = {f.name: str(f.type) for f in fields(Config)}  # "int", "float", "str", ...
_TYPES: dict[str, type | tuple[type, ...]] = {"int": int, "float": (int, float), "str": str,
                                             "bool": bool}
_WANTED = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false",
           "tuple[str, ...]": "a list of strings"}
# Spellings a file or a call may use beyond a field's own type; settings.normalise turns them
# into it (batch_size = "auto" is BATCH_AUTO, compile = true is "on").
_ALSO_WANTED = {"batch_size": 'an integer or "auto"',
                "compile": f"a string ({', '.join(COMPILE)}) or true/false",
                "spectral_norm": f"a string ({', '.join(SPECTRAL_NORM)}) or true/false"}
SHOWN_CHARS = 60  # of a wrong value quoted in a message
FLOAT_MAX = sys.float_info.max


def check_types(values: dict[str, Any], where: str = "") -> None:
    """Every known key's value of a type that key takes (unknown keys are check_keys' to name).
    Checked where the values come in, before anything uses them (the preset or the checkpoint
    they name is looked up before Config sees them): the error names the key, where it came from
    (`where`: "config file F") and the type it wants."""
    for key, value in values.items():
        kind = FIELD_TYPES.get(key)
        if kind is not None and not _also_accepted(key, value):
            _check_type(key, value, kind, where)


def _also_accepted(key: str, value: Any) -> bool:
    if key == "batch_size":
        return isinstance(value, str) and value.strip().lower() == "auto"
    return key in ("compile", "spectral_norm") and isinstance(value, bool)


def _check_type(name: str, value: Any, kind: str, where: str = "") -> None:
    """ConfigError unless `value` is of the field type `kind` ("int", "float", "str", "bool",
    "tuple[str, ...]"); an int is a float (1 in a file means 1.0), a bool is never a number."""
    if kind == "tuple[str, ...]":
        good = isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)
    else:
        good = isinstance(value, _TYPES[kind]) and (kind == "bool" or not isinstance(value, bool))
    prefix = f"{where}: " if where else ""
    if not good:
        want = _ALSO_WANTED.get(name, _WANTED[kind])
        raise ConfigError(f"{prefix}{name} must be {want}, got {shown(value)}")
    for text in (value if kind == "tuple[str, ...]" else [value] if kind == "str" else []):
        _check_text(name, text, prefix)
    if kind == "float" and isinstance(value, int) and not -FLOAT_MAX <= value <= FLOAT_MAX:
        raise ConfigError(f"{prefix}{name} must be a number a float can hold (at most about "
                          f"1.8e308), got {shown(value)}")


# Keys whose strings name files: there a string may carry the bytes of a file name that is not
# UTF-8, as Python reads them from the command line or a folder (surrogate escapes, U+DC80 to
# U+DCFF); classes too, since they are folder names. Every other string is text.
FILE_NAME_KEYS = frozenset({"dataset", "data_dir", "inception", "init_from", "classes"})


def _check_text(name: str, text: str, prefix: str) -> None:
    """ConfigError unless `text` is text: no NUL (no path or name holds one; the OS refuses it),
    no lone surrogate (JSON's "\\ud800" makes one: it is no character, and no file name or
    output can hold it)."""
    if "\0" in text:
        raise ConfigError(f"{prefix}{name} must be a string without NUL characters, got "
                          f"{shown(text)}")
    try:
        if name in FILE_NAME_KEYS:
            os.fsencode(text)
        else:
            text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ConfigError(f"{prefix}{name} must be text, got {shown(text)}: it holds a lone "
                          f"surrogate ({ascii(e.object[e.start])[1:-1]}), which is no character; "
                          "write the character itself") from None


def shown(value: Any) -> str:
    """A value as a message quotes it: in a config file's own words where it has them (true,
    null, a table, a date), and short (a number of a thousand digits, a long list)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, (datetime.date, datetime.time)):  # TOML's dates and times
        what = ("a date and time" if isinstance(value, datetime.datetime)
                else "a date" if isinstance(value, datetime.date) else "a time")
        return f"{value.isoformat()} ({what})"
    if isinstance(value, int) and value.bit_length() > 3 * SHOWN_CHARS:  # str() may refuse it
        return f"an integer of about {int(value.bit_length() * math.log10(2)) + 1} digits"
    try:
        text = repr(value)
    except ValueError:  # a list holding an integer of over 4300 digits
        return f"a {type(value).__name__}"
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS - 1] + "…"


ABOVE_LOW = ("lr_g", "lr_d")  # their lower bound itself is not allowed
MAX_CLASSES = 100_000  # class names a config may hold (ImageNet-21k has 21,841)
MAX_CLASS_NAME = 1000


def _check_bounds(config: Config) -> None:
    """Every numeric field within BOUNDS, checked before torch (or the disk) sees a value."""
    for name, (low, high) in BOUNDS.items():
        value = getattr(config, name)
        if name == "batch_size" and value == BATCH_AUTO:  # found when the run starts
            continue
        above = name in ABOVE_LOW
        if value != value or not low <= value <= high or (above and value == low):  # NaN != NaN
            what = "a whole number" if isinstance(value, int) else "a number"
            span = f"above {low} and at most {high}" if above else f"from {low} to {high}"
            raise ConfigError(f"{name} must be {what} {span}, got {shown(value)}"
                              + _BOUND_HINTS.get(name, ""))
    if len(config.classes) > MAX_CLASSES or any(len(c) > MAX_CLASS_NAME for c in config.classes):
        raise ConfigError(f"classes: at most {MAX_CLASSES} class names of at most "
                          f"{MAX_CLASS_NAME} characters each, got {len(config.classes)}")
