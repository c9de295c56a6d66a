"""An export's manifest.json: the settings a rerun must match to add to the folder (the
checkpoint's and the generator's digests, the network, truncation, class, format, quality,
shard size), its seeds written as ranges, and its status (incomplete until every image is
durable).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from ganctl import __version__
from ganctl.errors import ConfigError
from ganctl.fsutil import atomic_write, read_regular, sha256_file
from ganctl.models.generator import current_noise_mode
from ganctl.sample import LoadedGenerator
from ganctl.seeds import MAX_SEED, SEED_PART

LOSSY = ("jpg", "webp")
MANIFEST = "manifest.json"
MANIFEST_SCHEMA = 1
MAX_MANIFEST = 64 << 20  # bytes: seeds are kept as ranges, so a real manifest is far smaller
SHARD_BYTES = 256 << 20  # npz shards of at most this many image bytes ...
MAX_SHARD = 10_000  # ... and at most this many images
MAX_FOLDER_SEEDS = 100_000_000  # seeds one export folder may hold (a manifest with more is damaged)


def manifest_for(loaded: LoadedGenerator, fmt: str, truncation: float | None, fixed: int | None,
                 quality: int) -> dict:
    """The export's settings (its seeds and count are added once merged with the folder's)."""
    config = loaded.config
    network = {"arch": config.arch, "resolution": config.resolution, "channels": config.channels,
               "z_dim": config.z_dim, "g_width": config.g_width, "conditional": config.conditional,
               "classes": list(config.classes)}
    image_bytes = config.resolution ** 2 * config.channels
    return {"ganctl_export": MANIFEST_SCHEMA, "ganctl_version": __version__,
            "checkpoint": str(loaded.header.path), "step": loaded.header.step,
            "checkpoint_sha256": sha256_file(Path(loaded.header.path)),
            "generator_sha256": _weights_sha256(loaded.G), "network": network,
            "truncation": None if truncation is None else float(truncation),
            "latents": "nvlabs" if loaded.nvlabs_seeds else None,  # None: ganctl's
            # a StyleGAN2's per-pixel noise (None: a generator without): const keeps a seed's image
            "noise_mode": current_noise_mode(loaded.G),
            "class_index": fixed, "format": fmt, "quality": quality if fmt in LOSSY else None,
            "shard_size": max(1, min(MAX_SHARD, SHARD_BYTES // image_bytes)) if fmt == "npz" else 0}


# what must match for a rerun to add to a folder: the same pixels, the same way written
SETTINGS = ("ganctl_export", "checkpoint_sha256", "generator_sha256", "network", "truncation",
            "latents", "noise_mode", "class_index", "format", "quality", "shard_size")


def open_out_dir(out_dir: Path, manifest: dict) -> dict | None:
    """The manifest of an export already in out_dir, None for a new or empty folder; any other
    folder with files is refused."""
    if not (out_dir / MANIFEST).exists():
        if any(out_dir.iterdir()):
            raise ConfigError(f"{out_dir} is not empty and holds no export ({MANIFEST}); choose "
                              "an empty or new folder")
        return None
    try:  # a regular file of sane size: a FIFO or a huge file in its place must not hang or fill memory
        previous = json.loads(read_regular(out_dir / MANIFEST, MAX_MANIFEST))
    except (OSError, ValueError, RecursionError):
        previous = None
    if not isinstance(previous, dict) or not previous.get("ganctl_export"):
        raise ConfigError(f"{out_dir / MANIFEST} is not a ganctl export manifest; choose another "
                          "output folder")
    changed = [k for k in SETTINGS if previous.get(k) != manifest[k]]
    if changed:
        what = ", ".join(f"{k} {previous.get(k)!r} -> {manifest[k]!r}" if k in
                         ("truncation", "latents", "noise_mode", "class_index", "format", "quality")
                         else k
                         for k in changed)
        raise ConfigError(f"{out_dir} holds an export with other settings ({what}); export into "
                          "a new folder, or rerun with the settings of its manifest.json")
    return previous


def merge_seeds(previous: dict | None, seeds: list[int], fmt: str, out_dir: Path) -> list[int]:
    """The seeds the folder will hold: a rerun of images may add `seeds` to those already
    there; npz shards are cut from the seed list, so theirs cannot change."""
    if previous is None:
        return seeds
    try:
        before = _parse_seed_text(previous.get("seeds"), MAX_FOLDER_SEEDS)
    except ValueError as e:
        raise ConfigError(f"{out_dir / MANIFEST} is damaged ({e}); export into a new folder") from None
    if fmt == "npz" and before != seeds:
        raise ConfigError(f"npz shards of seeds {previous.get('seeds')} are there; export the same "
                          "seeds to finish them, or other seeds into a new folder")
    return sorted(set(before) | set(seeds))


def seed_text(seeds: list[int]) -> str:
    """[0, 1, 2, 3, 7] -> '0-3,7': runs of consecutive seeds as ranges, in the list's order."""
    parts: list[str] = []
    i = 0
    while i < len(seeds):
        j = i
        while j + 1 < len(seeds) and seeds[j + 1] == seeds[j] + 1:
            j += 1
        parts.append(str(seeds[i]) if i == j else f"{seeds[i]}-{seeds[j]}")
        i = j + 1
    return ",".join(parts)


def _parse_seed_text(text: object, limit: int) -> list[int]:
    """seed_text's inverse; ValueError for text it could not have written, or for more than
    `limit` seeds."""
    if not isinstance(text, str):
        raise ValueError(f"seeds {str(text)[:40]!r} are not text like 0-63,100")
    seeds: list[int] = []
    for part in filter(None, text.split(",")):
        match = SEED_PART.match(part)
        if match is None:
            raise ValueError(f"{part[:40]!r} is not a seed or a range of seeds")
        low, high = int(match[1]), int(match[2] or match[1])
        if not low <= high <= MAX_SEED:
            raise ValueError(f"{part[:40]!r} is not a range of seeds")
        if len(seeds) + high - low + 1 > limit:
            raise ValueError(f"more than {limit:,} seeds")
        seeds.extend(range(low, high + 1))
    return seeds


def _weights_sha256(G: torch.nn.Module) -> str:
    """Of G's tensors as loaded: tells G_ema from G, which come from the same checkpoint."""
    digest = hashlib.sha256()
    for name, tensor in G.state_dict().items():
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def write_json(path: Path, value: dict) -> None:
    atomic_write(path, (json.dumps(value, indent=2) + "\n").encode())
