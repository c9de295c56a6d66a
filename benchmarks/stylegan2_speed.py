"""StyleGAN2 at 256 px: ganctl against NVlabs' own stylegan2-ada-pytorch on the same GPU (issue 24).

One call on a lent GPU, within --budget seconds, each part in its own process and time box:
  ganctl 256  the stylegan2-256 preset's networks (NVlabs' paper256, batch 64) in ganctl's engine as
      `ganctl train` runs them (--precision auto, compiled), on random uint8 images on the GPU:
      --steps (a multiple of 16: each lazy phase its share) timed between two synchronize calls,
      after --warmup steps (the compiles). s/kimg = 1000 / (img/s).
  NVlabs 256  their train.py from a copy of their repository (no internet on a lent machine: here,
      beforehand, git clone --depth 1 https://github.com/NVlabs/stylegan2-ada-pytorch
      .gpu/nvlabs/stylegan2-ada-pytorch, then carry [".gpu/nvlabs"]), --cfg=paper256 --aug=noaug
      --batch=64 (one pass: --batch sets batch_gpu) on a zip of random PNGs in dataset_tool's
      layout, their tick (training_loop's kimg_per_tick) set to --tick-kimg: the median of their
      sec/kimg over --ticks ticks after tick 1 (cuDNN's autotuning). Their custom ops build first,
      beside ganctl's compile (ganctl's timed steps wait for the build); the row says whether they
      built and whether conv2d_gradfix ran, or why their code failed.
  1024 batch  the largest stylegan2-1024 batch whose step (every phase) fits in 90% of the GPU, by
      ganctl's `--batch-size auto` probe (powers of two from 8, then bisection in 8s); its img/s.
  then ganctl 256 with --compile-mode reduce-overhead, if time is left.
Last, one markdown table, ratio last (NVlabs s/kimg over ganctl's best, target 2x), with NVlabs'
published A100 figure (12.5 s/kimg: target ganctl <= 6.25); with $OUT set, the table is appended
to $OUT/stylegan2_speed.md, the JSON goes to $OUT/stylegan2_speed.json, the logs to
$OUT/stylegan2_logs/ (else to .gpu/stylegan2_speed/).

  bash benchmarks/gpu_check.sh stylegan2         # a lent GPU: one call, ~9 min, carry [".gpu/nvlabs"]
  python benchmarks/stylegan2_speed.py --quick   # CPU smoke test: ganctl's part, 32 px, eager
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from benchmarks.data_throughput import pick_device, sync  # noqa: E402
from benchmarks.gpu_check import Budget, Done, error_line, run_boxed, slug  # noqa: E402
from benchmarks.throughput import device_name, say  # noqa: E402
from ganctl.device import configure_determinism  # noqa: E402
from ganctl.engine.memory import HEADROOM, largest_fitting, probe  # noqa: E402
from ganctl.engine.state import init_state  # noqa: E402
from ganctl.engine.step import train_step  # noqa: E402
from ganctl.errors import first_line  # noqa: E402
from ganctl.session import on_device  # noqa: E402
from ganctl.settings import resolve_config  # noqa: E402

# s/kimg of NVlabs at 256 px on one A100 (issue 24, from their docs); ganctl's target: 2x faster
PUBLISHED_A100, TARGET = 12.5, 2.0
QUICK = dict(device="cpu", resolution=32, width=16, batch=4, warmup=1, steps=3, modes="eager", parts="ganctl")
MIN_PART, TIMING_1024, MAX_1024 = 60, 50, 512  # s to start a part; s of 1024's cap for timing; max
TICK = re.compile(r"^tick\s+(\d+)\s.*?sec/kimg\s+([\d.]+)", re.M)  # their progress lines
PLUGIN = re.compile(r'Setting up PyTorch plugin "(\w+)"\.\.\.((?:(?!Setting up).){0,4000}?)'
                    r"(Done\.|Failed!)", re.S)
FALLBACK = re.compile(r"Failed to build CUDA kernels for (\w+)")
GRADFIX = re.compile(r"conv2d_gradfix not supported on PyTorch (\S+?)\. Falling")
# their custom ops built ahead of train.py (which then loads them); the marker: the build ended
PREBUILD = ("import pathlib, sys\ntry:\n    from torch_utils.ops import bias_act, upfirdn2d\n"
            "    print('built:', bias_act._init(), upfirdn2d._init(), flush=True)\n"
            "finally:\n    pathlib.Path(sys.argv[1]).touch()\n")
# their train.py as run from its command line, its tick (argv[1]) changed; Sampler's unused argument
# (their InfiniteSampler passes it) accepted again where torch dropped it
LAUNCH = ("import runpy, sys\nimport torch.utils.data as D\nimport training.training_loop as L\ntry:\n"
          "    D.Sampler(None)\nexcept TypeError:\n    D.Sampler.__init__ = lambda self, *_: None\n"
          "    print('compat: Sampler(data_source) accepted', flush=True)\nrun, tick = L.training_loop, "
          "float(sys.argv.pop(1))\nL.training_loop = lambda **kw: run(**{**kw, 'kimg_per_tick': tick})\n"
          "sys.argv[0] = 'train.py'\nrunpy.run_path('train.py', run_name='__main__')")
STRTOBOOL = "def strtobool(v):\n    return int(v.lower() in ('y', 'yes', 't', 'true', 'on', '1'))\n"


# --- ganctl's parts (child processes: --part) ----------------------------------------------------
def stylegan2_config(args, preset: str, batch: int, compile: str, mode: str = "default"):
    sizes = {"g_width": args.width, "d_width": args.width} if args.width else {}
    sizes.update({"resolution": args.resolution} if preset.endswith("256") and args.resolution else {})
    return resolve_config({"preset": preset, "device": args.device, "batch_size": batch, **sizes,
                           "precision": "auto", "compile": compile, "compile_mode": mode})


def random_images(n: int, resolution: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, 3, resolution, resolution), dtype=np.uint8)


def time_steps(state, steps: int, device: torch.device) -> float:
    """Seconds of `steps` train steps between two synchronize calls (the step itself never syncs)."""
    phases = state.loss.phases()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        train_step(state, phases)
    sync(device)
    return time.perf_counter() - t0


def rates(steps: int, batch: int, seconds: float, device: torch.device) -> dict:
    peak = round(torch.cuda.max_memory_allocated(device) / 2**30, 1) if device.type == "cuda" else None
    return {"img_per_s": round(steps * batch / seconds, 2),
            "s_per_kimg": round(1000 * seconds / (steps * batch), 3), "peak_gib": peak}


def ganctl_part(args, mode: str, device: torch.device) -> dict:
    config = on_device(stylegan2_config(args, "stylegan2-256", args.batch, "off" if mode == "eager"
                                        else "on", "default" if mode == "eager" else mode), device)
    configure_determinism(config.deterministic)  # cuDNN's autotuner, as `ganctl train` leaves it
    out = {"part": f"ganctl:{mode}", "device": device_name(device), "torch": torch.__version__,
           "resolution": config.resolution, "batch": config.batch_size, "widths": config.g_width,
           "precision": config.precision, "mode": mode}
    state = init_state(config, device, random_images(2 * config.batch_size, config.resolution))
    out.update(compiled=state.compiled, warmup_steps=args.warmup, timed_steps=args.steps,
               warmup_s=round(time_steps(state, args.warmup, device), 1))
    end = time.monotonic() + 120  # NVlabs' nvcc would share the CPUs with the timed steps
    while args.after and not Path(args.after).exists() and time.monotonic() < end:
        time.sleep(1)
    torch.cuda.reset_peak_memory_stats(device) if device.type == "cuda" else None
    seconds = time_steps(state, args.steps, device)
    return {**out, **rates(args.steps, config.batch_size, seconds, device)}


def batch1024_part(args, device: torch.device) -> dict:
    """The largest batch at 1024 px (printed as a JSON line once found), then its img/s."""
    out: dict = {"part": "batch1024", "device": device_name(device), "tried": {}}
    if device.type != "cuda":
        return {**out, "error": "skipped: needs a CUDA GPU"}
    config = on_device(stylegan2_config(args, "stylegan2-1024", 8, "off"), device)
    configure_determinism(config.deterministic)
    free, total = torch.cuda.mem_get_info(device)
    budget = int(min(free, HEADROOM * total))
    images = random_images(MAX_1024, 1024)
    deadline = time.monotonic() + args.batch1024_cap - TIMING_1024

    def fits(b: int) -> bool:  # False once the search's time is up (out["cut"])
        out["cut"] = out.get("cut") or time.monotonic() > deadline
        if not out["cut"]:
            out["tried"][b] = probe(config.replace(batch_size=b), device, images, None, budget)
            say(f"1024 px, batch {b}: {'fits' if out['tried'][b] else 'does not fit'}")
        return out["tried"].get(b, False)

    best = largest_fitting(fits, 8, MAX_1024)  # powers of two, then bisection in multiples of 8
    bad = 2 * best if best and best < MAX_1024 else None
    while bad and (mid := (best + bad) // 16 * 8) > best and not out["cut"]:
        best, bad = (mid, bad) if fits(mid) else (best, mid)
    out.update(batch=best, budget_gib=round(budget / 2**30, 1),
               total_gib=round(total / 2**30, 1), precision=config.precision)
    print(json.dumps(out), flush=True)  # kept if the timing runs out of time
    if best is None:
        return {**out, "error": "batch 8 does not fit"}
    state = init_state(config.replace(batch_size=best), device, images[:best])
    time_steps(state, 4, device)  # steps 1-4: cuDNN's autotuning, the first path-length step
    torch.cuda.reset_peak_memory_stats(device)
    return {**out, **rates(16, best, time_steps(state, 16, device), device)}


def run_part(args) -> dict:
    device = pick_device(args.device)
    try:
        return (batch1024_part(args, device) if args.part == "batch1024"
                else ganctl_part(args, args.part.partition(":")[2], device))
    except Exception as e:  # noqa: BLE001 - the part's row says what failed
        traceback.print_exc()
        return {"part": args.part, "error": f"{type(e).__name__}: {first_line(e, 300)}"}


def boxed(args, part: str, cap: float, budget: Budget, logs: Path, extra: tuple = ()) -> dict:
    """One part: inline with --quick, else this script with --part in a time box."""
    if args.quick:
        return run_part(argparse.Namespace(**{**vars(args), "part": part}))
    if (seconds := min(cap, budget.left())) < MIN_PART:
        return {"part": part, "error": f"skipped: {max(budget.left(), 0):.0f} s left of --budget"}
    done = run_boxed([sys.executable, str(Path(__file__).resolve()), *args.argv, "--part", part,
                      *extra], log := logs / f"{slug(part)}.log", seconds)
    docs = [line for line in done.stdout.splitlines() if line.startswith("{")]  # the last: its result
    doc = {"part": part, **(json.loads(docs[-1]) if docs else {}), "wall_s": round(done.seconds, 1)}
    doc.update({"error": error_line(done, log)} if done.rc != 0 and "error" not in doc else {})
    say(f"{part}: {json.dumps(doc)}")
    return doc


# --- NVlabs' train.py ----------------------------------------------------------------------------
def make_zip(path: Path, n: int, resolution: int) -> Path:
    """n random RGB PNGs in dataset_tool's layout (00000/img00000000.png, dataset.json)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for i, pixels in enumerate(random_images(n, resolution).transpose(0, 2, 3, 1)):
            buf = io.BytesIO()
            Image.fromarray(pixels).save(buf, format="PNG", compress_level=1)
            z.writestr(f"{i // 1000:05d}/img{i:08d}.png", buf.getvalue())
        z.writestr("dataset.json", json.dumps({"labels": None}))
    return path


