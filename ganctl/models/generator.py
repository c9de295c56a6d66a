"""What a generator may be, and the one way ganctl runs it.

Every generator maps (B, z_dim) latents z (and (B,) classes c for a conditional one) to (B, C, R,
R) images in [-1, 1] through G(z, c). One with a mapping network (StyleGAN's) has besides:

  mapping(z, c=None) -> w      (B, num_ws, w_dim): the style of each synthesis layer
  synthesis(w) -> images       G(z, c) is synthesis(mapping(z, c))
  num_ws, w_dim                the shape of w
  w_avg                        a buffer (w_dim,): the mean of w, followed while training

G owns truncation psi: toward w_avg in w when it has a mapping network (w_avg + psi (w - w_avg));
toward 0 in z when it does not (sample.latents_from_seeds draws z from the standard normal cut to
[-psi, psi]). Losses draw fakes through run_G, which can mix two latents' styles and return w
(path-length regularisation needs it); sampling, bulk export and interpolation through images().
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

W_AVG_BETA = 0.995  # w_avg follows the mean of each batch's w at this decay (NVlabs' value)


NOISE_MODES = ("const", "random", "none")  # a generator's per-pixel noise when sampling


def set_noise_mode(G: nn.Module, mode: str) -> None:
    """The noise a generator that takes per-pixel noise (StyleGAN2's) uses outside training:
    const (its fixed noise buffers: the same image for the same latent), random or none."""
    if mode not in NOISE_MODES:
        raise ValueError(f"noise mode must be one of {', '.join(NOISE_MODES)}, got {mode!r}")
    synthesis = getattr(G, "synthesis", None)
    if synthesis is not None and hasattr(synthesis, "noise_mode"):
        synthesis.noise_mode = mode


def current_noise_mode(G: nn.Module) -> str | None:
    """The noise mode of a generator that takes per-pixel noise; None for one that takes none."""
    return getattr(getattr(G, "synthesis", None), "noise_mode", None)


@contextmanager
def noise_mode(G: nn.Module, mode: str) -> Iterator[None]:
    """G with noise mode `mode` for the duration, then its own again."""
    before = current_noise_mode(G)
    set_noise_mode(G, mode)
    try:
        yield
    finally:
        if before is not None:
            set_noise_mode(G, before)


def has_mapping(G: nn.Module) -> bool:
    """Whether G is a mapping network and a synthesis network (else G(z, c) alone)."""
    return callable(getattr(G, "mapping", None)) and callable(getattr(G, "synthesis", None))


def truncated_ws(G: nn.Module, w: torch.Tensor, psi: float | None) -> torch.Tensor:
    """w moved toward G's w_avg: psi 1 (or None) leaves it, 0 gives w_avg for every latent."""
    if psi is None or psi == 1:
        return w
    return G.w_avg.to(w.dtype).lerp(w, psi)  # type: ignore[operator]


def ws(G: nn.Module, z: torch.Tensor, c: torch.Tensor | None = None,
       truncation: float | None = None) -> torch.Tensor:
    """The styles of latents z (and classes c), truncated toward w_avg by psi."""
    return truncated_ws(G, G.mapping(z, c), truncation)  # type: ignore[operator]


def images(G: nn.Module, z: torch.Tensor, c: torch.Tensor | None = None,
           truncation: float | None = None) -> torch.Tensor:
    """G's images of z (and c). Truncation applies here to a generator with a mapping network;
    one without had it applied when z was drawn (sample.latents_from_seeds)."""
    if not has_mapping(G):
        return G(z, c)
    return G.synthesis(ws(G, z, c, truncation))  # type: ignore[operator]


def follow_w_avg(G: nn.Module, w: torch.Tensor) -> None:
    """While training, w_avg moves toward the batch's mean w (without gradient)."""
    if G.training:
        avg: torch.Tensor = G.w_avg  # type: ignore[assignment]
        with torch.no_grad():
            avg.lerp_(w[:, 0].mean(0).to(avg.dtype), 1 - W_AVG_BETA)


def mixed(w: torch.Tensor, other: torch.Tensor, cut: torch.Tensor) -> torch.Tensor:
    """w's styles before each image's layer `cut`, `other`'s from it on."""
    layer = torch.arange(w.shape[1], device=w.device)[None, :, None]  # (1, num_ws, 1)
    return torch.where(layer < cut[:, None, None], w, other)


def forward_mapped(G: nn.Module, z: torch.Tensor, c: torch.Tensor | None = None,
                   mix_z: torch.Tensor | None = None, cut: torch.Tensor | None = None,
                   noise: torch.Tensor | None = None) -> torch.Tensor:
    """The forward of a generator with a mapping network, as training calls it (run_G): w of z,
    w_avg followed, the styles from `cut` on taken from mix_z's w, then synthesis (with
    `noise`, a (B, G.noise_size) tensor, where G takes noise). One call, so that a compiled G
    compiles all of it."""
    return _synthesis(G, _training_ws(G, z, c, mix_z, cut), noise)


def _training_ws(G: nn.Module, z: torch.Tensor, c: torch.Tensor | None,
                 mix_z: torch.Tensor | None, cut: torch.Tensor | None) -> torch.Tensor:
    """Training's w of z: w_avg followed, the styles from `cut` on taken from mix_z's w."""
    w = G.mapping(z, c)  # type: ignore[operator]
    follow_w_avg(G, w)
    if mix_z is not None and cut is not None:
        w = mixed(w, G.mapping(mix_z, c), cut)  # type: ignore[operator]
    return w


def _synthesis(G: nn.Module, w: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
    return G.synthesis(w) if noise is None else G.synthesis(w, noise=noise)  # type: ignore[operator]


def run_G(G: nn.Module, z: torch.Tensor, c: torch.Tensor | None = None, *, mix: float = 0.0,
          generator: torch.Generator | None = None, want_ws: bool = False
          ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Fakes for training, and with want_ws their w (None without a mapping network). With a
    mapping network, w_avg follows the batch's w, a `mix` share of the images take their styles
    after a random layer from a second latent (style mixing), and the synthesis noise is drawn
    from `generator` (the run's: exact resume). Without want_ws it is G's own forward (a
    compiled G runs all of it compiled); with it, the parts (path-length regularisation
    differentiates with respect to w, and twice: G must then be the plain network)."""
    if not has_mapping(G):
        return G(z, c), None
    mix_z, cut = _mixing(G, z, mix, generator)
    size = getattr(G, "noise_size", 0)
    noise = (torch.randn(z.shape[0], size, generator=generator, device=z.device)
             if size else None)
    if not want_ws:
        return G(z, c, mix_z, cut, noise), None
    w = _training_ws(G, z, c, mix_z, cut)
    return _synthesis(G, w, noise), w


def _mixing(G: nn.Module, z: torch.Tensor, mix: float, generator: torch.Generator | None
            ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The second latents and each image's cut-off layer for style mixing (None, None without):
    a `mix` share of the images cut at a random layer, the others at num_ws (no mixing)."""
    if mix <= 0:
        return None, None
    batch, num_ws = z.shape[0], int(G.num_ws)  # type: ignore[arg-type]
    other = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
    cut = torch.randint(1, num_ws, (batch,), generator=generator, device=z.device) if num_ws > 1 \
        else torch.ones(batch, dtype=torch.int64, device=z.device)
    keep = torch.rand(batch, generator=generator, device=z.device) >= mix
    return other, torch.where(keep, torch.full_like(cut, num_ws), cut)
