"""The run configuration: frozen groups of typed settings, validated at construction.

Each setting is a field of one group (data, model, origin, objective, schedule, runtime,
evaluation, watching) that carries its help, its panel in `ganctl train --help`, its bounds or
choices, and whether `ganctl resume` may change it: the CLI's options and the resume list are
made from these fields, nowhere else. A Config reads flat (`config.lr_g`, the same as
`config.objective.lr_g`) and is written flat: the keys of config.json and of every checkpoint
are the fields' names, as they always were.

Precedence when a run starts: built-in defaults < dataset preset < config file < flags.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, fields
from typing import Any, ClassVar

from ganctl.errors import ConfigError, did_you_mean, shorten
from ganctl.fields import BATCH_AUTO as BATCH_AUTO  # (re-exported: the settings use it)
from ganctl.fields import Group, setting
from ganctl.values import check_type, shown

CROPS = ("center", "none")
SPECTRAL_NORM = ("auto", "on", "off")
PRECISIONS = ("auto", "fp32", "tf32", "bf16", "fp16")
COMPILE = ("auto", "on", "off")
COMPILE_MODES = ("auto", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
MAX_D_STEPS = 100  # D updates per G update; WGAN-GP uses 5 (a step must stay interruptible)
MAX_STEP = 999_999_999  # checkpoint names carry nine digits
MAX_CLASSES = 100_000  # class names a config may hold (ImageNet-21k has 21,841)
MAX_CLASS_NAME = 1000

# What the datasets bring when nobody says otherwise (ganctl.data; here, where `--help` reads
# them without importing torch): the built-in shapes are small enough that `ganctl train` shows
# learning on a laptop CPU in minutes, at lr 5e-4 (not the article's 2e-4: its shapes come out
# in 1,500 steps, not blobs); a real dataset trains for longer.
SHAPES_PRESET = {"resolution": 32, "channels": 3, "g_width": 32, "d_width": 32, "steps": 1500,
                 "sample_every": 250, "ckpt_every": 500, "lr_g": 5e-4, "lr_d": 5e-4}
REAL_PRESET = {"steps": 20000, "sample_every": 1000, "ckpt_every": 2000, "log_every": 100}

# the panels of `ganctl train --help` (the other commands' options take the same names)
DATA, MODEL, LOSS, SCHEDULE, OUTPUT, RUNTIME = ("Data", "Model", "Loss and optimiser", "Schedule",
                                                "Output", "Runtime")


@dataclass(frozen=True)
class Data(Group):
    PANEL = DATA
    dataset: str = setting(
        "shapes", "celeba, cifar10, cifar100, mnist, fashion-mnist, svhn, shapes (built in), or a "
        "folder / .zip of images.", resume=True, resume_help="Where the run's folder or zip of "
        "images is now, if it moved (its content must match: see --allow-data-change).")
    data_dir: str = setting("", "Where named datasets live.", resume=True,
                            shown="env GANCTL_DATA_DIR, else ~/.cache/ganctl/datasets")
    split: str = setting("", "Dataset split.", shown="train")
    crop: str = setting("center", "Non-square images: center (crop) or none (pad).", choices=CROPS)
    mirror: bool = setting(False, "Flip a random half of the images horizontally.")
    max_file_mb: int = setting(256, "Image files larger than this many MB are skipped as 'too "
                               "large', unread.", resume=True, bounds=(1, 1 << 20))
    # the class names of the data, filled in from it (empty: unlabelled)
    classes: tuple[str, ...] = setting((), "", hidden=True)

    def check(self) -> None:
        if not self.dataset.strip():
            raise ConfigError("dataset is empty; give a name (see --help) or a folder, e.g. '.'")
        if len(self.classes) > MAX_CLASSES or any(len(c) > MAX_CLASS_NAME for c in self.classes):
            raise ConfigError(f"classes: at most {MAX_CLASSES} class names of at most "
                              f"{MAX_CLASS_NAME} characters each, got {len(self.classes)}")


OWN, PROJECTED = "own", "projected"  # --discriminator: the architecture's D, or Projected GAN's
DISCRIMINATORS = (OWN, PROJECTED)


@dataclass(frozen=True)
class Model(Group):
    """The shape of G and D: what a checkpoint's tensors need, and what fine-tuning takes from
    the checkpoint it starts from. An architecture checks these itself (models/*.check)."""

    PANEL = MODEL
    arch: str = setting("dcgan", "dcgan (the article's), resnet (SNGAN-style residual), mlp (the "
                        "article's fully connected, for MNIST-sized images), stylegan2 (NVlabs' "
                        "StyleGAN2, 32 to 1024 px; without --preset it takes stylegan2-auto's "
                        "settings).")
    resolution: int = setting(32, "Image size: dcgan and resnet 32, 64 or 128; mlp 16, 28, 32 or "
                              "64; stylegan2 32, 64, 128, 256, 512 or 1024.", panel=DATA,
                              bounds=(1, 4096), shown="the dataset's: 64 for celeba and folders "
                              "(stylegan2: a folder's own size, up to 1024), 32 for the others")
    channels: int = setting(3, "1 or 3.", panel=DATA, shown="the dataset's")
    z_dim: int = setting(100, "Latent size.", bounds=(1, 16384), min=1)
    g_width: int = setting(64, "G's base channel count (ngf).", bounds=(1, 4096), min=1)
    d_width: int = setting(64, "D's base channel count (ndf).", bounds=(1, 4096), min=1)
    conditional: bool = setting(False, "Class-conditional G and D (labelled data: class "
                                "folders, cifar10, mnist ...).")
    spectral_norm: str = setting("auto", "Spectral normalisation on every layer of D.",
                                 choices=SPECTRAL_NORM, type=bool,
                                 shown="on for resnet, off otherwise")
    w_dim: int = setting(0, "StyleGAN2: the size of w (0: the latent size).", bounds=(0, 16384),
                         min=0, shown="z-dim")
    mapping_layers: int = setting(8, "StyleGAN2: fully connected layers of the mapping network.",
                                  bounds=(1, 32), min=1, max=32)
    channel_base: int = setting(16384, "StyleGAN2: a block at resolution R has min(channel-base / R, "
                                "width) feature maps; --g-width and --d-width are the most "
                                "(NVlabs' channel_base and channel_max).", bounds=(1, 2**24), min=1)
    reduced_res: int = setting(4, "StyleGAN2: the blocks of the N highest resolutions run in the "
                               "reduced precision --precision picks (bf16 on CUDA), the others in "
                               "float32 (NVlabs' num_fp16_res).", bounds=(0, 10), min=0, max=10)
    conv_clamp: float = setting(256.0, "StyleGAN2: clamp every convolution's output to this size "
                                "(0: none).", bounds=(0.0, 1e9), min=0.0)
    mbstd_group: int = setting(4, "StyleGAN2 D: images per minibatch-stddev group (the largest "
                               "divisor of the batch up to it).", bounds=(1, 65536), min=1)
    d_arch: str = setting("resnet", "StyleGAN2 D: resnet (residual blocks) or orig (plain).",
                          choices=("resnet", "orig"))
    discriminator: str = setting(
        "own", "D: own (the architecture's) or projected (Projected GAN's: a small D on each of "
        "four feature levels of a frozen ImageNet EfficientNet-Lite0, mixed by fixed random "
        "projections; hinge loss, DiffAugment and spectral norm unless told otherwise; its "
        "weights: --backbone-weights).", choices=DISCRIMINATORS)
    backbone_resolution: int = setting(
        0, "Projected D: images are resized to this size for the backbone, a multiple of 32 (0: "
        "224 below 224 px, as it was trained, else the image size; smaller is faster and "
        "coarser).", bounds=(0, 4096), min=0, max=4096, shown="224, or the image size above it")

    def check(self) -> None:
        if self.channels not in (1, 3):
            raise ConfigError(f"channels must be 1 or 3, got {shown(self.channels)}")


@dataclass(frozen=True)
class Origin(Group):
    """Where a run started from: informative once the run exists (their values are its own)."""

    PANEL = MODEL
    preset: str = setting("", "Tested settings to start from (see --list-presets); flags override "
                          "them.")
    init_from: str = setting(
        "", "Fine-tune: start from this checkpoint's (or run's newest, or an NVlabs .pkl's) G, D "
        "and G_ema weights, with fresh optimisers at step 0. The model settings (arch, "
        "resolution, channels, z-dim, widths, conditional, spectral norm) come from it.",
        flag="--init-from", metavar="CKPT|RUN|PKL")


@dataclass(frozen=True)
class Objective(Group):
    """The objective and the optimiser (the article's: Adam, lr 2e-4, betas (0.5, 0.999))."""

    PANEL = LOSS
    loss: str = setting("bce", "bce (the article's, non-saturating G loss), hinge, wgan-gp, "
                        "lsgan, rpgan (relativistic pairing, R3GAN).")
    lr_g: float = setting(2e-4, "G's Adam learning rate.", bounds=(0.0, 10.0))
    lr_d: float = setting(2e-4, "D's Adam learning rate.", bounds=(0.0, 10.0))
    beta1: float = setting(0.5, "Adam's beta1.")
    beta2: float = setting(0.999, "Adam's beta2.")
    d_steps: int = setting(1, "D updates per G update, each on a fresh real batch.",
                           bounds=(1, MAX_D_STEPS), min=1, max=MAX_D_STEPS)
    r1: float = setting(0.0, "R1 gradient penalty weight gamma on reals (0: off).",
                        bounds=(0.0, 1e6), min=0.0)
    r2: float = setting(0.0, "R2: the same on fakes (0: off).", bounds=(0.0, 1e6), min=0.0)
    r1_every: int = setting(16, "Lazy R1/R2: every N steps, weighted by N.", bounds=(1, MAX_STEP),
                            min=1)
    gp: float = setting(10.0, "WGAN-GP penalty weight.", bounds=(0.0, 1e6), min=0.0)
    augment: str = setting("", "Augment everything D sees: ada (adaptive, StyleGAN2-ADA's; "
                           "options ada:target=0.6,interval=4,kimg=500,pipe=bgc,start=0, pipes "
                           "blit geom color filter noise cutout bg bgc bgcf bgcfn bgcfnc; "
                           "ada:p=0.3 fixes p; --init-from continues the source's p), diffaug "
                           "or diffaug:translation,color,cutout; none turns a preset's off.")
    ema_decay: float = setting(0.999, "Decay of G_ema per step (unless --ema-kimg).")
    ema_kimg: float = setting(0.0, "G_ema's half-life in thousands of images (0: --ema-decay per "
                              "step instead).", bounds=(0.0, 1e9), min=0.0)
    ema_rampup: float = setting(0.0, "With --ema-kimg: the half-life is at most this share of the "
                                "images seen so far (0: no ramp-up; NVlabs use 0.05).",
                                bounds=(0.0, 1e6), min=0.0)
    style_mixing: float = setting(0.9, "StyleGAN2: share of fakes whose styles after a random "
                                  "layer come from a second latent.", bounds=(0.0, 1.0), min=0.0,
                                  max=1.0)
    pl_weight: float = setting(2.0, "StyleGAN2: path-length regularisation weight (0: off).",
                               bounds=(0.0, 1e6), min=0.0)
    pl_every: int = setting(4, "Lazy path-length regularisation: every N steps, weighted by N.",
                            bounds=(1, MAX_STEP), min=1)
    pl_batch_shrink: int = setting(2, "Path-length regularisation runs on batch / N images.",
                                   bounds=(1, 65536), min=1)

    def check(self) -> None:
        for name in ("beta1", "beta2", "ema_decay"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"{name} must be in [0, 1), got {getattr(self, name)}")


@dataclass(frozen=True)
class Schedule(Group):
    PANEL = SCHEDULE
    batch_size: int = setting(
        64, "Images per step (on several processes: the global batch, shared among them), or "
        "auto: the largest power of two (up to 2048) whose step fits in the GPU's memory (on a "
        "CPU, 64).", bounds=(1, 65536), type=str, metavar="N|auto")
    steps: int = setting(2000, "Total length of the run in steps (also on resume: the run ends at "
                         "this step).", resume=True, bounds=(1, MAX_STEP), min=1)
    seed: int = setting(0, "Seed of weights, data order and noise.", bounds=(0, 2**32 - 1), min=0,
                        max=2**32 - 1)
    log_every: int = setting(50, "Log metrics (metrics.jsonl) every N steps; the screen also gets "
                             "a line at least every 30 s.", resume=True, bounds=(1, MAX_STEP),
                             min=1)
    sample_every: int = setting(500, "Write a sample grid (and refresh curves.png) every N steps.",
                                resume=True, bounds=(1, MAX_STEP), min=1)
    ckpt_every: int = setting(1000, "Write a checkpoint every N steps.", resume=True,
                              bounds=(1, MAX_STEP), min=1)
    keep: int = setting(3, "Keep the newest N checkpoints (0 keeps all).", resume=True,
                        panel=OUTPUT, bounds=(0, 1_000_000), min=0)


@dataclass(frozen=True)
class Runtime(Group):
    """Where and how the step runs (a run records what "auto" became on its device); a run may
    move to another machine, so resume may change these."""

    PANEL = RUNTIME
    device: str = setting("auto", "auto | cpu | cuda | cuda:K | mps. auto: the CUDA GPU with most "
                          "free memory, else mps, else cpu.", resume=True)
    precision: str = setting(
        "auto", "auto | fp32 | tf32 | bf16 | fp16. auto: bf16 on CUDA GPUs that have it (Ampere "
        "and newer) and on CPUs with native bf16 (AVX512-BF16, AMX) for models measured faster in "
        "it (dcgan from 64 px, widths 64), else fp32. Weights, losses and the EMA stay float32; "
        "fp16 adds loss scaling.", resume=True, choices=PRECISIONS, flag="--precision")
    compile: str = setting("auto", "torch.compile G and D. The first step compiles; kernels are "
                           "cached for the next start.", resume=True, choices=COMPILE, type=bool,
                           shown="on for CUDA, off on a CPU")
    compile_mode: str = setting("auto", "torch.compile mode: default, reduce-overhead (CUDA "
                                "graphs), max-autotune, max-autotune-no-cudagraphs, or auto: "
                                "reduce-overhead on CUDA for the models where it measured faster "
                                "(dcgan with its own D), else default.", resume=True,
                                choices=COMPILE_MODES)
    deterministic: bool = setting(False, "Deterministic GPU kernels: a resumed run matches an "
                                  "uninterrupted one exactly on a GPU too (slower).")
    sync_bn: bool = setting(False, "Several processes (GPUs or CPU): BatchNorm statistics over "
                            "the global batch rather than each process's share.", resume=True)
    backbone_weights: str = setting(
        "", "The weights file of the frozen pretrained network an architecture's D stands on.",
        resume=True, panel=MODEL, flag="--backbone-weights", metavar="PATH",
        shown="its environment variable, else ~/.cache/ganctl/models/, else downloaded")

    _DEVICE: ClassVar[re.Pattern[str]] = re.compile(r"auto|cpu|mps|cuda(:\d+)?")

    def check(self) -> None:
        if not self._DEVICE.fullmatch(self.device):  # fullmatch: "cpu\n" is no device
            raise ConfigError(f"device {shown(self.device)} is not one of auto, cpu, cuda, "
                              "cuda:K, mps")


@dataclass(frozen=True)
class Evaluation(Group):
    """Evaluation during training (eval_every 0: none); an evaluation step is a checkpoint step."""

    PANEL = SCHEDULE
    eval_every: int = setting(
        0, "Score G_ema every N steps (also a checkpoint step; 0: never) and keep checkpoints/best "
        "at the lowest FID. Needs the Inception file (see ganctl eval --help).", resume=True,
        bounds=(0, MAX_STEP), min=0)
    eval_num: int = setting(10000, "Fakes per evaluation during training.", resume=True,
                            bounds=(2, 10_000_000), min=2)
    eval_num_real: int = setting(0, "Real images for the evaluations' statistics (0: all).",
                                 resume=True, bounds=(0, 100_000_000), min=0)
    eval_metrics: str = setting("fid", "Metrics of the evaluations during training, "
                                "comma-separated: those of ganctl eval --metrics.", resume=True)
    inception: str = setting(
        "", "The Inception feature network's file.", resume=True, flag="--inception",
        metavar="PATH", shown="env GANCTL_INCEPTION, else "
        "~/.cache/ganctl/models/inception-2015-12-05.pt, else downloaded")

    def check(self) -> None:
        if self.eval_num_real == 1:
            raise ConfigError(f"eval_num_real must be 0 (all) or at least 2, got "
                              f"{self.eval_num_real}")


@dataclass(frozen=True)
class Watching(Group):
    """Optional extras that watch the run; they may be switched on or off on resume."""

    PANEL = OUTPUT
    curves: bool = setting(True, "Redraw RUN/curves.png at sample steps (at most 5% of training "
                           "time; `ganctl plot` draws it any time).", resume=True)
    tensorboard: bool = setting(False, "Write losses, D outputs, img/s, learning rates, scores and "
                                "sample grids to RUN/tensorboard/ (needs: pip install tensorboard).",
                                resume=True)
    wandb: bool = setting(False, "Log the same to Weights & Biases (needs: pip install wandb).",
                          resume=True)
    wandb_project: str = setting("", "The W&B project.", resume=True, shown="ganctl")


GROUPS: dict[str, type[Group]] = {
    "data": Data, "model": Model, "origin": Origin, "objective": Objective, "schedule": Schedule,
    "runtime": Runtime, "evaluation": Evaluation, "watching": Watching}
SETTINGS = {f.name: f for group in GROUPS.values() for f in fields(group)}  # type: ignore[arg-type]
GROUP_OF = {f.name: name for name, group in GROUPS.items()
            for f in fields(group)}  # type: ignore[arg-type]
FIELD_NAMES = tuple(SETTINGS)
FIELD_TYPES = {name: str(f.type) for name, f in SETTINGS.items()}  # "int", "float", "str", ...
DEFAULTS = {name: f.default for name, f in SETTINGS.items()}
# the settings `ganctl resume` may change: run length, intervals, evaluation, where it runs and
# where its files are (the data's content fingerprint is checked, the feature network's sha256
# recorded with every score); everything else is fixed by the checkpoint
RESUME_OVERRIDABLE = frozenset(name for name, f in SETTINGS.items() if f.metadata["resume"])
BOUNDS = {name: f.metadata["bounds"] for name, f in SETTINGS.items() if f.metadata["bounds"]}
# spellings a file or a call may use beyond a field's own type; settings.normalise turns them
# into it (batch_size = "auto" is BATCH_AUTO, compile = true is "on")
ALSO_WANTED = {"batch_size": 'an integer or "auto"',
               "compile": f"a string ({', '.join(COMPILE)}) or true/false",
               "spectral_norm": f"a string ({', '.join(SPECTRAL_NORM)}) or true/false"}


class Config:
    """One run's settings: a frozen group per concern, read flat (config.steps) or by group
    (config.schedule.steps); made from flat keys (Config(steps=5)), and written flat."""

    __slots__ = tuple(GROUPS)
    data: Data
    model: Model
    origin: Origin
    objective: Objective
    schedule: Schedule
    runtime: Runtime
    evaluation: Evaluation
    watching: Watching

    def __init__(self, **values: Any) -> None:
        if any(hasattr(self, name) for name in GROUPS):
            raise dataclasses.FrozenInstanceError("a Config is made once; replace() makes another")
        check_keys(values, "Config()")
        for name, group in GROUPS.items():
            own = {f.name: values[f.name] for f in fields(group) if f.name in values}  # type: ignore[arg-type]
            object.__setattr__(self, name, group(**own))

    def __getattr__(self, key: str) -> Any:
        """A setting by its flat key (the key of config.json)."""
        group = GROUP_OF.get(key)
        if group is None:
            raise AttributeError(f"Config has no setting {key!r}")
        return getattr(object.__getattribute__(self, group), key)

    def __setattr__(self, key: str, value: Any) -> None:
        raise dataclasses.FrozenInstanceError(f"cannot assign to field {key!r}")

    def __delattr__(self, key: str) -> None:
        raise dataclasses.FrozenInstanceError(f"cannot delete field {key!r}")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Config) and self._groups() == other._groups()

    def __hash__(self) -> int:
        return hash(self._groups())

    def __repr__(self) -> str:
        return f"Config({', '.join(f'{k}={v!r}' for k, v in self.to_dict().items())})"

    def __reduce__(self) -> tuple[Any, ...]:  # pickle and copy: made again from its keys
        return (_from_keys, (self.to_dict(),))

    def _groups(self) -> tuple[Group, ...]:
        return tuple(getattr(self, name) for name in GROUPS)

    def to_dict(self) -> dict[str, Any]:
        """The flat keys, JSON-shaped: tuples (class names) as lists."""
        return {name: list(value) if isinstance(value, tuple) else value
                for group in self._groups() for name, value in dataclasses.asdict(group).items()}  # type: ignore[call-overload]

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> Config:
        check_keys(values, source)
        return cls(**values)

    def replace(self, **changes: Any) -> Config:
        return Config(**{**self.to_dict(), **changes})


def _from_keys(values: dict[str, Any]) -> Config:
    return Config(**values)


def check_keys(values: dict[str, Any], source: str) -> None:
    unknown = sorted(set(values) - set(FIELD_NAMES))
    if unknown:
        raise ConfigError(
            f"unknown config key {shorten(unknown[0])} in {source}{did_you_mean(unknown[0], FIELD_NAMES)}; "
            f"known keys: {', '.join(FIELD_NAMES)}"
        )


def check_types(values: dict[str, Any], where: str = "") -> None:
    """Every known key's value of a type that key takes (unknown keys are check_keys' to name).
    Checked where the values come in, before anything uses them (the preset or the checkpoint
    they name is looked up before Config sees them): the error names the key, where it came from
    (`where`: "config file F") and the type it wants."""
    for key, value in values.items():
        kind = FIELD_TYPES.get(key)
        if kind is not None and not _also_accepted(key, value):
            check_type(key, value, kind, where, ALSO_WANTED.get(key, ""))


def _also_accepted(key: str, value: Any) -> bool:
    if key == "batch_size":
        return isinstance(value, str) and value.strip().lower() == "auto"
    return key in ("compile", "spectral_norm") and isinstance(value, bool)
