"""The training state: networks, optimizers, loss, data position and noise, and its tensors.

Everything needed to continue a run exactly is in state_tensors(); load_state() puts it back.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ganctl import checkpoint
from ganctl.config import Config
from ganctl.data import Batches
from ganctl.device import Precision, memory_format, resolve_precision
from ganctl.distributed import (
    WORLD,
    average_gradients,
    broadcast_module,
    split_batch,
    sum_over_ranks,
    sync_batchnorm,
)
from ganctl.engine.amp import Amp
from ganctl.engine.compiled import compile_network, compiles, cuda_graphs, prepare_cache, resolve_compile_mode
from ganctl.errors import CheckpointError, ConfigError, first_line
from ganctl.losses import NETWORKS, Loss, Phase, make_loss
from ganctl.models import build_models
from ganctl.models.backbone import load_backbones
from ganctl.models.layers import Normed, power_iterations, spectral_norms


@dataclass
class Variants:
    """The networks as the step calls them: G and D themselves, or compiled (the same weights);
    D_eager is D uncompiled, for gradient penalties (compiled graphs do not differentiate twice);
    with CUDA graphs, G's fakes cannot be kept across D's update."""

    G: nn.Module
    D: nn.Module
    D_eager: nn.Module
    cuda_graphs: bool = False


@dataclass
class TrainState:
    config: Config
    G: nn.Module
    D: nn.Module
    G_ema: nn.Module
    opt_G: torch.optim.Optimizer
    opt_D: torch.optim.Optimizer
    loss: Loss
    batches: Batches
    noise: torch.Generator  # draws every z of training, on the device
    amp: Amp  # the precision the phases run in (and fp16's gradient scalers)
    variants: Variants  # the networks as the step calls them (compiled or not)
    normed: dict[str, Normed]  # each network's spectrally normalised weights (NETWORKS)
    step: int = 0
    drawn: int = 0  # real batches drawn by this process (for images/s)
    backbones: dict[str, str] = field(default_factory=dict)  # frozen backbones' sha256 by name
    # per network, what follows a phase's backward: gradients averaged over the processes, the
    # optimizer's step (through the precision's scaler), then post-update work (spectral norm's
    # power iteration; a mapping network's w_avg would go here)
    updates: dict[str, list[Callable[[], None]]] = field(default_factory=dict)
    # sums tensors over the processes in place (an augmentation's feedback); no-op for one
    total: Callable[[list[torch.Tensor]], None] = sum_over_ranks

    @property
    def compiled(self) -> bool:
        return self.variants.G is not self.G

    def network(self, name: str) -> nn.Module:
        """A trained network by name (NETWORKS): G or D."""
        return getattr(self, name)

    def optimizer(self, name: str) -> torch.optim.Optimizer:
        """A network's optimizer: opt_G or opt_D."""
        return getattr(self, f"opt_{name}")