def nvlabs_env(scratch: Path) -> dict:
    """Their processes' environment: distutils.util.strtobool (gone from Python 3.12) stood in."""
    shim = scratch / "shim" / "distutils"
    shim.mkdir(parents=True, exist_ok=True)
    (shim / "__init__.py").write_text("")
    (shim / "util.py").write_text(STRTOBOOL)
    path = os.pathsep.join(p for p in (str(shim.parent), os.environ.get("PYTHONPATH")) if p)
    return dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=path)


def start(cmd: list[str], cwd: Path, env: dict, log: Path) -> subprocess.Popen:  # stop() ends its group
    with open(log, "w") as f:
        return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def read_nvlabs(text: str) -> dict:
    """Their log: sec/kimg of tick 1 and of the later ticks, the custom ops' fate, conv2d_gradfix's."""
    ticks = [(int(t), float(s)) for t, s in TICK.findall(text)]
    ops = {name.removesuffix("_plugin"): ok == "Done." for name, _, ok in PLUGIN.findall(text)}
    ops.update({name: False for name in FALLBACK.findall(text)})
    gradfix = GRADFIX.search(text)
    return {"tick1": [s for t, s in ticks if t == 1], "steady": [s for t, s in ticks if t >= 2],
            "plugins": ops, "compat": re.findall(r"^compat: (.+)$", text, re.M), "conv2d_gradfix":
            f"off (not supported on torch {gradfix.group(1)})" if gradfix else "without a fallback warning"}


