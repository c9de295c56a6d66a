"""DiffAugment (Zhao et al. 2020): differentiable augmentations applied to every image D sees,
real and fake, in D's and G's losses alike, so D cannot memorise a small dataset and G still
gets gradients through them. --augment diffaug (all three) or diffaug:translation,color,cutout.

  color        brightness +-0.5, saturation x[0, 2], contrast x[0.5, 1.5]
  translation  a shift of up to 1/8 of the size, zero-filled
  cutout       a zero square of half the size at a random place
Each image draws its own parameters from the generator given (the run's, so it is resumed).

Every augmentation is an Augmentation: a module applied by the loss to every image D sees, whose
buffers are its state (checkpointed with the loss, resumed exactly) and which may learn from
feedback: what measure() returns at each D phase is summed into its buffers, and every
`interval` steps the engine sums those over the processes and hands them to feedback()
(adaptive augmentation's p follows the sign of D on reals this way). DiffAugment has no state.
A new augmentation is a subclass and one line in KINDS.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ganctl.errors import ConfigError, shorten

Generator = torch.Generator | None


def _rand(x: torch.Tensor, g: Generator, *shape: int) -> torch.Tensor:
    return torch.rand(x.shape[0], *shape, device=x.device, dtype=x.dtype, generator=g)


def color(x: torch.Tensor, g: Generator) -> torch.Tensor:
    x = x + (_rand(x, g, 1, 1, 1) - 0.5)  # brightness
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (_rand(x, g, 1, 1, 1) * 2) + mean  # saturation
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (_rand(x, g, 1, 1, 1) + 0.5) + mean  # contrast


def translation(x: torch.Tensor, g: Generator, ratio: float = 0.125) -> torch.Tensor:
    """Shift each image by whole pixels (up to ratio of its size), filling with zeros."""
    b, _, h, w = x.shape
    shift = torch.stack([((_rand(x, g) * 2 - 1) * ratio * s).round() for s in (w, h)], dim=1)
    theta = torch.zeros(b, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = theta[:, 1, 1] = 1
    theta[:, :, 2] = -2 * shift / torch.tensor([w, h], device=x.device, dtype=x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def cutout(x: torch.Tensor, g: Generator, ratio: float = 0.5) -> torch.Tensor:
    """Zero a square of ratio x the size, centred anywhere in the image (clipped at its edges)."""
    _, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    cy = (_rand(x, g) * (h + 1 - ch % 2)).floor()[:, None, None]  # (B, 1, 1) centres
    cx = (_rand(x, g) * (w + 1 - cw % 2)).floor()[:, None, None]
    ys = torch.arange(h, device=x.device, dtype=x.dtype)[None, :, None]
    xs = torch.arange(w, device=x.device, dtype=x.dtype)[None, None, :]
    top, left = cy - ch // 2, cx - cw // 2
    inside = (ys >= top) & (ys < top + ch) & (xs >= left) & (xs < left + cw)  # (B, H, W)
    return x * (~inside)[:, None].to(x.dtype)


POLICIES: dict[str, Callable[[torch.Tensor, Generator], torch.Tensor]] = {
    "color": color, "translation": translation, "cutout": cutout}


OFF = ("", "none", "off")  # the values that mean no augmentation


def parse(spec: str) -> list[str]:
    """'', 'none', 'off' -> []; 'diffaug' -> every policy; 'diffaug:translation,color' -> those,
    in order. Anything else, an empty or repeated policy included, is refused."""
    if spec.strip().lower() in OFF:
        return []
    name, colon, listed = spec.partition(":")
    if name != "diffaug":
        raise ConfigError(f"augment {shorten(spec)}: the augmentation is diffaug, e.g. diffaug or "
                          "diffaug:translation,color,cutout (none turns it off)")
    if not colon:
        return list(POLICIES)
    policies = [p.strip() for p in listed.split(",")]
    for p in policies:
        if p not in POLICIES:
            raise ConfigError(f"augment {shorten(spec)}: {'an empty' if not p else 'unknown'} policy"
                              f"{'' if not p else ' ' + repr(p)}; list some of "
                              f"{', '.join(POLICIES)}, comma-separated, or write diffaug for all")
    if len(set(policies)) < len(policies):
        raise ConfigError(f"augment {shorten(spec)} names a policy twice; name each once")
    return policies


class Augmentation(nn.Module):
    """An augmentation of the images D sees, reals and fakes alike (subclasses: forward).

    feedback_names: what measure() returns, each summed into a buffer `fb_<name>` until the
    engine delivers the sums every `interval` steps (0: never), over every process, to feedback().
    Buffers (those sums, and the state feedback moves, such as a probability) are checkpointed."""

    feedback_names: ClassVar[tuple[str, ...]] = ()
    interval: int = 0

    def __init__(self) -> None:
        super().__init__()
        for name in self.feedback_names:
            self.register_buffer(f"fb_{name}", torch.zeros(()))  # float32: exact counts to 2**24

    def forward(self, x: torch.Tensor, generator: Generator) -> torch.Tensor:
        raise NotImplementedError

    def measure(self, real_logits: torch.Tensor) -> dict[str, torch.Tensor]:
        """What this augmentation learns from D's logits on augmented reals, as sums (on the
        device: nothing is read back here)."""
        return {}

    @torch.no_grad()
    def observe(self, real_logits: torch.Tensor) -> None:
        """Add measure()'s sums to the pending feedback."""
        for name, value in self.measure(real_logits.detach()).items():
            getattr(self, f"fb_{name}").add_(value)

    def pending(self) -> dict[str, torch.Tensor]:
        """The feedback summed since the last delivery, by name (the buffers themselves)."""
        return {name: getattr(self, f"fb_{name}") for name in self.feedback_names}

    def feedback(self, totals: dict[str, torch.Tensor]) -> None:  # noqa: B027 (optional)
        """Learn from the sums of an interval over every process (state changes go to buffers)."""

    @torch.no_grad()
    def deliver(self, total: Callable[[list[torch.Tensor]], None]) -> None:
        """The engine's part, every `interval` steps: `total` sums the pending feedback over the
        processes in place; feedback() gets it, and the sums start again from zero."""
        pending = self.pending()
        if pending:
            total(list(pending.values()))
        self.feedback(pending)
        for value in pending.values():
            value.zero_()


class DiffAugment(Augmentation):
    """DiffAugment's policies in order; no state, no feedback."""

    def __init__(self, policies: list[str]) -> None:
        super().__init__()
        self.policies = list(policies)

    def forward(self, x: torch.Tensor, generator: Generator) -> torch.Tensor:
        for policy in self.policies:
            x = POLICIES[policy](x, generator)
        return x.contiguous()


# name -> the augmentation for the spec's options (after "name:"; None without a colon)
KINDS: dict[str, Callable[[str | None], Augmentation]] = {}


def _diffaug(options: str | None) -> Augmentation:
    return DiffAugment(parse("diffaug" if options is None else "diffaug:" + options))


KINDS["diffaug"] = _diffaug


def make(spec: str) -> Augmentation | None:
    """The augmentation a config's `augment` names (None: off). A malformed spec is ConfigError."""
    if spec.strip().lower() in OFF:
        return None
    name, colon, options = spec.partition(":")
    if name not in KINDS:
        raise ConfigError(f"augment {shorten(spec)}: the augmentation is {' or '.join(KINDS)}, e.g. "
                          "diffaug or diffaug:translation,color,cutout (none turns it off)")
    return KINDS[name](options if colon else None)
