"""A checkpoint's config and model shapes, checked from its header before anything is built.

`inspect`, `sample`, `eval` and `resume` all read a file that may come from another version of
ganctl or have been edited: its config must be one this version can run (arch, loss,
augmentation and metrics included), and its tensors must be the shapes that config's models
have, with their dtypes. Both are checked here, on the meta device (no memory), and a failure
names the file.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ganctl import augment, checkpoint
from ganctl.config import BATCH_AUTO, Config
from ganctl.errors import CheckpointError, ConfigError
from ganctl.losses import get_loss
from ganctl.metrics import parse_metrics
from ganctl.models import build_generator, build_models, check_config

# the tensors of each network in a checkpoint (G_ema has G's shapes)
NETWORKS = ("G", "D", "G_ema")


def validate(config: Config) -> None:
    """What a Config cannot check alone: the architecture, loss, augmentation and metrics exist
    and fit together."""
    check_config(config)
    get_loss(config.loss)
    augment.make(config.augment)  # a malformed spec: ConfigError
    parse_metrics(config.eval_metrics)


def stored_config(header: checkpoint.Header, overrides: dict[str, Any] | None = None) -> Config:
    """The checkpoint's config, valid for this ganctl, or a CheckpointError naming the file; then
    with `overrides` (the user's flags: their errors are the user's, a ConfigError)."""
    try:
        config = Config.from_dict(header.config, source=f"{header.path} metadata")
        validate(config)
        if config.batch_size == BATCH_AUTO:  # a run records the batch size it found
            raise ConfigError("batch_size is 0")
    except ConfigError as e:
        raise CheckpointError(f"{header.path} holds a config this ganctl cannot use (a damaged "
                              f"file, or one from a newer ganctl): {e}") from None
    if overrides:
        config = config.replace(**overrides)
        validate(config)
    return config


def check_models(header: checkpoint.Header, config: Config, networks: tuple[str, ...] = NETWORKS
                 ) -> dict[str, nn.Module]:
    """The header's tensors are those of `config`'s models, network by network, in name, shape and
    dtype (a same-size dtype swap would load as garbage); the models, on the meta device
    (structure and dtypes only: no memory, no weights), by name."""
    with torch.device("meta"):
        if set(networks) <= {"G", "G_ema"}:  # a generator alone (sampling, export)
            modules = {name: build_generator(config) for name in networks}
        else:
            G, D = build_models(config)
            modules = {"G": G, "D": D, "G_ema": G}
        for name in networks:
            try:
                checkpoint.check_shapes(modules[name], header, name)
                checkpoint.check_dtypes(modules[name], header, name)
            except CheckpointError as e:
                raise CheckpointError(f"{header.path}: {e}; it cannot be used (a damaged file, "
                                      "or its config was edited)") from None
    return modules