def nvlabs_part(args, budget: Budget, logs: Path, scratch: Path, prebuild) -> dict:
    repo, out = args.nvlabs_dir, {"part": "nvlabs", "batch": args.batch, "tick_kimg": args.tick_kimg}
    if not (repo / "train.py").is_file():
        return {**out, "error": f"no copy of their repository at {repo} (beforehand: git clone "
                                "--depth 1 https://github.com/NVlabs/stylegan2-ada-pytorch THERE)"}
    if not torch.cuda.is_available():
        return {**out, "error": "skipped: their train.py runs on CUDA only"}
    end = (t0 := time.monotonic()) + min(args.nvlabs_cap, budget.left())
    if prebuild:  # their ops' build, if it is still going, may take all but a minute
        with contextlib.suppress(subprocess.TimeoutExpired):
            prebuild[0].wait(max(end - time.monotonic() - 60, 1))
        stop(prebuild[0])
    data, log = make_zip(scratch / "data.zip", 256, args.resolution or 256), logs / "nvlabs-train.log"
    proc = start([sys.executable, "-c", LAUNCH, str(args.tick_kimg), f"--outdir={scratch / 'runs'}",
                  f"--data={data}", "--gpus=1", "--cfg=paper256", "--aug=noaug", f"--batch={args.batch}",
                  "--metrics=none", "--snap=100000", "--kimg=100000", "--seed=0"],
                 repo, nvlabs_env(scratch), log)
    while proc.poll() is None and time.monotonic() < end and len(
            read_nvlabs(log.read_text(errors="replace"))["steady"]) < args.ticks:
        time.sleep(2)
    rc = proc.poll()
    stop(proc)
    text = (prebuild[2].read_text(errors="replace") if prebuild else "") + log.read_text(errors="replace")
    out.update(read_nvlabs(text), wall_s=round(time.monotonic() - t0, 1))
    if out["steady"] or out["tick1"]:
        return {**out, "s_per_kimg": statistics.median(out["steady"] or out["tick1"])}
    return {**out, "error": error_line(Done(rc, "", 0.0), log) if rc not in (None, 0)
            else f"no full tick in {out['wall_s']:.0f} s (time box)"}


