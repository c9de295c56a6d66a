"""Pretrained files ganctl uses but does not train (the Inception feature network, a
discriminator's frozen backbone), found one way: the flag's PATH, the environment variable, the
user cache (~/.cache/ganctl/models/FILE), else downloaded there (atomically) from its address."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ganctl.errors import GanctlError
from ganctl.fsutil import atomic_file

DOWNLOAD_CHUNK = 1 << 20
Progress = Callable[[int], None]


@dataclass(frozen=True)
class WeightsFile:
    """Where a pretrained file comes from, and how errors about it read."""

    what: str  # "the Inception feature network"
    file_name: str  # its name in the cache
    url: str
    flag: str  # "--inception"
    env: str  # "GANCTL_INCEPTION"
    noun: str  # "the Inception file": what to give instead of a wrong path
    error: type[GanctlError] = GanctlError

    def how_to_get(self) -> str:
        return (f"download {self.url} and put it in {models_dir()}/ (or pass {self.flag} PATH, or "
                f"set {self.env})")


def models_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ganctl" / "models"


def locate(spec: WeightsFile, path: str | Path | None = None, download: bool = True,
           progress: Callable[[str, int], Progress] | None = None) -> Path:
    """The file, in the documented order, downloading it if allowed; spec.error otherwise."""
    for given, what in ((path, spec.flag), (os.environ.get(spec.env), spec.env)):
        if given:
            found = Path(given).expanduser()
            if not found.is_file():
                state = ("is a directory" if found.is_dir() else "is not a regular file"
                         if found.exists() else "does not exist")
                raise spec.error(f"{what} {found} {state}; give {spec.noun} itself "
                                 f"({spec.file_name}: {spec.url})")
            return found
    cached = models_dir() / spec.file_name
    if cached.is_file():
        return cached
    if not download:
        raise spec.error(f"{spec.what} ({spec.file_name}) is not in {models_dir()}/ and "
                         f"--no-download is set; {spec.how_to_get()}")
    try:
        return fetch(spec, cached, progress)
    except (OSError, urllib.error.URLError, ValueError) as e:
        raise spec.error(f"{spec.what} ({spec.file_name}) is not in {models_dir()}/ and "
                         f"downloading it failed ({e}); {spec.how_to_get()}") from None


def fetch(spec: WeightsFile, dest: Path, progress: Callable[[str, int], Progress] | None = None
          ) -> Path:
    """Download spec.url to dest atomically (a temp file until complete), with a progress display."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with urllib.request.urlopen(spec.url, timeout=60) as response, atomic_file(dest) as out:
        size = int(response.headers.get("Content-Length") or 0)
        advance = progress(f"downloading {spec.url} to {dest} (MB)",
                           max(size // DOWNLOAD_CHUNK, 1)) if progress else None
        while block := response.read(DOWNLOAD_CHUNK):
            out.write(block)
            if advance:
                advance(1)
    return dest
