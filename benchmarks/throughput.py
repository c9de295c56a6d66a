"""Training images/s of ganctl's engine against a loop written like the classic DCGAN example.

In one process, on the same device, at the same batch size and resolution:

  reference  the pytorch/examples DCGAN loop as shipped: fp32 eager (torch's default float32
             modes, cudnn.benchmark on as the example sets it), torchvision ImageFolder +
             DataLoader decoding a generated folder of CelebA-shaped JPEGs (or --folder) every
             epoch (2 workers, the example's default), BCELoss, Adam 2e-4 (0.5, 0.999), its G
             and D (ngf = ndf = 64 by default);
  ganctl     `ganctl train`'s engine on the same JPEGs (decode cache, data on the device, the
             loss's phases, the EMA) for each --archs, same widths, with --precision, --compile
             and --compile-mode as `ganctl train` takes them (default auto: bf16 + compile on a
             CUDA GPU, fp32 eager on a CPU, bf16 eager on one with native bf16 for the models
             measured faster in it: dcgan from 64 px, widths 64); dcgan is the like-for-like row;
  shapes     ganctl on the built-in dataset (--shapes-archs, default dcgan), same sizes;
  baseline   --baseline-archs: the same archs again in fp32 eager, for the speed-up of auto;
  sampling   each row's G_ema generating only (--sample-batch latents a call, in the row's
             precision and memory layout), images/s.

Each row is timed for --seconds after --warmup steps; a compiled row's warmup holds its
compile, which is reported (compile_seconds) and left out of img/s. With --repeats N the
reference and the rows run N rounds, interleaved, and each one's best round counts (the least
disturbed by other processes; other_load_cores says how busy the machine was). The last line
printed is the ratio of ganctl's dcgan over the reference. --json prints one JSON object
instead (reference_img_per_s, ganctl_img_per_s, ratio, device, and every row). --compile-only
builds every row and runs its warmup (fills torch's compile cache for a later timed run) and
times nothing.

  python benchmarks/throughput.py --device cpu --resolution 32 --batch-size 64 --width 32
  python benchmarks/throughput.py --device cpu --archs dcgan --shapes-archs '' --repeats 3  # 64x64
  python benchmarks/throughput.py --batch-size 128 --baseline-archs dcgan,resnet   # a GPU, 64x64
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from torch import nn  # noqa: E402

from benchmarks.cpu_precision import cpu_name  # noqa: E402
from benchmarks.data_throughput import OtherLoad, make_jpeg_folder, pick_device, sync  # noqa: E402
from ganctl.data import ImageSet, load_dataset  # noqa: E402
from ganctl.device import configure_determinism, cpu_bf16  # noqa: E402
from ganctl.engine.state import TrainState, init_state  # noqa: E402
from ganctl.engine.step import train_step  # noqa: E402
from ganctl.errors import first_line  # noqa: E402
from ganctl.output.progress import RunLog  # noqa: E402
from ganctl.session import fit_to_data, on_device  # noqa: E402
from ganctl.settings import resolve_config  # noqa: E402

# --- the reference: the classic example's networks and loop ---------------------------------------

class RefG(nn.Module):
    """The example's generator: ConvTranspose from (nz, 1, 1) to 4x4 x ngf*8, then doubling."""

    def __init__(self, nz: int, ngf: int, nc: int, resolution: int) -> None:
        super().__init__()
        mult = resolution // 8
        layers: list[nn.Module] = [nn.ConvTranspose2d(nz, ngf * mult, 4, 1, 0, bias=False),
                                   nn.BatchNorm2d(ngf * mult), nn.ReLU(True)]
        while mult > 1:
            layers += [nn.ConvTranspose2d(ngf * mult, ngf * mult // 2, 4, 2, 1, bias=False),
                       nn.BatchNorm2d(ngf * mult // 2), nn.ReLU(True)]
            mult //= 2
        layers += [nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.main(z)


class RefD(nn.Module):
    """The example's discriminator: strided convolutions, LeakyReLU 0.2, a sigmoid at 1x1."""

    def __init__(self, ndf: int, nc: int, resolution: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(nc, ndf, 4, 2, 1, bias=False),
                                   nn.LeakyReLU(0.2, inplace=True)]
        mult, size = 1, resolution // 2
        while size > 4:
            layers += [nn.Conv2d(ndf * mult, ndf * mult * 2, 4, 2, 1, bias=False),
                       nn.BatchNorm2d(ndf * mult * 2), nn.LeakyReLU(0.2, inplace=True)]
            mult, size = mult * 2, size // 2
        layers += [nn.Conv2d(ndf * mult, 1, 4, 1, 0, bias=False), nn.Sigmoid()]
        self.main = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x).view(-1, 1).squeeze(1)


def reference(folder: Path, args, device: torch.device) -> float:
    """Images/s of the example's loop, JPEGs decoded by DataLoader workers every epoch."""
    import torchvision.datasets as dset
    import torchvision.transforms as transforms

    # torch's default float32 modes (a ganctl row before may have changed them), and cuDNN's
    # autotuner, which the example turns on (cudnn.benchmark = True)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    dataset = dset.ImageFolder(root=str(folder), transform=transforms.Compose([
        transforms.Resize(args.resolution), transforms.CenterCrop(args.resolution),
        transforms.ToTensor(), transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))]))
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=True,
                                         num_workers=args.workers, drop_last=True)
    netG = RefG(100, args.width, 3, args.resolution).to(device)
    netD = RefD(args.width, 3, args.resolution).to(device)
    criterion = nn.BCELoss()
    optD = torch.optim.Adam(netD.parameters(), lr=2e-4, betas=(0.5, 0.999))
    optG = torch.optim.Adam(netG.parameters(), lr=2e-4, betas=(0.5, 0.999))
    steps, images, t0 = 0, 0, None
    while True:
        for data, _ in loader:
            real = data.to(device)
            b = real.size(0)
            netD.zero_grad()
            label = torch.full((b,), 1.0, device=device)
            errD_real = criterion(netD(real), label)
            errD_real.backward()
            fake = netG(torch.randn(b, 100, 1, 1, device=device))
            label.fill_(0.0)
            errD_fake = criterion(netD(fake.detach()), label)
            errD_fake.backward()
            optD.step()
            netG.zero_grad()
            label.fill_(1.0)
            errG = criterion(netD(fake), label)
            errG.backward()
            optG.step()
            errD_real.item(), errG.item()  # the example prints these every step
            steps += 1
            if steps == args.warmup:
                sync(device)
                t0 = time.perf_counter()
            elif t0 is not None:
                images += b
                if time.perf_counter() - t0 >= args.seconds:
                    sync(device)
                    return images / (time.perf_counter() - t0)


