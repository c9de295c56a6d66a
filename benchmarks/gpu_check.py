"""Everything a lent GPU machine should run, in as few calls as its 15 minutes allow.

The device tool moves at most 64 MiB of working tree per call, and the CIFAR-10 training JPEGs
(53 MB) and an fp16 Inception (44 MB) do not fit together. So the check is two calls on the same
warm machine (it stays warm about 30 s after a call):

    python benchmarks/gpu_check.py prepare          # here: fills the ignored .gpu/ folder
    (benchmarks/gpu_check.sh stage / run wraps the two device calls below)
    # call 1, carry [".gpu/train"]:  PYTHONPATH=. python3 benchmarks/gpu_check.py stage
    # call 2, carry [".gpu/eval"]:   PYTHONPATH=. python3 benchmarks/gpu_check.py run

`stage` copies the training zip off the working tree and builds its decode cache (CPU only).
`run` then (1) trains a few steps of every architecture x loss x conditional combination on
CUDA and samples from each (a smoke test for device bugs), (2) trains the quality presets side by
side on the one GPU for the same wall time (--minutes), (3) scores each one's final checkpoint
and the one nearest half time with FID/KID on --num fakes against all the training images, and
prints a table. It writes $OUT/gpu_check.json and $OUT/gpu_check.tar.gz (metrics, sample grids).
If the staged zip is gone (the machine went back between the calls), it trains and scores on
the carried CIFAR-10 test JPEGs instead, and says so.

Runs anywhere with --device cpu and tiny settings, which is how it is tested before a lease:
    python benchmarks/gpu_check.py run --device cpu --minutes 0.3 --num 64 --num-real 64 \
        --ckpt-every 5 --smoke-steps 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GPU = ROOT / ".gpu"
SHARED = ROOT.parent / "shared"
STAGE = Path(os.environ.get("GPU_CHECK_STAGE", Path(tempfile.gettempdir()) / "gpu_check"))
TRAIN_ZIP = "cifar10_train_jpg.zip"
TEST_ZIP = "cifar10_test_jpg.zip"
INCEPTION = "inception-fp16.pt"
PRESETS = ["dcgan-cifar10", "sngan-cifar10", "r3-cifar10", "cgan-cifar10"]
# (name, flags): every arch, every loss, the penalties, SN, DiffAugment and conditioning once
SMOKE = [
    ("mlp-bce-cond", ["--arch", "mlp", "--loss", "bce", "--conditional"]),
    ("mlp-lsgan", ["--arch", "mlp", "--loss", "lsgan"]),
    ("dcgan-wgangp", ["--arch", "dcgan", "--loss", "wgan-gp"]),
    ("dcgan-hinge-cond-sn", ["--arch", "dcgan", "--loss", "hinge", "--conditional",
                             "--spectral-norm"]),
    ("dcgan-rpgan-r1r2", ["--arch", "dcgan", "--loss", "rpgan", "--r1", "0.1", "--r2", "0.1",
                          "--r1-every", "2"]),
    ("resnet-lsgan-diffaug", ["--arch", "resnet", "--loss", "lsgan", "--augment", "diffaug"]),
    ("resnet-wgangp", ["--arch", "resnet", "--loss", "wgan-gp", "--d-steps", "2"]),
    ("resnet-bce-cond-64", ["--arch", "resnet", "--loss", "bce", "--conditional",
                            "--resolution", "64"]),
]


def ganctl(*args: str) -> list[str]:
    return [sys.executable, "-m", "ganctl", *args]


def num_real(args) -> list[str]:
    return ["--num-real", str(args.num_real)] if args.num_real else []


def eval_env(args) -> dict:
    return dict(os.environ, GANCTL_INCEPTION=str(args.inception))


def run_json(cmd: list[str], log: Path, env: dict | None = None) -> tuple[int, dict | None]:
    with open(log, "w") as err:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=err, text=True, cwd=ROOT,
                              env=env)
    try:
        return proc.returncode, json.loads(proc.stdout)
    except json.JSONDecodeError:
        return proc.returncode, None


def prepare() -> int:
    """Here, before a lease: the fp16 Inception and the CIFAR-10 zips under the ignored .gpu/."""
    import torch
    for sub in ("train", "eval"):
        (GPU / sub).mkdir(parents=True, exist_ok=True)
    shutil.copy(SHARED / "data" / "cifar10" / TRAIN_ZIP, GPU / "train" / TRAIN_ZIP)
    shutil.copy(SHARED / "data" / "cifar10" / TEST_ZIP, GPU / "eval" / TEST_ZIP)
    net = torch.jit.load(str(SHARED / "models" / "inception-2015-12-05.pt"), map_location="cpu")
    torch.jit.save(net.half(), str(GPU / "eval" / INCEPTION))
    for sub in ("train", "eval"):
        size = sum(p.stat().st_size for p in (GPU / sub).iterdir()) / 2**20
        print(f".gpu/{sub}: {size:.1f} MiB")
    return 0


def stage() -> int:
    """Call 1 on the device: keep the training zip off the tree and decode it once."""
    STAGE.mkdir(parents=True, exist_ok=True)
    shutil.copy(GPU / "train" / TRAIN_ZIP, STAGE / TRAIN_ZIP)
    t = time.monotonic()
    rc, doc = run_json(ganctl("train", "--dataset", str(STAGE / TRAIN_ZIP), "--resolution", "32",
                              "--steps", "1", "--device", "cpu", "--out", str(STAGE / "warm"),
                              "--overwrite", "--json"), STAGE / "warm.log")
    print(f"staged {STAGE / TRAIN_ZIP}, decode cache built in {time.monotonic() - t:.0f} s (rc {rc})")
    return rc


def smoke(args, data: str, work: Path) -> list[dict]:
    procs = []
    for name, flags in SMOKE:
        out = work / "smoke" / name
        cmd = ganctl("train", "--dataset", data, "--resolution", "32", "--steps",
                     str(args.smoke_steps), "--batch-size", "16", "--g-width", "16",
                     "--d-width", "16", "--device", args.device, "--out", str(out), "--json",
                     *flags)
        log = open(work / f"smoke-{name}.log", "w")
        procs.append((name, out, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log,
                                                  text=True, cwd=ROOT), log))
    for *_, proc, log in procs:
        proc.wait()
        log.close()
    # the real statistics of the training set, computed once while the samples are drawn
    stats = subprocess.Popen(ganctl("eval", str(work / "smoke" / SMOKE[0][0]), "--num", "2",
                                    "--dataset", data, "--device", args.device, "--no-download",
                                    *num_real(args)),
                             stdout=subprocess.DEVNULL, stderr=open(work / "stats.log", "w"),
                             cwd=ROOT, env=eval_env(args))
    samplers = [subprocess.Popen(ganctl("sample", "--ckpt", str(out), "-n", "16",
                                        str(work / f"smoke-{name}.png"), "--device", args.device),
                                 stdout=subprocess.DEVNULL,
                                 stderr=open(work / f"smoke-{name}-sample.log", "w"), cwd=ROOT)
                for name, out, _, _ in procs]  # side by side, like the trainings
    rows = []
    for (name, _, proc, _), sampler in zip(procs, samplers, strict=True):
        row = {"name": name, "train_rc": proc.returncode, "sample_rc": sampler.wait()}
        try:
            row["loss_D"] = json.loads(proc.stdout.read())["metrics"]["loss_D"]
        except (json.JSONDecodeError, KeyError, TypeError):
            row["loss_D"] = None
        rows.append(row)
        print(f"smoke {name}: train rc {row['train_rc']}, loss_D {row['loss_D']}, sample rc "
              f"{row['sample_rc']}", flush=True)
    print(f"real statistics: rc {stats.wait()}", flush=True)
    return rows


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
        print(f"trained {preset}: rc {proc.returncode} step {docs[preset].get('step')}",
              flush=True)
    return docs


def checkpoints_to_score(run: Path) -> list[tuple[float, Path]]:
    """(training seconds, checkpoint) for the final checkpoint and the one nearest half time."""
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
    half = seconds(final) / 2
    mid = min(ckpts[:-1], key=lambda c: abs(seconds(c) - half)) if len(ckpts) > 1 else None
    return [(seconds(c), c) for c in ([mid] if mid else []) + [final]]


def score(args, data: str, work: Path, runs: list[str]) -> list[dict]:
    """Every chosen checkpoint in this one process: the Inception file and the real statistics
    are loaded once (a `ganctl eval` process each cost about 40 s on the H100, mostly start-up)."""
    import torch
    from rich.console import Console

    from ganctl import checkpoint
    from ganctl.data import load_dataset
    from ganctl.device import resolve_device
    from ganctl.evaluate import make_evaluator
    from ganctl.logging import RunLog
    from ganctl.metrics import parse_metrics
    from ganctl.sample import load_generator

    device = resolve_device(args.device)
    log = RunLog(Console(stderr=True, highlight=False))
    evaluators: dict[tuple, object] = {}
    rows = []
    for preset in runs:
        for secs, ck in checkpoints_to_score(work / "q" / preset):
            row = {"preset": preset, "checkpoint": ck.name, "seconds": round(secs, 1)}
            try:
                loaded = load_generator(checkpoint.open_checkpoint(ck), device)
                config = loaded.config.replace(dataset=data, batch_size=1)
                key = (config.resolution, config.channels)
                if key not in evaluators:
                    evaluators[key] = make_evaluator(
                        config, load_dataset(config), device, parse_metrics("fid,kid"), args.num,
                        args.num_real or None, str(args.inception), False, log, progress=False)
                result = evaluators[key](loaded.G, loaded.config)  # type: ignore[operator]
                row.update(step=loaded.header.step, eval_seconds=result.seconds, **result.scores)
            except Exception as e:  # noqa: BLE001 - a row says what failed, the others go on
                row["error"] = f"{type(e).__name__}: {e}"[:300]
            finally:
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            rows.append(row)
            print(f"scored {preset} {ck.name} at {secs:.0f} s: FID {row.get('fid')}", flush=True)
    return rows


def throughput(args, work: Path) -> list[dict]:
    """benchmarks/throughput.py at 64x64, batch 128 and 1024: the classic example's loop against
    ganctl's engine for each architecture, training and sampling images/s."""
    rows = []
    for batch in args.throughput_batches:
        rc, doc = run_json([sys.executable, str(ROOT / "benchmarks" / "throughput.py"), "--json",
                            "--device", args.device, "--batch-size", str(batch), "--resolution",
                            str(args.throughput_resolution), "--width", str(args.throughput_width),
                            "--seconds", str(args.throughput_seconds), "--images", "2048"],
                           work / f"throughput-{batch}.log")
        rows.append({"batch": batch, "rc": rc, **(doc or {})})
        print(f"throughput batch {batch}: rc {rc}, ratio {(doc or {}).get('ratio')}", flush=True)
    return rows


