"""Adaptive discriminator augmentation (ADA; Karras et al. 2020): pipeline.py's transforms,
each applied with probability p, where p follows how sure D is of the reals.

  --augment ada                        adaptive p, NVlabs' defaults (pipe bgc)
  --augment ada:target=0.6,interval=4,kimg=500,pipe=bgc,start=0
  --augment ada:p=0.3                  p fixed
Every `interval` steps, with r_t = E[sign(D(real))] over those steps and every process,
    p <- clamp(p + sign(r_t - target) * batch * interval / (kimg * 1000), 0, P_MAX)
so p can move from 0 to 1 in `kimg` thousand images. p and r_t are buffers: checkpointed,
resumed exactly, logged as augment_p and augment_rt; --init-from starts from the source run's p
(start= says otherwise).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ganctl.augment.base import Augmentation, Generator
from ganctl.augment.pipeline import PIPES, Draws, Pipeline
from ganctl.checkpoint.state_dicts import check_number
from ganctl.errors import ConfigError, did_you_mean, shorten

P_MAX = 1 - 2.0**-24  # p stays below 1 (the float32 just below): at 1 every image is transformed
HIGH_P = 0.8  # past it, the data is probably too small for the model (said once)
MAX_INTERVAL = 10**9  # steps between updates of p


@dataclass(frozen=True)
class Options:
    """ada's options (NVlabs' defaults): target r_t, interval in steps, kimg to move p by 1,
    the pipe (pipeline.PIPES), a fixed p (None: adaptive) and where an adaptive p starts
    (None: 0, or the --init-from run's)."""

    target: float = 0.6
    interval: int = 4
    kimg: float = 500.0
    pipe: str = "bgc"
    p: float | None = None
    start: float | None = None


FIELDS = tuple(Options.__dataclass_fields__)
EXAMPLE = "ada, ada:target=0.6,interval=4,kimg=500,pipe=bgc or ada:p=0.3"


def parse(options: str | None, spec: str) -> Options:
    """ada's options from the text after 'ada:' (None: the defaults); anything malformed is a
    ConfigError that names it."""
    if options is None:
        return Options()
    values: dict[str, str] = {}
    for item in options.split(","):
        key, eq, value = (part.strip() for part in item.partition("="))
        if not eq or not key or not value:
            what = shorten(item) if item else "an empty option"
            raise ConfigError(f"augment {shorten(spec)}: {what} is not key=value; write e.g. "
                              f"{EXAMPLE}")
        if key not in FIELDS:
            raise ConfigError(f"augment {shorten(spec)}: unknown option {shorten(key)}"
                              f"{did_you_mean(key, FIELDS)}; ada takes {', '.join(FIELDS)}")
        if key in values:
            raise ConfigError(f"augment {shorten(spec)} sets {key} twice; set it once")
        values[key] = value
    parsed: dict[str, Any] = {k: _value(k, v, spec) for k, v in values.items()}
    return _check(Options(**parsed), spec)


def _value(key: str, text: str, spec: str) -> float | int | str:
    if key == "pipe":
        if text not in PIPES:
            raise ConfigError(f"augment {shorten(spec)}: pipe {shorten(text)} is not one of "
                              f"{', '.join(PIPES)} (NVlabs' --augpipe)")
        return text
    try:
        if not text.isascii() or "_" in text:  # int() and float() take "1_0" and other digits
            raise ValueError(text)
        number = int(text) if key == "interval" else float(text)
    except ValueError:
        kind = "a whole number" if key == "interval" else "a number"
        raise ConfigError(f"augment {shorten(spec)}: {key}={text} is not {kind}") from None
    if not math.isfinite(number):
        raise ConfigError(f"augment {shorten(spec)}: {key} must be finite")
    return number


def _check(o: Options, spec: str) -> Options:
    def bad(what: str) -> ConfigError:
        return ConfigError(f"augment {shorten(spec)}: {what}")

    if not -1 <= o.target < 1:
        raise bad(f"target={o.target:g} must be in [-1, 1): the mean sign of D's outputs on "
                  "reals that p steers toward (NVlabs' 0.6)")
    if not 1 <= o.interval <= MAX_INTERVAL:
        raise bad(f"interval={o.interval} must be from 1 to {MAX_INTERVAL:,} (steps between "
                  "updates of p)")
    if o.kimg <= 0:
        raise bad(f"kimg={o.kimg:g} must be positive (thousands of images for p to move by 1)")
    for key in ("p", "start"):
        value = getattr(o, key)
        if value is not None and not 0 <= value < 1:
            raise bad(f"{key}={value:g} must be in [0, 1): at 1 every image D sees is "
                      "transformed, and G learns the transforms")
    if o.p is not None and (o.start is not None or o.target != Options.target
                            or o.kimg != Options.kimg):
        raise bad("p= fixes p, and start, target and kimg only steer an adaptive p; "
                  "drop p= or them")
    return o


class AdaptiveAugment(Augmentation):
    """pipeline.Pipeline at strength p (a buffer), p moved by feedback() (module docstring)."""

    feedback_names = ("signs", "count")
    p: torch.Tensor  # buffers
    rt: torch.Tensor

    def __init__(self, options: Options | None = None) -> None:
        super().__init__()
        self.options = Options() if options is None else options
        o = self.options
        self.pipeline = Pipeline(dict.fromkeys(PIPES[o.pipe], 1.0))
        self.interval = o.interval
        self.adaptive = o.p is None
        first = min(o.p if o.p is not None else (o.start or 0.0), P_MAX)  # 0.99999999: float32's 1
        self.register_buffer("p", torch.tensor(float(first)))
        self.register_buffer("rt", torch.zeros(()))  # r_t of the last interval
        self._below: bool | None = first <= HIGH_P  # p was at most HIGH_P (None: not known)

    def forward(self, x: torch.Tensor, generator: Generator) -> torch.Tensor:
        n = x.shape[0]
        batch = self.batch if self.batch is not None and self.offset + n <= self.batch else n
        draws = Draws(generator, x.device, n, batch, self.offset if batch != n else 0)
        with torch.autocast(x.device.type, enabled=False):
            return self.pipeline(x.float(), self.p, draws).to(x.dtype).contiguous()

    def measure(self, real_logits: torch.Tensor) -> dict[str, torch.Tensor]:
        signs = real_logits.float().sign()
        return {"signs": signs.sum(), "count": torch.full((), float(signs.numel()),
                                                           device=signs.device)}

    def feedback(self, totals: dict[str, torch.Tensor]) -> None:
        rt = totals["signs"] / totals["count"].clamp(min=1)
        self.rt.copy_(rt)
        if self.adaptive:
            images = (self.batch or 1) * self.interval
            size = min(images / (self.options.kimg * 1000), 1.0)  # finite: a tiny kimg overflows
            step = torch.nan_to_num(torch.sign(rt - self.options.target))  # 0 for a NaN logit
            self.p.copy_((self.p + step * size).clamp(0, P_MAX))

    def stats(self, step: int) -> dict[str, torch.Tensor]:
        """p, and r_t once an interval has measured it (from step `interval` of the run)."""
        return {"augment_p": self.p, **({"augment_rt": self.rt} if step >= self.interval else {})}

    def advice(self, record: dict[str, float]) -> str | None:
        """Once p passes HIGH_P in this run (not when it started above: a fine-tuned or resumed
        run whose p already was)."""
        p = record.get("augment_p")
        if not self.adaptive or not isinstance(p, float):
            return None
        if self._below is None or p <= HIGH_P:
            self._below = p <= HIGH_P
            return None
        if not self._below:
            return None
        return (f"the augmentation probability p passed {HIGH_P} (now {p:.2f}): D still tells "
                "the training images apart with most of what it sees augmented, so the data is "
                "probably too small for this model; add images, make D smaller (--d-width) or "
                "its R1 stronger (--r1), or move p more slowly (ada:kimg=); watch the samples "
                "for augmentations leaking into them")

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._below = None  # resumed: the first record says where p was
    def valid_state(self) -> dict[str, tuple[str, Callable[[Any], bool]]]:
        return {"p": ("a probability from 0 to below 1", lambda n: 0 <= n < 1),
                "rt": ("a mean sign from -1 to 1", lambda n: -1 <= n <= 1),
                "fb_count": ("a count from 0", lambda n: 0 <= n),
                "fb_signs": ("a sum of signs", lambda n: True)}

    def continue_from(self, state: dict[str, torch.Tensor]) -> None:
        """An adaptive p starts from the source run's, unless p= or start= says otherwise (a
        source p that is no probability is refused: CheckpointError)."""
        source = state.get("p")
        if self.adaptive and self.options.start is None and source is not None:
            what, valid = self.valid_state()["p"]
            value = check_number("loss.augment.p", source, what + " (ada:start=0 starts afresh)",
                                 valid)
            self.p.fill_(min(float(value), P_MAX))
            self._below = float(self.p) <= HIGH_P


def make(options: str | None) -> AdaptiveAugment:
    """The adaptive augmentation --augment ada[:OPTIONS] asks for."""
    return AdaptiveAugment(parse(options, "ada" if options is None else f"ada:{options}"))
