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

from ganctl import augment
from ganctl.checkpoint.state_dicts import check_number
from ganctl.config import Config
from ganctl.data.batches import Batch
from ganctl.models import get_arch
from ganctl.models.generator import run_G

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


def input_grad(D: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    (gradient,) = torch.autograd.grad(D(x).float().sum(), x, create_graph=True)
    return gradient


class StepInputs:
    """What one run of a phase works on: the networks, a real batch and latents z.

    The fakes G(z, c) are generated on first use and shared by the phases given these inputs,
    so G's BatchNorm statistics move once per draw, as in the article's loop. With keep_graph
    (a G phase will use them) they carry G's graph: a D phase uses them detached, the G phase
    backpropagates through them, after which they are released (a later phase generates anew).
    Without it, a G phase makes them again from the same z (CUDA graphs need that: a graph's
    outputs live until the next backward, and D's update would otherwise come between).
    Fakes get the class labels of the real batch (c is None for unlabelled data).

    Losses call inputs.backward(loss) and inputs.input_grad(x), never loss.backward() or
    torch.autograd.grad: the step decides what those are (mixed precision scales the one and
    runs the other in float32, in one place). G and D may be compiled; gradient penalties
    differentiate twice, which compiled graphs do not support, so input_grad runs D_eager, the
    same network uncompiled. Every image D sees goes through inputs.augment (an Augmentation,
    when asked for), and D's logits on reals go to its feedback through inputs.observe; random
    draws use inputs.generator, the run's checkpointed generator. D's outputs
    are float32 whatever the precision of its layers: the losses are computed in float32.
    """

    def __init__(self, G: nn.Module, D: nn.Module, real: Batch, z: torch.Tensor,
                 keep_graph: bool = True, backward: Callable[[torch.Tensor], None] = backward,
                 augment: augment.Augmentation | None = None,
                 generator: torch.Generator | None = None,
                 grad: Callable[[Callable[[torch.Tensor], torch.Tensor], torch.Tensor],
                                torch.Tensor] = input_grad,
                 D_eager: nn.Module | None = None, G_eager: nn.Module | None = None,
                 mix: float = 0.0) -> None:
        self.G, self.D, self.real, self.z = G, D, real, z
        self.D_eager = D if D_eager is None else D_eager
        self.G_eager = G if G_eager is None else G_eager
        self.mix = mix  # style mixing's share of the fakes (a G with a mapping network)
        self.keep_graph = keep_graph
        self.backward = backward
        self.grad = grad
        self.generator = generator
        self._augment = augment
        self._fake: torch.Tensor | None = None
        self._fake_graph = False

    @property
    def c(self) -> torch.Tensor | None:
        return self.real.c

    def fake(self, graph: bool = False) -> torch.Tensor:
        """G(z, c): made once, with G's graph when keep_graph. A caller that backpropagates into
        G passes graph=True; fakes made without a graph are then made again from the same z."""
        if self._fake is None or (graph and not self._fake_graph):
            self._fake_graph = graph or self.keep_graph
            if self._fake_graph:
                with requires_grad(True, self.G):  # G may be frozen for a D phase
                    self._fake = self._run_G()  # (B, C, H, W)
            else:
                with torch.no_grad():
                    self._fake = self._run_G()
        return self._fake

    def _run_G(self) -> torch.Tensor:
        return run_G(self.G, self.z, self.c, mix=self.mix, generator=self.generator)[0]

    def styled_fakes(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Fakes of the first `batch` latents and their w, made by the plain G with a graph
        (path-length regularisation differentiates them with respect to w, then G's weights)."""
        c = None if self.c is None else self.c[:batch]
        fake, w = run_G(self.G_eager, self.z[:batch], c, mix=self.mix, generator=self.generator,
                        want_ws=True)
        if w is None:
            raise ValueError("path-length regularisation needs a generator with a mapping network")
        return fake, w

    def release(self) -> None:
        """Drop the fakes (and G's graph) once a G phase has backpropagated through them."""
        self._fake = None

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        return x if self._augment is None else self._augment(x, self.generator)

    def observe(self, real_logits: torch.Tensor) -> None:
        """Hand the augmentation D's logits on the (augmented) reals, for its feedback."""
        if self._augment is not None:
            self._augment.observe(real_logits)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """D's outputs for images x (augmented as asked), conditioned on the batch's labels."""
        return self.D(self.augment(x), self.c).float()  # (B,)

    def input_grad(self, x: torch.Tensor) -> torch.Tensor:
        """d(sum of D's outputs)/dx for images x (a leaf that requires grad), with a graph, in
        float32: the gradient penalties' term."""
        return self.grad(lambda x: self.D_eager(self.augment(x), self.c), x)  # (B, C, H, W)


PL_DECAY = 0.01  # the path-length mean follows each batch's mean length at this rate (NVlabs')


class Loss(ABC):
    """An objective for G and D, given as d_loss and g_loss over D's outputs; the base runs the
    phases: D (config.d_steps times on fresh batches), then with --r1/--r2 a lazy regulariser
    Dreg every config.r1_every steps, then G, then for a G with a mapping network and
    --pl-weight the lazy path-length regulariser Greg every config.pl_every steps."""

    uses_real_in_g = False  # a relativistic G loss compares against D(real) too

    def __init__(self, config: Config) -> None:
        self.config = config
        self.augment = augment.make(config.augment)  # DiffAugment, or None
        self.mapped = get_arch(config.arch).mapping  # G has a mapping network: styles, w
        self.mixing = config.style_mixing if self.mapped else 0.0  # style mixing's share
        self.pl_mean = torch.zeros([])  # the running mean of path lengths (on the device once used)

    def phases(self) -> list[Phase]:
        phases = [Phase("D", "D", repeats=self.config.d_steps)]
        if self.config.r1 or self.config.r2:  # before G: R2 uses the D phase's fakes
            phases.append(Phase("Dreg", "D", interval=self.config.r1_every))
        phases.append(Phase("G", "G"))
        if self.mapped and self.config.pl_weight:
            phases.append(Phase("Greg", "G", interval=self.config.pl_every))
        return phases

    def accumulate(self, phase: Phase, inputs: StepInputs) -> Stats:
        """Forward and backward (inputs.backward) of `phase` on `inputs`; the named statistics it
        measured. Names starting with "loss" are objectives: the divergence guard watches them."""
        run = {"D": self.d_phase, "G": self.g_phase, "Dreg": self.reg_phase,
               "Greg": self.pl_phase}.get(phase.name)
        if run is None:
            raise ValueError(f"{type(self).__name__} has no phase {phase.name!r}")
        return run(phase, inputs)

    @abstractmethod
    def d_loss(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        """D's objective, to minimise."""

    @abstractmethod
    def g_loss(self, fake_logits: torch.Tensor, real_logits: torch.Tensor | None) -> torch.Tensor:
        """G's objective, to minimise (real_logits only for uses_real_in_g)."""

    def d_stats(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> Stats:
        """What D's outputs say, beside the loss: by default their means."""
        return {"D_real": real_logits.mean().detach(), "D_fake": fake_logits.mean().detach()}

    def d_penalty(self, inputs: StepInputs, fake: torch.Tensor) -> tuple[torch.Tensor | None, Stats]:
        """A term added to D's loss in its own phase (WGAN-GP's), with its statistics."""
        return None, {}

    def d_phase(self, phase: Phase, inputs: StepInputs) -> Stats:
        fake = inputs.fake().detach()  # D's update must not reach G
        real_logits = inputs.logits(inputs.real.x)
        inputs.observe(real_logits)
        fake_logits = inputs.logits(fake)
        loss = self.d_loss(real_logits, fake_logits)
        penalty, extra = self.d_penalty(inputs, fake)
        inputs.backward(loss if penalty is None else loss + penalty)
        return {"loss_D": loss.detach(), **self.d_stats(real_logits, fake_logits), **extra}

    def g_phase(self, phase: Phase, inputs: StepInputs) -> Stats:
        fake_logits = inputs.logits(inputs.fake(graph=True))
        real_logits = None
        if self.uses_real_in_g:
            with torch.no_grad():
                real_logits = inputs.logits(inputs.real.x)
        loss = self.g_loss(fake_logits, real_logits)
        inputs.backward(loss)
        return {"loss_G": loss.detach()}

    def reg_phase(self, phase: Phase, inputs: StepInputs) -> Stats:
        """R1 (on reals) and R2 (on fakes): gamma / 2 * E ||grad_x D(x)||^2 (Mescheder et al.
        2018), lazy: every `interval` steps with the weight times the interval (StyleGAN2)."""
        total: torch.Tensor | None = None
        stats: Stats = {}
        for name, gamma, images in (("R1", self.config.r1, inputs.real.x),
                                    ("R2", self.config.r2, inputs.fake())):
            if not gamma:
                continue
            x = images.detach().float().requires_grad_(True)
            gradient = inputs.input_grad(x)  # (B, C, H, W)
            penalty = gradient.square().sum(dim=(1, 2, 3)).mean() * (gamma / 2)
            term = penalty * phase.interval
            total = term if total is None else total + term
            stats[f"loss_{name}"] = penalty.detach()
        if total is not None:
            inputs.backward(total)
        return stats

    def to(self, device: torch.device) -> None:
        """The loss's state beside the images: its augmentation's, the path lengths' mean."""
        if self.augment is not None:
            self.augment.to(device)  # its state and pending feedback
        self.pl_mean = self.pl_mean.to(device)

    def pl_phase(self, phase: Phase, inputs: StepInputs) -> Stats:
        """Path-length regularisation (StyleGAN2): the image change for a random image-space
        direction per unit change of w should be the same for every w. Penalises the squared
        distance of each length |J_w^T y| (y unit noise over the pixels) from their running
        mean, on batch / pl_batch_shrink fakes, lazily: weighted by the interval."""
        batch = max(1, inputs.z.shape[0] // self.config.pl_batch_shrink)
        fake, w = inputs.styled_fakes(batch)
        pixels = fake.shape[2] * fake.shape[3]
        y = torch.randn(fake.shape, generator=inputs.generator, device=fake.device) / pixels**0.5
        (grad,) = torch.autograd.grad((fake.float() * y).sum(), w, create_graph=True)
        lengths = grad.float().square().sum(2).mean(1).sqrt()  # (batch,)
        mean = self.pl_mean.lerp(lengths.mean(), PL_DECAY)
        self.pl_mean.copy_(mean.detach())
        penalty = (lengths - mean).square().mean() * self.config.pl_weight
        inputs.backward(penalty * phase.interval)
        return {"loss_Gpl": penalty.detach(), "pl_mean": mean.detach()}

    def share(self, total: Callable[[list[torch.Tensor]], None]) -> None:
        """After a path-length phase: the lengths' running mean averaged over the processes
        (`total` sums over them in place; each measured its own share of the batch), so every
        process holds the value the checkpoint keeps and a resumed run goes on exactly."""
        pair = torch.stack([self.pl_mean, torch.ones_like(self.pl_mean)])
        total([pair])
        self.pl_mean = pair[0] / pair[1]

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Training state the loss keeps between steps, for checkpoints: its augmentation's
        (none for DiffAugment) and, with path-length regularisation, the lengths' mean."""
        out = {"pl_mean": self.pl_mean} if self.mapped and self.config.pl_weight else {}
        if self.augment is None:
            return out
        return {**out, **{f"augment.{k}": v for k, v in self.augment.state_dict().items()}}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore what state_tensors() returned (a KeyError names a missing tensor)."""
        if self.mapped and self.config.pl_weight:
            self.pl_mean = tensors["pl_mean"].to(self.pl_mean.device, torch.float32).reshape([])
        if self.augment is not None:
            own = self.augment.state_dict()
            given = {k: tensors[f"augment.{k}"] for k in own}
            valid = self.augment.valid_state()
            for k, value in given.items():  # one number each, and a sane one, or refused
                if own[k].dim() == 0:
                    what, test = valid.get(k, ("a number", lambda n: True))
                    check_number(f"loss.augment.{k}", value, what, test)
                    given[k] = value.reshape(())
            self.augment.load_state_dict(given)