START = time.monotonic()
BUSY = 0.25  # cores of other processes' work during a timing that make its number suspect


# --- ganctl --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Row:
    """One ganctl measurement: an arch on a dataset in a precision, compiled or not."""

    name: str
    arch: str
    dataset: str  # "folder" (the reference's JPEGs) or a built-in dataset's name
    precision: str
    compile: str  # auto | on | off, as `ganctl train` takes it
    compile_mode: str
    discriminator: str = "own"  # or projected: the arch's G against a projected D


def plan(args) -> list[Row]:
    """The rows to measure: each arch as asked, the built-in set, then the fp32 eager baselines."""
    asked = (args.precision, args.compile, args.compile_mode)
    rows = [Row(arch, arch, "folder", *asked) for arch in args.archs]
    rows += [Row(f"{arch} shapes", arch, "shapes", *asked) for arch in args.shapes_archs]
    rows += [Row(f"{arch} fp32 eager", arch, "folder", "fp32", "off", "default")
             for arch in args.baseline_archs]
    # the backbone's cost per image: beside the arch's own row, the same G against a projected D
    rows += [Row(f"{arch} projected", arch, "folder", *asked, discriminator="projected")
             for arch in args.projected_archs]
    return rows


def row_config(row: Row, folder: Path, args):
    values = {"dataset": str(folder) if row.dataset == "folder" else row.dataset, "arch": row.arch,
              "resolution": args.resolution, "channels": 3, "batch_size": args.batch_size,
              "g_width": args.width, "d_width": args.width, "device": args.device,
              "precision": row.precision, "compile": row.compile, "compile_mode": row.compile_mode,
              "discriminator": row.discriminator}
    return resolve_config(values)


def build(row: Row, folder: Path, args, device: torch.device,
          loaded: dict[str, ImageSet]) -> TrainState:
    """The row's state as `ganctl train` builds it: what auto means on this device, cuDNN's
    autotuner as --deterministic leaves it, the data decoded once per dataset."""
    config = on_device(row_config(row, folder, args), device)
    configure_determinism(config.deterministic)
    if row.dataset not in loaded:
        loaded[row.dataset] = load_dataset(config, progress=RunLog(Console(stderr=True)).task)
    data = loaded[row.dataset]
    config = fit_to_data(config, data)
    return init_state(config, device, data.images, data.labels if config.classes else None)


def warm_up(state: TrainState, steps: int, device: torch.device) -> float:
    """Seconds of the first `steps` steps: a compiled state compiles in them (its first calls
    of each variant of G and D), so they stay out of the timed window."""
    phases = state.loss.phases()
    t0 = time.perf_counter()
    for _ in range(steps):
        train_step(state, phases)
    sync(device)
    return time.perf_counter() - t0


