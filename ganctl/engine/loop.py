"""The training loop: steps, then on schedule logging, samples and checkpoints; rollback on
divergence; a clean stop (with a checkpoint) on a signal or when the time budget runs out.
"""

from __future__ import annotations

import json
import math
import shlex
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from ganctl import checkpoint, plot, rundir
from ganctl.config import Config
from ganctl.distributed import WORLD, agree, barrier
from ganctl.engine.compiled import cache_dir, compile_error
from ganctl.engine.guard import LR_FACTOR, MAX_ROLLBACKS, DivergenceGuard, StopSignals, TimeBudget
from ganctl.engine.memory import is_out_of_memory, out_of_memory_error
from ganctl.engine.state import TrainState, load_state, snapshot
from ganctl.engine.step import train_step
from ganctl.errors import CheckpointError, Diverged, GanctlError, Stopped
from ganctl.logging import RunLog, open_sinks
from ganctl.losses import NETWORKS, Stats
from ganctl.models import backbone
from ganctl.sample import generate, labels_for_seeds, latents_from_seeds, make_grid, save_grid

SAMPLE_SEEDS = range(64)  # the fixed noise of the grids written during training: the seed's 8x8


@dataclass
class RunResult:
    """Where a train or resume command left the run; `--json` prints it."""

    run_dir: str
    checkpoint: str | None
    samples: str | None
    step: int
    steps: int
    device: str
    seconds: float
    metrics: dict[str, Any] | None  # the last logged record
    stopped: str | None = None  # "max-time", or the signal's name
    batch_size: int | None = None
    precision: str | None = None  # what the phases ran in (fp32, tf32, bf16, fp16)
    compiled: bool | None = None
    compile_seconds: float | None = None  # of this process's first step (None: not compiled)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Window:
    """The host values of a Meter's sums when a line was last shown (see Meter.peek)."""

    sums: dict[str, float]
    counts: dict[str, int]
    drawn: int
    t0: float


class Meter:
    """Sums step statistics on the device; reads them back only when a record is made (or a
    line shown, see peek). Steps may report different names (a lazy phase's only on its steps):
    each name is averaged over the steps that reported it."""

    def __init__(self, batch_size: int, drawn: int) -> None:
        self.batch_size = batch_size
        self.total: dict[tuple[str, ...], torch.Tensor] = {}
        self.count: dict[tuple[str, ...], int] = {}
        self.drawn = drawn  # real batches drawn when the interval began
        self.t0 = time.perf_counter()
        self._shown = _Window({}, {}, drawn, self.t0)  # where the last peek left off

    def add(self, names: tuple[str, ...], values: torch.Tensor) -> None:
        seen = self.total.get(names)
        self.total[names] = values.clone() if seen is None else seen.add_(values)
        self.count[names] = self.count.get(names, 0) + 1

    def exclude(self, seconds: float) -> None:
        """Leave `seconds` (compiling, evaluating: not training) out of images/s."""
        self.t0 += seconds
        self._shown.t0 += seconds

    def _sums(self) -> tuple[dict[str, float], dict[str, int]]:
        """Sum and number of steps of each name since the interval began."""
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        if self.total:
            values = torch.cat(list(self.total.values())).tolist()  # the one host sync
            names = [(name, self.count[group]) for group in self.total for name in group]
            for (name, n), value in zip(names, values, strict=True):
                sums[name] = sums.get(name, 0.0) + value
                counts[name] = counts.get(name, 0) + n
        return sums, counts

    def _record(self, step: int, sums: dict[str, float], counts: dict[str, int], batches: int,
                elapsed: float) -> dict[str, Any]:
        rec: dict[str, Any] = {"step": step, "time": round(time.time(), 3)}
        for name in sorted(sums, key=lambda k: not k.startswith("loss")):  # losses first
            value = sums[name] / counts[name]
            # strict JSON has no inf or nan: a diagnostic that is not finite is written as text
            rec[name] = round(value, 5) if math.isfinite(value) else str(value)
        rec["img_per_s"] = round(batches * self.batch_size / max(elapsed, 1e-9), 1)
        return rec

    def record(self, step: int, drawn: int) -> dict[str, Any]:
        """The interval's record, and a new interval; img_per_s counts the real images drawn
        (D's, d_steps included)."""
        sums, counts = self._sums()
        rec = self._record(step, sums, counts, drawn - self.drawn, time.perf_counter() - self.t0)
        self.total, self.count, self.drawn = {}, {}, drawn
        self.t0 = time.perf_counter()
        self._shown = _Window({}, {}, drawn, self.t0)
        return rec

    def peek(self, step: int, drawn: int) -> dict[str, Any]:
        """A record of the steps since the last record or peek, for the console alone. The
        interval goes on untouched: the next record averages all of it, as without peeks."""
        sums, counts = self._sums()
        last, now = self._shown, time.perf_counter()
        # the sums minus those the last peek read: float64 differences of float32 sums
        fresh = {k: n - last.counts.get(k, 0) for k, n in counts.items() if n > last.counts.get(k, 0)}
        rec = self._record(step, {k: sums[k] - last.sums.get(k, 0.0) for k in fresh}, fresh,
                           drawn - last.drawn, now - last.t0)
        self._shown = _Window(sums, counts, drawn, now)
        return rec


