"""Training: the state, one step, EMA, checkpoints and the loop.

The step is a pure function of (state, batch, z) that returns its statistics as a device
tensor; logging, sampling and checkpointing happen outside it, and device values are read
only every `log_every` steps, so a GPU never waits for the host in the steady state.
"""

from __future__ import annotations

import copy
import json
import shlex
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ganctl import checkpoint, run, testhooks
from ganctl.config import RESUME_OVERRIDABLE, Config
from ganctl.data import Batches, ImageSet, is_path, load_dataset, preset
from ganctl.data.cache import skip_summary
from ganctl.device import configure_determinism, describe, resolve_device
from ganctl.errors import CheckpointError, ConfigError, DataError
from ganctl.guard import LR_FACTOR, MAX_ROLLBACKS, Diverged, DivergenceGuard, Stopped, StopSignals, TimeBudget
from ganctl.logging import RunLog
from ganctl.losses import DLoss, GLoss, get_losses
from ganctl.models import build_models, check_config
from ganctl.sample import generate, latents_from_seeds, save_grid

SAMPLE_SEEDS = range(64)  # the fixed noise of the grids written during training: the seed's 8x8
EMA_WARMUP = 10  # EMA decay ramps as (1 + step) / (EMA_WARMUP + step) up to config.ema_decay
STATS = ("loss_D", "loss_G", "D_real", "D_fake")


@dataclass
class TrainState:
    config: Config
    G: nn.Module
    D: nn.Module
    G_ema: nn.Module
    opt_G: torch.optim.Optimizer
    opt_D: torch.optim.Optimizer
    batches: Batches
    noise: torch.Generator  # draws every z of training, on the device
    step: int = 0


# --- configuration -----------------------------------------------------------------------------

def resolve_config(values: dict[str, Any]) -> Config:
    """defaults < dataset preset < `values` (file and flags, already merged) -> a checked Config."""
    dataset = values.get("dataset", Config.dataset)
    values = normalise(values)
    config = Config.from_dict({**preset(dataset, values), **values})
    check_config(config)
    get_losses(config.loss)
    return config


def normalise(values: dict[str, Any]) -> dict[str, Any]:
    """Paths as they are stored: a folder or zip dataset absolute (resume finds it from anywhere),
    ~ expanded in data_dir."""
    out = dict(values)
    dataset = out.get("dataset")
    if dataset is not None and not isinstance(dataset, str):
        raise ConfigError(f"dataset must be a string, got {dataset!r}")
    if dataset is not None and not dataset.strip():
        raise ConfigError("dataset is empty; give a name (see --help) or a folder, e.g. '.'")
    if dataset and is_path(dataset):
        out["dataset"] = str(Path(dataset).expanduser().absolute())
    if isinstance(out.get("data_dir"), str) and out["data_dir"]:
        out["data_dir"] = str(Path(out["data_dir"]).expanduser())
    return out


# --- state -----------------------------------------------------------------------------------------

def init_state(config: Config, device: torch.device, images: np.ndarray | torch.Tensor
               ) -> TrainState:
    torch.manual_seed(config.seed)  # initial weights
    try:
        G, D = build_models(config)
        G, D = G.to(device), D.to(device)
    except (RuntimeError, MemoryError) as e:
        if "alloc" not in str(e).lower() and "memory" not in str(e).lower():
            raise
        raise ConfigError(f"the model does not fit in {device} memory ({str(e).splitlines()[0][:120]}); "
                          "lower --g-width, --d-width or --z-dim") from None
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    betas = (config.beta1, config.beta2)
    return TrainState(
        config=config, G=G, D=D, G_ema=G_ema,
        opt_G=torch.optim.Adam(G.parameters(), lr=config.lr_g, betas=betas),
        opt_D=torch.optim.Adam(D.parameters(), lr=config.lr_d, betas=betas),
        batches=Batches(images, config.batch_size, config.seed, device, mirror=config.mirror),
        noise=torch.Generator(device=device).manual_seed(config.seed),
    )


