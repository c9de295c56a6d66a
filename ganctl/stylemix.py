"""`ganctl sample --style-mix ROWS COLS OUT`: NVlabs' style-mixing figure.

The top row holds the column seeds' images, the left column the row seeds'; the cell of row r
and column k is row r's styles with the layers --styles (default 0-6: the coarse ones, pose and
shape) taken from column k's: which features each group of layers controls, at a glance.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from ganctl.errors import ConfigError, UsageError
from ganctl.imagefiles import write_image_file
from ganctl.models.generator import has_mapping, ws
from ganctl.sample import (
    GENERATE_BATCH,
    LoadedGenerator,
    check_file_size,
    labels_for_seeds,
    latents_from_seeds,
    synthesize,
)
from ganctl.seeds import compact_seeds, parse_seeds

DEFAULT_STYLES = "0-6"  # NVlabs' default: the coarse layers
MAX_SIDE = 64  # seeds a side of the figure may have


def parse_styles(text: str, num_ws: int) -> list[int]:
    """--styles as ranges and lists of layer indices, each below num_ws (a UsageError: exit 2)."""
    try:
        layers = sorted(set(parse_seeds(text)))
    except ConfigError:
        raise UsageError(f"styles {text!r} are not layers: give ranges and lists of layer "
                         f"numbers from 0 to {num_ws - 1}, like 0-6 or 0,2,4", "--styles") from None
    if layers[-1] >= num_ws:
        raise UsageError(f"styles {text}: this generator's styles are layers 0 to {num_ws - 1}",
                         "--styles")
    return layers


def check_sides(rows: Sequence[int], cols: Sequence[int]) -> None:
    for name, seeds in (("rows", rows), ("columns", cols)):
        if len(seeds) > MAX_SIDE:
            raise ConfigError(f"--style-mix: {len(seeds)} seeds of {name} make too large a figure "
                              f"(at most {MAX_SIDE} a side)")


@torch.no_grad()
def style_mix(loaded: LoadedGenerator, rows: Sequence[int], cols: Sequence[int], out: Path,
              device: torch.device, *, styles: str = DEFAULT_STYLES,
              truncation: float | None = None, scale: int = 1,
              batch_size: int = GENERATE_BATCH) -> dict:
    """Draw the figure to `out` (.png, .jpg or .webp); returns what `--json` prints."""
    G, config = loaded.G, loaded.config
    if not has_mapping(G):
        raise ConfigError(f"--style-mix mixes styles: {config.arch} has no mapping network (use "
                          "a stylegan2 model)")
    check_sides(rows, cols)
    layers = parse_styles(styles, int(G.num_ws))  # type: ignore[arg-type]
    # the figure fits one file (its pixels, the format's longest side) before any is drawn
    try:
        check_file_size(config, out, (len(rows) + 1) * (len(cols) + 1), None, len(cols) + 1, scale)
    except ConfigError as e:
        raise ConfigError(f"{str(e).split(';')[0]}: give fewer row or column seeds, or a lower "
                          "--scale (.png has no longest side)") from None
    seeds = [*rows, *cols]
    z = latents_from_seeds(seeds, config.z_dim, nvlabs=loaded.nvlabs_seeds).to(device)
    c = labels_for_seeds(seeds, config)
    w = ws(G.eval(), z, None if c is None else c.to(device), truncation)  # (R + K, num_ws, w_dim)
    row_w, col_w = w[:len(rows)], w[len(rows):]
    mixed = row_w[:, None].repeat(1, len(cols), 1, 1)  # (R, K, num_ws, w_dim)
    mixed[:, :, layers] = col_w[None, :, layers]
    singles = synthesize(G, w, device, batch_size)  # (R + K, C, H, W) uint8
    cells = synthesize(G, mixed.flatten(0, 1), device, batch_size).unflatten(0, (len(rows), len(cols)))
    blank = torch.zeros_like(singles[:1])
    figure = [blank, singles[len(rows):]]  # the top row: the columns' own images
    for r in range(len(rows)):
        figure += [singles[r:r + 1], cells[r]]
    width, height = write_image_file(torch.cat(figure), out, len(cols) + 1, scale)
    return {"out": str(out), "checkpoint": str(loaded.header.path), "step": loaded.header.step,
            "rows": compact_seeds(rows), "columns": compact_seeds(cols), "styles": layers,
            "num_ws": int(G.num_ws),  # type: ignore[arg-type]
            "truncation": truncation, "width": width, "height": height, "device": str(device)}
