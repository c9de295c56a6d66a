"""Training images/s of ganctl's engine against a loop written like the classic DCGAN example.

In one process, on the same device and data (a generated folder of CelebA-shaped JPEGs, or
--folder), at the same batch size and resolution:

  reference  the pytorch/examples DCGAN loop as shipped: fp32 eager, torchvision ImageFolder +
             DataLoader decoding the JPEGs every epoch (2 workers, the example's default),
             BCELoss, Adam 2e-4 (0.5, 0.999), its G and D (ngf = ndf = 64 by default);
  ganctl     `ganctl train`'s engine (decode cache, data on the device, the loss's phases, the
             EMA) for each --archs, same widths; dcgan is the like-for-like row;
  sampling   G_ema generating only (ganctl's dcgan), images/s.

Each is timed for --seconds after --warmup steps; the last line printed is the ratio of ganctl's
dcgan over the reference. --json prints one JSON object instead (reference_img_per_s,
ganctl_img_per_s, ratio, device, and every row).

  python benchmarks/throughput.py --device cpu --resolution 32 --batch-size 64 --width 32
  python benchmarks/throughput.py --batch-size 128          # on a GPU, 64x64
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from torch import nn  # noqa: E402

from benchmarks.data_throughput import make_jpeg_folder, pick_device, sync  # noqa: E402
from ganctl.data import load_dataset  # noqa: E402
from ganctl.engine.state import init_state  # noqa: E402
from ganctl.engine.step import train_step  # noqa: E402
from ganctl.logging import RunLog  # noqa: E402
from ganctl.session import fit_to_data, resolve_config  # noqa: E402

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


# --- ganctl --------------------------------------------------------------------------------------

def ganctl_rates(folder: Path, arch: str, args, device: torch.device) -> tuple[float, float]:
    """(training images/s, sampling images/s) of ganctl's engine for one architecture."""
    values = {"dataset": str(folder), "arch": arch, "resolution": args.resolution, "channels": 3,
              "batch_size": args.batch_size, "g_width": args.width, "d_width": args.width,
              "device": args.device}
    config = resolve_config(values)
    data = load_dataset(config, progress=RunLog(Console(stderr=True)).task)
    config = fit_to_data(config, data)
    state = init_state(config, device, data.images, data.labels if config.classes else None)
    phases = state.loss.phases()
    for _ in range(args.warmup):
        train_step(state, phases)
    sync(device)
    t0, steps = time.perf_counter(), 0
    while time.perf_counter() - t0 < args.seconds:
        for _ in range(10 if device.type == "cuda" else 1):  # read the clock without a sync each step
            train_step(state, phases)
            steps += 1
        sync(device)
    train = steps * config.batch_size / (time.perf_counter() - t0)
    G = state.G_ema
    z = torch.randn(args.batch_size, config.z_dim, device=device)
    with torch.no_grad():
        G(z)
        sync(device)
        t0, n = time.perf_counter(), 0
        while time.perf_counter() - t0 < min(args.seconds, 5):
            G(z)
            n += args.batch_size
            sync(device)
    return train, n / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--width", type=int, default=64, help="ngf = ndf (the example's 64)")
    ap.add_argument("--archs", default="dcgan,resnet,mlp")
    ap.add_argument("--images", type=int, default=2048, help="JPEGs generated (CelebA-shaped)")
    ap.add_argument("--folder", type=Path, default=None, help="an image folder with class subfolders")
    ap.add_argument("--workers", type=int, default=2, help="the reference's DataLoader workers")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=20.0, help="timed seconds per row")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    device = pick_device(args.device)
    args.device = str(device)
    archs = [a for a in args.archs.split(",") if a]
    with tempfile.TemporaryDirectory() as scratch:
        os.environ.setdefault("GANCTL_CACHE_DIR", str(Path(scratch) / "cache"))
        folder = args.folder or make_jpeg_folder(Path(scratch) / "jpegs", args.images, 2, 0)
        ref = reference(folder, args, device)
        print(f"reference (classic example, fp32, ImageFolder + {args.workers} workers): "
              f"{ref:,.0f} img/s", file=sys.stderr, flush=True)
        rows = {}
        for arch in archs:
            train, sample = ganctl_rates(folder, arch, args, device)
            rows[arch] = {"train_img_per_s": train, "sample_img_per_s": sample}
            print(f"ganctl {arch}: {train:,.0f} img/s training, {sample:,.0f} img/s sampling",
                  file=sys.stderr, flush=True)
    like = rows.get("dcgan", next(iter(rows.values())))["train_img_per_s"]
    doc = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else
           f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
           "torch": torch.__version__, "resolution": args.resolution, "batch_size": args.batch_size,
           "width": args.width, "reference_img_per_s": ref, "ganctl_img_per_s": like,
           "ratio": like / ref, "archs": rows}
    if args.json:
        print(json.dumps(doc))
    else:
        print(f"{doc['device']}, torch {doc['torch']}, {args.resolution}x{args.resolution}, batch "
              f"{args.batch_size}, widths {args.width}")
        print(f"ratio ganctl/reference (dcgan): {doc['ratio']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