def state_tensors(state: TrainState) -> dict[str, torch.Tensor]:
    """Everything needed to continue the run exactly, as named tensors."""
    epoch, index = state.batches.state()
    return {
        **checkpoint.module_tensors(state.G, "G"),
        **checkpoint.module_tensors(state.D, "D"),
        **checkpoint.module_tensors(state.G_ema, "G_ema"),
        **checkpoint.optimizer_tensors(state.opt_G, "opt_G"),
        **checkpoint.optimizer_tensors(state.opt_D, "opt_D"),
        "rng.noise": state.noise.get_state(),
        "rng.torch": torch.get_rng_state(),
        "state.step": torch.tensor(state.step, dtype=torch.int64),
        "state.data_epoch": torch.tensor(epoch, dtype=torch.int64),
        "state.data_index": torch.tensor(index, dtype=torch.int64),
    }


def load_state(state: TrainState, tensors: dict[str, torch.Tensor],
               say: Callable[[str], None] | None = None) -> None:
    for name in ("G", "D", "G_ema"):
        checkpoint.load_module(getattr(state, name), tensors, name)
    checkpoint.load_optimizer(state.opt_G, tensors, "opt_G")
    checkpoint.load_optimizer(state.opt_D, tensors, "opt_D")
    try:
        _restore_noise(state, tensors["rng.noise"], int(tensors["state.step"]), say)
        torch.set_rng_state(tensors["rng.torch"])
        state.step = int(tensors["state.step"])
        state.batches.load_state(int(tensors["state.data_epoch"]),
                                 int(tensors["state.data_index"]))
    except KeyError as e:
        raise CheckpointError(f"checkpoint lacks tensor {e.args[0]!r}; it is incomplete") from None
    except (RuntimeError, ValueError) as e:
        raise CheckpointError(f"checkpoint's training state is damaged: {e}") from None


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


# --- one step ----------------------------------------------------------------------------------------

def train_step(state: TrainState, real: torch.Tensor, z: torch.Tensor,
               d_loss: DLoss, g_loss: GLoss) -> torch.Tensor:
    """One D update then one G update on the same fakes; returns STATS as a (4,) device tensor."""
    G, D = state.G, state.D
    fake = G(z)  # (B, C, H, W)

    real_logits = D(real)
    fake_logits = D(fake.detach())
    loss_D = d_loss(real_logits, fake_logits)  # L_D = -log D(x) - log(1 - D(G(z)))
    state.opt_D.zero_grad(set_to_none=True)
    loss_D.backward()
    state.opt_D.step()

    D.requires_grad_(False)  # G's update needs gradients through D, not of D's weights
    loss_G = g_loss(D(fake))  # non-saturating: L_G = -log D(G(z))
    state.opt_G.zero_grad(set_to_none=True)
    loss_G.backward()
    state.opt_G.step()
    D.requires_grad_(True)

    return torch.stack([loss_D, loss_G, torch.sigmoid(real_logits).mean(),
                        torch.sigmoid(fake_logits).mean()]).detach()


@torch.no_grad()
def update_ema(G_ema: nn.Module, G: nn.Module, step: int, decay: float) -> None:
    # G_ema <- beta * G_ema + (1 - beta) * G, beta warming up so early samples track G
    beta = min(decay, (1 + step) / (EMA_WARMUP + step))
    torch._foreach_lerp_(list(G_ema.parameters()), list(G.parameters()), 1 - beta)
    for b_ema, b in zip(G_ema.buffers(), G.buffers(), strict=True):
        b_ema.copy_(b)  # BatchNorm running statistics follow G


class Meter:
    """Sums step statistics on the device; reads them back only when a record is made."""

    def __init__(self, device: torch.device, batch_size: int) -> None:
        self.total = torch.zeros(len(STATS), device=device)
        self.batch_size = batch_size
        self.steps = 0
        self.t0 = time.perf_counter()

    def add(self, stats: torch.Tensor) -> None:
        self.total += stats
        self.steps += 1

    def record(self, step: int) -> dict[str, Any]:
        values = (self.total / max(self.steps, 1)).tolist()  # the one host sync per interval
        elapsed = time.perf_counter() - self.t0
        rec: dict[str, Any] = {"step": step, "time": round(time.time(), 3)}
        rec.update({k: round(v, 5) for k, v in zip(STATS, values, strict=True)})
        rec["img_per_s"] = round(self.steps * self.batch_size / max(elapsed, 1e-9), 1)
        self.total.zero_()
        self.steps = 0
        self.t0 = time.perf_counter()
        return rec


# --- writing -------------------------------------------------------------------------------------

def write_samples(state: TrainState, run_dir: Path, fixed_z: torch.Tensor) -> Path:
    path = run_dir / run.SAMPLES / f"step-{state.step:09d}.png"
    save_grid(generate(state.G_ema, fixed_z, fixed_z.device), path)
    return path


