"""What `ganctl inspect` reports about a checkpoint, read from its header alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ganctl import checkpoint, rundir
from ganctl.importers.convert import imported, saved_augment_p
from ganctl.stored import NETWORKS, check_models, stored_config


def describe_checkpoint(header: checkpoint.Header) -> dict[str, Any]:
    path = header.path
    config = stored_config(header)
    source = imported(header)  # an NVlabs network's: G and G_ema, and D when ganctl builds it
    held = NETWORKS if source is None else tuple(n for n in NETWORKS if n in source["imported"])
    models = check_models(header, config, held)  # the counts below: of the models the file holds
    return {
        "path": str(path),
        "version": header.metadata.get("ganctl.version"),
        "schema": int(header.metadata["ganctl.schema"]),
        "step": header.step,
        "created": header.metadata.get("ganctl.created"),
        "device": header.metadata.get("ganctl.device"),
        "processes": trained_processes(header),
        "file_size": header.file_size,
        "params": {name: sum(p.numel() for p in models[name].parameters()) for name in ("G", "D")
                   if name in models},
        "dataset_fingerprint": header.metadata.get("ganctl.dataset_fingerprint"),
        "checksum": header.metadata.get("ganctl.checksum"),
        "config": config.to_dict(),
        "metrics": header.metrics,
        "eval": header.eval,
        "best": _best(path),
        "imported": source,
        "augment_p": _augment_p(header, source),
    }


AUGMENT_P = "loss.augment.p"  # an adaptive augmentation's probability in a run's checkpoint


def _augment_p(header: checkpoint.Header, source: dict[str, Any] | None) -> float | None:
    """The adaptive augmentation's p the checkpoint holds (one number read from the file), or
    the one an imported NVlabs network was saved with; None without one."""
    if AUGMENT_P in header.tensors and header.tensors[AUGMENT_P].get("shape") == []:
        return float(checkpoint.load_tensors(header, (AUGMENT_P,))[AUGMENT_P])
    return saved_augment_p(source)


MAX_PROCESS_DIGITS = 9  # a process count of more digits is no run's (and int() refuses 4,300)


def trained_processes(header: checkpoint.Header) -> int:
    """The processes a checkpoint was trained on (1 before several were possible, or when the
    record is not a whole number of at most MAX_PROCESS_DIGITS digits: informative only, so an odd
    one is not worth refusing the file). Metadata values are text (checkpoint.check_metadata)."""
    text = header.metadata.get("ganctl.world_size") or "1"
    whole = text.isascii() and text.isdecimal() and len(text) <= MAX_PROCESS_DIGITS
    return int(text) if whole and int(text) > 0 else 1


def _best(path: Path) -> dict[str, Any] | None:
    """The run's best score (rundir.best_score: `ganctl runs` says the same), if any."""
    if path.parent.name != rundir.CKPT_DIR:
        return None
    best = rundir.best_score(path.parent.parent)
    if best is None:
        return None
    return {"checkpoint": None if best.checkpoint is None else str(best.checkpoint),
            "step": best.step, "fid": best.fid}