def run(args) -> int:
    import torch
    work = STAGE / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    staged = STAGE / TRAIN_ZIP
    data = str(staged) if staged.exists() else str(GPU / "eval" / TEST_ZIP)
    doc: dict = {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
                 "torch": torch.__version__, "data": Path(data).name,
                 "staged": staged.exists(), "minutes": args.minutes, "num": args.num}
    print(json.dumps(doc), flush=True)
    doc["throughput"] = throughput(args, work) if args.throughput_seconds else []
    t = time.monotonic()
    doc["smoke"] = smoke(args, data, work) if args.smoke_steps else []
    doc["smoke_seconds"] = round(time.monotonic() - t, 1)
    out = Path(os.environ.get("OUT", work))
    (out / "gpu_check.json").write_text(json.dumps(doc, indent=1))  # what is done, if cut off
    docs = quality(args, data, work)
    doc["runs"] = {p: {k: d.get(k) for k in ("step", "seconds", "metrics", "stopped", "error")}
                   for p, d in docs.items()}
    (out / "gpu_check.json").write_text(json.dumps(doc, indent=1))
    doc["scores"] = score(args, data, work, [p for p in docs if "error" not in docs[p]])
    (out / "gpu_check.json").write_text(json.dumps(doc, indent=1))
    with tarfile.open(out / "gpu_check.tar.gz", "w:gz") as tar:
        for p in sorted(work.rglob("*")):
            if p.suffix in (".log", ".jsonl", ".json") or (p.suffix == ".png" and (
                    "smoke-" in p.name or p.parent.name == "samples")):
                tar.add(p, arcname=str(p.relative_to(work)))
    print_table(doc)
    return 0 if all(r["train_rc"] == 0 and r["sample_rc"] == 0 for r in doc["smoke"]) else 1