def init_state(config: Config, device: torch.device, images: np.ndarray | torch.Tensor,
               labels: np.ndarray | None = None) -> TrainState:
    """A fresh state at step 0: weights from config.seed; labels (N,) for labelled data."""
    if config.conditional and (not config.classes or labels is None):  # else unconditional nets
        raise ConfigError("a conditional model needs the data's class names in its config and "
                          "its labels (session.fit_to_data fills the names in)")
    prepare_cache()  # before the fused Adam imports torch's compiler
    precision = Precision(resolve_precision(config.precision, device, config), device)
    precision.apply()
    layout = memory_format(device)
    torch.manual_seed(config.seed)  # initial weights
    try:
        G, D = build_models(config)
        G, D = G.to(device).to(memory_format=layout), D.to(device).to(memory_format=layout)
    except (RuntimeError, MemoryError) as e:
        if "alloc" not in str(e).lower() and "memory" not in str(e).lower():
            raise
        raise ConfigError(f"the model does not fit in {device} memory ({first_line(e, 120)}); "
                          "lower --g-width, --d-width or --z-dim") from None
    if WORLD.active:
        split_batch(config.batch_size)  # the global batch divides among the processes
        if config.sync_bn:
            G, D = sync_batchnorm(G, device), sync_batchnorm(D, device)
        broadcast_module(G)  # rank 0's weights everywhere (the seed gives the same already)
        broadcast_module(D)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    backbones = load_backbones(D, config.backbone_weights)  # frozen, outside D's weights
    loss = make_loss(config)
    loss.to(device)  # its state (an augmentation's, path lengths' mean) beside the images
    fast, mode = compiles(config, device), resolve_compile_mode(config, device)
    state = TrainState(
        config=config, G=G, D=D, G_ema=G_ema,
        opt_G=_adam(G, config.lr_g, config, _updates_per_regulariser(loss.phases(), "G")),
        opt_D=_adam(D, config.lr_d, config, _updates_per_regulariser(loss.phases(), "D")),
        loss=loss,
        batches=Batches(images, config.batch_size, config.seed, device, mirror=config.mirror,
                        labels=labels, memory_format=layout, rank=WORLD.rank, world=WORLD.size),
        noise=torch.Generator(device=device).manual_seed(config.seed),
        amp=Amp(precision),
        variants=Variants(G=compile_network(G, mode, device) if fast else G,
                          D=compile_network(D, mode, device) if fast else D,
                          D_eager=D, cuda_graphs=fast and cuda_graphs(mode, device)),
        normed={"G": spectral_norms(G), "D": spectral_norms(D)},
        backbones=backbones,
    )
    state.updates = {name: _updates(state, name) for name in NETWORKS}
    if loss.augment is not None:  # its random numbers: the global batch's, this process's rows
        loss.augment.rows(state.batches.batch_size, state.batches.offset)
    return state


def _updates(state: TrainState, name: str) -> list[Callable[[], None]]:
    """What follows a phase's backward for network `name`, in order (TrainState.updates)."""
    net, opt = state.network(name), state.optimizer(name)
    return [lambda: average_gradients(net),  # over the ranks (no-op for one process)
            lambda: state.amp.step(name, opt),
            lambda: power_iterations(state.normed[name])]  # spectral norm follows the new weights


def _updates_per_regulariser(phases: list[Phase], network: str) -> int | None:
    """How many ordinary updates the network takes for each update of its separate regulariser
    (lazy R1: d_steps x r1_every for D), or None when it has no separate regulariser."""
    lazy = [p.interval for p in phases if p.module == network and p.name != network]
    own = sum(p.repeats for p in phases if p.module == network and p.name == network)
    return max(lazy) * own if lazy else None


def _adam(net: nn.Module, lr: float, config: Config, m: int | None) -> torch.optim.Adam:
    """Adam for one network. With a separate regulariser update after every m ordinary ones,
    the network takes m + 1 updates where it would take m, so lr and the betas are scaled by
    m / (m + 1) (StyleGAN2's lazy regularisation): lr keeps its meaning with and without it."""
    ratio = m / (m + 1) if m else 1.0
    betas = (config.beta1 ** ratio, config.beta2 ** ratio)
    # fused: one kernel for every parameter's update (CUDA and CPU alike)
    return torch.optim.Adam(net.parameters(), lr=lr * ratio, betas=betas, fused=True)


def state_tensors(state: TrainState) -> dict[str, torch.Tensor]:
    """Everything needed to continue the run exactly, as named tensors."""
    epoch, index = state.batches.state()
    return {
        **{k: v for name in NETWORKS
           for k, v in checkpoint.module_tensors(state.network(name), name).items()},
        **checkpoint.module_tensors(state.G_ema, "G_ema"),
        **{k: v for name in NETWORKS
           for k, v in checkpoint.optimizer_tensors(state.optimizer(name), f"opt_{name}").items()},
        **{f"loss.{k}": v for k, v in state.loss.state_tensors().items()},
        **{f"amp.{k}": v for k, v in state.amp.state_tensors().items()},
        "rng.noise": state.noise.get_state(),
        "rng.torch": torch.get_rng_state(),
        "state.step": torch.tensor(state.step, dtype=torch.int64),
        "state.data_epoch": torch.tensor(epoch, dtype=torch.int64),
        "state.data_index": torch.tensor(index, dtype=torch.int64),
    }


