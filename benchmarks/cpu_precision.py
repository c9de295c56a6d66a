"""Train-step time in fp32 against bf16 autocast on this CPU, for each arch at the sizes that
matter: the measurement behind device.CPU_BF16_FASTER (where --precision auto picks bf16 on a
CPU with native bf16).

Each row is a preset's model (its widths, batch and loss; mlp32 is mlp-mnist on 32x32 RGB)
built twice by the engine from one seed, once per precision, as `ganctl train` runs it on a CPU
(init_state: channels_last, torch's fused Adam, the EMA; the loss's phases through train_step),
on random uint8 images held in memory (the data path is the same for both, and not what bf16
changes). Both are warmed up (--warmup steps), then timed in --rounds interleaved rounds that
share --seconds, the order alternating (a burst of other load hits both alike); each one's best
round counts, and each round runs at least one step. other_load_cores says how busy the rest of
the machine was.

Printed: the CPU's model name, whether it has native bf16 (AVX512-BF16 or AMX-BF16: 'native';
'emulated' on other x86 CPUs; 'unknown' on ARM), torch's threads, and a table: row, arch,
resolution, widths (G/D), batch, fp32 and bf16 ms per step, bf16's speed-up, and what auto picks
here. --json prints one JSON object instead; --out also writes it to a file. A row whose bf16
speed-up is at least FASTER (and is not a tiny model) is a candidate for CPU_BF16_FASTER.

  python benchmarks/cpu_precision.py                          # every row
  python benchmarks/cpu_precision.py --seconds 3 --out cpu_precision.json   # a 16-core host, < 1 min
  python benchmarks/cpu_precision.py --rows dcgan64 --seconds 60 --rounds 3 # this 2-core CPU
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.data_throughput import OtherLoad  # noqa: E402
from ganctl.config import Config  # noqa: E402
from ganctl.device import configure_determinism, cpu_bf16, resolve_precision  # noqa: E402
from ganctl.engine.state import TrainState, init_state  # noqa: E402
from ganctl.engine.step import train_step  # noqa: E402
from ganctl.presets import PRESETS  # noqa: E402

PRECISIONS = ("fp32", "bf16")
FASTER = 1.1  # bf16's speed-up over fp32 that counts as faster (beyond rounds' noise)
IMAGES_PER_BATCH = 2  # random images held: two batches' worth (the step samples with replacement)


@dataclass(frozen=True)
class Row:
    name: str
    preset: str  # the model, widths, batch and loss
    changes: dict[str, Any] = field(default_factory=dict)

    def config(self, args: argparse.Namespace) -> Config:
        """The preset's model on the CPU, with --width / --batch-size where given."""
        settings = {k: v for k, v in PRESETS[self.preset].settings.items() if k != "dataset"}
        settings.update(self.changes, device="cpu")
        if args.width:
            settings.update(g_width=args.width, d_width=args.width)
        if args.batch_size:
            settings["batch_size"] = args.batch_size
        return Config(**settings)


ROWS = [
    Row("mlp28", "mlp-mnist"),
    Row("mlp32", "mlp-mnist", {"resolution": 32, "channels": 3}),
    Row("dcgan32", "dcgan-cifar10"),
    Row("dcgan64", "dcgan-celeba64"),  # the article's size: issue 22's 1.8x on a native-bf16 CPU
    Row("resnet32", "sngan-cifar10"),
]


def plan(args: argparse.Namespace) -> list[Row]:
    """The rows --rows asks for, in the table's order."""
    return [r for r in ROWS if r.name in args.rows]


# --- timing --------------------------------------------------------------------------------------

def build(config: Config, precision: str) -> TrainState:
    """The engine's state for `config` in `precision`, on random images (same seed for both)."""
    rng = np.random.default_rng(config.seed)
    shape = (IMAGES_PER_BATCH * config.batch_size, config.channels, config.resolution,
             config.resolution)
    images = rng.integers(0, 256, shape, dtype=np.uint8)
    return init_state(config.replace(precision=precision), torch.device("cpu"), images)


def ms_per_step(state: TrainState, seconds: float, min_steps: int = 1) -> float:
    """Milliseconds per train step over at least `seconds` and `min_steps` (1 or more) steps."""
    phases = state.loss.phases()
    t0, steps = time.perf_counter(), 0
    while steps < min_steps or time.perf_counter() - t0 < seconds:
        train_step(state, phases)
        steps += 1
    return (time.perf_counter() - t0) * 1000 / steps