# --- the table -----------------------------------------------------------------------------------
def fmt(x: float | None, digits: int = 2) -> str:
    return "" if x is None else f"{x:,.{digits}f}"


def failed(r: dict) -> str:
    return e if (e := str(r.get("error"))).startswith("skipped") else f"FAILED: {e}"


def ganctl_row(r: dict) -> list[str]:
    if "s_per_kimg" not in r:
        return [f"ganctl stylegan2 256 px, {r['part']}", "", "", failed(r)]
    how = f"compiled ({r['mode']})" if r.get("compiled") else "eager"
    peak = (", compile included" if r.get("compiled") else "") + (f"); peak {r['peak_gib']} GiB"
                                                                   if r.get("peak_gib") else ")")
    return [f"ganctl stylegan2 {r['resolution']} px, {r['precision']}, {how}", fmt(r["img_per_s"], 1),
            fmt(r["s_per_kimg"], 3), f"batch {r['batch']}, widths {r['widths']}, {r['timed_steps']} "
            f"steps timed after {r['warmup_steps']} ({r['warmup_s']} s{peak}"]


def nvlabs_row(r: dict) -> list[str]:
    name = "NVlabs train.py --cfg=paper256 --aug=noaug"
    ops = ", ".join(f"{k} {'built' if ok else 'FAILED (their reference code)'}"
                    for k, ok in r.get("plugins", {}).items()) or "none set up"
    notes = (f"batch {r.get('batch')} in one pass; custom ops: {ops}; conv2d_gradfix "
             f"{r.get('conv2d_gradfix')}" + "".join(f"; patched: {c}" for c in r.get("compat", [])))
    if "s_per_kimg" not in r:
        return [name, "", "", failed(r) + (f"; {notes}" if "plugins" in r else "")]
    what = (f"median of {len(r['steady'])} ticks of {r['tick_kimg']:g} kimg after tick 1"
            if r["steady"] else "tick 1 alone (cuDNN's autotuning included)")
    return [name, fmt(1000 / r["s_per_kimg"], 1), fmt(r["s_per_kimg"]), f"{what}; {notes}"]


