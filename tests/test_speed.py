"""How the step runs: precision (autocast, fp16 loss scaling), torch.compile, no host syncs in
the step, --batch-size auto and out-of-memory errors. On the CPU: bf16 and fp16 autocast run
there too, and compile is exercised through AOTAutograd (the `aot_eager` backend, where double
backward and in-place buffer updates break) and once through inductor itself."""

import inspect
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TINY, assert_one_line_error, assert_same_tensors, final_tensors, invoke
from test_zoo import LinearD

from ganctl import checkpoint, device
from ganctl.config import Config
from ganctl.data.batches import Batch, Batches
from ganctl.device import Bf16Faster, Precision, resolve_precision
from ganctl.engine import compiled, memory
from ganctl.engine.amp import Amp
from ganctl.engine.state import init_state, load_state, snapshot
from ganctl.engine.step import train_step
from ganctl.errors import ConfigError, DeviceError
from ganctl.losses import StepInputs
from ganctl.session import on_device, runtime, runtime_notes

TINY_NO_STEPS = [a for i, a in enumerate(TINY) if a != "--steps" and TINY[i - 1] != "--steps"]
IMAGES = np.random.default_rng(0).integers(0, 256, (32, 3, 32, 32), dtype=np.uint8)


def tiny_config(**changes) -> Config:
    return Config(g_width=8, d_width=8, batch_size=8, z_dim=16, **changes)


@pytest.fixture
def aot_eager(monkeypatch):
    """Compile through dynamo and AOTAutograd without inductor's C++ build (seconds, not a
    minute): the layers where compiled GANs break (double backward, buffers saved for
    backward) are these."""
    real = torch.compile
    monkeypatch.setattr(compiled.torch, "compile",
                        lambda net, mode=None: real(net, backend="aot_eager"))
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


# --- precision -----------------------------------------------------------------------------------

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


# --- compile ------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch,extra", [
    ("resnet", ["--loss", "hinge", "--conditional", "--augment", "diffaug"]),  # SN, 2 D calls
    ("dcgan", ["--loss", "rpgan", "--r1", "1", "--r2", "1", "--r1-every", "2"]),  # double backward
    ("mlp", ["--loss", "wgan-gp", "--d-steps", "2"]),  # the penalty every D step, G without graph
])
def test_compiled_runs_train_resume_and_save_plain_modules(workdir, aot_eager, arch, extra):
    from helpers import image_folder

    image_folder(workdir / "imgs", 24, classes=3)
    args = [*TINY_NO_STEPS, "--dataset", "imgs", "--arch", arch, *extra, "--compile",
            "--precision", "bf16", "--ckpt-every", "2"]
    result = invoke("train", *args, "--steps", "4", "--out", "r")
    assert result.exit_code == 0, result.output
    assert "compiling G and D (torch.compile, mode default" in result.stdout
    assert "compiled in" in result.stdout and "compiled (default)" in result.stdout
    _, tensors = final_tensors(workdir / "r")
    assert not any("_orig_mod" in k for k in tensors)
    assert all(v.dtype == torch.float32 for k, v in tensors.items()
               if k.startswith("G_ema.") and v.is_floating_point())
    if arch != "mlp":  # compiling again costs seconds; resuming a compiled run is one path
        return
    result = invoke("resume", "r", "--steps", "6")
    assert result.exit_code == 0, result.output
    # trained compiled in bf16, sampled eager in fp32 on the CPU
    result = invoke("sample", "-n", "4", "out.png", "--ckpt", "r", "--device", "cpu")
    assert result.exit_code == 0, result.output


def test_compiled_step_equals_the_eager_one(aot_eager):
    """Compiling changes how the step runs, not what it computes."""
    config = tiny_config(loss="rpgan", r1=1.0, r1_every=1, arch="dcgan", spectral_norm="on")
    eager = init_state(config, torch.device("cpu"), IMAGES)
    fast = init_state(config.replace(compile="on"), torch.device("cpu"), IMAGES)
    assert fast.compiled and not eager.compiled
    for _ in range(3):
        a = train_step(eager, eager.loss.phases())
        b = train_step(fast, fast.loss.phases())
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5)
    # the weights within a few Adam steps' rounding: a conv bias before BatchNorm gets a
    # gradient of rounding noise, which Adam turns into steps of up to lr in either direction
    # (the Adam moments, raw gradients of an 8-channel net, are compared by the weights they made)
    fast_tensors = snapshot(fast)
    for k, v in snapshot(eager).items():
        if v.is_floating_point() and not k.startswith(("rng.", "opt_")):
            torch.testing.assert_close(v, fast_tensors[k], rtol=1e-3, atol=3 * 2 * config.lr_g,
                                       msg=k)


