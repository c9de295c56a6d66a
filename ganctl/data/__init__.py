"""Dataset registry: name -> how to load it as one uint8 tensor, and its preset defaults.

A dataset is loaded whole as (N, C, H, W) uint8 at the run's resolution and channels;
batches are drawn from that array (see batches.py), on the training device.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ganctl.config import Config
from ganctl.data import shapes
from ganctl.data.batches import Batches
from ganctl.errors import DataError, lookup

__all__ = ["Batches", "DATASETS", "ImageSet", "load_dataset", "preset"]


@dataclass(frozen=True)
class ImageSet:
    images: torch.Tensor  # (N, C, H, W) uint8
    fingerprint: str  # changes when the images do


@dataclass(frozen=True)
class DatasetSpec:
    load: Callable[[Config], ImageSet]
    # Defaults this dataset brings, under the config file and the flags.
    preset: dict[str, Any] = field(default_factory=dict)
    description: str = ""


def _load_shapes(config: Config) -> ImageSet:
    images = shapes.render(config.resolution, config.channels)
    fingerprint = f"shapes-v{shapes.VERSION}-n{shapes.SIZE}-s{shapes.SEED}"
    return ImageSet(images, fingerprint)


DATASETS: dict[str, DatasetSpec] = {
    "shapes": DatasetSpec(
        load=_load_shapes,
        # small enough that `ganctl train` shows learning on a laptop CPU in minutes
        preset={"resolution": 32, "channels": 3, "g_width": 32, "d_width": 32, "steps": 1500,
                "sample_every": 250, "ckpt_every": 500},
        description="built-in coloured shapes, generated on the fly (no download)",
    ),
}


def _spec(name: str) -> DatasetSpec:
    return lookup(DATASETS, name, "dataset", DataError)


def preset(name: str) -> dict[str, Any]:
    """The defaults dataset `name` brings (resolution, channels, run length ...)."""
    return dict(_spec(name).preset)


def load_dataset(config: Config) -> ImageSet:
    data = _spec(config.dataset).load(config)
    if data.images.shape[0] < config.batch_size:
        raise DataError(
            f"dataset {config.dataset!r} has {data.images.shape[0]} images, fewer than "
            f"batch_size {config.batch_size}; lower --batch-size"
        )
    return data