def snapshot(state: TrainState) -> dict[str, torch.Tensor]:
    """A CPU copy of the whole training state (the copy matters on a CPU device, where
    .to("cpu") would alias the live tensors)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in state_tensors(state).items()}


def load_state(state: TrainState, tensors: dict[str, torch.Tensor],
               say: Callable[[str], None] | None = None, step: int | None = None) -> None:
    """Put a checkpoint's tensors (state_tensors() of the run) into a fresh state, each checked
    first: the networks' and optimizers' by checkpoint.load_module and load_optimizer, the rest
    here, against its range (`step`: the step the file's header records, which its state.step
    must be). Their values (NaN weights) are check_values'."""
    fresh = state_tensors(state)
    _check_dtypes(tensors, fresh)
    _check_names(tensors, fresh)
    _check_position(state, tensors, step)
    _check_amp(tensors)
    for name in NETWORKS:
        checkpoint.load_module(state.network(name), tensors, name)
        checkpoint.load_optimizer(state.optimizer(name), tensors, f"opt_{name}")
        _match_layout(state.optimizer(name))
    checkpoint.load_module(state.G_ema, tensors, "G_ema")
    try:
        state.loss.load_state_tensors(_prefixed(tensors, "loss."))
        state.amp.load_state_tensors(_prefixed(tensors, "amp."))
        _restore_noise(state, tensors["rng.noise"], int(tensors["state.step"]), say)
        torch.set_rng_state(tensors["rng.torch"])
        state.step = int(tensors["state.step"])
        state.batches.load_state(int(tensors["state.data_epoch"]),
                                 int(tensors["state.data_index"]))
    except KeyError as e:
        raise CheckpointError(f"checkpoint lacks tensor {e.args[0]!r}; it is incomplete") from None
    except (RuntimeError, ValueError) as e:
        raise CheckpointError(f"checkpoint's training state is damaged: {e}") from None


# checked by checkpoint.load_module and load_optimizer, against the networks' parameters
_CHECKED_ON_LOAD = tuple(f"{name}." for name in (*NETWORKS, "G_ema")) + \
    tuple(f"opt_{name}." for name in NETWORKS)


def _check_dtypes(tensors: dict[str, torch.Tensor], fresh: dict[str, torch.Tensor]) -> None:
    """The loss, precision, RNG and position tensors have the dtypes a fresh state's have (those
    this ganctl writes): torch refuses an RNG state of another dtype with a TypeError, and int()
    takes a float step or data position without a word."""
    for name, tensor in fresh.items():
        if name in tensors and not name.startswith(_CHECKED_ON_LOAD):
            checkpoint.check_dtype(name, checkpoint.dtype_name(tensors[name].dtype), tensor.dtype,
                                   "resume", checkpoint.DAMAGED)


# what Amp.state_tensors writes under fp16, kept (and checked) when a run resumes in another precision
AMP_TENSORS = {f"amp.{name}.{key}": dtype for name in NETWORKS
               for key, dtype in (("scale", torch.float64), ("growth_tracker", torch.int64))}


def _check_names(tensors: dict[str, torch.Tensor], fresh: dict[str, torch.Tensor]) -> None:
    """Every tensor is one resume reads (the networks' and optimizers' are checked by name as
    they load): any other would be dropped from the next checkpoint without a word, or is a
    hostile file's."""
    for name in tensors:
        if not (name in fresh or name in AMP_TENSORS or name.startswith(_CHECKED_ON_LOAD)):
            raise CheckpointError(f"checkpoint tensor {checkpoint.shown(name)} is no part of a "
                                  f"ganctl training state{checkpoint.DAMAGED}")


