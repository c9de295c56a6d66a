"""Small data (issue 26): N CIFAR-10 training images, three ways of augmenting what D sees.

Takes a fixed, class-balanced subset of --n images (seeded by --subset-seed) of the CIFAR-10
training JPEGs of ../shared/data, extracts it once into the ignored .gpu/small-data/ folder, and
trains the same `ganctl train` configuration on it three times for the same budget (--minutes of
training time, or --images real images seen): with no augmentation, with DiffAugment (diffaug)
and with adaptive augmentation (ada:kimg=--ada-kimg; NVlabs' 500 kimg is for runs far longer
than these). Each final G_ema is scored by FID and KID against the real statistics of the whole
training set (all 50,000 images unless --num-real says fewer), beside the floor of quality.py
(--num held-out test images scored the same way). Writes one sample grid per run and the three
side by side, labelled, into benchmarks/images/ (small-data-<N>-<device>.png); prints a table, or
one JSON document with --json, and whether ADA beat no augmentation on each metric.

    # CPU (KID is the number to read at these N)
    python benchmarks/small_data.py --images 20000 --num 300 --num-real 2000 \\
        -- --device cpu
    # smoke test: end to end in under 2 minutes on one core (grey grids: 10 steps)
    OMP_NUM_THREADS=1 python benchmarks/small_data.py --n 200 --images 320 --num 50 \\
        --num-real 100 --out runs/small-data-smoke -- --device cpu --batch-size 32
    # a GPU, where nothing outside the tree is: the zip and an fp16 Inception in the ignored .gpu/
    # (gpu_check.py prepare; 97 MB, more than one device call carries: stage as gpu_check.py does)
    python benchmarks/small_data.py --zip .gpu/train/cifar10_train_jpg.zip \\
        --inception .gpu/eval/inception-fp16.pt --test .gpu/eval/cifar10_test_jpg.zip \\
        --images 1000000 --num 10000 --json -- --device cuda

Flags after `--` go to `ganctl train` for all three runs (the default: the DCGAN at 32x32, as
quality.py trains); --dataset and --augment are this script's to set.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import shutil
import sys
import time
import zipfile
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import ROOT, SHARED, held_out_floor, sample_grid, train_and_score  # noqa: E402

from ganctl.cli import train_values  # noqa: E402
from ganctl.data import load_dataset  # noqa: E402
from ganctl.device import describe, resolve_device  # noqa: E402
from ganctl.engine.state import init_state  # noqa: E402
from ganctl.fsutil import atomic_write  # noqa: E402
from ganctl.imagefiles import make_grid, png_bytes, upscale, write_image_file  # noqa: E402
from ganctl.metrics import parse_metrics  # noqa: E402
from ganctl.output.progress import RunLog  # noqa: E402
from ganctl.scoring import make_evaluator  # noqa: E402
from ganctl.session import fit_to_data  # noqa: E402
from ganctl.settings import resolve_config  # noqa: E402

CACHE = ROOT / ".gpu" / "small-data"  # ignored (.gitignore: /.gpu/)
IMAGES = ROOT / "benchmarks" / "images"
INCEPTION = ROOT.parent / "shared" / "models" / "inception-2015-12-05.pt"
MANIFEST = ".subset.json"  # a dot file: the folder loader skips it silently
LABEL_HEIGHT = 40  # pixels of text above each grid in the side-by-side picture


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--n", type=int, default=2000, help="training images (class-balanced subset)")
    ap.add_argument("--subset-seed", type=int, default=0, help="which images the subset takes")
    ap.add_argument("--zip", type=Path, default=SHARED / "cifar10_train_jpg.zip",
                    help="the CIFAR-10 training JPEGs (train/<class>/<n>.jpg): the subset's source "
                    "and the real statistics")
    ap.add_argument("--cache", type=Path, default=CACHE, help="where the subset is extracted")
    ap.add_argument("--minutes", type=float, default=10.0, help="training time of each run "
                    "(evaluation excluded)")
    ap.add_argument("--images", type=int, default=0, help="instead of --minutes: train each run "
                    "until D has seen this many real images (equal data, not equal time)")
    ap.add_argument("--ada-kimg", type=float, default=100.0, help="ada's kimg: thousands of images "
                    "for p to move by 1 (NVlabs: 500, for far longer runs)")
    ap.add_argument("--num", type=int, default=10000, help="fakes per score (a few hundred on a CPU)")
    ap.add_argument("--num-real", type=int, default=0, help="real training images for the "
                    "statistics (0: all 50,000)")
    ap.add_argument("--metrics", default="fid,kid")
    ap.add_argument("--inception", default=str(INCEPTION) if INCEPTION.exists() else None,
                    help="the Inception file (default: ../shared's, else the usual lookup)")
    ap.add_argument("--test", type=Path, default=SHARED / "cifar10_test_jpg.zip",
                    help="held-out real images for the floor (a folder or zip)")
    ap.add_argument("--no-floor", action="store_true", help="skip the floor")
    ap.add_argument("--grid", type=int, default=64, help="images in each run's grid (same seeds)")
    ap.add_argument("--scale", type=int, default=2, help="pixels a side per generated pixel in the grids")
    ap.add_argument("--out", type=Path, default=IMAGES, help="folder for the PNGs")
    ap.add_argument("--tag", default=None, help="the device in the file names (default: cpu, h100 ...)")
    ap.add_argument("--runs", default="none,diffaug,ada", help="which of the three to train "
                    "(one again after a failure: the others' numbers stand, at the same budget)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("train", nargs=argparse.REMAINDER, help="-- then any `ganctl train` flags")
    args = ap.parse_args()
    if args.n < 1 or args.images < 0 or args.minutes <= 0 or args.ada_kimg <= 0 or args.grid < 1 \
            or args.scale < 1:
        ap.error("--n, --grid and --scale must be at least 1; --minutes and --ada-kimg positive")
    flags = [a for a in args.train if a != "--"]
    base = train_values(flags)
    for key in ("dataset", "augment"):
        if key in base:
            ap.error(f"--{key} is set by this script; leave it out of the train flags")
    runs = [(name, spec) for name, spec in (("none", "none"), ("diffaug", "diffaug"),
                                            ("ada", f"ada:kimg={args.ada_kimg:g}"))
            if name in args.runs.split(",")]

    console = Console(stderr=True, highlight=False)
    log = RunLog(console)
    folder = extract_subset(args.zip, args.n, args.subset_seed, args.cache, log)
    resolution = base.get("resolution", 32)  # CIFAR-10's own size (a folder defaults to 64)
    full_config = resolve_config({**base, "dataset": str(args.zip), "resolution": resolution})
    device = resolve_device(full_config.device)
    full = load_dataset(full_config, progress=log.task)
    evaluator = make_evaluator(full_config, full, device, parse_metrics(args.metrics), args.num,
                               args.num_real or None, args.inception, True, log, progress=False)
    del full  # 50,000 images; the statistics are what is kept
    floor = {"num": 0, "seconds_per_100": None} if args.no_floor else held_out_floor(
        args.test, full_config, evaluator, log)

    configs = {name: resolve_config(train_values([*flags, "--augment", spec]) | {
        "dataset": str(folder), "resolution": resolution}) for name, spec in runs}
    first = next(iter(configs.values()))
    data = load_dataset(first, progress=log.task)
    tag = args.tag or device_tag(device)
    stem = f"small-data-{args.n}-{tag}"
    budget = args.images or args.minutes * 60
    rows, grids = [], []
    for (name, spec), config in zip(runs, configs.values(), strict=True):
        config = fit_to_data(config, data)
        log.info(f"run {name} (--augment {spec}): {config.arch} {config.resolution}px, batch "
                 f"{config.batch_size}, {len(data.images)} training images, device {describe(device)}; "
                 + (f"{args.images} images" if args.images else f"{args.minutes:g} min"))
        state = init_state(config, device, data.images, data.labels if data.classes else None)
        row = train_and_score(state, evaluator, budget, budget, device, log,
                              by_images=bool(args.images))[-1]
        augment = state.loss.augment
        p = float(augment.stats(state.step)["augment_p"]) if augment is not None and name == "ada" \
            else None
        images = sample_grid(state.G_ema, config, args.grid, device)
        path = args.out / f"{stem}-{name}.png"
        write_image_file(images, path, scale=args.scale)
        grids.append((label(name, spec, row, p), upscale(images, args.scale)))
        rows.append({"run": name, "augment": spec, **row, "augment_p": p, "grid": rel(path)})
        del state
    side = args.out / f"{stem}.png"
    title = (f"{args.n} CIFAR-10 images, {first.arch} {resolution}px, "
             + (f"{args.images} images seen" if args.images else f"{args.minutes:g} min")
             + f", {tag}; {args.num} fakes vs {evaluator.real.count} reals")
    side_by_side(grids, title, side)
    doc = {"config": first.to_dict(), "n": args.n, "subset_seed": args.subset_seed,
           "subset": rel(folder), "device": describe(device), "torch": torch.__version__,
           "machine": platform.processor() or platform.machine(), "budget":
           {"images": args.images} if args.images else {"minutes": args.minutes},
           "num_fake": args.num, "num_real": evaluator.real.count,
           "feature_net": evaluator.net.describe(),
           "seconds_per_100_features": floor.pop("seconds_per_100"), "floor": floor, "rows": rows,
           "side_by_side": rel(side), "ada_beat_none": verdict(rows)}
    if args.json:
        print(json.dumps(doc))
    else:
        print_table(doc)
    return 0


def extract_subset(archive: Path, n: int, seed: int, cache: Path, log: RunLog) -> Path:
    """n training JPEGs of the zip, as even across the classes as n allows (the first n % k
    classes one more), chosen by `seed`, extracted once into cache/ as <class>/<file>; a folder
    whose manifest names other files (or none) is extracted again."""
    with zipfile.ZipFile(archive) as z:
        by_class: dict[str, list[str]] = {}
        for name in sorted(z.namelist()):
            rel_path = PurePosixPath(name)
            if len(rel_path.parts) == 3 and rel_path.suffix.lower() == ".jpg":
                by_class.setdefault(rel_path.parts[1], []).append(name)
        total = sum(map(len, by_class.values()))
        if not by_class or n > total:
            raise SystemExit(f"{archive} holds {total} training JPEGs in class folders; --n {n} "
                             "asks for more")
        rng = np.random.default_rng(seed)
        per, extra = divmod(n, len(by_class))
        chosen = []
        for i, (_, names) in enumerate(sorted(by_class.items())):
            picks = rng.choice(len(names), size=min(len(names), per + (i < extra)), replace=False)
            chosen += [names[j] for j in sorted(picks)]
        folder = cache / f"{archive.stem}-{n}-seed{seed}"
        manifest = {"zip": archive.name, "zip_bytes": archive.stat().st_size, "files": chosen}
        try:
            if json.loads((folder / MANIFEST).read_text()) == manifest:
                log.info(f"subset of {len(chosen)} images: {rel(folder)} (extracted before)")
                return folder
        except (OSError, ValueError):
            pass
        tmp = folder.with_name(folder.name + ".tmp")
        for old in (tmp, folder):
            if old.exists():
                shutil.rmtree(old)
        for name in chosen:
            _, cls, file = PurePosixPath(name).parts
            (tmp / cls).mkdir(parents=True, exist_ok=True)
            (tmp / cls / file).write_bytes(z.read(name))
    (tmp / MANIFEST).write_text(json.dumps(manifest))
    tmp.rename(folder)
    log.info(f"subset of {len(chosen)} images ({len(by_class)} classes) extracted into {rel(folder)}")
    return folder


def rel(path: Path) -> str:
    """A path as the repository names it (no absolute path of this machine in the results)."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def device_tag(device: torch.device) -> str:
    """cpu, mps, or the GPU's model (h100, a100, l4 ...) for the file names."""
    if device.type != "cuda":
        return device.type
    name = torch.cuda.get_device_name(device)
    found = re.search(r"\b([A-Z]+\d+[A-Za-z]*)\b", name.replace("NVIDIA", ""))
    return found.group(1).lower() if found else "cuda"


