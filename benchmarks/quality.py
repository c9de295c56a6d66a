"""How good is a model after M minutes of training? Train a config and score it every K seconds.

Trains any `ganctl train` configuration in-process on the CIFAR-10 JPEGs of ../shared/data (or
the --dataset given among the train flags) for --minutes of training time, and evaluates G_ema
every --every seconds of it; evaluation time is kept off the training clock. Beside the model,
the floor: --num real test images scored the same way against the same real statistics (what a
perfect generator would score at this N).

    python benchmarks/quality.py --minutes 10 --every 150 --num 500 --num-real 2000 -- \\
        --device cpu                       # the default DCGAN on CIFAR-10 at 32x32
    python benchmarks/quality.py --num 10000 --json -- --batch-size 128   # on a GPU

Prints a table of training seconds, step, images seen, FID and KID (mean and std), or one
JSON document with --json. On the CPU use small N and read KID, which is unbiased at small N.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from rich.console import Console  # noqa: E402

from ganctl.cli import train_values  # noqa: E402
from ganctl.data import load_dataset  # noqa: E402
from ganctl.device import describe, resolve_device  # noqa: E402
from ganctl.engine.state import init_state  # noqa: E402
from ganctl.engine.step import train_step  # noqa: E402
from ganctl.imagefiles import write_image_file  # noqa: E402
from ganctl.metrics import parse_metrics  # noqa: E402
from ganctl.metrics.scores import compute  # noqa: E402
from ganctl.output.progress import RunLog  # noqa: E402
from ganctl.sample import generate, labels_for_seeds, latents_from_seeds  # noqa: E402
from ganctl.scoring import batch_size_for, extract, make_evaluator, real_batches  # noqa: E402
from ganctl.session import fit_to_data  # noqa: E402
from ganctl.settings import resolve_config  # noqa: E402

SHARED = ROOT.parent / "shared" / "data" / "cifar10"
GRID = 64  # the article's 8x8 grid
GPU_STEPS_PER_SYNC = 20  # steps between reads of the clock on a GPU (each read waits for it)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--minutes", type=float, default=10.0, help="training time (evaluation excluded)")
    ap.add_argument("--every", type=float, default=120.0, help="seconds of training between scores")
    ap.add_argument("--images", type=int, default=0, help="instead of --minutes: train until D has "
                    "seen this many real images (compares models at equal data, not equal time)")
    ap.add_argument("--every-images", type=int, default=0, help="with --images: images between scores")
    ap.add_argument("--num", type=int, default=10000, help="fakes per score (500 on a CPU)")
    ap.add_argument("--num-real", type=int, default=0, help="real images for the statistics (0: all)")
    ap.add_argument("--metrics", default="fid,kid,pr", help="fid, kid, pr (precision and recall)")
    ap.add_argument("--grid", type=Path, default=None, help="write G_ema's 64 images of seeds "
                    "0-63 here at the end (PNG)")
    ap.add_argument("--inception", default=None, help="the Inception file (default: the usual lookup)")
    ap.add_argument("--test", type=Path, default=SHARED / "cifar10_test_jpg.zip",
                    help="held-out real images for the floor (a folder or zip)")
    ap.add_argument("--no-floor", action="store_true", help="skip the floor (comparing configs)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("train", nargs=argparse.REMAINDER, help="-- then any `ganctl train` flags")
    args = ap.parse_args()
    flags = [a for a in args.train if a != "--"]
    values = train_values(flags)
    if "dataset" not in values:  # CIFAR-10 at its own size (a folder or zip defaults to 64)
        values.update(dataset=str(SHARED / "cifar10_train_jpg.zip"),
                      resolution=values.get("resolution", 32))
    config = resolve_config(values)
    console = Console(stderr=True, highlight=False)
    log = RunLog(console)
    device = resolve_device(config.device)
    data = load_dataset(config, progress=log.task)
    config = fit_to_data(config, data)  # the class names, as a run gets them
    metrics = parse_metrics(args.metrics)
    evaluator = make_evaluator(config, data, device, metrics, args.num, args.num_real or None,
                               args.inception, True, log, progress=False)
    floor = {"num": 0, "seconds_per_100": None} if args.no_floor else held_out_floor(
        args.test, config, evaluator, log)
    state = init_state(config, device, data.images, data.labels if data.classes else None)
    log.info(f"{config.arch} {config.resolution}px, batch {config.batch_size}, on "
             f"{config.dataset} ({len(data.images)} images), device {describe(device)}; scoring "
             f"{args.num} fakes against {evaluator.real.count} reals every "
             + (f"{args.every_images or args.images} images" if args.images else f"{args.every:.0f} s"))
    if args.images:
        rows = train_and_score(state, evaluator, args.images, args.every_images or args.images,
                               device, log, by_images=True)
    else:
        rows = train_and_score(state, evaluator, args.minutes * 60, args.every, device, log)
    if args.grid:
        write_image_file(sample_grid(state.G_ema, config, GRID, device), args.grid)
    doc = {"config": config.to_dict(), "device": describe(device), "torch": torch.__version__,
           "machine": platform.processor() or platform.machine(), "num_fake": args.num,
           "num_real": evaluator.real.count, "feature_net": evaluator.net.describe(),
           "seconds_per_100_features": floor.pop("seconds_per_100"), "floor": floor, "rows": rows}
    if args.json:
        print(json.dumps(doc))
    else:
        print_table(doc)
    return 0


def sample_grid(G: torch.nn.Module, config, count: int, device: torch.device) -> torch.Tensor:
    """G_ema's images for seeds 0..count-1, the same latents for every run."""
    seeds = range(count)
    c = labels_for_seeds(seeds, config)
    return generate(G, latents_from_seeds(seeds, config.z_dim), device, c)


