"""Precision (chosen in ganctl/device.py, run by engine/amp.py): what auto picks on each device and
CPU, bf16 and fp16 autocast around float32 weights, losses and EMA, the fp16 scaler checkpointed,
exact resumes, and what a run records and says about how it runs."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import (
    IMAGES,
    TINY,
    TINY_NO_STEPS,
    LinearD,
    assert_one_line_error,
    assert_same_tensors,
    final_tensors,
    invoke,
    tiny_config,
)

from ganctl import checkpoint, device
from ganctl.config import Config
from ganctl.data.batches import Batch
from ganctl.device import Bf16Faster, Precision, resolve_precision
from ganctl.engine.amp import Amp
from ganctl.engine.state import init_state, load_state, snapshot
from ganctl.engine.step import train_step
from ganctl.errors import ConfigError, DeviceError
from ganctl.losses import StepInputs
from ganctl.session import on_device, runtime, runtime_notes

# --- auto's choice --------------------------------------------------------------------------------

def test_auto_precision_is_fp32_for_tiny_models_off_cuda_and_choices_are_checked():
    cpu, config = torch.device("cpu"), tiny_config()
    assert resolve_precision("auto", cpu, config) == "fp32"
    assert resolve_precision("auto", torch.device("mps"), config) == "fp32"
    assert resolve_precision("bf16", cpu, config) == "bf16"
    with pytest.raises(DeviceError, match="unknown precision 'fp8'"):
        resolve_precision("fp8", cpu, config)
    with pytest.raises(DeviceError, match="fp16 needs a CUDA GPU"):
        resolve_precision("fp16", torch.device("mps"), config)
    with pytest.raises(ConfigError, match="precision must be one of auto, fp32, tf32, bf16, fp16"):
        Config(precision="half")


@pytest.fixture
def cpu_bf16(monkeypatch):
    """Sets how this CPU does bf16 ('native', 'emulated', 'unknown'), as detected."""
    def set_kind(kind: str) -> None:
        monkeypatch.setattr(device, "cpu_bf16", lambda: kind)
    return set_kind


DCGAN64 = {"arch": "dcgan", "resolution": 64, "g_width": 64, "d_width": 64}  # what was measured


@pytest.mark.parametrize("model,expected", [
    (DCGAN64, "bf16"),  # issue 22: 1.8x on a CPU with AVX512-BF16 / AMX
    ({**DCGAN64, "resolution": 128, "g_width": 128}, "bf16"),  # larger: more arithmetic
    ({**DCGAN64, "resolution": 32}, "fp32"),  # not measured faster
    ({**DCGAN64, "g_width": 8, "d_width": 8}, "fp32"),  # a tiny (test-sized) model
    ({**DCGAN64, "d_width": 32}, "fp32"),
    ({**DCGAN64, "arch": "resnet"}, "fp32"),
    ({**DCGAN64, "arch": "mlp"}, "fp32"),
    ({"g_width": 8, "d_width": 8}, "fp32"),  # tests' tiny dcgan at 32 px
])
def test_auto_on_a_native_bf16_cpu_is_bf16_only_where_it_was_measured_faster(cpu_bf16, model,
                                                                              expected):
    cpu_bf16("native")
    assert resolve_precision("auto", torch.device("cpu"), Config(**model)) == expected
    assert on_device(Config(**model), torch.device("cpu")).precision == expected


@pytest.mark.parametrize("kind", ["emulated", "unknown"])
def test_auto_is_fp32_on_a_cpu_without_native_bf16_whatever_the_model(cpu_bf16, kind):
    cpu_bf16(kind)
    for model in (DCGAN64, {**DCGAN64, "resolution": 256, "g_width": 256, "d_width": 256}):
        assert resolve_precision("auto", torch.device("cpu"), Config(**model)) == "fp32"


def test_the_start_line_says_why_auto_chose_bf16_on_a_cpu(cpu_bf16):
    cpu = torch.device("cpu")
    cpu_bf16("native")
    chosen = on_device(Config(**DCGAN64), cpu)
    assert runtime(chosen, cpu) == ("device cpu, bf16 autocast (float32 weights) (auto's choice "
                                    "here: native bf16 on this CPU), eager")
    assert runtime_notes(chosen, cpu) == []
    assert runtime(on_device(tiny_config(), cpu), cpu) == "device cpu, fp32, eager"


def test_a_run_records_bf16_where_auto_chose_it_and_says_so(workdir, cpu_bf16, monkeypatch):
    """End to end on a tiny model: the table says from which size bf16 is faster (patched down
    to the test's size here, as a new measurement would)."""
    cpu_bf16("native")
    monkeypatch.setitem(device.CPU_BF16_FASTER, "dcgan", Bf16Faster(resolution=32, width=8))
    result = invoke("train", *TINY, "--out", "r")
    assert result.exit_code == 0, result.output
    assert "bf16 autocast (float32 weights) (auto's choice here: native bf16 on this CPU)" in (
        result.stdout)
    assert "emulated" not in result.stdout
    assert json.loads((workdir / "r/config.json").read_text())["precision"] == "bf16"


def test_explicit_bf16_on_a_cpu_that_emulates_it_runs_and_says_it_is_slower(workdir, cpu_bf16):
    cpu, config = torch.device("cpu"), tiny_config(precision="bf16")
    note = ("--precision bf16 on this CPU is emulated (it has no AVX512-BF16 or AMX) and several "
            "times slower than fp32 here; --precision auto picks fp32 on it")
    cpu_bf16("native")
    assert runtime_notes(config, cpu) == []
    cpu_bf16("unknown")  # ARM, Apple silicon: not measured, nothing claimed
    assert runtime_notes(config, cpu) == []
    cpu_bf16("emulated")
    assert runtime_notes(config, cpu) == [note]
    assert runtime(on_device(config, cpu), cpu) == "device cpu, bf16 autocast (float32 weights), eager"
    result = invoke("train", *TINY, "--precision", "bf16", "--out", "r")
    assert result.exit_code == 0, result.output
    assert note in result.stdout
    assert json.loads((workdir / "r/config.json").read_text())["precision"] == "bf16"


def test_a_bf16_train_step_runs_on_the_cpu():
    state = init_state(tiny_config(precision="bf16"), torch.device("cpu"), IMAGES)
    assert state.amp.precision.name == "bf16"
    for _ in range(3):
        stats = train_step(state, state.loss.phases())
        assert stats and all(bool(torch.isfinite(v).all()) for v in stats.values()), stats


@pytest.fixture
def fresh_detection():
    device.cpu_bf16.cache_clear()
    yield
    device.cpu_bf16.cache_clear()


@pytest.mark.parametrize("machine,capabilities,kind", [
    ("x86_64", {"avx2": True, "avx512_bf16": True, "amx_bf16": False}, "native"),
    ("AMD64", {"avx2": True, "amx_bf16": True, "cpu_name": "Xeon"}, "native"),
    ("x86_64", {"avx2": True, "avx512_f": True, "avx512_bf16": False}, "emulated"),
    ("aarch64", {"bf16": True, "sve_bf16": True}, "unknown"),  # ARM's bf16: not measured
    ("arm64", {"bf16": True}, "unknown"),  # Apple silicon
])
def test_cpu_bf16_reads_torchs_capabilities(monkeypatch, fresh_detection, machine, capabilities,
                                            kind):
    monkeypatch.setattr(device.platform, "machine", lambda: machine)
    monkeypatch.setattr(device.torch.cpu, "get_capabilities", lambda: capabilities, raising=False)
    assert device.cpu_bf16() == kind


def test_cpu_bf16_reads_proc_cpuinfo_where_torch_has_no_capabilities(monkeypatch, fresh_detection,
                                                                     tmp_path):
    monkeypatch.setattr(device.platform, "machine", lambda: "x86_64")
    monkeypatch.delattr(device.torch.cpu, "get_capabilities", raising=False)
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Xeon\nflags\t\t: fpu sse2 avx2 avx512f "
                       "avx512_bf16 amx_tile amx_bf16\n\nprocessor\t: 1\n")
    assert device._cpuinfo_flags(cpuinfo) >= {"avx2", "avx512_bf16", "amx_bf16"}
    assert device._cpuinfo_flags(tmp_path / "absent") is None
    monkeypatch.setattr(device, "_cpuinfo_flags", lambda: {"fpu", "avx2"})
    assert device.cpu_bf16() == "emulated"
    device.cpu_bf16.cache_clear()
    monkeypatch.setattr(device, "_cpuinfo_flags", lambda: {"avx2", "avx512_bf16"})
    assert device.cpu_bf16() == "native"
    device.cpu_bf16.cache_clear()
    monkeypatch.setattr(device, "_cpuinfo_flags", lambda: None)  # not Linux
    assert device.cpu_bf16() == "unknown"


