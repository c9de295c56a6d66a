"""What an augmentation is: a module applied by the loss to every image D sees, reals and fakes
alike (in D's and G's losses and inside the gradient penalties), whose buffers are its state
(checkpointed with the loss, resumed exactly) and which may learn from feedback.

Feedback: what measure() returns at each D phase is summed into buffers `fb_<name>`; every
`interval` steps the engine sums those over the processes and hands them to feedback()
(adaptive augmentation's p follows the sign of D on reals this way). Nothing here reads a value
back to the host: the state moves on the device, and stats() are logged with the losses.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn

Generator = torch.Generator | None
OFF = ("", "none", "off")  # the values of --augment that mean no augmentation


class Augmentation(nn.Module):
    """An augmentation of the images D sees (subclasses: forward).

    feedback_names: what measure() returns, each summed into a buffer `fb_<name>` until the
    engine delivers the sums every `interval` steps (0: never), over every process, to feedback().
    Buffers (those sums, and the state feedback moves, such as a probability) are checkpointed.
    batch, offset: the global batch and this process's first row of it (rows()), so that an
    augmentation may draw its random numbers for the whole batch and keep its own rows: several
    processes then augment as one does."""

    feedback_names: ClassVar[tuple[str, ...]] = ()
    interval: int = 0

    def __init__(self) -> None:
        super().__init__()
        self.batch: int | None = None
        self.offset = 0
        for name in self.feedback_names:
            self.register_buffer(f"fb_{name}", torch.zeros(()))  # float32: exact counts to 2**24

    def rows(self, batch: int, offset: int) -> None:
        """The run's global batch and this process's first row of it."""
        self.batch, self.offset = batch, offset

    def forward(self, x: torch.Tensor, generator: Generator) -> torch.Tensor:
        raise NotImplementedError

    def measure(self, real_logits: torch.Tensor) -> dict[str, torch.Tensor]:
        """What this augmentation learns from D's logits on augmented reals, as sums (on the
        device: nothing is read back here)."""
        return {}

    @torch.no_grad()
    def observe(self, real_logits: torch.Tensor) -> None:
        """Add measure()'s sums to the pending feedback."""
        for name, value in self.measure(real_logits.detach()).items():
            getattr(self, f"fb_{name}").add_(value)

    def pending(self) -> dict[str, torch.Tensor]:
        """The feedback summed since the last delivery, by name (the buffers themselves)."""
        return {name: getattr(self, f"fb_{name}") for name in self.feedback_names}

    def feedback(self, totals: dict[str, torch.Tensor]) -> None:  # noqa: B027 (optional)
        """Learn from the sums of an interval over every process (state changes go to buffers)."""

    @torch.no_grad()
    def deliver(self, total: Callable[[list[torch.Tensor]], None]) -> None:
        """The engine's part, every `interval` steps: `total` sums the pending feedback over the
        processes in place; feedback() gets it, and the sums start again from zero."""
        pending = self.pending()
        if pending:
            total(list(pending.values()))
        self.feedback(pending)
        for value in pending.values():
            value.zero_()

    def stats(self, step: int) -> dict[str, torch.Tensor]:
        """Named statistics logged with step `step`'s (on the device): an adaptive one's state,
        named augment_* (a record shows its value after the record's last step)."""
        return {}

    def advice(self, record: dict[str, float]) -> str | None:
        """A note for the user from a logged record (its values on the host), said once a run."""
        return None

    def valid_state(self) -> dict[str, tuple[str, Callable[[Any], bool]]]:
        """What each number of its state must be, by buffer name (what it is, and a test of a
        value), for checkpoints read back: a damaged one is refused, not trained on."""
        return {}

    def continue_from(self, state: dict[str, torch.Tensor]) -> None:  # noqa: B027 (optional)
        """Fine-tuning (--init-from): the source run's augmentation state, by buffer name, to
        start from where it makes sense (an adaptive p); the rest starts afresh."""