# --- writing -------------------------------------------------------------------------------------

def write_samples(state: TrainState, run_dir: Path, fixed_z: torch.Tensor, log: RunLog) -> Path | None:
    """The grid of the fixed seeds (a conditional model's classes in turn), to its file and the
    sinks; a grid that cannot be written is reported, not fatal (the run and its checkpoints
    matter more)."""
    path = run_dir / rundir.SAMPLES / rundir.sample_name(state.step)
    c = labels_for_seeds(SAMPLE_SEEDS, state.config)
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
    """Write the checkpoint, then point `latest` at it (and `best`, if its FID is the lowest so
    far), then prune."""
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
    if scored is not None and _is_best(run_dir, scored.get("fid")):
        rundir.set_pointer(run_dir, rundir.BEST, path)
    rundir.prune(run_dir / rundir.CKPT_DIR, state.config.keep, state.step)
    return path


def _is_best(run_dir: Path, fid: Any) -> bool:
    """Whether `fid` beats the FID of the checkpoint `best` names (or there is none)."""
    if not isinstance(fid, (int, float)) or not math.isfinite(fid):
        return False
    best = rundir.pointed(run_dir, rundir.BEST)
    try:
        best_fid = checkpoint.read_header(best).fid if best is not None else None
    except CheckpointError:  # a damaged best: replaced by this one
        best_fid = None
    return best_fid is None or fid < best_fid


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


# --- the loop --------------------------------------------------------------------------------------

def _due(step: int, every: int, done: bool) -> bool:
    return done or step % every == 0


def _observe(stats: Stats, meter: Meter, guard: DivergenceGuard) -> None:
    if stats:  # a step may run no phase (all of them lazy)
        names, values = tuple(stats), torch.stack([v.float() for v in stats.values()])
        meter.add(names, values)
        guard.observe(names, values)


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
    if isinstance(record.get("fid"), (int, float)):
        log.note(f"FID {record['fid']:.2f} @{state.step}")
    return record


@dataclass
class _Made:
    """What the loop has written so far."""

    last: dict[str, Any] | None = None  # the last logged record
    ckpt: Path | None = None
    sample: Path | None = None
    compile_seconds: float | None = None


def fit(state: TrainState, run_dir: Path, log: RunLog, fingerprint: str,
        deadline: float | None = None, evaluate: Evaluate | None = None) -> RunResult:
    """Train from state.step to config.steps, logging, sampling, evaluating and checkpointing on
    schedule; stop cleanly (with a checkpoint) on SIGINT/SIGTERM or when the time budget runs
    out. An evaluation step is also a checkpoint step, so `best` can name it."""
    config = state.config
    device = state.batches.device
    phases = state.loss.phases()
    fixed_z = latents_from_seeds(SAMPLE_SEEDS, config.z_dim).to(device)
    guard = DivergenceGuard(device, state.step)
    budget = TimeBudget(deadline, state.step)
    good = LastGood(snapshot(state), state.step)
    made = _Made()
    out_of_time = False
    compiling = _compile_note(state, log)
    writer = WORLD.writer  # rank 0 alone writes and shows progress
    evals = evaluate is not None  # every rank makes its share of the fakes; rank 0 scores them
    curves = plot.Curves(run_dir, log.info)
    if writer:
        # closed by log.close() below
        log.watch(open_sinks(config, run_dir, state.step, log.info, quiet=log.console.quiet))
    meter = Meter(config.batch_size, state.drawn)  # after the sinks: W&B may take seconds
    t0 = time.perf_counter()
    log.start(state.step, config.steps, deadline)
    try:
        with StopSignals() as signals:
            while state.step < config.steps:
                started = time.perf_counter()
                _observe(train_step(state, phases), meter, guard)
                log.advance(state.step)
                if compiling:  # the first step compiled G and D: say so, and leave it out of img/s
                    compiling, seconds = False, time.perf_counter() - started
                    meter.exclude(seconds)
                    log.exclude(seconds)
                    log.info(f"compiled in {seconds:.0f} s")
                    made.compile_seconds = round(seconds, 2)

                step, done = state.step, state.step == config.steps
                evaluating = evals and _due(step, config.eval_every, done)
                eval_next = evals and (step + 1) % config.eval_every == 0
                out_of_time = not done and budget.exhausted(step, eval_next)
                signum = signals.signum
                if WORLD.active:  # any rank's signal or deadline stops every rank at this step
                    signum, late = agree(signals.signum or 0, int(out_of_time))
                    signum, out_of_time = signum or None, bool(late)
                    if signum is not None:  # every rank stops by the agreed signal
                        signals.signum = signum
                    # else a signal that came during the all-reduce stays noted for the next step
                stopping = signum is not None or out_of_time
                save = stopping or evaluating or _due(step, config.ckpt_every, done)
                if save or _due(step, config.log_every, done) or _due(step, config.sample_every, done):
                    if broke := _check(guard, state):
                        roll_back(state, good, *broke, run_dir, log)
                        meter = Meter(config.batch_size, state.drawn)
                        guard.reset(state.step)
                        continue
                if _due(step, config.log_every, done) or stopping:  # a stopped run's last step too
                    made.last = meter.record(step, state.drawn)
                    log.record(made.last, _learning_rates(state))
                elif log.line_due():  # a slow run's user sees it go (metrics.jsonl does not)
                    log.show(meter.peek(step, state.drawn))
                scored, failed = None, None
                if evaluating and evaluate is not None:
                    try:
                        scored = _evaluate(state, evaluate, meter, log)
                        budget.pause(scored["seconds"], "eval")
                    except GanctlError as e:  # the step's checkpoint first, then the run stops
                        failed = e
                if save:
                    saving = time.perf_counter()
                    good.update(snapshot(state), step)
                    if writer:
                        made.ckpt = save_checkpoint(state, good.tensors, run_dir, made.last,
                                                    fingerprint, scored)
                    budget.pause(time.perf_counter() - saving, "save")
                    barrier()  # the other ranks wait for rank 0's checkpoint
                if failed is not None:
                    raise GanctlError(f"the evaluation at step {step} failed: {failed}; the run "
                                      f"stopped there, its checkpoint written: fix that, then "
                                      f"ganctl resume {shlex.quote(str(run_dir))} continues it")
                if not writer:
                    if stopping:
                        break
                    continue
                if _due(step, config.sample_every, done):  # after the checkpoint: it matters more
                    made.sample = write_samples(state, run_dir, fixed_z, log) or made.sample
                if config.curves and (_due(step, config.sample_every, done) or stopping):
                    if drawn := curves.refresh(final=done or stopping):
                        meter.exclude(drawn)  # a view of the run, not training
                        budget.pause(drawn, "view")  # the last one follows the last checkpoint
                if stopping:
                    break
    except Exception as e:
        if (explained := _explain(e, state)) is None:
            raise
        raise explained from None
    finally:
        state.batches.close()
        log.close()
    return _finish(state, run_dir, made, out_of_time, signals, round(time.perf_counter() - t0, 2), log)


