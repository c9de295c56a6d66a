"""One training step: draw a real batch and latents, run the loss's phases, update G_ema.

The step never reads a value back from the device: its statistics stay there until the loop
logs them, so a GPU never waits for the host in the steady state.
"""

from __future__ import annotations

import torch
from torch import nn

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
                      D_eager=nets.D_eager)


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
    update_ema(state.G_ema, state.G, n, state.config.ema_decay)
    augment = state.loss.augment
    if augment is not None and augment.interval and n % augment.interval == 0:
        augment.deliver(state.total)  # what D said of the reals, summed over every process
    return {name: value / runs[name] if runs[name] > 1 else value for name, value in totals.items()}


@torch.no_grad()
def update_ema(G_ema: nn.Module, G: nn.Module, step: int, decay: float) -> None:
    # G_ema <- beta * G_ema + (1 - beta) * G, beta warming up so early samples track G;
    # one fused update over every parameter, and one copy of every buffer
    beta = min(decay, (1 + step) / (EMA_WARMUP + step))
    torch._foreach_lerp_(list(G_ema.parameters()), list(G.parameters()), 1 - beta)
    buffers = list(G_ema.buffers())
    if buffers:
        torch._foreach_copy_(buffers, list(G.buffers()))  # BatchNorm running statistics follow G