@pytest.mark.slow
def test_inductor_compiles_on_the_cpu(workdir, monkeypatch, tmp_path):
    """The real compiler (C++ kernels here), once, on the smallest model; its cache makes the
    next start fast."""
    monkeypatch.setattr(compiled, "_USER_CACHE", str(tmp_path / "inductor"))  # as if set by the user
    torch._dynamo.reset()
    result = invoke("train", "--arch", "mlp", "--dataset", "shapes", "--resolution", "16",
                    *TINY_NO_STEPS, "--steps", "2", "--compile", "--out", "r")
    torch._dynamo.reset()
    assert result.exit_code == 0, result.output
    assert "compiled in" in result.stdout and f"cached in {tmp_path / 'inductor'}" in result.stdout
    assert any((tmp_path / "inductor").rglob("*.py"))  # the cache the next start uses


def test_a_compiler_failure_is_a_one_line_error(workdir, monkeypatch):
    from torch._dynamo.exc import TorchRuntimeError

    def broken(state, phases):
        raise TorchRuntimeError("C++ compile error\ndetails")

    monkeypatch.setattr("ganctl.engine.loop.train_step", broken)
    result = invoke("train", *TINY, "--out", "r")
    assert_one_line_error(result, 1, "torch.compile failed (TorchRuntimeError: C++ compile error)",
                          "--no-compile")


def test_cuda_graph_modes_are_those_that_replay_graphs_on_cuda():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert compiled.cuda_graphs("reduce-overhead", cuda) and compiled.cuda_graphs("max-autotune", cuda)
    assert not compiled.cuda_graphs("default", cuda)
    assert not compiled.cuda_graphs("max-autotune-no-cudagraphs", cuda)
    assert not compiled.cuda_graphs("reduce-overhead", cpu)


