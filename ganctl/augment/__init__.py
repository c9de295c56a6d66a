"""Augmentations of the images D sees (base.py: what one is): DiffAugment at a fixed strength
(diffaug.py) and adaptive discriminator augmentation (ada.py, on pipeline.py's transforms).
A new augmentation is a subclass of Augmentation and one line in KINDS."""

from __future__ import annotations

from collections.abc import Callable

from ganctl.augment import ada, diffaug
from ganctl.augment.base import OFF, Augmentation, Generator
from ganctl.errors import ConfigError, shorten

__all__ = ["KINDS", "OFF", "Augmentation", "Generator", "make"]

# name -> the augmentation for the spec's options (the text after "name:"; None without a colon)
KINDS: dict[str, Callable[[str | None], Augmentation]] = {
    "diffaug": lambda options: diffaug.DiffAugment(
        diffaug.parse("diffaug" if options is None else "diffaug:" + options)),
    "ada": ada.make,
}


def make(spec: str) -> Augmentation | None:
    """The augmentation a config's `augment` names (None: off). A malformed spec is ConfigError."""
    if spec.strip().lower() in OFF:
        return None
    name, colon, options = spec.partition(":")
    if name not in KINDS:
        raise ConfigError(f"augment {shorten(spec)}: the augmentation is {' or '.join(KINDS)}, e.g. "
                          "ada, ada:p=0.3, diffaug or diffaug:translation,color,cutout (none turns "
                          "it off)")
    return KINDS[name](options if colon else None)
