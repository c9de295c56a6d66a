"""torch.compile (ganctl/engine/compiled.py), on the CPU through AOTAutograd's aot_eager backend
(where double backward and in-place buffer updates break) and once through inductor: compiled runs
train, resume and save plain modules, a compiled step computes what the eager one does, CUDA
graphs' outputs and G's graph are handled, and a failing compiler, CUDA graph or kernel cache is a
one-line error."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import IMAGES, TINY, TINY_NO_STEPS, assert_one_line_error, final_tensors, invoke, tiny_config

from ganctl.engine import compiled
from ganctl.engine.state import init_state, snapshot
from ganctl.engine.step import train_step
from ganctl.losses import StepInputs

# --- compiled runs --------------------------------------------------------------------------------

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


@pytest.mark.parametrize("arch,extra", [
    ("resnet", ["--loss", "hinge", "--conditional", "--augment", "diffaug"]),  # SN, 2 D calls
    # double backward, through adaptive augmentation too
    ("dcgan", ["--loss", "rpgan", "--r1", "1", "--r2", "1", "--r1-every", "2",
               "--augment", "ada:kimg=1,interval=1,pipe=bgcfnc"]),
    ("mlp", ["--loss", "wgan-gp", "--d-steps", "2"]),  # the penalty every D step, G without graph
    # noise and style mixing drawn outside G, bf16 blocks beside float32 ones, the path-length
    # phase's double backward through the plain G, a conditional projection D
    ("stylegan2", ["--z-dim", "8", "--channel-base", "256", "--conditional", "--r1", "1",
                   "--r1-every", "2", "--pl-every", "2", "--reduced-res", "2", "--augment", "ada"]),
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


def test_compile_may_be_a_boolean_in_a_config_file(workdir):
    (workdir / "c.toml").write_text("compile = false\nprecision = 'FP32'\n")
    result = invoke("train", *TINY, "--config", "c.toml", "--out", "r")
    assert result.exit_code == 0, result.output
    config = json.loads((workdir / "r/config.json").read_text())
    assert (config["compile"], config["precision"]) == ("off", "fp32")


def test_an_unusable_kernel_cache_folder_is_a_one_line_error(workdir, monkeypatch):
    (workdir / "afile").write_text("")
    monkeypatch.setattr(compiled, "_USER_CACHE", str(workdir / "afile"))
    result = invoke("train", *TINY, "--no-compile", "--out", "r")
    assert_one_line_error(result, 1, f"TORCHINDUCTOR_CACHE_DIR={workdir / 'afile'} is not a usable "
                          "folder", "point it at a writable folder or unset it")
    assert not (workdir / "r").exists()


# --- CUDA graphs ----------------------------------------------------------------------------------

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


@pytest.mark.parametrize("autocast", [False, True])
def test_stylegan2_g_and_d_compile_without_graph_breaks(autocast):
    """Training's whole draw of fakes (mapping, w_avg, style mixing past each cut, synthesis with
    the run's noise, bf16 blocks beside float32 ones) and D, conditional: one graph each."""
    import torch._dynamo

    from ganctl.config import Config
    from ganctl.models import get_arch

    config = Config(arch="stylegan2", resolution=32, g_width=8, d_width=8, z_dim=8, w_dim=8,
                    channel_base=256, mapping_layers=2, reduced_res=2, conditional=True,
                    classes=("a", "b", "c"))
    G, D = get_arch("stylegan2").build(config)
    z, c = torch.randn(4, 8), torch.tensor([0, 1, 2, 0])
    g_inputs = (z, c, torch.randn(4, 8), torch.tensor([3, 8, 2, 8]), torch.randn(4, G.noise_size))
    for net, inputs in ((G, g_inputs), (D, (torch.randn(4, 3, 32, 32), c))):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            explained = torch._dynamo.explain(net)(*inputs)
        assert (explained.graph_count, explained.graph_break_count) == (1, 0), \
            explained.break_reasons


@pytest.mark.parametrize("autocast", [False, True])
def test_a_projected_d_compiles_with_its_backbone_in_one_graph(autocast):
    """The frozen EfficientNet runs inside D's graph (compiled with the rest, in the run's
    precision under autocast), conditional and resized, without a break."""
    import torch._dynamo

    from ganctl.config import Config
    from ganctl.models import get_arch

    config = Config(discriminator="projected", backbone_resolution=32, d_width=8, g_width=8,
                    conditional=True, classes=("a", "b", "c"))
    _, D = get_arch("dcgan").build(config)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        explained = torch._dynamo.explain(D)(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0]))
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons


@pytest.mark.parametrize("arch, extra, device, mode", [
    ("dcgan", {}, "cuda", "reduce-overhead"),  # measured faster with CUDA graphs
    ("dcgan", {"discriminator": "projected"}, "cuda", "default"),  # not measured: the default
    ("resnet", {}, "cuda", "default"),
    ("stylegan2", {}, "cuda", "default"),
    ("dcgan", {}, "cpu", "default"),  # no graphs on a CPU
    ("dcgan", {"compile": "on"}, "cpu", "default"),
    ("dcgan", {"compile": "off"}, "cuda", "default"),  # not compiled: nothing to pick
    ("dcgan", {"compile_mode": "max-autotune-no-cudagraphs"}, "cuda", "max-autotune-no-cudagraphs"),
    ("resnet", {"compile_mode": "reduce-overhead"}, "cuda", "reduce-overhead"),  # asked for
])
def test_compile_mode_auto_picks_cuda_graphs_where_they_measured_faster(arch, extra, device, mode):
    from ganctl.config import Config
    from ganctl.session import on_device

    config = Config(arch=arch, resolution=32, **extra)
    assert compiled.resolve_compile_mode(config, torch.device(device)) == mode
    if device == "cpu":  # what a run records
        assert on_device(config, torch.device(device)).compile_mode == mode


def test_compile_mode_auto_is_recorded_as_what_it_became(workdir):
    result = invoke("train", *TINY, "--compile-mode", "auto", "--out", "r")
    assert result.exit_code == 0, result.output
    assert "does nothing" not in result.stdout
    assert json.loads((workdir / "r" / "config.json").read_text())["compile_mode"] == "default"
