"""Folders and zips of image files as Sources: `--dataset PATH`, and CelebA's zip.

A folder is walked (symlinked folders followed once, FIFOs and devices never opened); a zip's
central directory is checked before its members are read. Every image file is an item, its
class the first folder below the deepest folder they all share; OS droppings are skipped
silently, other files reported as ignored.
"""

from __future__ import annotations

import errno
import os
import struct
import threading
import zipfile
from pathlib import Path, PurePosixPath

import numpy as np

from ganctl.data.decode import IMAGE_EXTENSIONS, Skip
from ganctl.data.sources import DEFAULT_MAX_BYTES, REPLACE, Source, damaged, hash_of, read_regular
from ganctl.errors import DataError


def _is_junk(rel: PurePosixPath) -> bool:
    """OS droppings, skipped silently: hidden files and folders, macOS resource forks."""
    return any(part.startswith(".") or part == "__MACOSX" for part in rel.parts)


def _classes(rel_paths: list[PurePosixPath]) -> tuple[np.ndarray, list[str]]:
    """Label = first folder below the deepest folder all files share; -1 for files at that level."""
    parents = [p.parts[:-1] for p in rel_paths]
    common = 0
    if parents:
        shortest = min(parents, key=len)
        while common < len(shortest) and all(p[common] == shortest[common] for p in parents):
            common += 1
    names = [p[common] if len(p) > common else None for p in parents]
    classes = sorted({n for n in names if n is not None})
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index[n] if n is not None else -1 for n in names], dtype=np.int64), classes


def _split_by_type(rel_paths: list[PurePosixPath]) -> tuple[list[PurePosixPath], list[tuple[str, str]]]:
    images, ignored = [], []
    for rel in rel_paths:
        if _is_junk(rel):
            continue
        if rel.suffix.lower() in IMAGE_EXTENSIONS:
            images.append(rel)
        else:
            ignored.append((str(rel), "not an image file type"))
    return images, ignored


def _encloses(link: Path, root: Path) -> bool:
    """Whether a symlinked folder leads to the dataset's root or above it (up to /): following
    it would walk far more than the dataset."""
    try:
        return root.resolve().is_relative_to(link.resolve())
    except (OSError, RuntimeError):
        return True


def walk_files(root: Path) -> tuple[list[tuple[PurePosixPath, int, int]], list[tuple[str, str]]]:
    """Every regular file under root as (relative path, size, mtime_ns), and (path, reason) for what was
    passed over. Iterative, so no tree is too deep for it; symlinked folders are followed once
    each (a link back up the tree is not a loop); FIFOs, sockets and devices are never opened."""
    files: list[tuple[PurePosixPath, int, int]] = []
    passed: list[tuple[str, str]] = []
    seen: set[tuple[int, int]] = set()
    stack = [(root, PurePosixPath())]
    while stack:
        folder, rel = stack.pop()
        try:
            st = folder.stat()
            if (st.st_dev, st.st_ino) in seen:
                continue  # reached again through a symlink
            seen.add((st.st_dev, st.st_ino))
            entries = list(os.scandir(folder))
        except OSError as e:
            if rel.parts:
                passed.append((str(rel), "too deep" if e.errno == errno.ENAMETOOLONG
                               else "unreadable folder"))
            continue
        for entry in entries:
            child = rel / entry.name
            try:
                if entry.is_dir():  # follows symlinks; loops end at `seen`
                    if entry.is_symlink() and _encloses(Path(entry.path), root):
                        passed.append((str(child), "link to an enclosing folder"))
                        continue
                    stack.append((Path(entry.path), child))
                elif entry.is_file():
                    st = entry.stat()
                    files.append((child, st.st_size, st.st_mtime_ns))
                elif not entry.is_symlink() or os.path.exists(entry.path):
                    passed.append((str(child), "not a regular file"))
            except OSError:
                passed.append((str(child), "unreadable"))
    return sorted(files), passed


