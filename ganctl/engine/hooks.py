"""What runs after a training step when it is due, each its own small object with its own
schedule (Hook): log, evaluate, checkpoint, samples, curves; the stop vote (signals, the time
budget) and the rollback on a non-finite loss. The writing hooks are made on the writing process
alone, so the loop has no branch by rank.
"""

from __future__ import annotations

import json
import math
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from ganctl import checkpoint, plot, rundir
from ganctl import metrics as registry
from ganctl.config import Config
from ganctl.distributed import WORLD, agree, barrier
from ganctl.engine.guard import LR_FACTOR, MAX_ROLLBACKS, DivergenceGuard, StopSignals, TimeBudget
from ganctl.engine.meter import Meter
from ganctl.engine.state import TrainState, load_state, snapshot
from ganctl.errors import CheckpointError, Diverged, GanctlError
from ganctl.imagefiles import make_grid, save_grid
from ganctl.losses import NETWORKS, Stats
from ganctl.models import backbone
from ganctl.models.generator import noise_mode
from ganctl.output.progress import RunLog
from ganctl.output.sinks import is_number
from ganctl.sample import generate, labels_for_seeds, latents_from_seeds

SAMPLE_SEEDS = range(64)  # the fixed noise of the grids written during training: the seed's 8x8


# --- writing -------------------------------------------------------------------------------------

def write_samples(state: TrainState, run_dir: Path, fixed_z: torch.Tensor, log: RunLog) -> Path | None:
    """The grid of the fixed seeds (a conditional model's classes in turn), to its file and the
    sinks; a grid that cannot be written is reported, not fatal (the run and its checkpoints
    matter more)."""
    path = run_dir / rundir.SAMPLES / rundir.sample_name(state.step)
    c = labels_for_seeds(SAMPLE_SEEDS, state.config)
    with noise_mode(state.G_ema, "const"):  # a seed's image changes only as G_ema learns
        images = generate(state.G_ema, fixed_z, fixed_z.device, c)
    log.image("samples", make_grid(images).permute(2, 0, 1), state.step)  # (C, H, W): the file's
    try:
        save_grid(images, path)
    except OSError as e:
        log.info(f"cannot write the sample grid {path}: {e.strerror or e}; training goes on")
        return None
    return path


def save_checkpoint(state: TrainState, tensors: dict[str, torch.Tensor], run_dir: Path,
                    metrics: dict[str, Any] | None, fingerprint: str,
                    scored: dict[str, Any] | None = None) -> Path:
    """Write the checkpoint, then point `latest` at it (and `best`, if its score registry.BEST (FID)
    is the best so far), then prune."""
    path = run_dir / rundir.CKPT_DIR / rundir.checkpoint_name(state.step)
    extra = {
        "ganctl.created": datetime.now(UTC).isoformat(timespec="seconds"),
        "ganctl.dataset_fingerprint": fingerprint,
        "ganctl.device": str(state.batches.device),  # where it ran (config.device may be "auto")
        "ganctl.world_size": str(WORLD.size),  # processes it trained on (it resumes on any number)
    }
    if metrics is not None:
        extra["ganctl.metrics"] = json.dumps(metrics)
    if scored is not None:
        extra["ganctl.eval"] = json.dumps(scored)
    if state.backbones:
        extra["ganctl.backbones"] = backbone.record(state.backbones)
    checkpoint.save(path, tensors, state.config.to_json(), state.step, extra)
    rundir.set_pointer(run_dir, rundir.LATEST, path)  # only once the file is complete
    if scored is not None and _is_best(run_dir, scored.get(registry.BEST)):
        rundir.set_pointer(run_dir, rundir.BEST, path)
    rundir.prune(run_dir / rundir.CKPT_DIR, state.config.keep, state.step)
    return path


def _is_best(run_dir: Path, score: Any) -> bool:
    """Whether `score` beats the score of the checkpoint `best` names (or there is none)."""
    if not is_number(score) or not math.isfinite(score):
        return False
    best = rundir.pointed(run_dir, rundir.BEST)
    try:
        held = (checkpoint.read_header(best).eval or {}).get(registry.BEST) if best is not None else None
    except CheckpointError:  # a damaged best: replaced by this one
        held = None
    return registry.better(score, held) if is_number(held) else True


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


def _learning_rates(state: TrainState) -> dict[str, float]:
    return {f"lr_{name.lower()}": state.optimizer(name).param_groups[0]["lr"] for name in NETWORKS}


