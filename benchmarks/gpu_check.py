"""Everything a lent GPU machine should run (issue 11), in two calls that fit 8 minutes.

The device tool moves at most 64 MiB of working tree per call, and the CIFAR-10 training JPEGs
(53 MB) and an fp16 Inception (44 MB) do not fit together. So the check is two calls on the same
warm machine (it stays warm about 30 s after a call: make the second call at once):

    python benchmarks/gpu_check.py prepare        # here, once: fills the ignored .gpu/ folder
    # call 1, carry [".gpu/train"]:  bash benchmarks/gpu_check.sh stage    (--budget, 180 s)
    # call 2, carry [".gpu/eval"]:   bash benchmarks/gpu_check.sh run      (--budget, 300 s)

Call 1 holds the work that keeps CPUs busy (torch.compile), --parallel subprocesses at a time,
all inside its budget, started in this order (--parts picks some, to rerun what a time box cut):
  stage     copy the training zip off the tree and build its decode cache;
  smoke     every arch x loss (15; the conditional model, spectral norm, R1/R2, d_steps 2 and
            DiffAugment spread over them) trains --smoke-steps steps compiled on the built-in
            shapes; its checkpoint must hold no `_orig_mod.` key and `ganctl sample --device cpu`
            must draw from it;
  sync      20 steady-state dcgan steps under torch.cuda.set_sync_debug_mode("warn"), compiled
            and eager: any host sync is counted, and the first one located;
  warm      every compiled throughput row and every preset runs its first steps once, so torch's
            compile cache (under the stage dir, kept between the calls) is full for call 2.
Call 2 holds the work that needs the GPU to itself, one thing at a time:
  throughput  benchmarks/throughput.py: 64x64 at batch 128 and 1024 (the classic example's loop,
            ganctl auto = bf16 + compile for each arch and dcgan on the built-in shapes, fp32
            eager dcgan and resnet); resnet at 32x32 batch 128, fp32 eager against auto (target
            4x); dcgan 64x64 batch 128 with compile mode reduce-overhead (CUDA graphs);
  quality   the presets side by side for --minutes on the staged training set, each final
            checkpoint scored (FID/KID, --num fakes against all the training images);
and prints one table last: every phase's seconds, every row, the targets. $OUT/gpu_check.json
holds both calls' results; $OUT/gpu_check.tar.gz the logs and sample grids. If the machine went
back between the calls (the stage dir is gone), call 2 trains on the carried CIFAR-10 test JPEGs,
compiles cold and says that the smoke results are missing.

Runs anywhere with --device cpu and tiny settings, which is how it is tested before a lease:
    bash benchmarks/gpu_check.sh stage --device cpu --smoke-steps 2 --smoke-only mlp-bce,dcgan-rpgan \\
        --sync-resolution 32 --sync-batch 16 --throughput-width 8 --throughput-images 64
    bash benchmarks/gpu_check.sh run --device cpu --minutes 0.3 --num 64 --num-real 64 \\
        --ckpt-every 5 --throughput-resolution 32 --throughput-batches 16 --pair-batch 16 \\
        --throughput-width 8 --throughput-seconds 1 --throughput-images 64
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GPU = ROOT / ".gpu"
SHARED = ROOT.parent / "shared"
STAGE = Path(os.environ.get("GPU_CHECK_STAGE", Path(tempfile.gettempdir()) / "gpu_check"))
TRAIN_ZIP = "cifar10_train_jpg.zip"
TEST_ZIP = "cifar10_test_jpg.zip"
INCEPTION = "inception-fp16.pt"
PRESETS = ["dcgan-cifar10", "sngan-cifar10", "r3-cifar10", "cgan-cifar10"]
ARCHS = ("mlp", "dcgan", "resnet")
LOSSES = ("bce", "hinge", "wgan-gp", "lsgan", "rpgan")
R1R2 = ["--r1", "0.1", "--r2", "0.1", "--r1-every", "2"]  # the lazy penalty runs within 4 steps
# what each arch x loss smoke run adds, so that every feature is compiled somewhere
EXTRAS: dict[tuple[str, str], list[str]] = {
    ("mlp", "bce"): ["--conditional"],
    ("mlp", "hinge"): ["--spectral-norm"],
    ("mlp", "lsgan"): ["--augment", "diffaug"],
    ("mlp", "rpgan"): R1R2,
    ("dcgan", "hinge"): ["--conditional", "--spectral-norm"],
    ("dcgan", "wgan-gp"): ["--d-steps", "2"],
    ("dcgan", "lsgan"): ["--augment", "diffaug"],
    ("dcgan", "rpgan"): R1R2,
    ("resnet", "bce"): ["--conditional", "--resolution", "64"],
    ("resnet", "wgan-gp"): ["--d-steps", "2"],
    ("resnet", "lsgan"): ["--augment", "diffaug"],
    ("resnet", "rpgan"): [*R1R2, "--no-spectral-norm"],
}
SMOKE = [(f"{arch}-{loss}", ["--arch", arch, "--loss", loss, *EXTRAS.get((arch, loss), [])])
         for arch in ARCHS for loss in LOSSES]
ROW_SECONDS = 25  # what one throughput row may take at most, its (cached) compile included
PRESET_WARM_STEPS = 8  # r3's lazy R1/R2 (every 4) runs in them, so its variants compile too
STAGE_JSON = "stage.json"  # call 1's results, read by call 2
# ganctl's one-line error, or an exception's line at the end of a traceback
ERROR_LINE = re.compile(r"^(error:|(\w+\.)*[A-Z]\w*(Error|Exception|Failed|Failure)\b)")


# --- subprocesses in a time box ------------------------------------------------------------------

@dataclass
class Done:
    rc: int | None  # None: killed at the end of its time box
    stdout: str
    seconds: float

    @property
    def doc(self) -> dict | None:
        try:
            doc = json.loads(self.stdout)
        except json.JSONDecodeError:
            return None
        return doc if isinstance(doc, dict) else None


def run_boxed(cmd: list[str], log: Path, seconds: float, env: dict | None = None) -> Done:
    """cmd with stderr to `log`, killed (its whole process group: torch's compile workers too)
    when `seconds` run out."""
    t = time.monotonic()
    if seconds < 1:
        log.write_text("not started: no time left in the budget\n")
        return Done(None, "", 0.0)
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, cwd=ROOT,
                                env=env, start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=seconds)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            try:
                out, _ = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:  # a grandchild in another group holds the pipe
                out = ""
            return Done(None, out or "", time.monotonic() - t)
    return Done(proc.returncode, out, time.monotonic() - t)


def error_line(done: Done, log: Path) -> str | None:
    """The first thing that says what went wrong: --json's error, else the exception's line."""
    if done.rc == 0:
        return None
    if done.rc is None:
        return f"killed after {done.seconds:.0f} s (time box)"
    if done.doc and done.doc.get("error"):
        return str(done.doc["error"])[:300]
    lines = [x.strip() for x in log.read_text(errors="replace").splitlines() if x.strip()]
    errors = [x for x in lines if ERROR_LINE.match(x)]
    return (errors or lines or [f"exit {done.rc}"])[0 if errors else -1][:300]


class Budget:
    """Seconds left of a call, and the time each phase took."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds
        self.phases: dict[str, float] = {}

    def left(self, reserve: float = 0.0) -> float:
        return self.end - time.monotonic() - reserve

    def phase(self, name: str, t0: float) -> None:
        self.phases[name] = round(time.monotonic() - t0, 1)
        print(f"phase {name}: {self.phases[name]:.0f} s", flush=True)


def slug(name: str) -> str:
    """A file name for a case's log."""
    return re.sub(r"[^\w.-]+", "-", name)


def ganctl(*args: str) -> list[str]:
    return [sys.executable, "-m", "ganctl", *args]


def child_env(parallel: int, **extra: str) -> dict:
    """The environment of a subprocess that shares the machine with `parallel` others: torch's
    threads and compile workers split the cores (oversubscribed, compiling slows down)."""
    share = str(max(1, (os.cpu_count() or 1) // parallel))
    return dict(os.environ, OMP_NUM_THREADS=share, TORCHINDUCTOR_COMPILE_THREADS=share, **extra)


# --- preparing (here, before a lease) ------------------------------------------------------------

def prepare() -> int:
    """Here, before a lease: the fp16 Inception, EfficientNet-Lite0 and the CIFAR-10 zips under
    the ignored .gpu/."""
    import torch
    for sub in ("train", "eval"):
        (GPU / sub).mkdir(parents=True, exist_ok=True)
    shutil.copy(SHARED / "data" / "cifar10" / TRAIN_ZIP, GPU / "train" / TRAIN_ZIP)
    shutil.copy(SHARED / "data" / "cifar10" / TEST_ZIP, GPU / "eval" / TEST_ZIP)
    net = torch.jit.load(str(SHARED / "models" / "inception-2015-12-05.pt"), map_location="cpu")
    torch.jit.save(net.half(), str(GPU / "eval" / INCEPTION))
    # gpu_check.sh projected-quality's carry: the fp16 Inception and EfficientNet-Lite0 (62 MiB)
    (GPU / "projected").mkdir(parents=True, exist_ok=True)
    shutil.copy(GPU / "eval" / INCEPTION, GPU / "projected" / INCEPTION)
    shutil.copy(SHARED / "models" / "efficientnet-lite0.safetensors", GPU / "projected")
    for sub in ("train", "eval", "projected"):
        size = sum(p.stat().st_size for p in (GPU / sub).iterdir()) / 2**20
        print(f".gpu/{sub}: {size:.1f} MiB")
    return 0


# --- call 1: stage, smoke, sync, warm ------------------------------------------------------------

def stage_data(work: Path, seconds: float) -> dict:
    """Keep the training zip off the tree and decode it once (on the CPU)."""
    src = GPU / "train" / TRAIN_ZIP
    if not src.exists():
        return {"error": f"{src.relative_to(ROOT)} was not carried"}
    shutil.copyfile(src, STAGE / TRAIN_ZIP)  # not its read-only mode: a second stage replaces it
    done = run_boxed(ganctl("train", "--dataset", str(STAGE / TRAIN_ZIP), "--resolution", "32",
                            "--steps", "1", "--device", "cpu", "--no-compile", "--out",
                            str(STAGE / "warm"), "--overwrite", "--json"),
                     work / "stage-data.log", seconds)
    return {"rc": done.rc, "seconds": round(done.seconds, 1),
            "error": error_line(done, work / "stage-data.log")}


def orig_mod_keys(ckpt: Path) -> int:
    """How many tensor names of a safetensors file hold `_orig_mod.` (a compiled wrapper's)."""
    with open(ckpt, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    return sum("_orig_mod." in key for key in header)


def latest_checkpoint(run: Path) -> Path | None:
    pointer = run / "checkpoints" / "latest"
    if pointer.exists():
        return run / "checkpoints" / pointer.read_text().strip()
    found = sorted((run / "checkpoints").glob("step-*.safetensors"))
    return found[-1] if found else None


def compile_seconds(log: Path) -> float | None:
    """What `ganctl train` said compiling took ("compiled in 14 s")."""
    found = re.findall(r"compiled in ([\d.]+) s", log.read_text(errors="replace")) if log.exists() else []
    return float(found[-1]) if found else None


def smoke_one(name: str, flags: list[str], args, work: Path, budget: Budget) -> dict:
    """One arch x loss: compiled training, then the checkpoint's names, then CPU sampling."""
    run, log = work / "smoke" / name, work / f"smoke-{name}.log"
    how = "--compile" if args.compile else "--no-compile"
    done = run_boxed(ganctl("train", "--dataset", "shapes", "--resolution", "32", "--channels", "3",
                            "--steps", str(args.smoke_steps), "--batch-size", "16", "--g-width",
                            "16", "--d-width", "16", "--device", args.device, how, "--out",
                            str(run), "--overwrite", "--json", *flags),
                     log, budget.left(), child_env(args.parallel))
    row = {"name": name, "flags": " ".join(flags[4:]), "train_rc": done.rc,
           "train_seconds": round(done.seconds, 1), "compile_seconds": compile_seconds(log),
           "error": error_line(done, log)}
    metrics = (done.doc or {}).get("metrics") or {}
    row["loss_D"] = metrics.get("loss_D")
    ckpt = latest_checkpoint(run) if done.rc == 0 else None
    if done.rc == 0 and ckpt is None:
        row["error"] = "no checkpoint written"
    if ckpt is not None:
        row["orig_mod_keys"] = orig_mod_keys(ckpt)
        slog = work / f"smoke-{name}-sample.log"
        sampled = run_boxed(ganctl("sample", "-n", "16", str(work / f"smoke-{name}.png"),
                                   "--ckpt", str(run), "--device", "cpu"),
                            slog, min(120.0, budget.left()), child_env(args.parallel))
        row["sample_rc"] = sampled.rc
        row["error"] = row["error"] or error_line(sampled, slog)
    row["ok"] = (done.rc == 0 and row.get("sample_rc") == 0 and row.get("orig_mod_keys") == 0
                 and isinstance(row["loss_D"], float) and math.isfinite(row["loss_D"]))
    if not row["ok"] and not row["error"]:
        row["error"] = (f"{row.get('orig_mod_keys')} _orig_mod. keys in the checkpoint"
                        if row.get("orig_mod_keys") else f"loss_D {row['loss_D']}")
    print(f"smoke {name}: {'pass' if row['ok'] else 'FAIL'} ({row['train_seconds']:.0f} s, "
          f"compile {row['compile_seconds']} s){'' if row['ok'] else ': ' + str(row['error'])}",
          flush=True)
    return row


@dataclass(frozen=True)
class Bench:
    """One benchmarks/throughput.py process of call 2."""

    resolution: int
    batch: int
    archs: tuple[str, ...]
    shapes: bool = False  # dcgan on the built-in shapes too
    baseline: tuple[str, ...] = ()  # fp32 eager rows
    reference: bool = True
    mode: str = "default"
    name: str = field(default="", compare=False)

    def flags(self, args) -> list[str]:
        return ["--device", args.device, "--resolution", str(self.resolution), "--batch-size",
                str(self.batch), "--width", str(args.throughput_width), "--archs",
                ",".join(self.archs), "--shapes-archs", "dcgan" if self.shapes else "",
                "--baseline-archs", ",".join(self.baseline), "--compile-mode", self.mode,
                "--folder", str(STAGE / "jpegs"), "--warmup", str(args.throughput_warmup),
                "--reference" if self.reference else "--no-reference", "--json"]


def benches(args) -> list[Bench]:
    """Call 2's throughput processes, most wanted first (a time box cuts the last ones)."""
    main = ("mlp", "dcgan", "resnet")
    rows = [Bench(args.throughput_resolution, b, main, True, ("dcgan", "resnet"),
                  name=f"{args.throughput_resolution}px b{b}") for b in args.throughput_batches]
    pair = Bench(args.pair_resolution, args.pair_batch, ("resnet",), baseline=("resnet",),
                 reference=False, name=f"{args.pair_resolution}px b{args.pair_batch} resnet")
    graphs = Bench(args.throughput_resolution, args.throughput_batches[0], ("dcgan",),
                   reference=False, mode="reduce-overhead",
                   name=f"{args.throughput_resolution}px b{args.throughput_batches[0]} "
                        "reduce-overhead")
    return [rows[0], pair, *rows[1:], graphs]


def throughput_cmd(*flags: str) -> list[str]:
    return [sys.executable, str(ROOT / "benchmarks" / "throughput.py"), *flags]


def warm_jobs(args) -> list[tuple[str, list[str]]]:
    """(name, command): each compiled throughput row alone, its warmup only (on CUDA, where
    auto compiles; elsewhere there is nothing to warm)."""
    if not args.device.startswith("cuda"):
        return []
    jobs = []
    for bench in benches(args):
        for arch in bench.archs:
            flags = Bench(bench.resolution, bench.batch, (arch,), mode=bench.mode,
                          reference=False).flags(args)
            jobs.append((f"warm {bench.resolution}px b{bench.batch} {arch} {bench.mode}",
                         throughput_cmd(*flags, "--compile-only")))
    return sorted(jobs, key=lambda job: " resnet " not in job[0])  # the longest compiles first


def warm_one(name: str, cmd: list[str], args, work: Path, budget: Budget,
             wait: Future | None = None) -> dict:
    if wait is not None:
        wait.result()  # the data it needs
    log = work / f"{slug(name)}.log"
    done = run_boxed(cmd, log, budget.left(), child_env(args.parallel,
                                                        GANCTL_CACHE_DIR=str(STAGE / "cache")))
    rows = (done.doc or {}).get("rows") or []
    seconds = [r.get("compile_seconds") for r in rows] or [compile_seconds(log)]
    row = {"name": name, "rc": done.rc, "seconds": round(done.seconds, 1),
           "compile_seconds": seconds[0], "error": error_line(done, log)}
    print(f"{name}: rc {done.rc}, compile {row['compile_seconds']} s", flush=True)
    return row


def preset_warm_jobs(args, work: Path) -> list[tuple[str, list[str]]]:
    if not args.device.startswith("cuda"):
        return []
    return [(f"warm preset {p}", ganctl("train", "--preset", p, "--dataset", str(STAGE / TRAIN_ZIP),
                                        "--steps", str(PRESET_WARM_STEPS), "--device", args.device,
                                        "--out", str(work / "warm" / p), "--overwrite", "--json"))
            for p in args.presets]


def stage(args) -> int:
    """Call 1: the data, and everything that keeps CPUs busy, --parallel at a time."""
    budget = Budget(args.budget)
    STAGE.mkdir(parents=True, exist_ok=True)
    work = STAGE / "work1"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    doc = header_doc(args)
    t = time.monotonic()
    if not (STAGE / "jpegs").exists():  # throughput's CelebA-shaped JPEGs, shared by call 2
        from benchmarks.data_throughput import make_jpeg_folder
        make_jpeg_folder(STAGE / "jpegs.tmp", args.throughput_images, 2, 0).rename(STAGE / "jpegs")
    budget.phase("jpegs", t)
    t = time.monotonic()
    doc.update(pool(args, work, budget))
    budget.phase("pool", t)
    doc["stage_phases"] = budget.phases
    text = json.dumps(doc, indent=1)
    (STAGE / STAGE_JSON).write_text(text)
    (out_dir(work) / "gpu_check_stage.json").write_text(text)
    failed = [r["name"] for r in doc["smoke"] if not r["ok"]]
    print(f"stage done in {sum(budget.phases.values()):.0f} s; smoke {len(doc['smoke']) - len(failed)}"
          f"/{len(doc['smoke'])} passed{': failed ' + ', '.join(failed) if failed else ''}; "
          f"host syncs {sync_summary(doc.get('sync'))}", flush=True)
    return 0


def pool(args, work: Path, budget: Budget) -> dict:
    """Stage data, the sync check, the compile cache's warming (call 2 then times steps, not
    compiling), and the smoke runs, side by side; a time box cuts the last ones."""
    smoke = [(n, f) for n, f in SMOKE if not args.smoke_only or n in args.smoke_only]
    smoke.sort(key=lambda s: ARCHS.index(s[1][1]), reverse=True)  # resnet compiles longest
    parts = args.parts
    with ThreadPoolExecutor(max_workers=args.parallel) as ex:
        # the pool starts jobs in this order: correctness (sync, smoke) before the warming, which
        # only saves call 2 compile time (a lease's first try cut the smoke runs short)
        data = ex.submit(guarded, {}, stage_data, work, budget.left()) if "data" in parts else None
        sync = ex.submit(guarded, {}, sync_job, args, work, budget) if "sync" in parts else None
        runs = [ex.submit(guarded, {"name": n, "flags": "", "ok": False, "train_seconds": 0.0},
                          smoke_one, n, f, args, work, budget)
                for n, f in smoke] if args.smoke_steps and "smoke" in parts else []
        warm = [ex.submit(guarded, {"name": n}, warm_one, n, c, args, work, budget)
                for n, c in warm_jobs(args)] if "warm" in parts else []
        presets = [ex.submit(guarded, {"name": n}, warm_one, n, c, args, work, budget, data)
                   for n, c in preset_warm_jobs(args, work)] if data and "warm" in parts else []
        return {"stage_data": data.result() if data else {"rc": None, "note": "not run"},
                "warm": [f.result() for f in warm + presets],
                "sync": sync.result() if sync else None, "smoke": [f.result() for f in runs]}


def guarded(row: dict, job: Callable[..., dict], *args: object) -> dict:
    """job(*args), or `row` with the error a bug of this script raised: one job's failure
    must not lose the others' results."""
    try:
        return job(*args)
    except Exception as e:  # noqa: BLE001
        print(f"{row.get('name', job.__name__)}: {type(e).__name__}: {e}", flush=True)
        return {**row, "error": f"{type(e).__name__}: {e}"[:300]}


def sync_job(args, work: Path, budget: Budget) -> dict:
    log = work / "sync.log"
    cmd = [sys.executable, str(Path(__file__)), "sync", "--device", args.device,
           "--sync-resolution", str(args.sync_resolution), "--sync-batch", str(args.sync_batch),
           "--throughput-width", str(args.throughput_width)]
    done = run_boxed(cmd, log, budget.left(), child_env(args.parallel))
    result = done.doc or {"error": error_line(done, log)}
    print(f"host syncs: {sync_summary(result)}", flush=True)
    return result


def sync_summary(result: dict | None) -> str:
    if not result:
        return "not run"
    if "error" in result:
        return f"FAILED: {result['error']}"
    return "; ".join(f"{k} {v.get('syncs', 'n/a')} in {v.get('steps')} steps"
                     + (f" (first at {v['where']})" if v.get("where") else "")
                     for k, v in result.items())


# --- the host-sync check (a subprocess of call 1) ------------------------------------------------

def sync_check(args) -> int:
    """dcgan on the built-in shapes: warm up (compile), then steps with host syncs reported.
    Prints one JSON object: per variant (compiled, eager) the syncs counted and where the
    first one happened."""
    import torch

    from ganctl.device import configure_determinism, resolve_device
    out = {}
    device = resolve_device(args.device)
    for variant, how in (("compiled", "on"), ("eager", "off")):
        if how == "on" and device.type != "cuda":
            continue  # a CPU compiles slowly, and has no host sync to find
        state = sync_state(args, device, how)
        configure_determinism(state.config.deterministic)
        out[variant] = count_syncs(state, device, args.sync_steps)
        del state
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print(json.dumps(out))
    return 0


def sync_state(args, device, how: str):
    from ganctl.data import load_dataset
    from ganctl.engine.state import init_state
    from ganctl.session import fit_to_data, on_device
    from ganctl.settings import resolve_config
    config = on_device(resolve_config({
        "dataset": "shapes", "arch": "dcgan", "resolution": args.sync_resolution, "channels": 3,
        "batch_size": args.sync_batch, "g_width": args.throughput_width,
        "d_width": args.throughput_width, "device": str(device), "compile": how}), device)
    data = load_dataset(config)
    config = fit_to_data(config, data)
    return init_state(config, device, data.images, data.labels)


def count_syncs(state, device, steps: int) -> dict:
    """Host syncs in `steps` steps after a warmup: counted under set_sync_debug_mode("warn"),
    then `steps` more under "error", whose first raise says where (the innermost ganctl frame).
    Both, because a warning raised on autograd's device thread may reach stderr only."""
    import warnings

    import torch

    from ganctl.engine.step import train_step
    phases = state.loss.phases()
    for _ in range(5):  # compiles, and cuDNN's autotuner settles
        train_step(state, phases)
    result: dict = {"steps": steps, "precision": state.config.precision, "compiled": state.compiled}
    if device.type != "cuda":
        for _ in range(steps):
            train_step(state, phases)
        return {**result, "syncs": None, "note": "no CUDA: nothing to check"}
    torch.cuda.synchronize(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with sync_debug("warn"):
            for _ in range(steps):
                train_step(state, phases)
    # torch's notice that the debug mode is a prototype also says "Synchronization": not a sync
    syncs = [w for w in caught if "synchroniz" in str(w.message).lower()
             and "prototype feature" not in str(w.message)]
    result["syncs"] = len(syncs)
    if syncs:
        result["message"] = str(syncs[0].message)[:200]
    torch.cuda.synchronize(device)
    result["where"] = first_sync(state, phases, steps)
    if result["where"] and not syncs:
        result["syncs"] = "1+"  # the warnings went elsewhere; the error mode caught one
    return result


@contextmanager
def sync_debug(mode: str) -> Iterator[None]:
    import torch
    torch.cuda.set_sync_debug_mode(mode)
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


def first_sync(state, phases, steps: int) -> str | None:
    """Where the first host sync of `steps` steps happens (None: none did)."""
    from ganctl.engine.step import train_step
    try:
        with sync_debug("error"):
            for _ in range(steps):
                train_step(state, phases)
        return None
    except RuntimeError as e:
        if "synchroniz" not in str(e):
            raise
        frames = traceback.extract_tb(e.__traceback__)
        ours = [f for f in frames if f"{os.sep}ganctl{os.sep}" in f.filename] or frames
        f = ours[-1]
        return f"{Path(f.filename).name}:{f.lineno} {f.line}"


# --- call 2: throughput, quality, scores, the table ----------------------------------------------

def throughput(args, work: Path, budget: Budget, reserve: float) -> list[dict]:
    """Each bench alone on the GPU, in order, while the budget (less `reserve`) lasts."""
    results = []
    for bench in benches(args):
        log = work / f"throughput-{slug(bench.name)}.log"
        left = budget.left(reserve)
        if left < ROW_SECONDS:
            results.append({"bench": bench.name, "rc": None, "seconds": 0.0,
                            "error": "skipped: no time left in the budget"})
            continue
        # rows not begun by then are skipped, and the process still prints what it measured
        cmd = throughput_cmd(*bench.flags(args), "--seconds", str(args.throughput_seconds),
                             "--sample-seconds", str(args.throughput_seconds / 2),
                             "--max-seconds", str(max(1, int(left - ROW_SECONDS))))
        done = run_boxed(cmd, log, left, dict(os.environ, GANCTL_CACHE_DIR=str(STAGE / "cache")))
        doc = done.doc or {}
        results.append({"bench": bench.name, "rc": done.rc, "seconds": round(done.seconds, 1),
                        "error": None if doc else error_line(done, log), **doc})
        print(f"throughput {bench.name}: rc {done.rc} in {done.seconds:.0f} s, ratio "
              f"{doc.get('ratio')}", flush=True)
    return results


def quality(args, data: str, work: Path) -> dict[str, dict]:
    """The presets side by side for the same wall time; returns each run's final document."""
    procs = {}
    for preset in args.presets:
        out = work / "q" / preset
        cmd = ganctl("train", "--preset", preset, "--dataset", data, "--steps", "10000000",
                     "--max-time", f"{int(args.minutes * 60)}s", "--ckpt-every",
                     str(args.ckpt_every), "--sample-every", str(args.ckpt_every), "--keep", "0",
                     "--log-every", "10", "--device", args.device, "--out", str(out), "--json")
        log = open(work / f"train-{preset}.log", "w")
        procs[preset] = (subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True,
                                          cwd=ROOT), log)
    docs = {}
    for preset, (proc, log) in procs.items():
        stdout, _ = proc.communicate()
        log.close()
        try:
            docs[preset] = json.loads(stdout)
        except json.JSONDecodeError:
            docs[preset] = {"error": f"rc {proc.returncode}, see train-{preset}.log"}
        docs[preset]["compile_seconds"] = compile_seconds(work / f"train-{preset}.log")
        print(f"trained {preset}: rc {proc.returncode} step {docs[preset].get('step')}",
              flush=True)
    return docs


def checkpoints_to_score(run: Path, half: bool) -> list[tuple[float, Path]]:
    """(training seconds, checkpoint): the final checkpoint, and with `half` the one nearest
    half time."""
    metrics = run / "metrics.jsonl"
    lines = [json.loads(x) for x in metrics.read_text().splitlines()] if metrics.exists() else []
    times = {x["step"]: x["time"] for x in lines if "time" in x and "step" in x}
    ckpts = sorted((run / "checkpoints").glob("step-*.safetensors"))
    if not ckpts or not times:
        return [(0.0, c) for c in ckpts[-1:]]
    start = min(times.values())  # the first log line: start-up and data loading left out

    def seconds(ck: Path) -> float:
        step = int(ck.stem.split("-")[1])
        near = min(times, key=lambda s: abs(s - step))
        return times[near] - start

    final = ckpts[-1]
    mid = (min(ckpts[:-1], key=lambda c: abs(seconds(c) - seconds(final) / 2))
           if half and len(ckpts) > 1 else None)
    return [(seconds(c), c) for c in ([mid] if mid else []) + [final]]


def score(args, data: str, work: Path, runs: list[str], budget: Budget) -> list[dict]:
    """Every chosen checkpoint in this one process: the Inception file and the real statistics
    are loaded once (a `ganctl eval` process each cost about 40 s on the H100, mostly start-up)."""
    import torch
    from rich.console import Console

    from ganctl import checkpoint
    from ganctl.data import load_dataset
    from ganctl.device import resolve_device
    from ganctl.metrics import parse_metrics
    from ganctl.output.progress import RunLog
    from ganctl.sample import load_generator
    from ganctl.scoring import make_evaluator

    device = resolve_device(args.device)
    log = RunLog(Console(stderr=True, highlight=False))
    evaluators: dict[tuple, Callable] = {}
    rows = []
    for preset in runs:
        for secs, ck in checkpoints_to_score(work / "q" / preset, args.score_half):
            row: dict = {"preset": preset, "checkpoint": ck.name, "seconds": round(secs, 1)}
            rows.append(row)
            if budget.left() < 5:
                row["error"] = "not scored: no time left in the budget"
                continue
            try:
                loaded = load_generator(checkpoint.open_checkpoint(ck), device)
                config = loaded.config.replace(dataset=data, batch_size=1)
                key = (config.resolution, config.channels)
                if key not in evaluators:
                    evaluators[key] = make_evaluator(
                        config, load_dataset(config), device, parse_metrics("fid,kid"), args.num,
                        args.num_real or None, str(args.inception), False, log, progress=False)
                result = evaluators[key](loaded.G, loaded.config)
                row.update(step=loaded.header.step, eval_seconds=result.seconds, **result.scores)
            except Exception as e:  # noqa: BLE001 - a row says what failed, the others go on
                row["error"] = f"{type(e).__name__}: {e}"[:300]
            finally:
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            print(f"scored {preset} {ck.name} at {secs:.0f} s: FID {row.get('fid')}", flush=True)
    return rows


def header_doc(args) -> dict:
    import torch
    return {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
            "torch": torch.__version__, "cpus": os.cpu_count()}


def out_dir(work: Path) -> Path:
    out = Path(os.environ.get("OUT", work))
    out.mkdir(parents=True, exist_ok=True)
    return out


def run(args) -> int:
    """Call 2: throughput, quality, scores; then the table of both calls, last."""
    budget = Budget(args.budget)
    work = STAGE / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    staged = STAGE / TRAIN_ZIP
    data = str(staged) if staged.exists() else str(GPU / "eval" / TEST_ZIP)
    previous = STAGE / STAGE_JSON
    doc: dict = {**header_doc(args), "data": Path(data).name, "staged": staged.exists(),
                 "minutes": args.minutes, "num": args.num,
                 "stage": json.loads(previous.read_text()) if previous.exists() else None}
    out = out_dir(work)
    if not (STAGE / "jpegs").exists():  # call 1 did not run here: make throughput's JPEGs now
        from benchmarks.data_throughput import make_jpeg_folder
        make_jpeg_folder(STAGE / "jpegs.tmp", args.throughput_images, 2, 0).rename(STAGE / "jpegs")
    t = time.monotonic()
    reserve = args.minutes * 60 + args.score_reserve  # what quality and scoring need after it
    doc["throughput"] = throughput(args, work, budget, reserve) if args.throughput_seconds else []
    budget.phase("throughput", t)
    (out / "gpu_check.json").write_text(json.dumps(doc, indent=1))  # what is done, if cut off
    t = time.monotonic()
    docs = quality(args, data, work) if args.presets else {}
    budget.phase("quality", t)
    doc["runs"] = {p: {k: d.get(k) for k in ("step", "seconds", "metrics", "stopped", "error",
                                             "compile_seconds")} for p, d in docs.items()}
    (out / "gpu_check.json").write_text(json.dumps(doc, indent=1))
    t = time.monotonic()
    doc["scores"] = score(args, data, work, [p for p in docs if "error" not in docs[p]], budget)
    budget.phase("scores", t)
    doc["run_phases"] = budget.phases
    (out / "gpu_check.json").write_text(json.dumps(doc, indent=1))
    pack(work, out)
    print_table(doc)
    return 0 if all(r["ok"] for r in (doc["stage"] or {}).get("smoke", [])) else 1


def pack(work: Path, out: Path) -> None:
    """Logs, metrics and sample grids of both calls into $OUT/gpu_check.tar.gz."""
    with tarfile.open(out / "gpu_check.tar.gz", "w:gz") as tar:
        for root in (STAGE / "work1", work):
            for p in sorted(root.rglob("*")) if root.exists() else []:
                if p.suffix in (".log", ".jsonl", ".json") or (p.suffix == ".png" and (
                        "smoke-" in p.name or p.parent.name == "samples")):
                    tar.add(p, arcname=str(p.relative_to(STAGE)))


# --- the table -----------------------------------------------------------------------------------

def fmt(x: float | None, digits: int = 0) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def failure(error: str) -> str:
    return error if error.startswith("skipped") else f"FAILED: {error}"


def throughput_lines(doc: dict) -> list[tuple[str, str, str, str]]:
    """(part, case, result, seconds) for every throughput row, then each speed-up."""
    lines = []
    for t in doc.get("throughput", []):
        size = f"{t.get('resolution')}px b{t.get('batch_size')}"
        if t.get("error"):
            lines.append(("throughput", t["bench"], failure(t["error"]), fmt(t["seconds"])))
            continue
        if t.get("reference_img_per_s"):
            lines.append(("throughput", f"{size} reference (classic example, fp32 eager)",
                          f"{fmt(t['reference_img_per_s'])} img/s", ""))
        for r in t.get("rows", []):
            how = f"{r['precision']}, {'compiled ' + r['compile_mode'] if r.get('compiled') else 'eager'}"
            result = (failure(r["error"]) if r.get("error") else
                      f"{fmt(r.get('train_img_per_s'))} img/s, sampling "
                      f"{fmt(r.get('sample_img_per_s'))} img/s (batch {t.get('sample_batch')})")
            label = r["name"] if r["name"].endswith("fp32 eager") else f"{r['name']} ({how})"
            lines.append(("throughput", f"{size} {label}", result,
                          f"compile {fmt(r.get('compile_seconds'), 1)}" if r.get("compiled") else ""))
        if t.get("ratio"):
            lines.append(("ratio", f"{size} ganctl dcgan / reference", f"{t['ratio']:.2f}x", ""))
        lines += speedups(t, size)
    return lines


def speedups(t: dict, size: str) -> list[tuple[str, str, str, str]]:
    """Each arch's default (auto) row over its fp32 eager row."""
    rows = {r["name"]: r for r in t.get("rows", [])}
    out = []
    for name, r in rows.items():
        base = rows.get(f"{name} fp32 eager")
        if base and r.get("train_img_per_s") and base.get("train_img_per_s"):
            x = r["train_img_per_s"] / base["train_img_per_s"]
            target = " (target 4x)" if name == "resnet" and t.get("resolution") == 32 else ""
            out.append(("speed-up", f"{size} {name}: {r['precision']} "
                        f"{'compiled' if r.get('compiled') else 'eager'} / fp32 eager",
                        f"{x:.2f}x{target}", ""))
    return out


def stage_lines(stage: dict | None) -> list[tuple[str, str, str, str]]:
    if stage is None:
        return [("smoke", "all", "MISSING: call 1 (stage) did not run on this machine", "")]
    lines = [("phase", f"call 1 {k}", "", fmt(v)) for k, v in stage.get("stage_phases", {}).items()]
    data = stage.get("stage_data") or {}
    lines.append(("stage", "training zip decoded", data.get("error") or "ok", fmt(data.get("seconds"))))
    for w in stage.get("warm", []):
        lines.append(("warm", w["name"], w.get("error") or "ok",
                      f"compile {fmt(w.get('compile_seconds'), 1)}"))
    for r in stage.get("smoke", []):
        result = ("pass" if r["ok"] else f"FAIL: {r.get('error')}") + (
            f" (loss_D {r['loss_D']:.3f}, {r.get('orig_mod_keys')} _orig_mod. keys, sampled on "
            "cpu)" if r["ok"] else "")
        lines.append(("smoke", f"{r['name']} {r['flags']}".strip(), result,
                      f"{fmt(r['train_seconds'])} (compile {fmt(r.get('compile_seconds'))})"))
    for variant, v in (stage.get("sync") or {"check": {"syncs": "not run"}}).items():
        result = (f"{v.get('syncs')} host syncs in {v.get('steps')} steps" if isinstance(v, dict)
                  else str(v))
        if isinstance(v, dict) and v.get("where"):
            result += f"; first at {v['where']}"
        lines.append(("host sync", f"dcgan {variant}", result, ""))
    return lines


def quality_lines(doc: dict) -> list[tuple[str, str, str, str]]:
    lines = []
    for r in doc.get("scores", []):
        run = doc["runs"][r["preset"]]
        ips = (run.get("metrics") or {}).get("img_per_s")
        score = (f"FID {fmt(r.get('fid'), 2)}, KID {fmt(r.get('kid'), 4)}" if "fid" in r
                 else r.get("error", "-"))
        lines.append(("quality", f"{r['preset']} {r['checkpoint']} (step {run.get('step')}, "
                      f"{fmt(ips)} img/s shared)", score,
                      f"{fmt(r['seconds'])} (compile {fmt(run.get('compile_seconds'))})"))
    for preset, run in doc.get("runs", {}).items():
        if run.get("error"):
            lines.append(("quality", preset, f"FAILED: {run['error']}", ""))
    return lines


def print_table(doc: dict) -> None:
    """One table, printed last: every phase, row and target of both calls."""
    lines = stage_lines(doc.get("stage")) + throughput_lines(doc) + quality_lines(doc)
    lines += [("phase", f"call 2 {k}", "", fmt(v)) for k, v in doc.get("run_phases", {}).items()]
    print(f"\n{doc['device']}, torch {doc['torch']}, {doc['cpus']} CPUs; quality on {doc['data']}, "
          f"{doc['minutes']} min side by side, FID on {doc['num']} fakes")
    print("| part | case | result | seconds |")
    print("|---|---|---|---|")
    for line in lines:
        print("| " + " | ".join(x.replace("|", "/") for x in line) + " |")


# --- the command ---------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("what", choices=["prepare", "stage", "run", "sync"])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--budget", type=float, default=0, help="seconds this call may take (0: "
                    "stage 180, run 300)")
    ap.add_argument("--parallel", type=int, default=10, help="call 1's subprocesses at a time")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                    help="compile the smoke runs (--no-compile for a quick CPU try)")
    ap.add_argument("--smoke-steps", type=int, default=4, help="0 skips the smoke runs")
    ap.add_argument("--parts", default="data,sync,smoke,warm", help="call 1's parts to run "
                    "(a rerun of what a first try left out: --parts smoke,sync)")
    ap.add_argument("--smoke-only", default="", help="comma-separated smoke names (default: all "
                    f"{len(SMOKE)}: {', '.join(n for n, _ in SMOKE)})")
    ap.add_argument("--sync-steps", type=int, default=20)
    ap.add_argument("--sync-resolution", type=int, default=64)
    ap.add_argument("--sync-batch", type=int, default=128)
    ap.add_argument("--minutes", type=float, default=1.25, help="wall time of each preset's run")
    ap.add_argument("--ckpt-every", type=int, default=1000)
    ap.add_argument("--num", type=int, default=10000, help="fakes per score")
    ap.add_argument("--num-real", type=int, default=0, help="real images for the statistics "
                    "(0: all)")
    ap.add_argument("--score-half", action="store_true", help="also score the checkpoint "
                    "nearest half time")
    ap.add_argument("--score-reserve", type=float, default=45.0, help="seconds kept for scoring")
    ap.add_argument("--presets", default=",".join(PRESETS))
    ap.add_argument("--throughput-seconds", type=float, default=3.0, help="per row; 0 skips it")
    ap.add_argument("--throughput-batches", default="128,1024")
    ap.add_argument("--throughput-resolution", type=int, default=64)
    ap.add_argument("--throughput-width", type=int, default=64)
    ap.add_argument("--throughput-images", type=int, default=2048)
    ap.add_argument("--throughput-warmup", type=int, default=5)
    ap.add_argument("--pair-resolution", type=int, default=32, help="resnet's fp32-eager/auto pair")
    ap.add_argument("--pair-batch", type=int, default=128)
    ap.add_argument("--inception", type=Path, default=GPU / "eval" / INCEPTION)
    args = ap.parse_args(argv)
    args.budget = args.budget or {"stage": 180.0, "run": 300.0}.get(args.what, 600.0)
    args.presets = [p for p in args.presets.split(",") if p]
    args.smoke_only = [n for n in args.smoke_only.split(",") if n]
    args.parts = {p for p in args.parts.split(",") if p}
    if args.parts - {"data", "sync", "smoke", "warm"}:
        ap.error(f"--parts takes data, sync, smoke and warm, not {args.parts}")
    args.throughput_batches = [int(b) for b in args.throughput_batches.split(",") if b]
    return args


def main() -> int:
    args = parse_args()
    # torch's compile cache where both calls find it (the stage dir outlives call 1)
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(STAGE / "inductor"))
    sys.path.insert(0, str(ROOT))
    return {"prepare": prepare, "stage": lambda: stage(args), "run": lambda: run(args),
            "sync": lambda: sync_check(args)}[args.what]()


if __name__ == "__main__":
    sys.exit(main())
