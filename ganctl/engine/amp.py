"""Mixed precision, in one place: autocast around a phase's forwards, for fp16 one gradient
scaler per network around its backward passes and its optimizer step, and the gradient
penalties' input gradients in float32.

Losses never see any of it: they call StepInputs.backward / .input_grad, which land here.
Nothing here reads a value back from the device (the scaler keeps its scale there).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

from ganctl.device import Precision
from ganctl.losses import NETWORKS
from ganctl.losses.base import input_grad

INIT_SCALE = 2.0**10


class Amp:
    def __init__(self, precision: Precision) -> None:
        self.precision = precision
        kind = precision.device.type
        # from 2**10, not torch's 2**16: a GAN's first steps would otherwise overflow and be
        # skipped, six halvings' worth for each network
        self.scalers = ({name: torch.amp.GradScaler(kind, init_scale=INIT_SCALE) for name in NETWORKS}
                        if precision.scaled else {})
        self._network: str | None = None  # whose phase is running

    @contextmanager
    def phase(self, network: str) -> Iterator[None]:
        """A phase of `network` (G or D): its forwards under autocast."""
        self._network = network
        try:
            with self.precision.autocast():
                yield
        finally:
            self._network = None

    def _scaler(self) -> torch.amp.GradScaler | None:
        return self.scalers.get(self._network) if self._network else None

    def backward(self, loss: torch.Tensor) -> None:
        """loss.backward(), scaled for fp16; outside autocast, as torch recommends."""
        scaler = self._scaler()
        with torch.autocast(self.precision.device.type, enabled=False):
            (scaler.scale(loss) if scaler is not None else loss).backward()

    def input_grad(self, D: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """d(sum of D(x))/dx with a graph, for gradient penalties, in float32 outside autocast:
        a penalty is small beside D's loss, and in full precision needs no scaling (fp16's
        would overflow its range, or flush small gradients to zero, without one)."""
        with torch.autocast(self.precision.device.type, enabled=False):
            return input_grad(D, x)

    def step(self, network: str, optimizer: torch.optim.Optimizer) -> None:
        """The optimizer's step; under fp16 skipped where the gradients overflowed (the scale
        then halves), with the scale updated after each phase."""
        scaler = self.scalers.get(network)
        if scaler is None:
            optimizer.step()
            return
        scaler.step(optimizer)
        scaler.update()

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The scalers' state (fp16 only), for exact resume."""
        out = {}
        for name, scaler in self.scalers.items():
            state = scaler.state_dict()
            out[f"{name}.scale"] = torch.tensor(state["scale"], dtype=torch.float64)
            out[f"{name}.growth_tracker"] = torch.tensor(state["_growth_tracker"], dtype=torch.int64)
        return out

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore state_tensors(); a checkpoint without them (trained in another precision)
        leaves the scalers at their start."""
        for name, scaler in self.scalers.items():
            if f"{name}.scale" in tensors:
                state = scaler.state_dict()
                state["scale"] = float(tensors[f"{name}.scale"])
                state["_growth_tracker"] = int(tensors[f"{name}.growth_tracker"])
                scaler.load_state_dict(state)