def _check(guard: DivergenceGuard, state: TrainState) -> tuple[str, int] | None:
    """The guard's finding, agreed over the ranks: any rank's rolls every rank back."""
    broke = guard.check(state.G, state.D)
    if WORLD.active:
        [anyone] = agree(int(broke is not None))
        if anyone and broke is None:
            return "a loss of another process", state.step
    return broke


def _compile_note(state: TrainState, log: RunLog) -> bool:
    """Tell the user that the first step compiles (so a silent minute is not taken for a hang);
    whether it does."""
    if state.compiled:
        log.info(f"compiling G and D (torch.compile, mode {state.config.compile_mode}): the first "
                 f"step takes up to a few minutes and cannot be cut short, --max-time included; "
                 f"kernels are cached in {cache_dir()}, so the next start is faster")
    return state.compiled


def _explain(e: Exception, state: TrainState) -> GanctlError | None:
    """An out-of-memory or a compiler failure as a one-line error; None for anything else."""
    if is_out_of_memory(e):
        return out_of_memory_error(e, state.config, state.step)
    return compile_error(e)


def _finish(state: TrainState, run_dir: Path, made: _Made, out_of_time: bool, signals: StopSignals,
            seconds: float, log: RunLog) -> RunResult:
    """The result, or Stopped (exit 128 + N) when a signal ended the run."""
    config = state.config
    stopped = "max-time" if out_of_time and state.step < config.steps else None
    result = RunResult(run_dir=str(run_dir), checkpoint=str(made.ckpt) if made.ckpt else None,
                       samples=str(made.sample) if made.sample else None, step=state.step,
                       steps=config.steps, device=str(state.batches.device), seconds=seconds,
                       metrics=made.last, stopped=stopped, batch_size=config.batch_size,
                       precision=config.precision, compiled=state.compiled,
                       compile_seconds=made.compile_seconds)
    resume_hint = f"continue with: ganctl resume {shlex.quote(str(run_dir))}"
    if WORLD.active:  # on as many processes, or any other number
        resume_hint += (f" --gpus {WORLD.size} (or under torchrun as it started; any number of "
                        "processes continues it)")
    if signals.signum is not None and state.step < config.steps:  # complete: nothing to resume
        result.stopped = signals.name
        raise Stopped(signals.signum, f"stopped by {signals.name} at step {state.step}; checkpoint "
                      f"{made.ckpt}; {resume_hint}", result.to_dict())
    if stopped:
        log.info(f"time budget reached at step {state.step} of {config.steps}; checkpoint "
                 f"{made.ckpt}; {resume_hint}")
    return result