def roll_back(state: TrainState, good: LastGood, what: str, bad_step: int, run_dir: Path,
              log: RunLog) -> None:
    """Back to the last good state with lower learning rates, or Diverged after MAX_ROLLBACKS."""
    lrs = _learning_rates(state)
    if good.rollbacks >= MAX_ROLLBACKS:
        log.event({"step": bad_step, "event": "diverged", "loss": what, "to_step": None, **lrs,
                   "time": round(time.time(), 3)}, f"{what} became non-finite at step {bad_step} "
                  f"after {MAX_ROLLBACKS} rollbacks to step {good.step}: stopping")
        rates = ", ".join(f"{k} {v:.3g}" for k, v in lrs.items())
        raise Diverged(f"training diverged: {what} became non-finite at step {bad_step}, again "
                       f"after {MAX_ROLLBACKS} rollbacks (learning rates now {rates}); lower "
                       "--lr-g/--lr-d or change the loss")
    good.rollbacks += 1
    # a copy: the optimizers would otherwise adopt (and later overwrite) the saved tensors
    load_state(state, {k: v.clone() for k, v in good.tensors.items()})  # the lrs as they were ...
    factor = LR_FACTOR ** good.rollbacks
    for name in NETWORKS:  # ... lowered once more for each rollback to it
        for group in state.optimizer(name).param_groups:
            group["lr"] *= factor
    if WORLD.writer:
        rundir.trim_metrics(run_dir, state.step)
    log.rewind(state.step)
    log.event({"step": bad_step, "event": "rollback", "loss": what, "to_step": state.step,
               **_learning_rates(state), "time": round(time.time(), 3)},
              f"{what} became non-finite at step {bad_step}: rolled back to step {state.step}, "
              f"learning rates x{factor:g}")


def _check(guard: DivergenceGuard, state: TrainState) -> tuple[str, int] | None:
    """The guard's finding, agreed over the ranks: any rank's rolls every rank back."""
    broke = guard.check(state.G, state.D)
    if WORLD.active:
        [anyone] = agree(int(broke is not None))
        if anyone and broke is None:
            return "a loss of another process", state.step
    return broke



class Scored(Protocol):
    """What an evaluation returns (ganctl.evaluate.EvalResult)."""

    seconds: float

    def record(self, step: int) -> dict[str, Any]: ...

    def summary(self) -> str: ...


Evaluate = Callable[[nn.Module, Config], Scored]  # (G_ema, its config) -> scores


def _evaluate(state: TrainState, evaluate: Evaluate, meter: Meter, log: RunLog) -> dict[str, Any]:
    """Score G_ema; the result goes to metrics.jsonl, the log and the progress line."""
    result = evaluate(state.G_ema, state.config)
    meter.exclude(result.seconds)  # evaluating is not training: images/s leaves it out
    record = result.record(state.step)
    log.event(record, f"eval at step {state.step}: {result.summary()}")
    if is_number(record.get(registry.BEST)):  # the progress line keeps the score of the best
        _, column = registry.headline(registry.BEST)
        log.note(f"{column.label} {column.text(record)} @{state.step}")
    return record


@dataclass
class Made:
    """What the loop has written so far."""

    last: dict[str, Any] | None = None  # the last logged record
    ckpt: Path | None = None
    sample: Path | None = None
    compile_seconds: float | None = None


@dataclass
class Tick:
    """Where one step left the run, as the hooks see it."""

    step: int
    done: bool  # the last step
    stopping: bool  # a signal or the time budget: checkpoint and stop after this step
    evaluating: bool
    saving: bool

    def due(self, every: int) -> bool:
        return self.done or self.step % every == 0


class StopVote:
    """Whether the run stops after this step: a stop signal or the time budget, on any rank
    (every rank stops at the same step; a signal that lands during the vote waits for the next)."""

    def __init__(self, signals: StopSignals, budget: TimeBudget, config: Config, evals: bool) -> None:
        self.signals, self.budget, self.config, self.evals = signals, budget, config, evals
        self.out_of_time = False

    def tick(self, step: int) -> Tick:
        config, done = self.config, step == self.config.steps
        evaluating = self.evals and (done or step % config.eval_every == 0)
        eval_next = self.evals and (step + 1) % config.eval_every == 0
        self.out_of_time = not done and self.budget.exhausted(step, eval_next)
        signum = self.signals.signum
        if WORLD.active:  # any rank's signal or deadline stops every rank at this step
            signum, late = agree(self.signals.signum or 0, int(self.out_of_time))
            signum, self.out_of_time = signum or None, bool(late)
            if signum is not None:  # every rank stops by the agreed signal
                self.signals.signum = signum
        stopping = signum is not None or self.out_of_time
        saving = stopping or evaluating or done or step % config.ckpt_every == 0
        return Tick(step, done, stopping, evaluating, saving)


