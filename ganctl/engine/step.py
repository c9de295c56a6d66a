"""One training step: draw a real batch and latents, run the loss's phases, update G_ema.

The step never reads a value back from the device: its statistics stay there until the loop
logs them, so a GPU never waits for the host in the steady state.
"""

from __future__ import annotations

import torch
from torch import nn

from ganctl.config import Config
from ganctl.engine.state import TrainState
from ganctl.losses import NETWORKS, Phase, Stats, StepInputs, requires_grad

EMA_WARMUP = 10  # EMA decay ramps as (1 + step) / (EMA_WARMUP + step) up to config.ema_decay


def draw(state: TrainState, keep_graph: bool) -> StepInputs:
    """The next real batch and a fresh z from the run's noise generator (this process's share
    of each: the batches decide it)."""
    real = state.batches.next()
    state.drawn += 1
    nets = state.variants
    keep_graph = keep_graph and not nets.cuda_graphs  # G's phase makes its own (compiled.cuda_graphs)
    z = state.batches.latents(state.noise, state.config.z_dim)
    return StepInputs(nets.G, nets.D, real, z, keep_graph, backward=state.amp.backward,
                      augment=state.loss.augment, generator=state.noise, grad=state.amp.input_grad,
                      D_eager=nets.D_eager, G_eager=state.G, mix=state.loss.mixing)


def run_phase(state: TrainState, phase: Phase, inputs: StepInputs) -> Stats:
    """One phase between its optimizer's zero_grad and step, every other network frozen (G's
    update needs gradients through D, not of D's weights), in the run's precision."""
    others = [state.network(name) for name in NETWORKS if name != phase.module]
    with requires_grad(False, *others):
        state.optimizer(phase.module).zero_grad(set_to_none=True)
        with state.amp.phase(phase.module):
            stats = state.loss.accumulate(phase, inputs)
        for update in state.updates[phase.module]:  # gradients averaged, the step, then the rest
            update()
    if phase.module == "G":
        inputs.release()
    return stats


def train_step(state: TrainState, phases: list[Phase]) -> Stats:
    """Step state.step + 1: every phase due at it, then the EMA. Returns the phases' statistics,
    a repeated phase's averaged over its runs."""
    n = state.step + 1
    due = [phase for phase in phases if phase.due(n)]
    shared = draw(state, keep_graph=any(phase.module == "G" for phase in due))
    totals: Stats = {}
    runs: dict[str, int] = {}
    for phase in due:
        for repeat in range(phase.repeats):
            inputs = shared if repeat == 0 else draw(state, keep_graph=phase.module == "G")
            for name, value in run_phase(state, phase, inputs).items():
                totals[name] = totals[name] + value if name in totals else value
                runs[name] = runs.get(name, 0) + 1
    state.step = n
    if any(phase.name == "Greg" for phase in due):
        state.loss.share(state.total)  # the path lengths' mean, the same in every process
    lerp_ema(state.G_ema, state.G, ema_decay(state.config, n))
    augment = state.loss.augment
    if augment is not None and augment.interval and n % augment.interval == 0:
        augment.deliver(state.total)  # what D said of the reals, summed over every process
    stats = {name: value / runs[name] if runs[name] > 1 else value for name, value in totals.items()}
    if augment is not None:  # its state after the step (an adaptive p), logged with the losses
        stats.update(augment.stats(n))  # buffers: Run.observe stacks them into a copy
    return stats


def ema_decay(config: Config, step: int) -> float:
    """G_ema's decay for step `step` (from 1): --ema-decay, warming up so that early samples
    track G; or with --ema-kimg the decay that halves a weight's share every ema_kimg thousand
    images (StyleGAN2's), its half-life with --ema-rampup at most that share of the images seen
    before this step."""
    if not config.ema_kimg:
        return min(config.ema_decay, (1 + step) / (EMA_WARMUP + step))
    half_life = config.ema_kimg * 1000
    if config.ema_rampup:
        half_life = min(half_life, (step - 1) * config.batch_size * config.ema_rampup)
    return 0.5 ** (config.batch_size / max(half_life, 1e-8))


@torch.no_grad()
def update_ema(G_ema: nn.Module, G: nn.Module, step: int, decay: float) -> None:
    """G_ema after step `step` with --ema-decay `decay`, warming up (ema_decay)."""
    lerp_ema(G_ema, G, min(decay, (1 + step) / (EMA_WARMUP + step)))


@torch.no_grad()
def lerp_ema(G_ema: nn.Module, G: nn.Module, beta: float) -> None:
    # G_ema <- beta * G_ema + (1 - beta) * G: one fused update over every parameter, and one
    # copy of every buffer
    torch._foreach_lerp_(list(G_ema.parameters()), list(G.parameters()), 1 - beta)
    buffers = list(G_ema.buffers())
    if buffers:
        torch._foreach_copy_(buffers, list(G.buffers()))  # BatchNorm running statistics follow G
