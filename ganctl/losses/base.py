"""What a loss is: an object that owns the forwards and backwards of the phases it defines.

After NVlabs stylegan3's `Loss.accumulate_gradients(phase, ...)`: the step (engine/step.py)
runs the loss's phases in order, each between its optimizer's zero_grad and step, and the loss
computes and backpropagates that phase's objective and returns named statistics. "2 D steps
per G step" or "R1 every 16 steps" are Phase values, not branches in the step.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from ganctl.config import Config
from ganctl.data.batches import Batch

Stats = dict[str, torch.Tensor]  # name -> detached scalar on the device, read back only to log
NETWORKS = ("G", "D")  # the trained networks, each with its own optimizer


@dataclass(frozen=True)
class Phase:
    """One part of a training step.

    name: what the loss computes ("D", "G", "Dreg" ...), passed to Loss.accumulate.
    module: "G" or "D", the network whose optimizer steps after the phase; the other network's
        weights get no gradient during it (D is frozen while G trains through it).
    interval: runs on the steps n (counting from 1) with n % interval == 0, e.g. lazy R1.
    repeats: runs this many times in a row; every run after the first draws a fresh real batch
        and fresh latents.
    """

    name: str
    module: str
    interval: int = 1
    repeats: int = 1

    def __post_init__(self) -> None:
        if self.module not in NETWORKS:
            raise ValueError(f"phase {self.name!r}: module must be one of {NETWORKS}, got {self.module!r}")
        if self.interval < 1 or self.repeats < 1:
            raise ValueError(f"phase {self.name!r}: interval and repeats must be >= 1")

    def due(self, step: int) -> bool:
        return step % self.interval == 0


@contextmanager
def requires_grad(value: bool, *modules: nn.Module) -> Iterator[None]:
    """Set every parameter's requires_grad for the duration, then restore each one's own flag
    (parameters frozen on purpose stay frozen)."""
    params = [p for m in modules for p in m.parameters()]
    saved = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(value)
    try:
        yield
    finally:
        for p, flag in zip(params, saved, strict=True):
            p.requires_grad_(flag)


def backward(loss: torch.Tensor) -> None:
    loss.backward()


class StepInputs:
    """What one run of a phase works on: the networks, a real batch and latents z.

    The fakes G(z, c) are generated on first use and shared by the phases given these inputs,
    so G's BatchNorm statistics move once per draw, as in the article's loop. With keep_graph
    (a G phase will use them) they carry G's graph: a D phase uses them detached, the G phase
    backpropagates through them, after which they are released (a later phase generates anew).
    Fakes get the class labels of the real batch (c is None for unlabelled data).

    Losses call inputs.backward(loss), never loss.backward(): the step decides what a backward
    is (mixed precision scales the loss there, in one place).
    """

    def __init__(self, G: nn.Module, D: nn.Module, real: Batch, z: torch.Tensor,
                 keep_graph: bool = True, backward: Callable[[torch.Tensor], None] = backward) -> None:
        self.G, self.D, self.real, self.z = G, D, real, z
        self.keep_graph = keep_graph
        self.backward = backward
        self._fake: torch.Tensor | None = None

    @property
    def c(self) -> torch.Tensor | None:
        return self.real.c

    def fake(self) -> torch.Tensor:
        if self._fake is None:
            if self.keep_graph:
                with requires_grad(True, self.G):  # G may be frozen for a D phase
                    self._fake = self.G(self.z, self.c)  # (B, C, H, W)
            else:
                with torch.no_grad():
                    self._fake = self.G(self.z, self.c)
        return self._fake

    def release(self) -> None:
        """Drop the fakes (and G's graph) once a G phase has backpropagated through them."""
        self._fake = None


class Loss(ABC):
    """An objective for G and D. Subclasses implement accumulate(); phases() defaults to one D
    phase (config.d_steps times) then one G phase."""

    def __init__(self, config: Config) -> None:
        self.config = config

    def phases(self) -> list[Phase]:
        return [Phase("D", "D", repeats=self.config.d_steps), Phase("G", "G")]

    @abstractmethod
    def accumulate(self, phase: Phase, inputs: StepInputs) -> Stats:
        """Forward and backward (inputs.backward) of `phase` on `inputs`; the named statistics it
        measured. Names starting with "loss" are objectives: the divergence guard watches them."""

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Training state the loss keeps between steps (none by default), for checkpoints."""
        return {}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:  # noqa: B027 (optional)
        """Restore what state_tensors() returned."""
