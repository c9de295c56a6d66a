"""Settings: the layers a run's config is made of (defaults, the dataset's, a preset's,
--init-from's model, a config file, flags), what the user is told about them (option_notes), the
spellings they may take (normalise), and --max-time's deadline. session.py opens runs with them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from ganctl import augment, presets
from ganctl.config import BATCH_AUTO, DEFAULTS, FIELD_NAMES, PROJECTED, Config, Model, check_types
from ganctl.data import is_path, preset
from ganctl.distributed import from_environment
from ganctl.engine.guard import deadline_after, parse_duration
from ganctl.errors import ConfigError, UsageError
from ganctl.models import ARCHS, backbone_names
from ganctl.stored import stored_config, validate
from ganctl.values import shown


def resolve_config(values: dict[str, Any], gpus: int | None = None) -> Config:
    """defaults < dataset preset < the architecture's own < named preset (values["preset"]) <
    the model of values["init_from"] < `values` (file and flags, already merged) -> a checked
    Config. gpus: the processes the run will have (default: this one's world)."""
    return resolve_layers({"given": values}, gpus)[0]


def resolve_layers(given: dict[str, dict[str, Any]], gpus: int | None = None
                   ) -> tuple[Config, dict[str, str]]:
    """The config from the user's layers (name -> values, lowest first: a config file, then the
    flags), and where each value came from: "default", "dataset NAME", "stylegan2-auto ...",
    "preset NAME", "init-from CKPT", or the layer's name (`train --print-config` shows it)."""
    values = {k: v for layer in given.values() for k, v in layer.items()}
    check_types(values)  # before the preset and the checkpoint they name are looked up
    named = presets.get(values["preset"]).settings if values.get("preset") else {}
    if _other_named_dataset(named, values):  # the preset's image shape is its dataset's
        named = {k: v for k, v in named.items() if k not in PRESET_DATA_SHAPE}
    model = init_model(values["init_from"]) if values.get("init_from") else {}
    if model:  # G_ema is the network tuned from: no ramp-up that would replace it with G at once
        model["ema_rampup"] = 0.0
    trained_on = model.pop(IMPORTED_FROM, None)
    if trained_on is not None and "dataset" not in values and "dataset" not in named:
        raise UsageError(f"{values['init_from']} is an NVlabs network trained on {trained_on}, "
                         "which ganctl does not have: give the images to fine-tune it on, "
                         "--dataset DIR", "--dataset")
    values = {**named, **model, **values}
    dataset = values.get("dataset", DEFAULTS["dataset"])
    values = normalise(values)
    arch = ARCHS.get(str(values.get("arch", DEFAULTS["arch"])))
    data = preset(dataset, values, arch.folder_resolution if arch is not None else 0)
    own_layers = presets.arch_defaults({**data, **values}, _processes() if gpus is None else gpus)
    own = {k: v for _, layer in own_layers for k, v in layer.items()}
    config = Config.from_dict({**data, **own, **values})
    validate(config)
    layers = [(f"dataset {dataset}", data), *own_layers,
              (f"preset {values.get('preset')}", named),
              (f"init-from {values.get('init_from')}", model), *given.items()]
    sources = {key: "default" for key in FIELD_NAMES}
    for name, layer in layers:
        sources.update({key: name for key in layer if key in sources})
    return config, sources


def _processes() -> int:
    """The processes of this run: torchrun's world (ganctl train --gpus N starts one), else 1."""
    world = from_environment()
    return world[1] if world else 1


# what a fine-tuned run takes from its source checkpoint: the shape of G and D
MODEL_KEYS = tuple(f.name for f in fields(Model))


def init_model(target: str) -> dict[str, Any]:
    """The model settings of the checkpoint `train --init-from` names (read from its header; an
    NVlabs network file's from its init arguments, with the small-data preset's augmentation:
    importers.convert.finetune_settings)."""
    from ganctl.importers import convert

    header = convert.locate(target, lambda _: None, verify=False)
    stored = stored_config(header)
    source = convert.imported(header)
    trained_on = (source.get("dataset") or {}).get("path") if source is not None else None
    return {**{key: getattr(stored, key) for key in MODEL_KEYS}, **convert.finetune_settings(header),
            **({IMPORTED_FROM: str(trained_on or "their own data")} if source is not None else {})}


IMPORTED_FROM = "(imported from)"  # init_model's mark of an NVlabs network: what it trained on


PRESET_DATA_SHAPE = ("resolution", "channels")


def _other_dataset(named: dict[str, Any], values: dict[str, Any]) -> bool:
    return "dataset" in named and "dataset" in values and values["dataset"] != named["dataset"]


def _other_named_dataset(named: dict[str, Any], values: dict[str, Any]) -> bool:
    """Another built-in dataset than the preset's: it brings its own image size. A folder or zip
    (often the preset's dataset in another form, such as CIFAR-10 as JPEGs) keeps the preset's."""
    return _other_dataset(named, values) and not is_path(values["dataset"])


EVAL_KEYS = ("eval_num", "eval_num_real", "eval_metrics", "inception")  # what --eval-every uses


def option_notes(values: dict[str, Any], config: Config) -> list[str]:
    """One line for each setting the user gave (flag or file) that changes nothing, and for a
    preset used on another dataset than its own."""
    notes = []
    named = presets.get(config.preset).settings if config.preset else {}
    size = f"{config.resolution}x{config.resolution}x{config.channels}"
    if _other_named_dataset(named, values):
        notes.append(f"preset {config.preset} is made for {named['dataset']}; on "
                     f"{values['dataset']} the image size comes from that dataset's defaults and "
                     f"your flags, not the preset: {size}")
    elif _other_dataset(named, values):
        notes.append(f"preset {config.preset} is made for {named['dataset']}; on "
                     f"{values['dataset']} it trains at {size} (--resolution and --channels "
                     "change that)")
    if "gp" in values and config.loss != "wgan-gp":
        notes.append(f"--gp is the weight of wgan-gp's penalty; with --loss {config.loss} it does "
                     "nothing (R1 and R2 are --r1 and --r2)")
    if config.loss == "wgan-gp" and config.gp == 0:
        notes.append("--gp 0: wgan-gp without its gradient penalty is the original WGAN without "
                     "weight clipping, which D can push to any size")
    if "r1_every" in values and not (config.r1 or config.r2):
        notes.append("--r1-every sets how often R1/R2 run; without --r1 or --r2 it does nothing")
    idle = [f"--{k.replace('_', '-')}" for k in EVAL_KEYS if k in values and not config.eval_every]
    if idle:
        notes.append(f"{', '.join(idle)} {'is' if len(idle) == 1 else 'are'} for the evaluations "
                     "during training; without --eval-every N they do nothing")
    if values.get("backbone_weights") and not _stands_on_backbone(config):
        notes.append(f"--backbone-weights is the file of a frozen network a D stands on; "
                     f"{config.arch}'s D stands on none, so it does nothing")
    if "backbone_resolution" in values and config.discriminator != PROJECTED:
        notes.append("--backbone-resolution sizes the images a projected D's backbone sees; "
                     "without --discriminator projected it does nothing")
    return notes + _style_notes(values, config)


# what only a StyleGAN2 (a G with a mapping network and its D) takes
STYLEGAN2_KEYS = ("w_dim", "mapping_layers", "channel_base", "reduced_res", "conv_clamp",
                  "mbstd_group", "d_arch", "style_mixing", "pl_weight", "pl_every",
                  "pl_batch_shrink")


def _flags(keys: Sequence[str]) -> str:
    return ", ".join(f"--{k.replace('_', '-')}" for k in keys)


def _style_notes(values: dict[str, Any], config: Config) -> list[str]:
    """Settings of StyleGAN2 and of the EMA by half-life given where they change nothing."""
    notes = []
    idle = [k for k in STYLEGAN2_KEYS if k in values]
    if idle and config.arch != "stylegan2":
        notes.append(f"{_flags(idle)} {'is' if len(idle) == 1 else 'are'} StyleGAN2's; with "
                     f"--arch {config.arch} {'it does' if len(idle) == 1 else 'they do'} nothing")
    elif config.arch == "stylegan2" and not config.pl_weight and (
            idle := [k for k in ("pl_every", "pl_batch_shrink") if k in values]):
        one = len(idle) == 1
        notes.append(f"{_flags(idle)} {'shapes' if one else 'shape'} path-length "
                     f"regularisation; with --pl-weight 0 it is off, so {'it does' if one else 'they do'} "
                     "nothing")
    if "ema_decay" in values and config.ema_kimg:
        notes.append(f"--ema-decay is a decay per step; with --ema-kimg {config.ema_kimg:g} "
                     "G_ema's half-life is that many thousand images instead (--ema-kimg 0 "
                     "takes --ema-decay)")
    if "ema_rampup" in values and not config.ema_kimg:
        notes.append("--ema-rampup ramps up --ema-kimg's half-life; without --ema-kimg it does "
                     "nothing")
    return notes


def _stands_on_backbone(config: Config) -> bool:
    """Whether the config's D uses a frozen backbone."""
    return bool(backbone_names(config))


def normalise(values: dict[str, Any]) -> dict[str, Any]:
    """Values as they are stored, however flags and files spell them: a folder or zip dataset
    and the backbone's weights file absolute (resume finds them from anywhere), ~ expanded in
    data_dir, on/off switches from booleans, choices in lower case, batch size auto as
    BATCH_AUTO."""
    check_types(values)
    out = dict(values)
    dataset = out.get("dataset")
    if dataset is not None and not dataset.strip():
        raise ConfigError("dataset is empty; give a name (see --help) or a folder, e.g. '.'")
    if dataset and is_path(dataset):
        out["dataset"] = str(_expanded("dataset", dataset).absolute())
    if isinstance(out.get("augment"), str):  # stored without spaces, in lower case; none as ""
        spec = "".join(out["augment"].split()).lower()
        out["augment"] = "" if spec in augment.OFF else spec
    for key in ("compile", "spectral_norm"):  # `compile = true` in a TOML file
        if isinstance(out.get(key), bool):
            out[key] = "on" if out[key] else "off"
    for key in ("precision", "compile", "compile_mode"):  # BF16 is bf16
        if isinstance(out.get(key), str):
            out[key] = out[key].strip().lower()
    if out.get("batch_size") == BATCH_AUTO and not isinstance(out["batch_size"], bool):
        raise ConfigError("batch_size must be a whole number from 1 to 65536, got 0, or auto (the "
                          "largest that fits)")
    if isinstance(out.get("batch_size"), str) and out["batch_size"].strip().lower() == "auto":
        out["batch_size"] = BATCH_AUTO  # found when the run starts, on its device
    if isinstance(out.get("data_dir"), str) and out["data_dir"]:
        out["data_dir"] = str(_expanded("data_dir", out["data_dir"]))
    if isinstance(out.get("backbone_weights"), str) and out["backbone_weights"].strip():
        # absolute, as the dataset: resume finds the file from any directory
        out["backbone_weights"] = str(_expanded("backbone_weights",
                                                out["backbone_weights"]).absolute())
    return out


def _expanded(key: str, path: str) -> Path:
    """~ and ~user expanded; a ~user that this machine does not know is the user's to fix."""
    try:
        return Path(path).expanduser()
    except RuntimeError:
        raise ConfigError(f"{key} {shown(path)} starts with a ~ that names no home directory here; "
                          "write the path out") from None


def deadline_from(max_time: str | None) -> float | None:
    """The time.monotonic() at which --max-time, counted from now, runs out (None: no limit)."""
    return deadline_after(parse_duration(max_time)) if max_time else None


