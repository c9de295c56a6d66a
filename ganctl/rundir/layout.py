"""A run directory's layout: the names of its files and folders, what makes a folder a run,
and the run's config.json and metrics.jsonl.

./runs/<NNNN>-<dataset>-<arch>/ holds the marker, config.json, metrics.jsonl, samples/ and
checkpoints/ (with its `latest` and `best` pointers); step files are named by their step.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from ganctl import fsutil, metricsfile
from ganctl.checkpoint import SUFFIX
from ganctl.config import Config
from ganctl.errors import GanctlError, RunError
from ganctl.fsutil import atomic_write

MARKER = ".ganctl-run"  # written first in every run directory: what makes a folder a run
CONFIG = "config.json"
DATA_REPORT = "data_report.json"
METRICS = metricsfile.FILE
SAMPLES = "samples"
CKPT_DIR = "checkpoints"
LATEST = "latest"  # a text file in CKPT_DIR naming the newest complete checkpoint
BEST = "best"  # ... naming the checkpoint with the lowest FID so far (never pruned)
POINTERS = (LATEST, BEST)
LOCK = ".lock"
CURVES = "curves.png"  # redrawn at sample steps (ganctl.plot)
WANDB_ID = "wandb_id.txt"  # the run's Weights & Biases id, with --wandb: a resume continues it
TENSORBOARD = "tensorboard"  # event files, with --tensorboard
STEP_FILE = re.compile(r"^step-(\d{9})\.safetensors$")  # exactly what checkpoint_name writes
MAX_RUN_FILE = 1 << 20  # config.json and pointers are small; a larger one is not ganctl's
# the keys every ganctl config.json has held since the first version: a run made before the
# marker existed is recognised by them (and its checkpoints/), not by any config.json
_LEGACY_KEYS = frozenset({"dataset", "resolution", "channels", "z_dim", "g_width", "d_width",
                          "loss", "lr_g", "lr_d", "batch_size", "steps", "seed", "ckpt_every"})


def runs_root() -> Path:
    return Path(os.environ.get("GANCTL_RUNS", "runs"))


def _stem(step: int) -> str:
    return f"step-{step:09d}"


def checkpoint_name(step: int) -> str:
    return _stem(step) + SUFFIX


def sample_name(step: int) -> str:
    return _stem(step) + ".png"


def is_run_dir(path: Path) -> bool:
    """A folder ganctl made a run of: it holds the marker, or (runs of versions before the
    marker) a checkpoints/ folder beside a config.json that holds every key those versions
    wrote and passes as a ganctl config. A folder with some other config.json is not a run."""
    if (path / MARKER).is_file():
        return True
    if not (path / CKPT_DIR).is_dir():
        return False
    try:
        values = json.loads(fsutil.read_regular(path / CONFIG, MAX_RUN_FILE).decode("utf-8"))
        Config.from_dict(values)
    except (OSError, ValueError, TypeError, RecursionError, GanctlError):
        return False
    return _LEGACY_KEYS <= values.keys()


def read_config(run_dir: Path) -> Config:
    """The config a run was started with (its config.json)."""
    path = run_dir / CONFIG
    try:
        text = fsutil.read_regular(path, MAX_RUN_FILE).decode("utf-8")
        return Config.from_dict(json.loads(text), source=str(path))
    except FileNotFoundError:
        raise RunError(f"{run_dir} has no {CONFIG}; it is not a ganctl run") from None
    except (OSError, UnicodeDecodeError, ValueError, TypeError, RecursionError) as e:
        why = "nested too deeply" if isinstance(e, RecursionError) else e
        raise RunError(f"{path} is damaged ({why}); resume from a checkpoint file instead") from None


def write_json(path: Path, value: Any, indent: int = 1) -> None:
    atomic_write(path, (json.dumps(value, indent=indent) + "\n").encode())


def write_config(run_dir: Path, config: Config) -> None:
    write_json(run_dir / CONFIG, config.to_dict(), indent=2)


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The records of metrics.jsonl; damaged lines are left out (metricsfile.read)."""
    return metricsfile.read(run_dir)[0]


def trim_metrics(run_dir: Path, step: int) -> int:
    """metricsfile.trim: the records after `step` (replayed on resume or rollback) dropped."""
    return metricsfile.trim(run_dir, step)