def _check_position(state: TrainState, tensors: dict[str, torch.Tensor], step: int | None) -> None:
    """The step is the header's and within the run's steps; the data position is one that many
    steps reach: a step draws one batch, and one more for each repeat of a phase after its first
    (Phase.repeats, step.train_step), and each batch moves the index on by the batch size or
    starts the next epoch. A negative index drew empty batches, whose NaN losses were then
    blamed on the learning rates."""
    count = checkpoint.check_number(
        "state.step", checkpoint.require(tensors, "state.step"),
        f"a step must be from 0 to {state.config.steps}, the run's length",
        lambda n: 0 <= n <= state.config.steps)
    if step is not None and count != step:
        raise CheckpointError(f"checkpoint tensor state.step is {count}, its header's step is {step}"
                              f"{checkpoint.DAMAGED}")
    draws = count * (1 + sum(phase.repeats - 1 for phase in state.loss.phases()))
    checkpoint.check_number("state.data_epoch", checkpoint.require(tensors, "state.data_epoch"),
                            f"{count} steps reach epochs 0 to {draws}", lambda n: 0 <= n <= draws)
    images = draws * state.config.batch_size
    checkpoint.check_number("state.data_index", checkpoint.require(tensors, "state.data_index"),
                            f"{count} steps reach positions 0 to {images} in an epoch",
                            lambda n: 0 <= n <= images)


def _check_amp(tensors: dict[str, torch.Tensor]) -> None:
    """fp16's loss scales, where the file has them: a positive number, and a count from 0."""
    for name, dtype in AMP_TENSORS.items():
        if name in tensors:
            value = tensors[name]
            checkpoint.check_dtype(name, checkpoint.dtype_name(value.dtype), dtype, "resume",
                                   checkpoint.DAMAGED)
            if name.endswith(".scale"):
                checkpoint.check_number(name, value, "a loss scale must be a positive number",
                                        lambda n: n > 0)
            else:
                checkpoint.check_number(name, value, "a count must be a whole number from 0 up",
                                        lambda n: n >= 0)


def check_values(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """A checkpoint's networks and optimizer state hold numbers (no NaN or inf, no negative mean
    of squares), checked when a run resumes from a file: one that diverged (or was damaged and
    passed as whole) would otherwise train on, writing NaN checkpoints. (Not on a rollback: the
    divergence guard checked G's and D's weights before that state was kept.)"""
    for name in (*NETWORKS, "G_ema"):
        checkpoint.check_finite(path, tensors, name)
    for name in NETWORKS:
        checkpoint.check_finite(path, tensors, f"opt_{name}", "optimizer state")
        checkpoint.check_second_moments(path, tensors, f"opt_{name}")


def _prefixed(tensors: dict[str, torch.Tensor], lead: str) -> dict[str, torch.Tensor]:
    return {k[len(lead):]: v for k, v in tensors.items() if k.startswith(lead)}


def _match_layout(opt: torch.optim.Optimizer) -> None:
    """Loaded moments in their parameter's memory layout (channels_last): the fused
    update works on tensors laid out alike."""
    for group in opt.param_groups:
        for p in group["params"]:
            for key, value in opt.state.get(p, {}).items():
                if value.shape == p.shape and value.stride() != p.stride():
                    opt.state[p][key] = torch.empty_like(p, dtype=value.dtype).copy_(value)


def _restore_noise(state: TrainState, saved: torch.Tensor, step: int,
                   say: Callable[[str], None] | None) -> None:
    """The noise generator's state; a run moved to another kind of device (CUDA <-> CPU) cannot
    continue the same noise sequence, so it is re-seeded from (seed, step), and the user told."""
    try:
        state.noise.set_state(saved)
    except RuntimeError:
        state.noise.manual_seed(state.config.seed * 1_000_003 + step)
        if say:
            say(f"the checkpoint's noise generator belongs to another kind of device than "
                f"{state.noise.device}: its noise sequence restarts from (seed, step {step}); the run "
                "continues, but not bit-identically to one that stayed on one device")
