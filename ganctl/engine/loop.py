"""The training loop: steps, then on schedule logging, samples and checkpoints; rollback on
divergence; a clean stop (with a checkpoint) on a signal or when the time budget runs out.
"""

from __future__ import annotations

import shlex
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ganctl.distributed import WORLD
from ganctl.engine.compiled import cache_dir, compile_error
from ganctl.engine.guard import DivergenceGuard, StopSignals, TimeBudget
from ganctl.engine.hooks import Evaluate, LastGood, Made, Run, StopVote, make_hooks
from ganctl.engine.memory import is_out_of_memory, out_of_memory_error
from ganctl.engine.meter import Meter
from ganctl.engine.state import TrainState, snapshot
from ganctl.engine.step import train_step
from ganctl.errors import GanctlError, Stopped
from ganctl.output.progress import RunLog
from ganctl.output.sinks import open_sinks


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

    @classmethod
    def of(cls, state: TrainState, run_dir: Path, checkpoint: Path | None, samples: Path | None,
           metrics: dict[str, Any] | None, seconds: float, **rest: Any) -> RunResult:
        """Where `state` stands, its config's batch size and precision as it ran."""
        config = state.config
        return cls(run_dir=str(run_dir), checkpoint=None if checkpoint is None else str(checkpoint),
                   samples=None if samples is None else str(samples), step=state.step,
                   steps=config.steps, device=str(state.batches.device), seconds=seconds,
                   metrics=metrics, batch_size=config.batch_size, precision=config.precision,
                   compiled=state.compiled, **rest)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def fit(state: TrainState, run_dir: Path, log: RunLog, fingerprint: str,
        deadline: float | None = None, evaluate: Evaluate | None = None) -> RunResult:
    """Train from state.step to config.steps; after each step the hooks that are due (log,
    evaluate, checkpoint, samples, curves); stop cleanly (with a checkpoint) on a stop signal or
    when the time budget runs out. An evaluation step is also a checkpoint step."""
    config, phases = state.config, state.loss.phases()
    compiling = _compile_note(state, log)
    if WORLD.writer:  # closed by log.close() below
        log.watch(open_sinks(config, run_dir, state.step, log.info, quiet=log.console.quiet))
    # the meter after the sinks: W&B may take seconds
    r = Run(state, run_dir, log, fingerprint, TimeBudget(deadline, state.step),
            Meter(config.batch_size, state.drawn), DivergenceGuard(state.batches.device, state.step),
            LastGood(snapshot(state), state.step))
    hooks = make_hooks(r, evaluate)
    t0 = time.perf_counter()
    log.start(state.step, config.steps, deadline)
    try:
        with StopSignals() as signals:
            vote = StopVote(signals, r.budget, config, evaluate is not None)
            while state.step < config.steps:
                started = time.perf_counter()
                r.observe(train_step(state, phases))
                log.advance(state.step)
                if compiling:  # the first step compiled G and D: say so, and leave it out of img/s
                    compiling = False
                    _compiled(r, time.perf_counter() - started)
                tick = vote.tick(state.step)
                checks = tick.saving or tick.due(config.log_every) or tick.due(config.sample_every)
                if checks and r.rolled_back():
                    continue
                r.scored, r.failed = None, None
                for hook in hooks:
                    if hook.due(tick):
                        hook(tick)
                if tick.stopping:
                    break
    except Exception as e:
        if (explained := _explain(e, state)) is None:
            raise
        raise explained from None
    finally:
        state.batches.close()
        log.close()
    return _finish(state, run_dir, r.made, vote.out_of_time, signals,
                   round(time.perf_counter() - t0, 2), log)


def _compiled(r: Run, seconds: float) -> None:
    r.meter.exclude(seconds)
    r.log.exclude(seconds)
    r.log.info(f"compiled in {seconds:.0f} s")
    r.made.compile_seconds = round(seconds, 2)


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


def _finish(state: TrainState, run_dir: Path, made: Made, out_of_time: bool, signals: StopSignals,
            seconds: float, log: RunLog) -> RunResult:
    """The result, or Stopped (exit 128 + N) when a signal ended the run."""
    config = state.config
    stopped = "max-time" if out_of_time and state.step < config.steps else None
    result = RunResult.of(state, run_dir, made.ckpt, made.sample, made.last, seconds,
                          stopped=stopped, compile_seconds=made.compile_seconds)
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
