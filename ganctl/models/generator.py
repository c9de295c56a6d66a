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

import torch
from torch import nn

W_AVG_BETA = 0.995  # w_avg follows the mean of each batch's w at this decay (NVlabs' value)


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


def run_G(G: nn.Module, z: torch.Tensor, c: torch.Tensor | None = None, *,
          mix: float = 0.0, generator: torch.Generator | None = None
          ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Fakes for training and their w (None without a mapping network). With a mapping network
    it follows w_avg (after the batch's w, without gradient) and, with probability `mix` for each
    image, takes the styles after a random layer from a second latent (style mixing)."""
    if not has_mapping(G):
        return G(z, c), None
    w = G.mapping(z, c)  # type: ignore[operator]
    if G.training:
        with torch.no_grad():
            G.w_avg.lerp_(w[:, 0].mean(0).to(G.w_avg.dtype), 1 - W_AVG_BETA)  # type: ignore[operator]
    if mix > 0:
        w = _mixed(G, w, z, c, mix, generator)
    return G.synthesis(w), w  # type: ignore[operator]


def _mixed(G: nn.Module, w: torch.Tensor, z: torch.Tensor, c: torch.Tensor | None, mix: float,
           generator: torch.Generator | None) -> torch.Tensor:
    """w whose layers from a random cut-off on come from another latent, for a `mix` share of
    the images (the others keep theirs: a cut-off at num_ws)."""
    batch, num_ws = w.shape[0], w.shape[1]
    other = G.mapping(torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype),  # type: ignore[operator]
                      c)
    cut = torch.randint(1, num_ws, (batch,), generator=generator, device=w.device) if num_ws > 1 \
        else torch.ones(batch, dtype=torch.int64, device=w.device)
    keep = torch.rand(batch, generator=generator, device=w.device) >= mix
    cut = torch.where(keep, torch.full_like(cut, num_ws), cut)
    layer = torch.arange(num_ws, device=w.device)[None, :, None]  # (1, num_ws, 1)
    return torch.where(layer < cut[:, None, None], w, other)