# --- low precision --------------------------------------------------------------------------------

@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_low_precision_keeps_weights_losses_and_ema_in_fp32(precision):
    state = init_state(tiny_config(precision=precision, loss="hinge"), torch.device("cpu"), IMAGES)
    seen = []
    state.D.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    stats = train_step(state, state.loss.phases())
    assert torch.bfloat16 in seen or torch.float16 in seen  # D's layers ran in low precision
    assert all(v.dtype == torch.float32 for v in stats.values())
    for net in (state.G, state.D, state.G_ema):
        assert all(p.dtype == torch.float32 for p in net.parameters())
    assert state.amp.scalers.keys() == ({"G", "D"} if precision == "fp16" else set())


def test_penalty_gradients_are_float32_whatever_the_precision():
    """Under fp16 autocast the penalty's input gradient is still exact (of a linear D: w), in
    float32: the penalty runs in full precision, where it needs no scaling."""
    amp = Amp(Precision("fp16", torch.device("cpu")))
    w = torch.randn(3 * 4 * 4) * 1000  # large enough to overflow fp16 once scaled
    D = LinearD(w)
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    inputs = StepInputs(D, D, Batch(x.detach()), torch.zeros(2, 1), grad=amp.input_grad)
    with amp.phase("D"):
        assert inputs.logits(x).dtype == torch.float32  # D's outputs, whatever its layers ran in
        gradient = inputs.input_grad(x)
    assert gradient.dtype == torch.float32
    assert torch.equal(gradient, w.view(1, 3, 4, 4).expand(2, -1, -1, -1))