@dataclass
class Run:
    """What the hooks share: the state, where the run writes, and what it wrote."""

    state: TrainState
    run_dir: Path
    log: RunLog
    fingerprint: str
    budget: TimeBudget
    meter: Meter
    guard: DivergenceGuard
    good: LastGood
    made: Made = field(default_factory=lambda: Made())
    scored: dict[str, Any] | None = None  # this step's evaluation, for its checkpoint
    failed: GanctlError | None = None  # this step's evaluation's error, raised after it

    def observe(self, stats: Stats) -> None:
        if stats:  # a step may run no phase (all of them lazy)
            names, values = tuple(stats), torch.stack([v.float() for v in stats.values()])
            self.meter.add(names, values)
            self.guard.observe(names, values)

    def rolled_back(self) -> bool:
        """A non-finite loss (on any rank): back to the last good state, and True."""
        broke = _check(self.guard, self.state)
        if broke is None:
            return False
        roll_back(self.state, self.good, *broke, self.run_dir, self.log)
        self.meter = Meter(self.state.config.batch_size, self.state.drawn)
        self.guard.reset(self.state.step)
        return True


class Hook(Protocol):
    """Work done after a step when it is due: each hook its own schedule."""

    def due(self, tick: Tick) -> bool: ...

    def __call__(self, tick: Tick) -> None: ...


@dataclass
class LogHook:
    run: Run
    advised: bool = False  # whether the augmentation's advice was given (once a run)

    def due(self, tick: Tick) -> bool:
        return True  # a record on schedule, else perhaps a console line

    def __call__(self, tick: Tick) -> None:
        r, config = self.run, self.run.state.config
        if tick.due(config.log_every) or tick.stopping:  # a stopped run's last step too
            r.made.last = r.meter.record(tick.step, r.state.drawn)
            r.log.record(r.made.last, _learning_rates(r.state))
            augment = r.state.loss.augment
            advice = None if augment is None or self.advised else augment.advice(r.made.last)
            if advice is not None:
                r.log.info(f"step {tick.step}: {advice}")
                self.advised = True
        elif r.log.line_due():  # a slow run's user sees it go (metrics.jsonl does not)
            r.log.show(r.meter.peek(tick.step, r.state.drawn))


@dataclass
class EvalHook:
    run: Run
    evaluate: Evaluate

    def due(self, tick: Tick) -> bool:
        return tick.evaluating

    def __call__(self, tick: Tick) -> None:
        r = self.run
        try:
            r.scored = _evaluate(r.state, self.evaluate, r.meter, r.log)
            r.budget.pause(r.scored["seconds"], "eval")
        except GanctlError as e:  # the step's checkpoint first, then the run stops
            r.failed = e


@dataclass
class CheckpointHook:
    run: Run

    def due(self, tick: Tick) -> bool:
        return tick.saving

    def __call__(self, tick: Tick) -> None:
        r = self.run
        saving = time.perf_counter()
        r.good.update(snapshot(r.state), tick.step)
        if WORLD.writer:
            r.made.ckpt = save_checkpoint(r.state, r.good.tensors, r.run_dir, r.made.last,
                                          r.fingerprint, r.scored)
        r.budget.pause(time.perf_counter() - saving, "save")
        barrier()  # the other ranks wait for rank 0's checkpoint
        if r.failed is not None:
            raise GanctlError(f"the evaluation at step {tick.step} failed: {r.failed}; the run "
                              f"stopped there, its checkpoint written: fix that, then "
                              f"ganctl resume {shlex.quote(str(r.run_dir))} continues it")


@dataclass
class SampleHook:
    run: Run
    fixed_z: torch.Tensor

    def due(self, tick: Tick) -> bool:
        return tick.due(self.run.state.config.sample_every)

    def __call__(self, tick: Tick) -> None:
        r = self.run
        r.made.sample = write_samples(r.state, r.run_dir, self.fixed_z, r.log) or r.made.sample


@dataclass
class CurvesHook:
    run: Run
    curves: plot.Curves

    def due(self, tick: Tick) -> bool:
        return tick.due(self.run.state.config.sample_every) or tick.stopping

    def __call__(self, tick: Tick) -> None:
        if drawn := self.curves.refresh(final=tick.done or tick.stopping):
            self.run.meter.exclude(drawn)  # a view of the run, not training
            self.run.budget.pause(drawn, "view")  # the last one follows the last checkpoint


def make_hooks(r: Run, evaluate: Evaluate | None) -> list[Hook]:
    """The hooks in the order they run after a step: the writing ones on the writing process
    alone (samples and curves after the checkpoint: it matters more)."""
    config = r.state.config
    hooks: list[Hook] = [LogHook(r)]
    if evaluate is not None:  # every rank makes its share of the fakes; rank 0 scores them
        hooks.append(EvalHook(r, evaluate))
    hooks.append(CheckpointHook(r))
    if WORLD.writer:
        fixed_z = latents_from_seeds(SAMPLE_SEEDS, config.z_dim).to(r.state.batches.device)
        hooks.append(SampleHook(r, fixed_z))
        if config.curves:
            hooks.append(CurvesHook(r, plot.Curves(r.run_dir, r.log.info)))
    return hooks