def batch_row(b: dict) -> list[str]:
    notes = ([f"batch {b['batch']} ({b['precision']}, eager; probes {b['tried']}; step peak within "
              f"{b['budget_gib']} of {b['total_gib']} GiB{'; search cut by time' if b.get('cut') else ''})"]
             if b.get("batch") else []) + ([failed(b)] if b.get("error") else [])
    return ["largest 1024 px batch (stylegan2-1024)", fmt(b.get("img_per_s"), 1),
            fmt(b.get("s_per_kimg")), "; ".join(notes)]


def table(doc: dict) -> list[str]:
    nv = doc.get("nvlabs") or {"error": "skipped (--quick or --parts)"}
    best = min((r["s_per_kimg"] for r in doc["ganctl"] if "s_per_kimg" in r), default=None)
    goal, ratio = PUBLISHED_A100 / TARGET, nv["s_per_kimg"] / best if best and "s_per_kimg" in nv else None
    rows = [["row", "img/s", "s/kimg", "notes"], ["---"] * 4, *map(ganctl_row, doc["ganctl"]),
            nvlabs_row(nv),
            ["NVlabs published, one A100, 256 px", fmt(1000 / PUBLISHED_A100, 1), fmt(PUBLISHED_A100),
             "" if best is None else f"ganctl's best {best:.3f} s/kimg: {PUBLISHED_A100 / best:.2f}x; "
             f"target <= {goal:g} s/kimg ({TARGET:g}x): {'met' if best <= goal else 'NOT met'}"],
            batch_row(doc.get("batch1024") or {"error": "skipped (--quick or --parts)"}),
            ["ratio NVlabs s/kimg / ganctl's best (same GPU)", "", f"{ratio:.2f}x" if ratio else "n/a",
             "" if ratio is None else f"target >= {TARGET:g}x: {'met' if ratio >= TARGET else 'NOT met'}"]]
    return ["| " + " | ".join(c.replace("|", "/") for c in r) + " |" for r in rows]