def snapshot(state: TrainState) -> dict[str, torch.Tensor]:
    """A CPU copy of the whole training state (the copy matters on a CPU device, where
    .to("cpu") would alias the live tensors)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in state_tensors(state).items()}


def save_checkpoint(state: TrainState, tensors: dict[str, torch.Tensor], run_dir: Path,
                    metrics: dict[str, Any] | None, fingerprint: str) -> Path:
    ckpt_dir = run_dir / checkpoint.CKPT_DIR
    path = ckpt_dir / checkpoint.checkpoint_name(state.step)
    extra = {
        "ganctl.created": datetime.now(UTC).isoformat(timespec="seconds"),
        "ganctl.dataset_fingerprint": fingerprint,
    }
    if metrics is not None:
        extra["ganctl.metrics"] = json.dumps(metrics)
    checkpoint.save(path, tensors, state.config.to_json(), state.step, extra)
    checkpoint.set_latest(ckpt_dir, path.name)  # only once the file is complete
    checkpoint.prune(ckpt_dir, state.config.keep, state.step)
    return path


# --- recovery from divergence ------------------------------------------------------------------

@dataclass
class LastGood:
    """The state of the last checkpoint (or of the start), to roll back to."""

    tensors: dict[str, torch.Tensor]
    step: int
    rollbacks: int = 0  # rollbacks to this state: the learning rates fall by LR_FACTOR each

    def update(self, tensors: dict[str, torch.Tensor], step: int) -> None:
        """A new checkpoint: training got past the trouble, so the count starts again."""
        self.tensors, self.step, self.rollbacks = tensors, step, 0


def roll_back(state: TrainState, good: LastGood, what: str, bad_step: int, run_dir: Path,
              log: RunLog) -> None:
    """Back to the last good state with lower learning rates, or Diverged after MAX_ROLLBACKS."""
    lrs = {name: opt.param_groups[0]["lr"] for name, opt in (("lr_g", state.opt_G),
                                                              ("lr_d", state.opt_D))}
    if good.rollbacks >= MAX_ROLLBACKS:
        log.event({"step": bad_step, "event": "diverged", "loss": what, "to_step": None, **lrs,
                   "time": round(time.time(), 3)}, f"{what} became non-finite at step {bad_step} "
                  f"after {MAX_ROLLBACKS} rollbacks to step {good.step}: stopping")
        raise Diverged(f"training diverged: {what} became non-finite at step {bad_step}, again "
                       f"after {MAX_ROLLBACKS} rollbacks (learning rates now lr_g {lrs['lr_g']:.3g}, "
                       f"lr_d {lrs['lr_d']:.3g}); lower --lr-g/--lr-d or change the loss")
    good.rollbacks += 1
    # a copy: the optimizers would otherwise adopt (and later overwrite) the saved tensors
    load_state(state, {k: v.clone() for k, v in good.tensors.items()})  # the lrs as they were ...
    factor = LR_FACTOR ** good.rollbacks
    for opt in (state.opt_G, state.opt_D):  # ... lowered once more for each rollback to it
        for group in opt.param_groups:
            group["lr"] *= factor
    run.trim_metrics(run_dir, state.step)
    log.event({"step": bad_step, "event": "rollback", "loss": what, "to_step": state.step,
               "lr_g": state.opt_G.param_groups[0]["lr"], "lr_d": state.opt_D.param_groups[0]["lr"],
               "time": round(time.time(), 3)},
              f"{what} became non-finite at step {bad_step}: rolled back to step {state.step}, "
              f"learning rates x{factor:g}")


# --- the loop --------------------------------------------------------------------------------------

def _due(step: int, every: int, done: bool) -> bool:
    return done or step % every == 0


def fit(state: TrainState, run_dir: Path, log: RunLog, fingerprint: str,
        deadline: float | None = None) -> dict[str, Any]:
    """Train from state.step to config.steps, logging, sampling and checkpointing on schedule;
    stop cleanly (with a checkpoint) on SIGINT/SIGTERM or when the time budget runs out."""
    config = state.config
    device = state.batches.device
    d_loss, g_loss = get_losses(config.loss)
    fixed_z = latents_from_seeds(SAMPLE_SEEDS, config.z_dim).to(device)
    meter = Meter(device, config.batch_size)
    guard = DivergenceGuard(device, state.step)
    budget = TimeBudget(deadline, state.step)
    good = LastGood(snapshot(state), state.step)
    last: dict[str, Any] | None = None
    ckpt = sample = None
    out_of_time = False
    t0 = time.perf_counter()
    log.start(state.step, config.steps)
    try:
        with StopSignals() as signals:
            while state.step < config.steps:
                real = state.batches.next()
                if testhooks.nan_at(state.step + 1):
                    real = real * float("nan")
                z = torch.randn(config.batch_size, config.z_dim, generator=state.noise, device=device)
                stats = train_step(state, real, z, d_loss, g_loss)
                meter.add(stats)
                guard.observe(stats)
                state.step += 1
                update_ema(state.G_ema, state.G, state.step, config.ema_decay)
                log.advance(state.step)

                step, done = state.step, state.step == config.steps
                next_ckpt = min(config.steps, (step // config.ckpt_every + 1) * config.ckpt_every)
                out_of_time = budget.exhausted(step, next_ckpt)
                stopping = signals.signum is not None or out_of_time
                save = stopping or _due(step, config.ckpt_every, done)
                if save or _due(step, config.log_every, done) or _due(step, config.sample_every, done):
                    if broke := guard.check(state.G, state.D):
                        roll_back(state, good, *broke, run_dir, log)
                        meter = Meter(device, config.batch_size)
                        guard.reset(state.step)
                        continue
                if _due(step, config.log_every, done):
                    last = meter.record(step)
                    log.record(last)
                if _due(step, config.sample_every, done):
                    sample = write_samples(state, run_dir, fixed_z)
                if save:
                    good.update(snapshot(state), step)
                    ckpt = save_checkpoint(state, good.tensors, run_dir, last, fingerprint)
                if stopping:
                    break
    finally:
        state.batches.close()
        log.close()
    result = {"run_dir": str(run_dir), "checkpoint": str(ckpt) if ckpt else None,
              "samples": str(sample) if sample else None, "step": state.step,
              "steps": config.steps, "device": str(device),
              "seconds": round(time.perf_counter() - t0, 2), "metrics": last,
              "stopped": "max-time" if out_of_time and state.step < config.steps else None}
    if signals.signum is not None:
        raise Stopped(signals.signum, f"stopped by {signals.name} at step {state.step}; checkpoint "
                      f"{ckpt}; continue with: ganctl resume {shlex.quote(str(run_dir))}",
                      {**result, "stopped": signals.name})
    if result["stopped"]:
        log.info(f"time budget reached at step {state.step} of {config.steps}; checkpoint {ckpt}; "
                 f"continue with: ganctl resume {shlex.quote(str(run_dir))}")
    return result


def _load_data(config: Config, log: RunLog, download: bool) -> ImageSet:
    return load_dataset(config, download=download, progress=log.task)


def _write_data_report(run_dir: Path, config: Config, data: ImageSet, log: RunLog) -> None:
    report = {"dataset": config.dataset, "split": config.split, "resolution": config.resolution,
              "channels": config.channels, "crop": config.crop, "fingerprint": data.fingerprint,
              "classes": data.classes, **data.report}
    checkpoint.atomic_write(run_dir / run.DATA_REPORT, (json.dumps(report, indent=1) + "\n").encode())
    if summary := skip_summary(data.report):
        log.info(f"{summary}: see {run_dir / run.DATA_REPORT}")


def train(config: Config, out: Path | None, log: RunLog, download: bool = True,
          deadline: float | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Start a new run of `config` in `out` (or the next numbered run dir) and train it."""
    device = resolve_device(config.device)
    configure_determinism(config.deterministic)
    data = _load_data(config, log, download)
    state = init_state(config, device, data.images)  # fails (too big ...) before any file exists
    with ExitStack() as held:
        replacing = out is not None and run.is_run_dir(out)
        if replacing:
            held.enter_context(run.locked(out))  # a run in use is refused before anything goes
            if overwrite:
                log.info(f"--overwrite: removing the previous run's files in {out}")
                run.remove_run(out)
        run_dir = run.create_run_dir(out, config, overwrite)
        if not replacing:
            held.enter_context(run.locked(run_dir))
        run.write_config(run_dir, config)
        log.attach(run_dir)
        _write_data_report(run_dir, config, data, log)
        log.info(f"run {run_dir}: {config.arch} {config.resolution}x{config.resolution}x"
                 f"{config.channels} on {config.dataset} ({len(data.images)} images), "
                 f"device {describe(device)}")
        return fit(state, run_dir, log, data.fingerprint, deadline)