def test_fp16_scaler_state_is_checkpointed_and_restored():
    state = init_state(tiny_config(precision="fp16"), torch.device("cpu"), IMAGES)
    for _ in range(3):
        train_step(state, state.loss.phases())
    state.amp.scalers["D"].update(new_scale=1024.0)
    saved = snapshot(state)
    assert float(saved["amp.D.scale"]) == 1024.0 and "amp.G.growth_tracker" in saved
    other = init_state(tiny_config(precision="fp16"), torch.device("cpu"), IMAGES)
    load_state(other, saved)
    assert other.amp.scalers["D"].get_scale() == 1024.0


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_low_precision_resumes_exactly(workdir, precision):
    args = [*TINY_NO_STEPS, "--precision", precision, "--loss", "rpgan", "--r1", "1",
            "--r1-every", "2"]
    assert invoke("train", *args, "--steps", "6", "--out", "straight").exit_code == 0
    assert invoke("train", *args, "--steps", "3", "--out", "split").exit_code == 0
    result = invoke("resume", "split", "--steps", "6")
    assert result.exit_code == 0, result.output
    assert f"{precision} autocast" in result.stdout
    (_, a), (_, b) = final_tensors(workdir / "straight"), final_tensors(workdir / "split")
    assert_same_tensors(a, b)
    assert json.loads((workdir / "split/config.json").read_text())["precision"] == precision


