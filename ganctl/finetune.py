"""Fine-tuning (`train --init-from`): another run's G, D and G_ema weights as a new run's start.

The checkpoint's model settings must be the model this run builds (the settings come from it);
a mismatch is a ConfigError naming what differs, before any file of the new run is written.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ganctl import checkpoint
from ganctl.config import Config
from ganctl.engine.state import TrainState
from ganctl.errors import CheckpointError, ConfigError
from ganctl.importers.convert import imported, saved_augment_p
from ganctl.models import get_arch
from ganctl.settings import MODEL_KEYS
from ganctl.stored import check_models, stored_config

Restore = Callable[[TrainState], None]


def init_weights(header: checkpoint.Header, config: Config) -> Restore:
    """Fine-tuning: G, D and G_ema from another run's checkpoint, with fresh optimisers at step 0.
    The model must be the same (a ConfigError naming what differs, before any file is written)."""
    source = stored_config(header)
    check_models(header, source)  # a damaged file (a tensor's shape or dtype) named by its path
    differ = [key for key in MODEL_KEYS if not _same_model_setting(source, config, key)]
    if differ:
        theirs = ", ".join(f"{k} {_model_setting(source, k)}" for k in differ)
        ours = ", ".join(f"{k} {_model_setting(config, k)}" for k in differ)
        raise ConfigError(f"--init-from {header.path} was trained with {theirs}, this run has "
                          f"{ours}; fine-tuning needs the same model: drop those settings (they "
                          "come from the checkpoint) or start without --init-from")
    if not config.conditional:  # a conditional model's shape waits for the data's classes
        _same_structure(header, config)

    def initialise(state: TrainState) -> None:
        if len(source.classes) != len(state.config.classes) and source.conditional:
            raise ConfigError(f"--init-from {header.path} is conditional on {len(source.classes)} "
                              f"classes, dataset {state.config.dataset!r} has "
                              f"{len(state.config.classes)}; a conditional network fine-tunes "
                              f"on data with {len(source.classes)} classes (class folders)")
        if state.config.conditional:  # now that the data's classes shape it
            _same_structure(header, state.config)
        tensors = checkpoint.load_tensors(header, ("G.", "D.", "G_ema.", AUGMENT))
        header.close()  # the file is not read again: no descriptor held for the whole run
        for name in ("G", "D", "G_ema"):
            checkpoint.load_module(getattr(state, name), tensors, name)
        if state.loss.augment is not None:  # an adaptive p goes on from the source's
            state.loss.augment.continue_from(_augment_state(header, tensors))
    return initialise


AUGMENT = "loss.augment."  # the prefix of a checkpoint's augmentation state


def _augment_state(header: checkpoint.Header, tensors: dict[str, torch.Tensor]
                   ) -> dict[str, torch.Tensor]:
    """The source's augmentation state by buffer name: a run's, or the p an imported NVlabs
    network was saved with."""
    state = {k[len(AUGMENT):]: v for k, v in tensors.items() if k.startswith(AUGMENT)}
    p = saved_augment_p(imported(header))
    if not state and p is not None:
        state["p"] = torch.tensor(p)
    return state


def _same_structure(header: checkpoint.Header, config: Config) -> None:
    """The networks `config` builds hold the checkpoint's tensors, name for name and shape for
    shape; other settings than the model's change them too (dcgan's D drops BatchNorm for a
    gradient penalty), which the error says."""
    with torch.device("meta"):
        G, D = get_arch(config.arch).build(config)
    try:
        for name, net in (("G", G), ("D", D), ("G_ema", G)):
            checkpoint.check_shapes(net, header, name)
    except CheckpointError as e:
        why = "; ".join(get_arch(config.arch).notes(config)) or "another loss or penalty"
        raise ConfigError(f"--init-from {header.path}: this run's networks differ from the "
                          f"checkpoint's ({str(e).split('(')[-1].rstrip(')')}), because of {why}; "
                          "fine-tune with the loss and penalties the model was trained with") from None


def _model_setting(config: Config, key: str) -> Any:
    """A model setting as it takes effect (spectral norm auto is on for resnet)."""
    if key == "spectral_norm":
        return "on" if get_arch(config.arch).spectral_norm(config) else "off"
    return getattr(config, key)


def _same_model_setting(a: Config, b: Config, key: str) -> bool:
    if key == "spectral_norm":  # by its effect: auto is on for resnet
        return bool(get_arch(a.arch).spectral_norm(a) == get_arch(b.arch).spectral_norm(b))
    return bool(getattr(a, key) == getattr(b, key))