def train_rate(state: TrainState, seconds: float, device: torch.device) -> float:
    """Training images/s over `seconds` of steady state."""
    phases = state.loss.phases()
    burst = 10 if device.type == "cuda" else 1  # read the clock without a sync each step
    t0, steps = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        for _ in range(burst):
            train_step(state, phases)
        steps += burst
        sync(device)
    return steps * state.config.batch_size / (time.perf_counter() - t0)


@torch.no_grad()
def sample_rate(state: TrainState, batch: int, seconds: float, device: torch.device) -> float:
    """G_ema generating only: `batch` latents a call, in the run's precision (autocast) and
    memory layout (G_ema is channels_last on CUDA like G), images/s."""
    G = state.G_ema
    z = torch.randn(batch, state.config.z_dim, device=device)  # (B, z_dim)
    with state.amp.precision.autocast():
        G(z)  # cuDNN's autotuner picks its kernels for this shape
        sync(device)
        t0, n = time.perf_counter(), 0
        while time.perf_counter() - t0 < seconds:
            G(z)
            n += batch
            sync(device)
    return n / (time.perf_counter() - t0)


def measure(row: Row, folder: Path, args, device: torch.device,
            loaded: dict[str, ImageSet]) -> dict:
    """One row's numbers, or its error (one failing row, such as CUDA graphs that do not
    capture, must not cost the others)."""
    out: dict = asdict(row)
    state = None
    try:
        state = build(row, folder, args, device, loaded)
        out.update(precision=state.config.precision, compile=state.config.compile,
                   compiled=state.compiled)
        warm = warm_up(state, args.warmup, device)
        out["warmup_seconds"] = round(warm, 2)
        out["compile_seconds"] = round(warm, 2) if state.compiled else None
        if not args.compile_only:
            other = OtherLoad()
            out["train_img_per_s"] = train_rate(state, args.seconds, device)
            out["sample_img_per_s"] = sample_rate(state, args.sample_batch,
                                                  min(args.seconds, args.sample_seconds), device)
            out["other_load_cores"] = other.cores()
    except Exception as e:  # noqa: BLE001 - the row says what failed, the others go on
        out["error"] = f"{type(e).__name__}: {first_line(e, 300)}"
        traceback.print_exc(file=sys.stderr)  # where it failed: the row keeps one line
    finally:
        del state
        if device.type == "cuda":
            torch.cuda.empty_cache()
    say(describe_row(out))
    return out


def describe_row(r: dict) -> str:
    warm = r.get("compile_seconds")
    how = f"{r.get('precision')}, " + (
        f"compiled ({r['compile_mode']}" + (f", {warm:.1f} s warmup with compile)" if warm is not None
                                            else ")") if r.get("compiled") else "eager")
    if "error" in r:
        return f"ganctl {r['name']}: FAILED ({how}): {r['error']}"
    if "train_img_per_s" not in r:
        return f"ganctl {r['name']}: warmed up ({how})"
    busy = r.get("other_load_cores") or 0.0
    note = f"; other processes used {busy:.2f} cores meanwhile" if busy > BUSY else ""
    return (f"ganctl {r['name']}: {r['train_img_per_s']:,.0f} img/s training, "
            f"{r['sample_img_per_s']:,.0f} img/s sampling ({how}{note})")


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- the command ---------------------------------------------------------------------------------

def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({cpu_name()}, {torch.get_num_threads()} threads, bf16 {cpu_bf16()})"


def timed_reference(folder: Path, args, device: torch.device) -> tuple[float, float | None]:
    """(img/s, other processes' cores meanwhile) of one reference run."""
    other = OtherLoad()
    ref = reference(folder, args, device)
    load = other.cores()
    note = f"; other processes used {load:.2f} cores meanwhile" if (load or 0) > BUSY else ""
    say(f"reference (classic example, fp32 eager, ImageFolder + {args.workers} workers): "
        f"{ref:,.0f} img/s{note}")
    return ref, load


def one_round(folder: Path, args, device: torch.device, loaded: dict[str, ImageSet]) -> list[dict]:
    rows = []
    for row in plan(args):
        if args.max_seconds and time.monotonic() - START > args.max_seconds:
            rows.append({**asdict(row), "error": f"skipped: past --max-seconds {args.max_seconds:g}"})
            say(f"ganctl {row.name}: skipped (past --max-seconds)")
            continue
        rows.append(measure(row, folder, args, device, loaded))
    return rows


def best_round(rounds: list[dict]) -> dict:
    """A row's round with the most training img/s (the least disturbed), its sampling the best
    of any round, and every round's figures beside it."""
    done = [r for r in rounds if "train_img_per_s" in r]
    if len(rounds) == 1 or not done:
        return rounds[0]
    best = max(done, key=lambda r: r["train_img_per_s"])
    return {**best, "sample_img_per_s": max(r["sample_img_per_s"] for r in done),
            "train_rounds": [r.get("train_img_per_s") for r in rounds]}