def measure(row: Row, args: argparse.Namespace) -> dict:
    """One row: both precisions warmed up, then --rounds interleaved rounds; each one's best."""
    config = row.config(args)
    out: dict[str, Any] = {"name": row.name, "preset": row.preset, "arch": config.arch,
                           "resolution": config.resolution, "channels": config.channels,
                           "g_width": config.g_width, "d_width": config.d_width,
                           "batch_size": config.batch_size,
                           "auto": resolve_precision("auto", torch.device("cpu"), config)}
    states = {p: build(config, p) for p in PRECISIONS}
    for state in states.values():
        phases = state.loss.phases()
        for _ in range(args.warmup):
            train_step(state, phases)
    rounds: dict[str, list[float]] = {p: [] for p in PRECISIONS}
    other = OtherLoad()
    for i in range(args.rounds):
        for p in PRECISIONS if i % 2 == 0 else PRECISIONS[::-1]:
            rounds[p].append(ms_per_step(states[p], args.seconds / (2 * args.rounds)))
    out["other_load_cores"] = other.cores()
    for p in PRECISIONS:
        out[f"{p}_ms"] = min(rounds[p])
        out[f"{p}_rounds"] = rounds[p]
    out["bf16_speedup"] = out["fp32_ms"] / out["bf16_ms"]
    say(f"{row.name}: fp32 {out['fp32_ms']:,.1f} ms/step, bf16 {out['bf16_ms']:,.1f} ms/step "
        f"({out['bf16_speedup']:.2f}x)")
    return out


# --- the machine ---------------------------------------------------------------------------------

def cpu_name() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def bf16_flags() -> list[str]:
    """The CPU's bf16-related capabilities that torch reports (empty where it has no table)."""
    capabilities = getattr(torch.cpu, "get_capabilities", None)
    if capabilities is None:
        return []
    return sorted(k for k, v in capabilities().items() if v is True and ("bf16" in k or "amx" in k))


def run(args: argparse.Namespace) -> dict:
    """The JSON document; with --out it is written after each row too (a time box that cuts
    the last rows leaves the first)."""
    configure_determinism(False)
    doc: dict[str, Any] = {"cpu": cpu_name(), "machine": platform.machine(),
                           "native_bf16": cpu_bf16(), "bf16_flags": bf16_flags(),
                           "torch": torch.__version__, "threads": torch.get_num_threads(),
                           "seconds": args.seconds, "rounds": args.rounds, "warmup": args.warmup,
                           "faster": [], "rows": []}
    for row in plan(args):
        measured = measure(row, args)
        doc["rows"].append(measured)
        if measured["bf16_speedup"] >= FASTER:
            doc["faster"].append(row.name)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(doc, indent=1) + "\n")
    return doc


def print_table(doc: dict) -> None:
    print(f"cpu: {doc['cpu']} ({doc['machine']}, {doc['threads']} torch threads), bf16 "
          f"{doc['native_bf16']} ({', '.join(doc['bf16_flags']) or 'no bf16 flags'}), "
          f"torch {doc['torch']}")
    header = ("row", "arch", "px", "widths G/D", "batch", "fp32 ms/step", "bf16 ms/step",
              "bf16 speed-up", "auto here", "other load")
    lines = [header] + [
        (r["name"], r["arch"], str(r["resolution"]), f"{r['g_width']}/{r['d_width']}",
         str(r["batch_size"]), f"{r['fp32_ms']:,.1f}", f"{r['bf16_ms']:,.1f}",
         f"{r['bf16_speedup']:.2f}x", r["auto"], fmt_load(r["other_load_cores"]))
        for r in doc["rows"]]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())
    faster = ", ".join(doc["faster"]) or "no row"
    print(f"bf16 at least {FASTER:g}x faster than fp32: {faster}")


def fmt_load(cores: float | None) -> str:
    return "n/a" if cores is None else f"{cores:.2f} cores"


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--rows", default=",".join(r.name for r in ROWS),
                    help="comma-separated, of: " + ", ".join(r.name for r in ROWS))
    ap.add_argument("--seconds", type=float, default=10.0, help="timed seconds per row, both "
                    "precisions and all rounds together (each round runs at least one step)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; each one's best counts")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per precision first")
    ap.add_argument("--width", type=int, default=0, help="G's and D's widths for every row "
                    "(0: each preset's)")
    ap.add_argument("--batch-size", type=int, default=0, help="for every row (0: each preset's)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON object here")
    args = ap.parse_args(argv)
    args.rows = [r for r in args.rows.split(",") if r]
    unknown = sorted(set(args.rows) - {r.name for r in ROWS})
    if unknown:
        ap.error(f"unknown row(s) {', '.join(unknown)}; use {', '.join(r.name for r in ROWS)}")
    if args.rounds < 1 or args.seconds < 0 or args.warmup < 0:
        ap.error("--rounds must be at least 1, --seconds and --warmup at least 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    doc = run(args)
    if args.json:
        print(json.dumps(doc))
    else:
        print_table(doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
