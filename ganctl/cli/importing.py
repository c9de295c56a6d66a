"""`ganctl import`: an NVlabs network file as a ganctl checkpoint (api.import_network)."""

from __future__ import annotations

from typing import Annotated

import typer

from ganctl.cli.core import _call, _emit, _say, app
from ganctl.cli.options import Debug, Json


@app.command("import")
def import_(
    file: Annotated[str, typer.Argument(
        metavar="FILE.pkl", help="An NVlabs StyleGAN2 network: a stylegan2-ada-pytorch or "
        "stylegan3 (--cfg=stylegan2) .pkl, a training snapshot or a published network.",
        show_default=False)],
    out: Annotated[str | None, typer.Argument(
        metavar="OUT.safetensors", help="The checkpoint to write (an earlier import is "
        "replaced, nothing else).", show_default="FILE.safetensors, beside FILE")] = None,
    json_mode: Json = False,
    debug: Debug = False,
) -> None:
    """Import an NVlabs StyleGAN2 network (.pkl) as a ganctl checkpoint: G, D, G_ema, their
    settings and w_avg, read without running anything in the file. sample, eval, export,
    inspect and train --init-from also take the .pkl itself.

    Example: ganctl import ffhq.pkl ffhq.safetensors
    """
    from ganctl import api

    r = _call(debug, lambda: api.import_network(file, out, notes=_say))
    size = f"{r['resolution']}x{r['resolution']}x{r['channels']}"
    classes = f", {len(r['classes'])} classes" if r["classes"] else ""
    _emit(json_mode, r, f"wrote {r['out']} ({r['bytes'] / 1e6:.1f} MB): {', '.join(r['imported'])} "
                        f"of {r['source']} ({r['code']}, {size}, z {r['z_dim']}{classes}) in "
                        f"{r['seconds']:.1f} s; try: ganctl sample -n 16 grid.png --ckpt {r['out']}")
