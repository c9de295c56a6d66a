"""Run directories: ./runs/<NNNN>-<dataset>-<arch>/ with config.json, metrics.jsonl, samples/
and checkpoints/ (with its `latest` and `best` pointers). Callers use the names below as
`rundir.X`; each lives in the module of its concept:

  layout.py       the names of a run's files, what makes a folder a run, config.json, metrics
  claim.py        making a run directory (its number, the marker) and removing what ganctl wrote
  lock.py         the lock that keeps one process per run, and probing it
  checkpoints.py  the latest/best pointers, the best score, listing and pruning, and finding
                  the checkpoint a command was pointed at

Only files ganctl wrote are ever deleted: pruned checkpoints, and a run's own files on
--overwrite. The checkpoint file format itself is checkpoint's; rundir uses it, never the
reverse.
"""

from ganctl.rundir.checkpoints import (
    RESCANS,
    Best,
    best_score,
    latest_in_run,
    list_checkpoints,
    locate,
    newest_run,
    newest_valid,
    pointed,
    prune,
    run_dir_of,
    set_pointer,
)
from ganctl.rundir.claim import abandon, create_run_dir, remove_run, remove_temp_files
from ganctl.rundir.layout import (
    BEST,
    CKPT_DIR,
    CONFIG,
    CURVES,
    DATA_REPORT,
    LATEST,
    LOCK,
    MARKER,
    MAX_RUN_FILE,
    METRICS,
    POINTERS,
    SAMPLES,
    TENSORBOARD,
    WANDB_ID,
    checkpoint_name,
    is_run_dir,
    read_config,
    read_metrics,
    runs_root,
    sample_name,
    trim_metrics,
    write_config,
    write_json,
)
from ganctl.rundir.lock import LOCK_GRACE, is_locked, locked

__all__ = [
    "BEST", "CKPT_DIR", "CONFIG", "CURVES", "DATA_REPORT", "LATEST", "LOCK", "LOCK_GRACE", "MARKER",
    "MAX_RUN_FILE", "METRICS", "POINTERS", "RESCANS", "SAMPLES", "TENSORBOARD", "WANDB_ID", "Best",
    "abandon", "best_score", "checkpoint_name", "create_run_dir", "is_locked", "is_run_dir",
    "latest_in_run", "list_checkpoints", "locate", "locked", "newest_run", "newest_valid", "pointed",
    "prune", "read_config", "read_metrics", "remove_run", "remove_temp_files", "run_dir_of",
    "runs_root", "sample_name", "set_pointer", "trim_metrics", "write_config", "write_json",
]