class StaticOutput(torch.nn.Module):
    """Returns the same tensor at every call without autograd, rewritten in place: what a
    replayed CUDA graph does with its output memory."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 3)
        self.out = torch.zeros(2, 3)

    def forward(self, x):
        if torch.is_grad_enabled():
            return self.linear(x)
        return self.out.copy_(self.linear(x))


def test_cuda_graph_outputs_without_autograd_are_copied_out_of_the_graphs_memory():
    """The second H200 lease: with the no-graph fakes, reduce-overhead still failed, because
    D's call on the real batch starts a new CUDA graph generation that may overwrite the fakes
    before D sees them. GraphOutputs copies what a call without autograd returns."""
    net = StaticOutput()
    x1, x2 = torch.randn(2, 4), torch.randn(2, 4)
    with torch.no_grad():
        bare = net(x1)
        net(x2)
        assert torch.equal(bare, net.linear(x2))  # the unwrapped output was overwritten
        wrapped = compiled.GraphOutputs(net)
        first = wrapped(x1)
        wrapped(x2)
        assert torch.equal(first, net.linear(x1))  # the wrapped one was not
    attached = wrapped(x1)  # with autograd (a backward pending) no copy is made
    attached.sum().backward()
    assert net.linear.weight.grad is not None
    assert list(wrapped.parameters()) == list(net.parameters())


def test_compile_network_wraps_only_modes_that_replay_graphs():
    net = torch.nn.Linear(4, 3)
    assert not isinstance(compiled.compile_network(net, "default", torch.device("cuda")),
                          compiled.GraphOutputs)
    assert not isinstance(compiled.compile_network(net, "reduce-overhead", torch.device("cpu")),
                          compiled.GraphOutputs)
    assert isinstance(compiled.compile_network(net, "reduce-overhead", torch.device("cuda")),
                      compiled.GraphOutputs)


class GradModeSpy(torch.nn.Module):
    """Wraps G: records, for each call, whether it built a graph."""

    def __init__(self, G: torch.nn.Module) -> None:
        super().__init__()
        self.G, self.calls = G, []

    def forward(self, z, c=None):
        self.calls.append(torch.is_grad_enabled())
        return self.G(z, c)


@pytest.mark.parametrize("loss,extra", [("bce", {}), ("rpgan", {"r2": 1.0, "r1_every": 1}),
                                        ("wgan-gp", {"d_steps": 2})])
def test_with_cuda_graphs_no_graph_of_g_outlives_ds_update(loss, extra):
    """A CUDA graph's outputs are overwritten once a backward has run and a compiled network is
    called again (what a lent H200 showed for --compile-mode reduce-overhead): so D's phases use
    fakes made without G's graph, and G's phase makes its own from the same z."""
    config = tiny_config(loss=loss, **extra)
    state = init_state(config, torch.device("cpu"), IMAGES)
    spy = state.variants.G = GradModeSpy(state.G)
    train_step(state, state.loss.phases())
    # eager: the D phase's fakes carry G's graph and the G phase reuses them (d_steps' second
    # D phase draws its own, without a graph); R2 (Dreg) uses the D phase's fakes
    assert spy.calls == ([True, False] if loss == "wgan-gp" else [True])
    spy.calls.clear()
    state.variants.cuda_graphs = True
    stats = train_step(state, state.loss.phases())
    assert spy.calls == ([False, False, True] if loss == "wgan-gp" else [False, True])
    assert all(torch.isfinite(v) for v in stats.values())


def test_same_z_makes_the_same_fakes_for_d_and_for_g():
    state = init_state(tiny_config(), torch.device("cpu"), IMAGES)
    state.G.eval()  # BatchNorm by running statistics: one z, one image
    inputs = StepInputs(state.G, state.D, state.batches.next(), torch.randn(8, 16), keep_graph=False)
    detached = inputs.fake()
    attached = inputs.fake(graph=True)
    assert not detached.requires_grad and attached.requires_grad
    torch.testing.assert_close(detached, attached.detach())
    assert inputs.fake(graph=True) is attached  # made once with its graph


def test_a_cuda_graph_failure_is_a_one_line_error(workdir, monkeypatch):
    def broken(state, phases):
        raise RuntimeError("Error: accessing tensor output of CUDAGraphs that has been overwritten "
                           "by a subsequent run. Stack trace: File ...\nmore")

    monkeypatch.setattr("ganctl.engine.loop.train_step", broken)
    result = invoke("train", *TINY, "--out", "r")
    assert_one_line_error(result, 1, "CUDA graphs failed (RuntimeError: Error: accessing tensor output",
                          "--compile-mode default or max-autotune-no-cudagraphs")


# --- no host synchronisation in the step --------------------------------------------------------

SYNCS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "cpu", "numpy")


@pytest.mark.parametrize("config", [
    tiny_config(),
    tiny_config(arch="resnet", loss="hinge", augment="diffaug", precision="fp16"),
    tiny_config(loss="rpgan", r1=1.0, r2=1.0, r1_every=2, precision="bf16", d_steps=2),
    tiny_config(arch="mlp", loss="wgan-gp", conditional=True, classes=("a", "b")),
], ids=["dcgan", "resnet-fp16", "rpgan-r1r2", "mlp-wgangp-cond"])
def test_the_step_reads_nothing_back_from_the_device(monkeypatch, config):
    """Nothing ganctl runs inside a training step reads a tensor's value on the host (.item(),
    .tolist(), bool() of a tensor in an `if` ...): on a GPU each would wait for the queue."""
    labels = np.arange(len(IMAGES)) % 2 if config.conditional else None
    state = init_state(config, torch.device("cpu"), IMAGES, labels)
    phases = state.loss.phases()
    calls = []
    package = str(Path(compiled.__file__).resolve().parents[1])

    def spy(name):
        original = getattr(torch.Tensor, name)

        def wrapper(self, *args, **kwargs):
            caller = inspect.stack()[1].filename
            if caller.startswith(package):
                calls.append(f"{name} from {caller}")
            return original(self, *args, **kwargs)
        return wrapper

    for name in SYNCS:
        monkeypatch.setattr(torch.Tensor, name, spy(name))
    for _ in range(4):
        train_step(state, phases)
    monkeypatch.undo()
    assert calls == []


# --- batch size and memory ---------------------------------------------------------------------

def test_largest_fitting_power_of_two():
    assert memory.largest_fitting(lambda b: b <= 300, 8, 2048) == 256
    assert memory.largest_fitting(lambda b: True, 8, 2048) == 2048
    assert memory.largest_fitting(lambda b: False, 8, 2048) is None
    assert memory.largest_fitting(lambda b: True, 8, 16) == 16


def test_auto_batch_on_cuda_takes_the_largest_that_fits(monkeypatch):
    tried = []

    def probe(config, device, images, labels, budget):
        tried.append(config.batch_size)
        return config.batch_size <= 200

    monkeypatch.setattr(memory, "probe", probe)
    monkeypatch.setattr(memory.torch.cuda, "mem_get_info", lambda d: (40 << 30, 80 << 30))
    said = []
    images = np.zeros((5000, 3, 8, 8), np.uint8)
    batch = memory.find_batch_size(tiny_config(), torch.device("cuda", 0), images, None, said.append)
    assert batch == 128 and tried == [8, 16, 32, 64, 128, 256]
    assert "--batch-size auto: 128" in said[0] and "up to 2048" in said[0]
    tried.clear()  # never more than the dataset holds
    assert memory.find_batch_size(tiny_config(), torch.device("cuda", 0), images[:100], None,
                                  said.append) == 64


def test_auto_batch_when_nothing_fits_is_an_error(monkeypatch):
    monkeypatch.setattr(memory, "probe", lambda *a: False)
    monkeypatch.setattr(memory.torch.cuda, "mem_get_info", lambda d: (1 << 30, 80 << 30))
    with pytest.raises(ConfigError, match="even batch size 8 does not fit"):
        memory.find_batch_size(tiny_config(), torch.device("cuda", 0),
                               np.zeros((64, 3, 8, 8), np.uint8), None, print)


def test_batch_size_auto_from_the_cli_and_a_config_file(workdir):
    result = invoke("train", *TINY_NO_STEPS, "--steps", "2", "--batch-size", "auto", "--out", "a")
    assert result.exit_code == 0, result.output
    assert "--batch-size auto: 64" in result.stdout
    assert json.loads((workdir / "a/config.json").read_text())["batch_size"] == 64
    (workdir / "c.toml").write_text('batch_size = "auto"\nsteps = 2\n')
    result = invoke("train", "--config", "c.toml", "--g-width", "8", "--d-width", "8", "--out", "b")
    assert result.exit_code == 0, result.output
    assert json.loads((workdir / "b/config.json").read_text())["batch_size"] == 64


@pytest.mark.parametrize("value", ["0", "-3", "lots", "1.5", "+8", "1_0", "\u0663"])
def test_bad_batch_size_is_a_usage_error(workdir, value):
    result = invoke("train", *TINY, "--batch-size", value)
    assert result.exit_code == 2
    assert "is not a whole number of 1 or more, nor auto" in result.output


def test_out_of_memory_is_a_one_line_error_naming_the_batch_and_the_flag(workdir, monkeypatch):
    def oom(state, phases):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore")

    monkeypatch.setattr("ganctl.engine.loop.train_step", oom)
    result = invoke("train", *TINY, "--out", "r")
    assert_one_line_error(result, 1, "out of memory at batch size 8, step 0",
                          "Tried to allocate 2.00 GiB", "lower --batch-size", "--batch-size auto")


# --- layout -----------------------------------------------------------------------------------------

def test_channels_last_batches_hold_the_same_images():
    plain = Batches(IMAGES, 8, 0, torch.device("cpu"), mirror=True)
    last = Batches(IMAGES, 8, 0, torch.device("cpu"), mirror=True,
                   memory_format=torch.channels_last)
    a, b = plain.next().x, last.next().x
    assert b.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(a, b)


def test_loaded_optimizer_moments_take_their_parameters_layout():
    state = init_state(tiny_config(), torch.device("cpu"), IMAGES)
    train_step(state, state.loss.phases())
    saved = snapshot(state)
    other = init_state(tiny_config(), torch.device("cpu"), IMAGES)
    other.D.to(memory_format=torch.channels_last)  # as on a GPU
    load_state(other, saved)
    for p in other.D.parameters():
        for value in other.opt_D.state[p].values():
            if value.shape == p.shape:
                assert value.stride() == p.stride()
    train_step(other, other.loss.phases())  # the fused update takes them



# --- where it runs, and what the run says about it -----------------------------------------------

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


def test_compile_may_be_a_boolean_in_a_config_file(workdir):
    (workdir / "c.toml").write_text("compile = false\nprecision = 'FP32'\n")
    result = invoke("train", *TINY, "--config", "c.toml", "--out", "r")
    assert result.exit_code == 0, result.output
    config = json.loads((workdir / "r/config.json").read_text())
    assert (config["compile"], config["precision"]) == ("off", "fp32")


def test_train_resume_with_batch_size_auto_continues_the_run(workdir):
    args = [*TINY_NO_STEPS, "--batch-size", "auto", "--out", "r"]
    assert invoke("train", *args, "--steps", "2").exit_code == 0
    result = invoke("train", *args, "--steps", "4", "--resume")
    assert result.exit_code == 0, result.output
    assert json.loads((workdir / "r/config.json").read_text())["batch_size"] == 64


def test_batch_size_0_in_a_config_file_is_refused(workdir):
    (workdir / "c.toml").write_text("batch_size = 0\n")
    result = invoke("train", "--steps", "2", "--g-width", "8", "--d-width", "8", "--config",
                    "c.toml")
    assert_one_line_error(result, 1, "batch_size must be a whole number from 1 to 65536, got 0, "
                          "or auto")


def test_an_unusable_kernel_cache_folder_is_a_one_line_error(workdir, monkeypatch):
    (workdir / "afile").write_text("")
    monkeypatch.setattr(compiled, "_USER_CACHE", str(workdir / "afile"))
    result = invoke("train", *TINY, "--no-compile", "--out", "r")
    assert_one_line_error(result, 1, f"TORCHINDUCTOR_CACHE_DIR={workdir / 'afile'} is not a usable "
                          "folder", "point it at a writable folder or unset it")
    assert not (workdir / "r").exists()
