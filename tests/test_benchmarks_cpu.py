"""The GPU check and the throughput benchmark, on the CPU: what a lent GPU's 15 minutes run must
work the first time, so its pieces are checked here (benchmarks/gpu_check.py, throughput.py,
stylegan2_speed.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import cpu_precision, gpu_check, quality_table, stylegan2_speed, throughput  # noqa: E402
from ganctl import device  # noqa: E402


def test_smoke_runs_every_arch_with_every_loss_and_each_feature_somewhere() -> None:
    names = [name for name, _ in gpu_check.SMOKE]
    assert sorted(names) == sorted(f"{a}-{loss}" for a in gpu_check.ARCHS
                                   for loss in gpu_check.LOSSES)
    assert len(names) == 15
    flags = {f for _, fs in gpu_check.SMOKE for f in fs}
    assert {"--conditional", "--spectral-norm", "--r1", "--r2", "--augment", "--d-steps"} <= flags


def test_orig_mod_keys_counts_a_compiled_wrappers_names(tmp_path: Path) -> None:
    t = torch.zeros(2)
    save_file({"G.conv.weight": t, "D._orig_mod.conv.weight": t.clone()}, str(tmp_path / "a.safetensors"))
    save_file({"G.conv.weight": t}, str(tmp_path / "b.safetensors"))
    assert gpu_check.orig_mod_keys(tmp_path / "a.safetensors") == 1
    assert gpu_check.orig_mod_keys(tmp_path / "b.safetensors") == 0


def test_error_line_is_the_json_error_else_the_exception_line(tmp_path: Path) -> None:
    log = tmp_path / "log"
    log.write_text("compiling\nTraceback (most recent call last):\n  File x\n"
                   "torch._dynamo.exc.BackendCompilerFailed: backend='inductor' raised\nmore\n")
    assert gpu_check.error_line(gpu_check.Done(0, "", 1.0), log) is None
    assert gpu_check.error_line(gpu_check.Done(1, '{"error": "bad", "exit_code": 1}', 1.0),
                                log) == "bad"
    assert gpu_check.error_line(gpu_check.Done(1, "", 1.0), log).startswith(
        "torch._dynamo.exc.BackendCompilerFailed")
    assert "time box" in gpu_check.error_line(gpu_check.Done(None, "", 9.0), log)


def test_run_boxed_kills_what_outlives_its_time_box(tmp_path: Path) -> None:
    t = time.monotonic()
    done = gpu_check.run_boxed([sys.executable, "-c", "import time; time.sleep(60)"],
                               tmp_path / "log", 1.0)
    assert done.rc is None and time.monotonic() - t < 10
    done = gpu_check.run_boxed([sys.executable, "-c", "print('{\"a\": 1}')"], tmp_path / "log", 30)
    assert done.rc == 0 and done.doc == {"a": 1}


def test_benches_put_the_most_wanted_first_and_warm_only_compiled_cuda_rows() -> None:
    args = gpu_check.parse_args(["run"])
    names = [b.name for b in gpu_check.benches(args)]
    assert names == ["64px b128", "32px b128 resnet", "64px b1024", "64px b128 reduce-overhead"]
    assert gpu_check.warm_jobs(gpu_check.parse_args(["stage", "--device", "cpu"])) == []
    warm = gpu_check.warm_jobs(gpu_check.parse_args(["stage"]))
    assert len(warm) == 8 and all("--compile-only" in cmd for _, cmd in warm)


def test_throughput_plan_passes_precision_and_compile_through() -> None:
    args = throughput.parse_args([])
    assert (args.precision, args.compile, args.compile_mode) == ("auto", "auto", "default")
    rows = throughput.plan(throughput.parse_args(["--no-compile", "--precision", "bf16",
                                                  "--baseline-archs", "resnet"]))
    assert [r.name for r in rows] == ["dcgan", "resnet", "mlp", "dcgan shapes", "resnet fp32 eager"]
    assert all((r.precision, r.compile) == ("bf16", "off") for r in rows[:4])
    assert (rows[-1].precision, rows[-1].compile) == ("fp32", "off")
    rows = throughput.plan(throughput.parse_args(["--archs", "dcgan", "--shapes-archs", "",
                                                  "--projected-archs", "dcgan"]))
    assert [(r.name, r.discriminator) for r in rows] == [("dcgan", "own"),
                                                         ("dcgan projected", "projected")]
    assert throughput.row_config(rows[1], Path("."), throughput.parse_args([])).discriminator \
        == "projected"


def test_the_table_comes_last_with_the_speed_ups(capsys: pytest.CaptureFixture[str]) -> None:
    rows = [{"name": "resnet", "precision": "bf16", "compiled": True, "compile_mode": "default",
             "compile_seconds": 30.0, "train_img_per_s": 4000.0, "sample_img_per_s": 1e5},
            {"name": "resnet fp32 eager", "precision": "fp32", "compiled": False,
             "compile_mode": "default", "train_img_per_s": 800.0, "sample_img_per_s": 1e4}]
    doc = {"device": "cpu", "torch": "x", "cpus": 2, "data": "d", "minutes": 1, "num": 8,
           "stage": None, "runs": {}, "scores": [], "run_phases": {"throughput": 1.0},
           "throughput": [{"bench": "32px b128 resnet", "rc": 0, "seconds": 9, "error": None,
                           "resolution": 32, "batch_size": 128, "sample_batch": 1024,
                           "rows": rows}]}
    gpu_check.print_table(doc)
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("| phase | call 2 throughput")
    assert any("5.00x (target 4x)" in line for line in lines)
    assert any("MISSING" in line for line in lines)


@pytest.mark.slow
def test_throughput_runs_on_the_cpu_and_reports_each_rows_precision(tmp_path: Path) -> None:
    cmd = [sys.executable, str(ROOT / "benchmarks" / "throughput.py"), "--device", "cpu",
           "--resolution", "32", "--batch-size", "8", "--width", "4", "--images", "32",
           "--archs", "dcgan", "--baseline-archs", "dcgan", "--seconds", "0.3",
           "--sample-seconds", "0.2", "--warmup", "1", "--json"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert {"reference_img_per_s", "ganctl_img_per_s", "ratio", "device"} <= doc.keys()
    assert doc["ratio"] == pytest.approx(doc["ganctl_img_per_s"] / doc["reference_img_per_s"])
    rows = {r["name"]: r for r in doc["rows"]}
    assert set(rows) == {"dcgan", "dcgan shapes", "dcgan fp32 eager"}
    assert all((r["precision"], r["compile"], r["compiled"]) == ("fp32", "off", False)
               for r in rows.values())  # auto on a CPU: what `ganctl train` does there
    assert all(r["train_img_per_s"] > 0 and r["sample_img_per_s"] > 0 for r in rows.values())


def test_cpu_precision_plans_each_arch_at_its_presets_sizes(monkeypatch: pytest.MonkeyPatch) -> None:
    args = cpu_precision.parse_args([])
    rows = cpu_precision.plan(args)
    assert [r.name for r in rows] == ["mlp28", "mlp32", "dcgan32", "dcgan64", "resnet32"]
    sizes = {r.name: (c.arch, c.resolution, c.channels, c.g_width, c.d_width, c.batch_size)
             for r in rows for c in [r.config(args)]}
    assert sizes == {"mlp28": ("mlp", 28, 1, 64, 64, 64), "mlp32": ("mlp", 32, 3, 64, 64, 64),
                     "dcgan32": ("dcgan", 32, 3, 64, 64, 64),
                     "dcgan64": ("dcgan", 64, 3, 64, 64, 128),  # issue 22's measurement
                     "resnet32": ("resnet", 32, 3, 32, 64, 64)}
    tiny = cpu_precision.parse_args(["--rows", "dcgan64,mlp28", "--width", "4", "--batch-size", "2"])
    assert [(r.name, r.config(tiny).g_width, r.config(tiny).batch_size)
            for r in cpu_precision.plan(tiny)] == [("mlp28", 4, 2), ("dcgan64", 4, 2)]
    with pytest.raises(SystemExit) as exit:
        cpu_precision.parse_args(["--rows", "dcgan128"])
    assert exit.value.code == 2
    # what auto picks is the package's rule, stated per row: bf16 for the measured size alone
    monkeypatch.setattr(device, "cpu_bf16", lambda: "native")
    assert {r.name: device.resolve_precision("auto", torch.device("cpu"), r.config(args))
            for r in rows} == {"mlp28": "fp32", "mlp32": "fp32", "dcgan32": "fp32",
                               "dcgan64": "bf16", "resnet32": "fp32"}


def test_cpu_precision_times_both_precisions_and_prints_the_table(
        capsys: pytest.CaptureFixture[str]) -> None:
    """Tiny widths, no timed seconds: each round still runs one step of each precision."""
    args = cpu_precision.parse_args(["--rows", "dcgan32", "--width", "4", "--batch-size", "2",
                                     "--seconds", "0", "--rounds", "2", "--warmup", "0"])
    row = cpu_precision.measure(cpu_precision.plan(args)[0], args)
    assert len(row["fp32_rounds"]) == len(row["bf16_rounds"]) == 2
    assert row["fp32_ms"] == min(row["fp32_rounds"]) > 0 and row["bf16_ms"] > 0
    assert row["bf16_speedup"] == row["fp32_ms"] / row["bf16_ms"]
    assert (row["arch"], row["resolution"], row["g_width"], row["auto"]) == ("dcgan", 32, 4, "fp32")
    doc = {"cpu": "Xeon", "machine": "x86_64", "native_bf16": "native", "bf16_flags": ["amx_bf16"],
           "torch": "2", "threads": 2, "faster": [], "rows": [row]}
    cpu_precision.print_table(doc)
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("cpu: Xeon (x86_64, 2 torch threads), bf16 native (amx_bf16)")
    assert out[1].split()[:4] == ["row", "arch", "px", "widths"] and out[2].startswith("dcgan32")
    assert out[-1] == "bf16 at least 1.1x faster than fp32: no row"


def test_stylegan2_speed_quick_prints_one_table_ratio_last(tmp_path: Path) -> None:
    """--quick: ganctl's part alone, stylegan2 at 32 px, widths 16, batch 4, eager, 3 timed steps
    (the NVlabs and 1024 px rows need a GPU and say they were skipped); the table is the last
    thing printed and is appended to $OUT."""
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "stylegan2_speed.py"), "--quick"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120,
                          env={**os.environ, "OUT": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.rstrip().splitlines()
    table = [line for line in lines if line.startswith("|")]
    assert lines[-len(table):] == table
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in table]
    assert cells[0] == ["row", "img/s", "s/kimg", "notes"] and all(len(row) == 4 for row in cells)
    names = [row[0] for row in cells[2:]]
    assert names == ["ganctl stylegan2 32 px, fp32, eager", "NVlabs train.py --cfg=paper256 --aug=noaug",
                     "NVlabs published, one A100, 256 px", "largest 1024 px batch (stylegan2-1024)",
                     "ratio NVlabs s/kimg / ganctl's best (same GPU)"]
    img_s, s_per_kimg = (float(x.replace(",", "")) for x in cells[2][1:3])
    assert img_s > 0 and s_per_kimg == pytest.approx(1000 / img_s, rel=0.01)
    assert cells[2][3].startswith("batch 4, widths 16, 3 steps timed after 1")
    assert cells[3][3] == cells[5][3] == "skipped (--quick or --parts)" and cells[-1][2] == "n/a"
    assert table == (tmp_path / "stylegan2_speed.md").read_text().strip().splitlines()[2:]
    doc = json.loads((tmp_path / "stylegan2_speed.json").read_text())
    assert doc["ganctl"][0]["s_per_kimg"] == pytest.approx(s_per_kimg, abs=1e-3)


def test_stylegan2_speed_reads_nvlabs_log_and_puts_the_ratio_last() -> None:
    """What the GPU call reads of NVlabs' train.py (their log's lines), and the table from it."""
    log = ('Setting up PyTorch plugin "bias_act_plugin"... Done.\n'
           'Setting up PyTorch plugin "upfirdn2d_plugin"... Failed!\n'
           "/x/upfirdn2d.py:34: UserWarning: Failed to build CUDA kernels for upfirdn2d. Falling back\n"
           "/x/conv2d_gradfix.py:55: UserWarning: conv2d_gradfix not supported on PyTorch "
           "2.11.0+cu130. Falling back to torch.nn.functional.conv2d().\n"
           "compat: Sampler(data_source) accepted\n"
           + "".join(f"tick {t:<5d} kimg {t:<8.1f} time 1m     sec/tick 8.0     sec/kimg {s:<7.2f} "
                     "maintenance 0.1\n" for t, s in [(0, 50.1), (1, 9.84), (2, 7.8), (3, 8.2), (4, 7.9)]))
    nv = stylegan2_speed.read_nvlabs(log)
    assert (nv["tick1"], nv["steady"]) == ([9.84], [7.8, 8.2, 7.9])
    assert nv["plugins"] == {"bias_act": True, "upfirdn2d": False}
    assert nv["conv2d_gradfix"] == "off (not supported on torch 2.11.0+cu130)"
    assert nv["compat"] == ["Sampler(data_source) accepted"]
    ganctl = {"part": "ganctl:default", "resolution": 256, "precision": "bf16", "mode": "default",
              "compiled": True, "batch": 64, "widths": 512, "timed_steps": 64, "warmup_steps": 32,
              "warmup_s": 90.0, "img_per_s": 400.0, "s_per_kimg": 2.5, "peak_gib": 20.0}
    table = stylegan2_speed.table({"ganctl": [ganctl, {"part": "ganctl:reduce-overhead",
                                                       "error": "killed after 60 s (time box)"}],
                                   "nvlabs": {**nv, "batch": 64, "tick_kimg": 1.0, "s_per_kimg": 7.9},
                                   "batch1024": {"error": "skipped: 40 s left of --budget"}})
    assert table[-1] == "| ratio NVlabs s/kimg / ganctl's best (same GPU) |  | 3.16x | target >= 2x: met |"
    assert "FAILED: killed after 60 s (time box)" in table[3]
    assert "upfirdn2d FAILED (their reference code)" in table[4] and "| 126.6 | 7.90 |" in table[4]
    assert "5.00x; target <= 6.25 s/kimg (2x): met" in table[5]


def test_quality_table_sets_runs_side_by_side_and_names_a_missing_one(tmp_path, capsys):
    """gpu_check.sh stylegan2-quality's table: a row per scoring of each run; a run that wrote
    no JSON (killed, failed) is a row that points at its log."""
    rows = [{"seconds": 120.4, "step": 900, "images": 57600, "fid": 81.234, "kid": 0.05},
            {"seconds": 360.0, "step": 2800, "images": 179200, "fid": 40.5, "kid": 0.021,
             "precision": 0.6123, "recall": 0.25}]
    doc = {"config": {"preset": "stylegan2-cifar10", "arch": "stylegan2"}, "rows": rows}
    (tmp_path / "quality-stylegan2-cifar10.json").write_text("noise\n" + json.dumps(doc) + "\n")
    (tmp_path / "quality-dcgan-cifar10.json").write_text("")
    assert quality_table.main(sorted(str(p) for p in tmp_path.glob("*.json"))) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| run | training s | step | images | FID | KID x1000 | precision | recall |"
    assert lines[2].startswith("| quality-dcgan-cifar10 | (no result: IndexError; see ")
    assert lines[3] == "| stylegan2-cifar10 | 120 | 900 | 57,600 | 81.23 | 50.00 |  |  |"
    assert lines[4] == "| stylegan2-cifar10 | 360 | 2800 | 179,200 | 40.50 | 21.00 | 0.612 | 0.250 |"