def run(args, device: torch.device, scratch: Path) -> dict:
    """The reference, then every row, on one folder of JPEGs, --repeats rounds interleaved (a
    burst of other load hits all alike; each one's best round counts); the JSON document."""
    folder = args.folder or make_jpeg_folder(scratch / "jpegs", args.images, 2, 0)
    timing = args.reference and not args.compile_only
    loaded: dict[str, ImageSet] = {}
    refs, rounds = [], []
    for _ in range(args.repeats):
        if timing:
            refs.append(timed_reference(folder, args, device))
        rounds.append(one_round(folder, args, device, loaded))
    ref, ref_load = max(refs) if refs else (None, None)
    rows = [best_round(list(r)) for r in zip(*rounds, strict=True)]
    like = next((r.get("train_img_per_s") for r in rows if r["name"] == "dcgan"), None)
    return {"device": device_name(device), "torch": torch.__version__,
            "resolution": args.resolution, "batch_size": args.batch_size, "width": args.width,
            "sample_batch": args.sample_batch, "seconds": args.seconds, "repeats": args.repeats,
            "reference_img_per_s": ref, "reference_other_load_cores": ref_load,
            "reference_rounds": [r for r, _ in refs] if len(refs) > 1 else None,
            "ganctl_img_per_s": like, "ratio": like / ref if like and ref else None, "rows": rows}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--width", type=int, default=64, help="ngf = ndf (the example's 64)")
    ap.add_argument("--archs", default="dcgan,resnet,mlp")
    ap.add_argument("--shapes-archs", default="dcgan", help="archs also run on the built-in "
                    "shapes set ('' for none)")
    ap.add_argument("--baseline-archs", default="", help="archs also run in fp32 eager")
    ap.add_argument("--projected-archs", default="", help="archs also run against a projected D "
                    "(its EfficientNet at 224 px: the backbone's cost per image; its weights as "
                    "ganctl finds them, e.g. GANCTL_EFFICIENTNET)")
    ap.add_argument("--precision", default="auto", help="ganctl's --precision (auto: bf16 on "
                    "CUDA GPUs that have it and for dcgan from 64 px on CPUs with native bf16, "
                    "else fp32)")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                    help="ganctl's --compile/--no-compile (default: auto, on for CUDA)")
    ap.add_argument("--compile-mode", default="default")
    ap.add_argument("--reference", action=argparse.BooleanOptionalAction, default=True,
                    help="time the classic example's loop (the ratio needs it)")
    ap.add_argument("--images", type=int, default=2048, help="JPEGs generated (CelebA-shaped)")
    ap.add_argument("--folder", type=Path, default=None, help="an image folder with class subfolders")
    ap.add_argument("--workers", type=int, default=2, help="the reference's DataLoader workers")
    ap.add_argument("--warmup", type=int, default=5, help="steps before timing (compile included)")
    ap.add_argument("--seconds", type=float, default=20.0, help="timed seconds per row")
    ap.add_argument("--sample-seconds", type=float, default=5.0, help="timed sampling seconds")
    ap.add_argument("--sample-batch", type=int, default=0, help="latents per G call (0: 1024 "
                    "on CUDA, else --batch-size)")
    ap.add_argument("--compile-only", action="store_true", help="build and warm up every row, "
                    "time nothing (fills the compile cache)")
    ap.add_argument("--repeats", type=int, default=1, help="rounds of everything, interleaved; "
                    "each one's best counts (for a machine with other load)")
    ap.add_argument("--max-seconds", type=float, default=0, help="start no row after this many "
                    "seconds (0: no limit); the rows not run say so")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    args.compile = {None: "auto", True: "on", False: "off"}[args.compile]
    for key in ("archs", "shapes_archs", "baseline_archs", "projected_archs"):
        setattr(args, key, [a for a in getattr(args, key).split(",") if a])
    return args


def main() -> int:
    args = parse_args()
    device = pick_device(args.device)
    args.device = str(device)
    args.sample_batch = args.sample_batch or (1024 if device.type == "cuda" else args.batch_size)
    with tempfile.TemporaryDirectory() as scratch:
        os.environ.setdefault("GANCTL_CACHE_DIR", str(Path(scratch) / "cache"))
        doc = run(args, device, Path(scratch))
    if args.json:
        print(json.dumps(doc))
    else:
        print(f"{doc['device']}, torch {doc['torch']}, {args.resolution}x{args.resolution}, batch "
              f"{args.batch_size}, widths {args.width}, sampling batch {args.sample_batch}")
        ratio = f"{doc['ratio']:.2f}x" if doc["ratio"] else "n/a"
        print(f"ratio ganctl/reference (dcgan): {ratio}")
    failed = any("error" in r for r in doc["rows"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