def folder_source(name: str, root: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> Source:
    walked, passed = walk_files(root)
    stats = {rel: (size, mtime) for rel, size, mtime in walked}
    images, ignored = _split_by_type([rel for rel, _, _ in walked])
    ignored += [(f, why) for f, why in passed if not _is_junk(PurePosixPath(f))]
    labels, classes = _classes(images)
    files = [root / rel for rel in images]
    sizes = np.array([stats[rel][0] for rel in images], dtype=np.int64)
    # names, sizes and modification times: cheap, and it notices replaced or edited files
    fingerprint = hash_of([(str(rel), stats[rel]) for rel in images], max_bytes)
    return Source(name=name, origin=str(root), fingerprint=fingerprint,
                  keys=[str(r) for r in images], labels=labels, classes=classes,
                  read=lambda i: read_regular(files[i], max_bytes), encoded=True,
                  ignored=ignored, sizes=np.minimum(sizes, max_bytes))


# what zipfile raises for a damaged archive: a bad or lying central directory, a multi-disk
# or otherwise unsupported one, offsets past the end
LOCAL_HEADER = b"PK\x03\x04"  # the signature every member's data starts with
ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, ValueError, EOFError,
              struct.error)


def _check_offsets(archive: zipfile.ZipFile, infos: list[zipfile.ZipInfo]) -> None:
    """BadZipFile unless the first and last members the central directory lists start where it
    says: a directory that points elsewhere (a cut or patched file) would make every member
    unreadable, one skip at a time."""
    assert archive.fp is not None
    for info in {min(infos, key=_offset), max(infos, key=_offset)} if infos else ():
        archive.fp.seek(info.header_offset)
        if archive.fp.read(len(LOCAL_HEADER)) != LOCAL_HEADER:
            raise zipfile.BadZipFile(f"the central directory puts {info.filename!r} at byte "
                                     f"{info.header_offset}, where no member starts")


def _offset(info: zipfile.ZipInfo) -> int:
    return info.header_offset


def zip_source(name: str, path: Path, members: list[str] | None = None,
               labels: np.ndarray | None = None, max_bytes: int = DEFAULT_MAX_BYTES,
               fix: str = REPLACE) -> Source:
    """A zip's images; a member that cannot be read is skipped (counted), a zip that cannot be
    opened is a DataError that says `fix`."""
    try:
        archive = zipfile.ZipFile(path)
        found = archive.infolist()
        _check_offsets(archive, found)
    except ZIP_ERRORS as e:
        raise damaged(path, f"zip: {e}", fix) from None
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}; check it is there and readable") from None
    infos = {i.filename: i for i in found if not i.is_dir()}
    if members is None:
        images, ignored = _split_by_type(sorted(PurePosixPath(n) for n in infos))
        members = [str(p) for p in images]
        labels, classes = _classes(images)
    else:
        ignored, classes = [], []
    lock = threading.Lock()  # one shared file handle: reads are serialised, decoding is not

    def read(i: int) -> bytes:
        info = infos.get(members[i])
        if info is None:
            raise Skip("missing")  # listed (CelebA's partition file) but not in the zip
        if info.file_size > max_bytes:
            raise Skip("too large")
        with lock:
            try:
                with archive.open(info) as member:
                    data = member.read(max_bytes + 1)  # the declared size may lie
            except Exception:  # damaged, encrypted, unsupported compression: skip this member
                raise Skip("unreadable") from None
        if len(data) > max_bytes:
            raise Skip("too large")
        return data

    fingerprint = hash_of(path.stat().st_size, [(m, infos[m].CRC, infos[m].file_size)
                                              for m in members if m in infos], max_bytes)
    sizes = np.array([min(infos[m].file_size, max_bytes) if m in infos else 0 for m in members],
                     dtype=np.int64)
    assert labels is not None  # given with members, or derived above
    return Source(name=name, origin=str(path), fingerprint=fingerprint, keys=members,
                  labels=labels, classes=classes, read=read, encoded=True, ignored=ignored,
                  sizes=sizes)
