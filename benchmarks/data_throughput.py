"""Batches/s from ganctl's decode cache against the classic ImageFolder + DataLoader pipeline.

Both read the same JPEG folder in one run, on the same device, at the same batch size:

  1. the one-time cache build (folder_source + cache.load_or_build): seconds and images/s;
  2. batches/s from the cache through ganctl.data.batches.Batches, resident (the array copied
     to the device once) and streamed (a background thread gathers from the memory map);
  3. batches/s from torchvision.datasets.ImageFolder (Resize, CenterCrop, RandomHorizontalFlip,
     ToTensor, Normalize) + torch.utils.data.DataLoader(num_workers=W), each batch moved to the
     device.

Speed is a ratio against the reference run in the same process, never an absolute figure to
assert on; the last line printed is always `ratio cache/imagefolder: <x>x`, where the cache
figure is the mode Batches picks by itself (resident when the array fits). Each pipeline is
timed in --repeats rounds, interleaved, and its best round counts; the CPU time other processes
took meanwhile is reported, since the cache's per-batch work (torch intra-op threads) slows down
sharply when another process holds a core, far more than the DataLoader's workers do.

By default the input is a generated folder of CelebA-shaped JPEGs (178x218 RGB, quality 90,
a few class subfolders) in a temp dir; --folder uses an existing folder and --cifar-zip
extracts a zip of JPEGs (e.g. the CIFAR-10 test set) into a temp dir. The decode cache also
lives in a temp dir, so nothing is left behind.

  python benchmarks/data_throughput.py
  python benchmarks/data_throughput.py --cifar-zip cifar10_test_jpg.zip --resolution 32
  python benchmarks/data_throughput.py --json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from ganctl.data import cache, folders
from ganctl.data.batches import Batches

CELEBA_SIZE = (178, 218)  # (width, height) of img_align_celeba
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- input data ------------------------------------------------------------------------------------

def make_jpeg_folder(root: Path, count: int, classes: int, seed: int) -> Path:
    """`count` CelebA-shaped JPEGs: a smooth two-colour gradient, a few soft shapes, mild noise.

    The noise keeps the files near the size of real photos (~10 KB), so decoding costs about
    what it would on CelebA rather than what a flat gradient costs.
    """
    rng = np.random.default_rng(seed)
    w, h = CELEBA_SIZE
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
    for i in range(count):
        angle = rng.uniform(0, 2 * np.pi)
        t = (np.cos(angle) * xx / w + np.sin(angle) * yy / h)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        pixels = a + t[..., None] * (b - a) + rng.normal(0, 6, (h, w, 3))
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(image)
        for _ in range(int(rng.integers(2, 6))):
            x0, y0 = rng.uniform(-20, w), rng.uniform(-20, h)
            x1, y1 = x0 + rng.uniform(20, 120), y0 + rng.uniform(20, 140)
            fill = tuple(int(v) for v in rng.integers(0, 256, 3))
            if rng.random() < 0.5:
                draw.ellipse((x0, y0, x1, y1), fill=fill)
            else:
                draw.rectangle((x0, y0, x1, y1), fill=fill)
        image.save(root / f"class{i % classes}" / f"{i:06d}.jpg", quality=90)
    return root


def extract_zip(path: Path, into: Path) -> Path:
    with zipfile.ZipFile(path) as archive:
        archive.extractall(into)
    return image_root(into)


def image_root(folder: Path) -> Path:
    """Descend through folders that hold nothing but one folder (a zip's top-level 'test/')."""
    while True:
        entries = [p for p in folder.iterdir() if not p.name.startswith(".") and p.name != "__MACOSX"]
        if len(entries) == 1 and entries[0].is_dir():
            folder = entries[0]
        else:
            return folder


def imagefolder_root(folder: Path, scratch: Path) -> Path:
    """A root ImageFolder accepts: the folder itself when its images sit in class subfolders,
    else a scratch folder holding one symlinked class (ImageFolder walks links recursively)."""
    loose = any(p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES for p in folder.iterdir())
    if not loose:
        return folder
    wrapper = scratch / "imagefolder"
    wrapper.mkdir(exist_ok=True)
    (wrapper / "all").symlink_to(folder.resolve(), target_is_directory=True)
    return wrapper


# --- other load on the machine -------------------------------------------------------------------

class OtherLoad:
    """CPU time the rest of the machine used during the run, in cores (Linux /proc/stat).

    The cache's per-batch work runs on torch's intra-op threads, which slow down sharply when
    another process takes a core; the figure says whether a run was disturbed.
    """

    def __init__(self) -> None:
        self.start = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float, float] | None:
        try:
            fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
            user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
        except (OSError, ValueError):
            return None
        busy = (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
        t = os.times()  # this process, and its children once reaped (DataLoader workers)
        return busy, t.user + t.system + t.children_user + t.children_system, time.monotonic()

    def cores(self) -> float | None:
        end = self._sample()
        if self.start is None or end is None:
            return None
        busy, own, wall = (b - a for a, b in zip(self.start, end, strict=True))
        return max(0.0, (busy - own) / wall)


# --- timing ----------------------------------------------------------------------------------------

def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def check_batch(x: torch.Tensor, device: torch.device, expect: tuple[int, ...]) -> None:
    if tuple(x.shape) != expect or x.dtype != torch.float32 or x.device.type != device.type:
        raise SystemExit(f"unexpected batch {tuple(x.shape)} {x.dtype} on {x.device}, wanted {expect}")
    lo, hi = float(x.min()), float(x.max())
    if lo < -1.0001 or hi > 1.0001:
        raise SystemExit(f"batch values in [{lo}, {hi}], outside [-1, 1]")


def time_batches(step: Callable[[], torch.Tensor], device: torch.device, warmup: int, batches: int,
                 min_seconds: float) -> dict[str, float]:
    """Batches/s over at least `batches` batches and at least `min_seconds`, after a warm-up.

    The clock is read only after a device synchronize. A pipeline that finishes `batches` in less
    than `min_seconds` runs on for as many more as the rate so far says it needs, so fast and slow
    pipelines are both timed over a span the clock resolves well; the device is synchronized
    twice at most inside the timed span.
    """
    for _ in range(warmup):
        step()
    sync(device)
    done, start = 0, time.perf_counter()
    todo = batches
    while True:
        for _ in range(todo):
            step()
        done += todo
        sync(device)
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            break
        rate = done / max(elapsed, 1e-9)
        todo = max(1, int(rate * (min_seconds - elapsed) * 1.1) + 1)
    return {"batches": done, "seconds": elapsed, "batches_per_s": done / elapsed}


def summarise(runs: list[dict]) -> dict:
    """Best and median of the repeats; the best is the figure least disturbed by other load."""
    rates = sorted(r["batches_per_s"] for r in runs)
    best = max(runs, key=lambda r: r["batches_per_s"])
    return {"batches_per_s": rates[-1], "median_batches_per_s": rates[len(rates) // 2],
            "all_batches_per_s": [r["batches_per_s"] for r in runs], "batches": best["batches"],
            "seconds": best["seconds"]}


# --- the pipelines ---------------------------------------------------------------------------------

def bench_cache_build(folder: Path, resolution: int, cache_dir: Path) -> tuple[dict, np.ndarray]:
    t = time.perf_counter()
    src = folders.folder_source(folder.name, folder)
    scan = time.perf_counter() - t
    t = time.perf_counter()
    decoded = cache.load_or_build(src, resolution, 3, "center", cache_dir=cache_dir)
    build = time.perf_counter() - t
    t = time.perf_counter()
    again = cache.load_or_build(folders.folder_source(folder.name, folder), resolution, 3, "center",
                                cache_dir=cache_dir)
    reuse = time.perf_counter() - t
    if again.path != decoded.path:
        raise SystemExit("the second load_or_build did not reuse the cache")
    count = int(decoded.images.shape[0])
    return {"images": count, "skipped": int(decoded.meta.get("skipped", 0)), "scan_s": scan,
            "build_s": build, "images_per_s": count / build, "reuse_s": reuse,
            "bytes": int(decoded.images.nbytes)}, decoded.images


class CachePipeline:
    """ganctl's Batches over the decoded array; a fresh Batches each round (its setup is timed)."""

    def __init__(self, images: np.ndarray, args: argparse.Namespace, device: torch.device,
                 resident: bool) -> None:
        self.images, self.args, self.device, self.resident = images, args, device, resident
        self.setup_s: list[float] = []
        self.first_batch_s: float | None = None

    def run(self, expect: tuple[int, ...]) -> dict:
        args, device = self.args, self.device
        t = time.perf_counter()
        batches = Batches(self.images, args.batch_size, args.seed, device, mirror=True,
                          resident=self.resident)
        sync(device)
        self.setup_s.append(time.perf_counter() - t)
        try:
            t = time.perf_counter()
            x = batches.next().x
            sync(device)
            if self.first_batch_s is None:
                self.first_batch_s = time.perf_counter() - t
            check_batch(x, device, expect)
            if bool(batches.resident) != self.resident:
                raise SystemExit(f"Batches(resident={self.resident}) gave resident={batches.resident}")
            return time_batches(batches.next, device, self.args.warmup, args.batches, args.min_seconds)
        finally:
            batches.close()
            del batches
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()

    def close(self) -> None:
        pass


class ImageFolderPipeline:
    """The classic reference: ImageFolder + transforms + DataLoader(num_workers), batch moved to the
    device. Workers persist across rounds (started once, like a training run's)."""

    def __init__(self, root: Path, args: argparse.Namespace, device: torch.device) -> None:
        from torchvision import datasets, transforms

        r = args.resolution
        transform = transforms.Compose([
            transforms.Resize(r), transforms.CenterCrop(r), transforms.RandomHorizontalFlip(),
            transforms.ToTensor(), transforms.Normalize(0.5, 0.5)])
        self.dataset = datasets.ImageFolder(str(root), transform=transform)
        self.cuda = device.type == "cuda"
        self.loader = torch.utils.data.DataLoader(
            self.dataset, batch_size=args.batch_size, shuffle=True, num_workers=args.workers,
            drop_last=True, pin_memory=self.cuda, persistent_workers=args.workers > 0,
            generator=torch.Generator().manual_seed(args.seed))
        if len(self.loader) == 0:
            raise SystemExit(f"{len(self.dataset)} images make no full batch of {args.batch_size}")
        self.args, self.device = args, device
        self.it = forever(self.loader)
        self.first_batch_s: float | None = None
        # Idle persistent workers keep prefetch_factor (2) batches each ready between rounds: the
        # warm-up drains them so that none is counted in the timed span.
        self.warmup = max(args.warmup, 2 * args.workers + 1)

    def step(self) -> torch.Tensor:
        x, _ = next(self.it)
        return x.to(self.device, non_blocking=self.cuda)

    def run(self, expect: tuple[int, ...]) -> dict:
        if self.first_batch_s is None:  # worker start-up included, as a training run sees it
            t = time.perf_counter()
            x = self.step()
            sync(self.device)
            self.first_batch_s = time.perf_counter() - t
            check_batch(x, self.device, expect)
        return time_batches(self.step, self.device, self.warmup, self.args.batches, self.args.min_seconds)

    def close(self) -> None:
        self.it.close()
        del self.it, self.loader
        gc.collect()


def forever(loader: torch.utils.data.DataLoader) -> Iterator:
    while True:
        yield from loader


# --- report ----------------------------------------------------------------------------------------

def table(results: dict) -> str:
    build, ref = results["cache_build"], results["imagefolder"]
    rows = [("cache build (one-time)",
             f"{build['images']} images in {build['build_s']:.2f} s = {build['images_per_s']:.0f} img/s"
             f" (scan {build['scan_s']:.2f} s; reuse incl. rescan {build['reuse_s']:.2f} s)", "")]
    for name, label in (("cache_resident", "cache batches, resident"),
                        ("cache_streamed", "cache batches, streamed"),
                        ("imagefolder", "imagefolder + dataloader")):
        r = results[name]
        extra = f"setup {max(r['setup_s']):.2f} s" if "setup_s" in r else \
            f"first batch {r['first_batch_s']:.2f} s"
        rows.append((label, f"{r['batches_per_s']:.1f} batches/s (median {r['median_batches_per_s']:.1f}"
                     f" of {len(r['all_batches_per_s'])}; {r['batches']} in {r['seconds']:.2f} s; {extra})",
                     f"{r['batches_per_s'] / ref['batches_per_s']:.1f}x"))
    width = max(len(r[0]) for r in rows)
    load = results["loadavg_start"]
    lines = [f"device {results['device']}, {results['images']} images at {results['resolution']}px, "
             f"batch {results['batch_size']}, {results['workers']} dataloader workers, "
             f"{results['cpus']} cpus (load avg {load:.2f} at start), torch {results['torch']}"]
    lines += [f"  {name:<{width}}  {value}  {ratio}".rstrip() for name, value, ratio in rows]
    lines.append(f"  best of {results['repeats']} interleaved rounds each; cache mode Batches picks by "
                 f"itself: {results['auto_mode']}")
    if results["other_load_cores"] is not None:
        lines.append(f"  other processes used {results['other_load_cores']:.2f} cores on average "
                     "during the run")
    return "\n".join(lines)


def parse(argv: list[str] | None) -> argparse.Namespace:
    cpus = os.cpu_count() or 1
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    where = p.add_mutually_exclusive_group()
    where.add_argument("--folder", type=Path, help="an existing folder of images (subfolders = classes)")
    where.add_argument("--cifar-zip", type=Path, help="a zip of images, extracted into a temp dir")
    p.add_argument("--images", type=int, default=2000, help="generated JPEGs when no input is given")
    p.add_argument("--classes", type=int, default=4, help="class subfolders of the generated JPEGs")
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--batches", type=int, default=30, help="timed batches per round, after the warm-up")
    p.add_argument("--min-seconds", type=float, default=1.0,
                   help="a round faster than this over --batches runs on until it has been timed this long")
    p.add_argument("--repeats", type=int, default=5,
                   help="interleaved rounds per pipeline; the best counts (least disturbed by other load)")
    p.add_argument("--warmup", type=int, default=3, help="untimed batches before each round")
    p.add_argument("--workers", type=int, default=min(8, cpus), help="DataLoader worker processes")
    p.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda, cuda:1")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the results as one JSON line")
    args = p.parse_args(argv)
    if min(args.batch_size, args.batches, args.resolution, args.repeats) < 1 or args.workers < 0:
        p.error("--batch-size, --batches, --resolution and --repeats must be positive, --workers >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    device = pick_device(args.device)
    loadavg = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    other = OtherLoad()
    with tempfile.TemporaryDirectory(prefix="ganctl-bench-") as tmp:
        scratch = Path(tmp)
        if args.folder is not None:
            folder, origin = image_root(args.folder), str(args.folder)
        elif args.cifar_zip is not None:
            t = time.perf_counter()
            folder, origin = extract_zip(args.cifar_zip, scratch / "images"), str(args.cifar_zip)
            log(f"extracted {args.cifar_zip} in {time.perf_counter() - t:.1f} s")
        else:
            t = time.perf_counter()
            folder = make_jpeg_folder(scratch / "images", args.images, args.classes, args.seed)
            origin = f"generated: {args.images} CelebA-shaped JPEGs (178x218, quality 90)"
            log(f"generated {args.images} JPEGs in {time.perf_counter() - t:.1f} s")

        log("building the decode cache ...")
        build, images = bench_cache_build(folder, args.resolution, scratch / "cache")
        auto = Batches(images, args.batch_size, args.seed, device, resident=None)
        auto_mode = "resident" if auto.resident else "streamed"
        auto.close()
        del auto
        gc.collect()
        if device.type == "cuda":
            device_name = torch.cuda.get_device_name(device)
        else:
            device_name = platform.processor() or platform.machine()
        results: dict = {
            "date": date.today().isoformat(), "device": str(device), "device_name": device_name,
            "cpus": os.cpu_count(), "loadavg_start": loadavg, "torch": torch.__version__,
            "input": origin, "images": build["images"], "resolution": args.resolution,
            "batch_size": args.batch_size, "workers": args.workers, "repeats": args.repeats,
            "cache_build": build, "auto_mode": auto_mode}

        expect = (args.batch_size, 3, args.resolution, args.resolution)
        pipelines = {"cache_resident": CachePipeline(images, args, device, resident=True),
                     "cache_streamed": CachePipeline(images, args, device, resident=False),
                     "imagefolder": ImageFolderPipeline(imagefolder_root(folder, scratch), args, device)}
        runs: dict[str, list[dict]] = {name: [] for name in pipelines}
        try:
            for round_ in range(args.repeats):  # interleaved, so a burst of other load hits all alike
                for name, pipeline in pipelines.items():
                    log(f"round {round_ + 1}/{args.repeats}: {name} ...")
                    runs[name].append(pipeline.run(expect))
        finally:
            for pipeline in pipelines.values():
                pipeline.close()
        for name, pipeline in pipelines.items():
            results[name] = summarise(runs[name])
            results[name]["first_batch_s"] = pipeline.first_batch_s
            if isinstance(pipeline, CachePipeline):
                results[name]["setup_s"] = pipeline.setup_s
        results["imagefolder"]["images"] = len(pipelines["imagefolder"].dataset)
        del pipelines, images
        gc.collect()

    results["other_load_cores"] = other.cores()
    if (results["other_load_cores"] or 0.0) > 0.25:
        log(f"warning: other processes used {results['other_load_cores']:.2f} cores during the run; the "
            "cache figures drop sharply under contention (torch's intra-op threads): rerun on a quiet "
            "machine")
    ref = results["imagefolder"]["batches_per_s"]
    results["ratio_resident"] = results["cache_resident"]["batches_per_s"] / ref
    results["ratio_streamed"] = results["cache_streamed"]["batches_per_s"] / ref
    results["ratio"] = results[f"ratio_{auto_mode}"]
    if results["imagefolder"]["images"] != build["images"]:
        log(f"note: imagefolder found {results['imagefolder']['images']} images, the cache holds "
            f"{build['images']}")
    if args.json:
        print(json.dumps(results, sort_keys=True))
    else:
        print(table(results))
    print(f"ratio cache/imagefolder: {results['ratio']:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