def continue_run(out: Path, values: dict[str, Any], log: RunLog, download: bool = True,
                 deadline: float | None = None) -> dict[str, Any]:
    """`train --resume` into an existing run: resume it, refusing settings it was not started with."""
    stored = run.read_config(out)
    for key, value in normalise(values).items():
        if key not in RESUME_OVERRIDABLE and getattr(stored.replace(**{key: value}), key) != getattr(
                stored, key):
            raise ConfigError(f"{out} was started with {key} = {getattr(stored, key)!r}; --resume "
                              f"continues it as it was, so {key} cannot become {value!r}")
    overrides = {k: v for k, v in normalise(values).items() if k in RESUME_OVERRIDABLE}
    return resume(str(out), overrides, log, download, deadline=deadline)


def resume(target: str | None, overrides: dict[str, Any], log: RunLog, download: bool = True,
           allow_data_change: bool = False, deadline: float | None = None) -> dict[str, Any]:
    """Continue a run from its newest checkpoint (or the given one) up to config.steps."""
    bad = sorted(set(overrides) - RESUME_OVERRIDABLE)
    if bad:
        raise ConfigError(f"resume cannot change {bad[0]!r}; only "
                          f"{', '.join(sorted(RESUME_OVERRIDABLE))} may change")
    if target is not None and run.is_run_dir(Path(target)) and not checkpoint.list_checkpoints(
            Path(target) / checkpoint.CKPT_DIR):
        # stopped before its first checkpoint: nothing to lose, so start it again as configured
        run_dir = Path(target)
        config = run.read_config(run_dir).replace(**overrides)
        log.info(f"{run_dir} has no checkpoint yet (it stopped before the first one): starting it "
                 "again from step 0")
        return train(config, run_dir, log, download, deadline, overwrite=True)
    header = checkpoint.locate(target, log.info)  # falls back past damaged checkpoints
    ckpt = header.path
    run_dir = checkpoint.run_dir_of(ckpt)
    try:
        config = Config.from_dict(header.config, source=f"{ckpt} metadata").replace(**overrides)
    except ConfigError as e:
        raise CheckpointError(f"{ckpt}: {e}") from None
    if config.steps < header.step:
        raise ConfigError(f"{ckpt} is at step {header.step}, past --steps {config.steps}; "
                          "--steps is the run's total length, pass a larger one")
    with torch.device("meta"):  # shapes first: a hostile config must not make us allocate
        G, D = build_models(config)
        for module, prefix in ((G, "G"), (D, "D"), (G, "G_ema")):
            checkpoint.check_shapes(module, header, prefix)
    device = resolve_device(config.device)
    configure_determinism(config.deterministic)
    data = _load_data(config, log, download)
    recorded = header.metadata.get("ganctl.dataset_fingerprint")
    if recorded and recorded != data.fingerprint:
        if not allow_data_change:
            raise DataError(f"dataset {config.dataset!r} changed since this run started "
                            f"(fingerprint {recorded} -> {data.fingerprint}); resume with "
                            "--allow-data-change to train on it anyway")
        log.info(f"dataset changed since the run started ({recorded} -> {data.fingerprint}); "
                 "continuing as --allow-data-change asks")
    with run.locked(run_dir):
        state = init_state(config, device, data.images)
        load_state(state, checkpoint.load_tensors(ckpt), log.info)
        run.trim_metrics(run_dir, state.step)
        run.write_config(run_dir, config)
        log.attach(run_dir)
        _write_data_report(run_dir, config, data, log)
        log.info(f"resuming {run_dir} from {ckpt.name} (step {state.step} of {config.steps}), "
                 f"device {describe(device)}")
        if state.step == config.steps:
            state.batches.close()
            log.info(f"run is already complete at step {state.step}; pass a larger --steps to "
                     "train further")
            return {"run_dir": str(run_dir), "checkpoint": str(ckpt), "samples": None,
                    "step": state.step, "steps": config.steps, "device": str(device),
                    "seconds": 0.0, "metrics": header.metrics, "stopped": None}
        checkpoint.remove_temp_files(run_dir / checkpoint.CKPT_DIR)
        return fit(state, run_dir, log, data.fingerprint, deadline)
