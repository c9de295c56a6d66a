"""The training engine: state.py (TrainState and its tensors), step.py (phases and EMA),
loop.py (fit: logging, samples, checkpoints, rollback), guard.py (signals, time, divergence)."""
