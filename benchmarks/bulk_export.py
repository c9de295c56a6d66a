"""Bulk export speed: generation alone against generation + encoding + writing (issue 13).

A tiny DCGAN (trained one step on the built-in shapes, so it is a real checkpoint) generates
--num images; first generation alone (latents from seeds, G, uint8 on the CPU: what the export
does on its main thread), then ganctl.bulk.export_images into a temp folder for each format.
The ratio export/generation, from the same process, says how much of the generator's speed the
export keeps (1.0: encoding and writing are fully hidden behind generation on the worker
threads). Each figure is the best of --repeats rounds; nothing is left behind.

  python benchmarks/bulk_export.py                                   # CPU, 32x32, 2,000 images
  python benchmarks/bulk_export.py --device cuda --resolution 64 --num 20000
  python benchmarks/bulk_export.py --json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import ganctl  # noqa: E402
from ganctl import bulk, rundir  # noqa: E402
from ganctl.device import describe, resolve_device  # noqa: E402
from ganctl.sample import generate, latents_from_seeds, load_generator  # noqa: E402


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def generation_only(loaded, seeds: list[int], batch_size: int, device: torch.device) -> float:
    """img/s of the export's main-thread work alone, batch by batch as the export does it."""
    start = time.perf_counter()
    for i in range(0, len(seeds), batch_size):
        z = latents_from_seeds(seeds[i:i + batch_size], loaded.config.z_dim)
        generate(loaded.G, z, device, None, batch_size).permute(0, 2, 3, 1).contiguous()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return len(seeds) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=2000)
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--g-width", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=0, help="0: export_images' default")
    parser.add_argument("--formats", default="png,jpg")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    device = resolve_device(args.device)
    seeds = list(range(args.num))
    with tempfile.TemporaryDirectory(prefix="ganctl-bulk-bench-") as tmp:
        run = ganctl.train(steps=1, batch_size=8, resolution=args.resolution, g_width=args.g_width,
                           d_width=8, device="cpu", quiet=True, out=Path(tmp) / "run",
                           sample_every=100, log_every=1, ckpt_every=1)
        loaded = load_generator(rundir.locate(str(run.run_dir), lambda _: None), device)
        generate(loaded.G, latents_from_seeds(range(8), loaded.config.z_dim), device)  # warm-up
        formats = args.formats.split(",")
        best = dict.fromkeys(["generation", *formats], 0.0)
        size = dict.fromkeys(formats, 0)
        for r in range(args.repeats):  # interleaved rounds, so load from elsewhere hits all alike
            best["generation"] = max(best["generation"],
                                     generation_only(loaded, seeds, args.batch_size, device))
            for fmt in formats:
                out = Path(tmp) / f"{fmt}-{r}"
                result = bulk.export_images(loaded, seeds, out, fmt, batch_size=args.batch_size,
                                            device=device, workers=args.workers)
                best[fmt] = max(best[fmt], result["images_per_s"])
                size[fmt] = sum(p.stat().st_size for p in out.glob(f"seed*.{fmt}"))
        gen = best["generation"]
        rows: dict[str, dict] = {"generation": {"images_per_s": round(gen, 1)}}
        log(f"generation alone: {gen:,.0f} img/s")
        for fmt in formats:
            rows[fmt] = {"images_per_s": best[fmt], "ratio": round(best[fmt] / gen, 2),
                         "kb_per_image": round(size[fmt] / args.num / 1000, 2)}
            log(f"{fmt}: {best[fmt]:,.0f} img/s, {best[fmt] / gen:.2f}x of generation alone")
    report = {"device": describe(device), "num": args.num, "resolution": args.resolution,
              "g_width": args.g_width, "batch_size": args.batch_size,
              "workers": args.workers or min(bulk.MAX_WORKERS, os.cpu_count() or 1),
              "torch_threads": torch.get_num_threads(), "results": rows}
    print(json.dumps(report) if args.json else json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
