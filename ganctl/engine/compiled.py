"""torch.compile, in one place: which runs compile, how G and D are compiled, where the compiled
code is cached, and what a compile or memory failure tells the user.

G and D are compiled as wrappers (torch.compile(module)) that share the modules' weights: the
state keeps the plain modules, so checkpoints never hold a wrapper's `_orig_mod.` keys, and the
gradient penalties, which differentiate twice (compiled graphs do not support that), run the
plain D (StepInputs.input_grad).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ganctl.config import COMPILE, OWN, Config
from ganctl.errors import ConfigError, first_line
from ganctl.models import get_arch

# the user's own choice of torch's kernel cache, read before torch fills in its default (building
# a fused Adam sets TORCHINDUCTOR_CACHE_DIR to /tmp/torchinductor_$USER)
_USER_CACHE = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
# compiled variants of one network: G with and without a graph (d_steps' extra draws), D on
# reals, on detached and on attached fakes, with its weights frozen (G's phase) or not
RECOMPILE_LIMIT = 32


def resolve_compile(spec: str, device: torch.device) -> str:
    """--compile: 'auto' is on for CUDA and off elsewhere (on a CPU, minutes of compiling buy
    little); the result is 'on' or 'off'."""
    if spec not in COMPILE:
        raise ConfigError(f"compile must be one of {', '.join(COMPILE)}, got {spec!r}")
    if spec == "auto":
        return "on" if device.type == "cuda" else "off"
    return spec


def compiles(config: Config, device: torch.device) -> bool:
    return resolve_compile(config.compile, device) == "on"


def resolve_compile_mode(config: Config, device: torch.device) -> str:
    """--compile-mode: 'auto' is CUDA graphs (reduce-overhead) when compiling on CUDA a model
    whose G and D measured faster with them (Architecture.graphs_faster; its own D), else
    the default mode."""
    if config.compile_mode != "auto":
        return config.compile_mode
    graphs = (compiles(config, device) and device.type == "cuda"
              and config.discriminator == OWN and get_arch(config.arch).graphs_faster)
    return "reduce-overhead" if graphs else "default"


def cuda_graphs(mode: str, device: torch.device) -> bool:
    """Whether compiled networks in `mode` replay CUDA graphs on `device` (reduce-overhead and
    max-autotune do, on CUDA). A graph's outputs are overwritten once a backward has run and a
    compiled network is called again, so the step then makes G's fakes again for G's phase
    (StepInputs.fake) instead of keeping them, with G's graph, across D's update."""
    return device.type == "cuda" and mode in ("reduce-overhead", "max-autotune")


def cache_dir() -> Path:
    """Where compiled kernels are kept between runs: TORCHINDUCTOR_CACHE_DIR, or next to the
    decode cache (~/.cache/ganctl/compile), so a second start of the same model is fast."""
    if _USER_CACHE:
        return Path(_USER_CACHE)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ganctl" / "compile"


def prepare_cache() -> None:
    """Point torch's kernel cache at cache_dir() before torch's compiler first looks (building a
    fused Adam imports it, compiling or not). A TORCHINDUCTOR_CACHE_DIR of the user's that is no
    usable folder is a one-line error; ganctl's own default, where it cannot be made (a
    read-only home), gives way to torch's."""
    path = cache_dir()
    try:
        path.mkdir(parents=True, exist_ok=True)
        reason = "" if os.access(path, os.W_OK | os.X_OK) else "not writable"
    except OSError as e:
        reason = e.strerror or str(e)
    if not reason:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(path)
    elif _USER_CACHE:
        raise ConfigError(f"TORCHINDUCTOR_CACHE_DIR={_USER_CACHE} is not a usable folder ({reason}); "
                          "point it at a writable folder or unset it")
    elif not os.environ.get("TORCHINDUCTOR_CACHE_DIR"):
        os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)  # empty: torch's default, not the cwd


class GraphOutputs(nn.Module):
    """A network compiled with CUDA graphs, whose outputs made without autograd are copied out
    of the graphs' memory. torch's CUDA graph trees start a new generation at a compiled call
    when no backward is pending, and its replay may overwrite the outputs of the generation
    before: D's phase makes G's fakes without a graph, then calls D on the real batch (a new
    generation) and then on those fakes. Outputs with a pending backward stay valid until it
    runs, so they are not copied."""

    def __init__(self, compiled: nn.Module) -> None:
        super().__init__()
        self.compiled = compiled

    def __getattr__(self, name: str) -> Any:
        """The network's own attributes (a generator's mapping, num_ws, noise_size ...)."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.compiled, name)

    def forward(self, *args: torch.Tensor | None) -> torch.Tensor:
        out = self.compiled(*args)
        return out if torch.is_grad_enabled() else out.clone()


def compile_network(net: nn.Module, mode: str, device: torch.device) -> nn.Module:
    """net compiled (lazily: the first call compiles), sharing its parameters and buffers;
    wrapped in GraphOutputs when the mode replays CUDA graphs on `device`."""
    import torch._dynamo  # noqa: PLC0415 (seconds of import: only when compiling)

    # its "No CUDA runtime is found" warning on a CPU says nothing about this run
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)

    limit = torch._dynamo.config.cache_size_limit
    torch._dynamo.config.cache_size_limit = max(limit, RECOMPILE_LIMIT)
    compiled: nn.Module = torch.compile(net, mode=mode)  # type: ignore[assignment]
    return GraphOutputs(compiled) if cuda_graphs(mode, device) else compiled


def compile_error(e: BaseException) -> ConfigError | None:
    """The one-line error for a failure of torch's compiler or of its CUDA graphs (None for any
    other exception)."""
    if "CUDAGraphs" in str(e):
        return ConfigError(f"CUDA graphs failed ({type(e).__name__}: {first_line(e, 160)}); train with "
                           "--compile-mode default or max-autotune-no-cudagraphs")
    if not type(e).__module__.startswith(("torch._dynamo", "torch._inductor")):
        return None
    return ConfigError(f"torch.compile failed ({type(e).__name__}: {first_line(e)}); train without it: "
                       "--no-compile")