def test_the_run_records_what_auto_became_and_says_it_at_start(workdir):
    result = invoke("train", *TINY, "--out", "r")
    assert result.exit_code == 0, result.output
    assert "device cpu, fp32, eager" in result.stdout
    config = json.loads((workdir / "r/config.json").read_text())
    assert (config["precision"], config["compile"], config["compile_mode"]) == ("fp32", "off",
                                                                               "default")
    header = checkpoint.read_header(workdir / "r/checkpoints/step-000000004.safetensors")
    assert header.config["precision"] == "fp32"


def test_resume_may_change_precision(workdir):
    assert invoke("train", *TINY_NO_STEPS, "--steps", "2", "--out", "r").exit_code == 0
    result = invoke("resume", "r", "--steps", "4", "--precision", "bf16")
    assert result.exit_code == 0, result.output
    assert json.loads((workdir / "r/config.json").read_text())["precision"] == "bf16"


def test_bad_precision_flag_is_a_one_line_error(workdir):
    result = invoke("train", *TINY, "--precision", "fp8")
    assert_one_line_error(result, 1, "precision must be one of auto, fp32, tf32, bf16, fp16")


# --- where it runs, and what the run says about it ------------------------------------------------

def test_a_run_moved_to_another_kind_of_device_takes_what_auto_means_there(workdir):
    from helpers import rewrite

    args = [*TINY_NO_STEPS, "--precision", "bf16", "--ckpt-every", "2"]
    assert invoke("train", *args, "--steps", "2", "--out", "r").exit_code == 0
    ckpt = workdir / "r/checkpoints/step-000000002.safetensors"
    assert checkpoint.read_header(ckpt).metadata["ganctl.device"] == "cpu"

    def from_a_gpu(tensors, meta):
        meta["ganctl.device"] = "cuda:0"
        config = json.loads(meta["ganctl.config"])
        meta["ganctl.config"] = json.dumps({**config, "compile": "on"})

    rewrite(ckpt, ckpt, from_a_gpu)
    result = invoke("resume", "r", "--steps", "4")
    assert result.exit_code == 0, result.output
    assert ("the run moves from cuda to cpu: precision bf16 -> fp32, compile on -> off"
            in result.stdout)
    config = json.loads((workdir / "r/config.json").read_text())
    assert (config["precision"], config["compile"]) == ("fp32", "off")
    # given on the command line, a choice is kept
    rewrite(workdir / "r/checkpoints/step-000000004.safetensors",
            workdir / "r/checkpoints/step-000000004.safetensors", from_a_gpu)
    result = invoke("resume", "r", "--steps", "6", "--precision", "bf16")
    assert result.exit_code == 0, result.output
    assert "compile on -> off" in result.stdout and "precision bf16 ->" not in result.stdout
    assert json.loads((workdir / "r/config.json").read_text())["precision"] == "bf16"


def test_the_json_result_says_how_it_ran(workdir):
    result = invoke("train", *TINY, "--precision", "BF16", "--out", "r", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert (doc["batch_size"], doc["precision"], doc["compiled"], doc["compile_seconds"]) == (
        8, "bf16", False, None)


def test_settings_that_do_nothing_on_this_device_are_pointed_out(workdir):
    result = invoke("train", *TINY, "--precision", "tf32", "--compile-mode", "max-autotune",
                    "--out", "r")
    assert result.exit_code == 0, result.output
    assert "--precision tf32 changes nothing on cpu" in result.stdout
    assert "--compile-mode max-autotune does nothing without --compile" in result.stdout
    assert "device cpu, fp32 (tf32 asked for: a CUDA GPU's), eager" in result.stdout  # not "tf32 math"