def label(name: str, spec: str, row: dict, p: float | None) -> str:
    scores = ", ".join(f"{key.upper()} {row[key]:.4g}" for key in ("fid", "kid") if key in row)
    head = name if spec == name else f"{name} ({spec})"
    return head + (f", final p {p:.3f}" if p is not None else "") + f"\n{scores}"


def side_by_side(grids: list[tuple[str, torch.Tensor]], title: str, path: Path) -> None:
    """The runs' grids in a row, each under its label, the title above them all."""
    pictures = [make_grid(images) for _, images in grids]
    height = max(p.shape[0] for p in pictures)
    gap = 12
    width = sum(p.shape[1] for p in pictures) + gap * (len(pictures) - 1)
    canvas = Image.new("RGB", (width, 20 + LABEL_HEIGHT + height), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=14)
    draw.text((4, 2), title, fill="black", font=font)
    x = 0
    for (text, _), picture in zip(grids, pictures, strict=True):
        draw.multiline_text((x + 4, 22), text, fill="black", font=font)
        canvas.paste(Image.fromarray(picture.numpy()), (x, 20 + LABEL_HEIGHT))
        x += picture.shape[1] + gap
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, png_bytes(torch.from_numpy(np.array(canvas))))


def verdict(rows: list[dict]) -> dict[str, bool]:
    """Per metric (lower is better): whether the ada run scored below the run without."""
    by_run = {r["run"]: r for r in rows}
    if "ada" not in by_run or "none" not in by_run:  # --runs left one out
        return {}
    return {key: by_run["ada"][key] < by_run["none"][key] for key in ("fid", "kid")
            if key in by_run["none"]}