def held_out_floor(test: Path, config, evaluator, log: RunLog) -> dict:
    """`evaluator.num_fake` held-out real images scored like fakes: the floor at this N."""
    held = load_dataset(config.replace(dataset=str(test), split="", batch_size=1), progress=log.task)
    count = min(evaluator.num_fake, len(held.images))
    t0 = time.perf_counter()
    feats = extract(evaluator.net, real_batches(held.images, count, batch_size_for(evaluator.net.device)),
                    count, f"features of {count} held-out real images", log.task)
    seconds = time.perf_counter() - t0  # images through Inception, the resize included
    scores = compute(evaluator.metrics, evaluator.real, feats, evaluator.net.device)
    log.info(f"floor ({count} held-out reals): " + ", ".join(f"{k} {v:.4g}" for k, v in scores.items()
                                                            if k in ("fid", "kid")))
    return {"num": count, **scores, "seconds_per_100": round(seconds / count * 100, 2)}


def train_and_score(state, evaluator, budget: float, every: float, device: torch.device,
                    log: RunLog, by_images: bool = False) -> list[dict]:
    """Train, scoring every `every` seconds of training (or, by_images, real images seen) up to
    `budget` of them."""
    phases = state.loss.phases()
    clock, next_score, rows = 0.0, every, []
    steps_per_sync = GPU_STEPS_PER_SYNC if device.type == "cuda" else 1
    while True:
        t0 = time.perf_counter()
        for _ in range(steps_per_sync):
            train_step(state, phases)
        sync(device)
        clock += time.perf_counter() - t0
        progress = state.drawn * state.config.batch_size if by_images else clock
        if progress >= next_score or progress >= budget:
            result = evaluator(state.G_ema, state.config)
            row = {"seconds": round(clock, 1), "step": state.step,
                   "images": state.drawn * state.config.batch_size, **result.scores,
                   "eval_seconds": result.seconds}
            rows.append(row)
            log.info(f"{row['seconds']:7.0f} s  step {row['step']:7d}  {result.summary()}")
            next_score += every
        if progress >= budget:
            return rows


def print_table(doc: dict) -> None:
    floor = doc["floor"]
    print(f"{doc['config']['arch']} {doc['config']['resolution']}px batch {doc['config']['batch_size']} "
          f"on {Path(doc['config']['dataset']).name}, {doc['device']}, torch {doc['torch']}")
    print(f"{doc['num_fake']} fakes vs {doc['num_real']} reals; feature extraction "
          f"{doc['seconds_per_100_features']} s per 100 images; Inception "
          f"{doc['feature_net']['sha256'][:12]}")
    print(f"{'train s':>8} {'step':>7} {'images':>9} {'FID':>8} {'KID':>9} {'KID std':>8} "
          f"{'prec':>6} {'recall':>6}")
    for r in doc["rows"]:
        print(f"{r['seconds']:8.0f} {r['step']:7d} {r['images']:9d} {_scores(r)}")
    if floor["num"]:
        print(f"{'floor':>8} {'':>7} {floor['num']:9d} {_scores(floor)}")


def _scores(r: dict) -> str:
    return (f"{r.get('fid', np.nan):8.2f} {r.get('kid', np.nan):9.5f} {r.get('kid_std', np.nan):8.5f} "
            f"{r.get('precision', np.nan):6.3f} {r.get('recall', np.nan):6.3f}")


if __name__ == "__main__":
    sys.exit(main())
