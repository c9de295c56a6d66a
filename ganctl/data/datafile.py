"""A named dataset's whole files: read under a size cap, gunzipped, extracted from a tar.gz.

An MNIST idx, a CIFAR batch, an SVHN .mat or a partition list is read whole into memory, so it
is refused beyond MAX_DATA_FILE bytes (a gzip bomb stops there too); a truncated or corrupted
one is a DataError that names it.
"""

from __future__ import annotations

import gzip
import io
import tarfile
import zlib
from pathlib import Path, PurePosixPath

from ganctl import fsutil
from ganctl.data.decode import Skip
from ganctl.data.sources import damaged, read_regular
from ganctl.errors import DataError

# A whole-dataset file of torchvision's formats (an MNIST idx, a CIFAR batch, an SVHN .mat, a
# partition list): the largest real one is SVHN's extra split, 1.3 GB.
MAX_DATA_FILE = 4 << 30


def extract_missing(archive: Path, root: Path, folder: str) -> None:
    """The regular files under `folder` in a .tar.gz (CIFAR's), written into root/folder where
    there is none yet: a file there, intact or damaged, is left as it is. Members elsewhere, or
    that are links or devices, are passed over; a damaged archive is a DataError naming it."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                rel = PurePosixPath(member.name)
                if not member.isfile() or rel.is_absolute() or rel.parts[:1] != (folder,) \
                        or ".." in rel.parts or member.size > MAX_DATA_FILE:
                    continue
                target = root.joinpath(*rel.parts)
                if target.exists():
                    continue
                source = tar.extractfile(member)
                assert source is not None  # a regular file's
                with source:
                    data = source.read(member.size)
                target.parent.mkdir(parents=True, exist_ok=True)
                fsutil.atomic_write(target, data)
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise damaged(archive, f"tar.gz: {e}") from None
    except OSError as e:
        raise DataError(f"cannot extract {archive} into {root}: {e.strerror or e}; check free "
                        "space and permissions") from None


def read_data_file(path: Path, gunzip: bool = False) -> bytes:
    """A whole-dataset file (decompressed with gunzip), refused beyond MAX_DATA_FILE bytes."""
    try:
        raw = read_regular(path, MAX_DATA_FILE)
    except Skip as skip:
        raise DataError(f"{path} is {skip.reason}, not a dataset file; delete it and download "
                        "again") from None
    return _gunzip(path, raw) if gunzip else raw


def _gunzip(path: Path, raw: bytes) -> bytes:
    """A .gz file's content; a truncated or corrupted one (a cut download, a flipped bit the
    CRC catches) is a DataError naming it, a gzip bomb stops at MAX_DATA_FILE."""
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(raw)) as f:
            out = f.read(MAX_DATA_FILE + 1)
    except (EOFError, zlib.error, gzip.BadGzipFile, OSError) as e:
        raise damaged(path, f"gzip: {e}") from None
    if len(out) > MAX_DATA_FILE:
        raise DataError(f"{path} is too large, not a dataset file; delete it and download again")
    return out