def print_table(doc: dict) -> None:
    c, floor = doc["config"], doc["floor"]
    budget = doc["budget"]
    print(f"{doc['n']} CIFAR-10 training images (seed {doc['subset_seed']}), {c['arch']} "
          f"{c['resolution']}px batch {c['batch_size']}, "
          + (f"{budget['images']} images" if "images" in budget else f"{budget['minutes']:g} min")
          + f" each, {doc['device']}, torch {doc['torch']}")
    print(f"{doc['num_fake']} fakes vs {doc['num_real']} reals of the full training set; Inception "
          f"{doc['feature_net']['sha256'][:12]}")
    print(f"{'run':>8} {'train s':>8} {'step':>7} {'images':>9} {'FID':>8} {'KID':>9} {'KID std':>8} "
          f"{'ada p':>6}")
    for r in doc["rows"]:
        p = f"{r['augment_p']:6.3f}" if r["augment_p"] is not None else f"{'':>6}"
        print(f"{r['run']:>8} {r['seconds']:8.0f} {r['step']:7d} {r['images']:9d} "
              f"{r.get('fid', np.nan):8.2f} {r.get('kid', np.nan):9.5f} {r.get('kid_std', np.nan):8.5f} {p}")
    if floor["num"]:
        print(f"{'floor':>8} {'':>8} {'':>7} {floor['num']:9d} {floor.get('fid', np.nan):8.2f} "
              f"{floor.get('kid', np.nan):9.5f} {floor.get('kid_std', np.nan):8.5f}")
    print(f"grids: {', '.join(r['grid'] for r in doc['rows'])}; side by side: {doc['side_by_side']}")
    for key, better in doc["ada_beat_none"].items():
        ada, none = (next(r[key] for r in doc["rows"] if r["run"] == run) for run in ("ada", "none"))
        print(f"ADA beat no augmentation on {key.upper()}: {'yes' if better else 'no'} "
              f"({ada:.4g} vs {none:.4g})")


if __name__ == "__main__":
    started = time.perf_counter()
    code = main()
    print(f"{time.perf_counter() - started:.0f} s in all", file=sys.stderr)
    sys.exit(code)