def run_all(args, logs: Path, scratch: Path) -> dict:
    budget, device = Budget(args.budget), pick_device(args.device)
    doc: dict = {"ganctl": [], "nvlabs": None, "batch1024": None, "budget_s": args.budget}
    prebuild = None
    if "nvlabs" in args.parts and device.type == "cuda" and (args.nvlabs_dir / "train.py").is_file():
        marker, log = scratch / "prebuilt", logs / "nvlabs-prebuild.log"
        prebuild = (start([sys.executable, "-c", PREBUILD, str(marker)], args.nvlabs_dir,
                          nvlabs_env(scratch), log), marker, log)
    modes = args.modes if device.type == "cuda" else ["eager"]
    if "ganctl" in args.parts:
        after = ("--after", str(prebuild[1])) if prebuild else ()
        doc["ganctl"].append(boxed(args, f"ganctl:{modes[0]}", args.ganctl_cap, budget, logs, after))
    if "nvlabs" in args.parts:
        doc["nvlabs"] = nvlabs_part(args, budget, logs, scratch, prebuild)
    if "batch1024" in args.parts:
        doc["batch1024"] = boxed(args, "batch1024", args.batch1024_cap, budget, logs)
    for mode in modes[1:] if "ganctl" in args.parts else []:
        doc["ganctl"].append(boxed(args, f"ganctl:{mode}", args.ganctl_cap, budget, logs))
    if prebuild:
        stop(prebuild[0])
    doc["device"] = next((r["device"] for r in doc["ganctl"] if r.get("device")), str(device))
    doc["torch"], doc["wall_s"] = torch.__version__, round(args.budget - budget.left(), 1)
    return doc


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", "--cpu", action="store_true", help=f"CPU smoke test: {QUICK}")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--parts", default="ganctl,nvlabs,batch1024")
    ap.add_argument("--modes", default="default,reduce-overhead", help="ganctl's compile modes "
                    "(eager: not compiled; a CPU runs eager alone)")
    ap.add_argument("--resolution", type=int, default=0, help="ganctl's (0: the preset's 256)")
    ap.add_argument("--width", type=int, default=0, help="G and D widths (0: the presets')")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--warmup", type=int, default=32, help="untimed steps (compile included)")
    ap.add_argument("--steps", type=int, default=64, help="timed steps (a multiple of 16)")
    ap.add_argument("--budget", type=float, default=510, help="seconds for all the parts")
    ap.add_argument("--ganctl-cap", type=float, default=240, help="seconds, each ganctl mode")
    ap.add_argument("--nvlabs-cap", type=float, default=240, help="seconds, ops' build included")
    ap.add_argument("--batch1024-cap", type=float, default=150)
    ap.add_argument("--nvlabs-dir", type=Path, default=ROOT / ".gpu" / "nvlabs" / "stylegan2-ada-pytorch")
    ap.add_argument("--tick-kimg", type=float, default=1.0, help="NVlabs' progress tick (kimg)")
    ap.add_argument("--ticks", type=int, default=4, help="NVlabs ticks timed after tick 1")
    ap.add_argument("--part", help=argparse.SUPPRESS)
    ap.add_argument("--after", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.quick:
        vars(args).update(QUICK)
    args.parts, args.modes = args.parts.split(","), args.modes.split(",")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.part:  # a child: its result as JSON on stdout
        print(json.dumps(doc := run_part(args)), flush=True)
        return int("error" in doc)
    out = Path(os.environ["OUT"]) if os.environ.get("OUT") else None
    logs = out / "stylegan2_logs" if out else ROOT / ".gpu" / "stylegan2_speed"
    logs.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        doc = run_all(args, logs, Path(scratch))
    lines = [f"StyleGAN2 speed: {doc['device']}, torch {doc['torch']}, {doc['wall_s']:.0f} s", ""]
    lines += table(doc)
    print("\n".join(lines), flush=True)
    if out:
        with open(out / "stylegan2_speed.md", "a") as f:
            f.write("\n".join(lines) + "\n\n")
        (out / "stylegan2_speed.json").write_text(json.dumps(doc, indent=1))
    return 0 if doc["ganctl"] and "error" not in doc["ganctl"][0] else 1  # the headline row


if __name__ == "__main__":
    sys.exit(main())
