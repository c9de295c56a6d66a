"""What a loss is: an object that owns the forwards and backwards of the phases it defines.

After NVlabs stylegan3's `Loss.accumulate_gradients(phase, ...)`: the step (engine/step.py)
runs the loss's phases in order, each between its optimizer's zero_grad and step, and the loss
computes and backpropagates that phase's objective and returns named statistics. "2 D steps
per G step" or "R1 every 16 steps" are Phase values, not branches in the step.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import nn

from ganctl.config import Config
from ganctl.data import Batch

Stats = dict[str, torch.Tensor]  # name -> detached scalar on the device, read back only to log


@dataclass(frozen=True)
class Phase:
    """One part of a training step.

    name: what the loss computes ("D", "G", "Dreg" ...), passed to Loss.accumulate.
    module: "G" or "D", the network whose optimizer steps after the phase; the other one's
        weights get no gradient (D is frozen while G trains through it).
    interval: runs on the steps n (counting from 1) with n % interval == 0, e.g. lazy R1.
    repeats: runs this many times in a row; every run after the first draws a fresh real batch
        and fresh latents.
    """

    name: str
    module: str
    interval: int = 1
    repeats: int = 1


class StepInputs:
    """What one run of a phase works on: the networks, a real batch and latents z.

    The fakes G(z, c) are generated on first use and shared by every phase given these inputs,
    with G's graph attached: a D phase uses them detached, a G phase backpropagates through
    them, and G's BatchNorm statistics move once per draw, as in the article's loop. Fakes get
    the class labels of the real batch (c is None for unlabelled data).
    """

    def __init__(self, G: nn.Module, D: nn.Module, real: Batch, z: torch.Tensor) -> None:
        self.G, self.D, self.real, self.z = G, D, real, z
        self._fake: torch.Tensor | None = None

    @property
    def c(self) -> torch.Tensor | None:
        return self.real.c

    def fake(self) -> torch.Tensor:
        if self._fake is None:
            self._fake = self.G(self.z, self.c)  # (B, C, H, W)
        return self._fake


class Loss(ABC):
    """An objective for G and D. Subclasses implement accumulate(); phases() defaults to one D
    phase (config.d_steps times) then one G phase."""

    def __init__(self, config: Config) -> None:
        self.config = config

    def phases(self) -> list[Phase]:
        return [Phase("D", "D", repeats=self.config.d_steps), Phase("G", "G")]

    @abstractmethod
    def accumulate(self, phase: str, inputs: StepInputs) -> Stats:
        """Forward and backward of `phase` on `inputs`; the named statistics it measured."""

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Training state the loss keeps between steps (none by default), for checkpoints."""
        return {}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:  # noqa: B027 (optional)
        """Restore what state_tensors() returned."""