def print_table(doc: dict) -> None:
    for t in doc.get("throughput", []):
        archs = ", ".join(f"{a} {r['train_img_per_s']:,.0f} (sampling {r['sample_img_per_s']:,.0f})"
                          for a, r in (t.get("archs") or {}).items())
        print(f"throughput batch {t['batch']}: reference {t.get('reference_img_per_s', 0):,.0f} "
              f"img/s; ganctl {archs}; ratio {t.get('ratio', 0):.2f}x")
    print(f"\n{doc['device']}, torch {doc['torch']}, data {doc['data']}, "
          f"{doc['minutes']} min each, side by side")
    print("| preset | steps | img/s (shared GPU) | checkpoint | train s | FID | KID |")
    print("|---|---|---|---|---|---|---|")
    for r in doc["scores"]:
        run = doc["runs"][r["preset"]]
        ips = (run.get("metrics") or {}).get("img_per_s")
        kid = f"{r['kid']:.4f}" if isinstance(r.get("kid"), float) else r.get("kid")
        fid = f"{r['fid']:.2f}" if isinstance(r.get("fid"), float) else r.get("fid")
        print(f"| {r['preset']} | {run.get('step')} | {ips} | {r['checkpoint']} | {r['seconds']} "
              f"| {fid} | {kid} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("what", choices=["prepare", "stage", "run"])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--minutes", type=float, default=4.0, help="wall time of each preset's run")
    ap.add_argument("--ckpt-every", type=int, default=1000)
    ap.add_argument("--num", type=int, default=10000, help="fakes per score")
    ap.add_argument("--num-real", type=int, default=0, help="real images for the statistics "
                    "(0: all)")
    ap.add_argument("--smoke-steps", type=int, default=4, help="0 skips the smoke test")
    ap.add_argument("--presets", default=",".join(PRESETS))
    ap.add_argument("--throughput-seconds", type=float, default=8.0, help="per row; 0 skips it")
    ap.add_argument("--throughput-batches", default="128,1024")
    ap.add_argument("--throughput-resolution", type=int, default=64)
    ap.add_argument("--throughput-width", type=int, default=64)
    ap.add_argument("--inception", type=Path, default=GPU / "eval" / INCEPTION)
    args = ap.parse_args()
    args.presets = [p for p in args.presets.split(",") if p]
    args.throughput_batches = [int(b) for b in args.throughput_batches.split(",") if b]
    return {"prepare": prepare, "stage": stage, "run": lambda: run(args)}[args.what]()


if __name__ == "__main__":
    sys.exit(main())
