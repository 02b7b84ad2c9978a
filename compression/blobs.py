"""Content-addressed files: every stored file is named by the SHA-256 of its bytes.

Layout: ROOT/ab/ab12…(64 hex digits).blob — the first two hex digits fan the files out over 256
folders. Same bytes, same name: two students who make the same variant share one file.

Writing is atomic: the bytes go to a temporary file in the destination folder (".tmp-…"), are
fsynced, and os.replace() gives the file its final name in one step; the folder is fsynced so the
name survives a power cut. A reader therefore sees no file or the whole file, never part of one. A
process killed half-way leaves only a temporary file, which collect() removes later.

Writing a file that already exists only refreshes its modification time. collect() spares every file
younger than its grace period, so a file that a keep in another process has just written (or just
found) survives until that keep's database row names it.

Reading checks the hash: a damaged file raises BlobError and is never used.
"""
from __future__ import annotations

import errno
import hashlib
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Iterator

from .store_errors import BlobError, StoreError, StoreFullError

DIGEST = re.compile(r"[0-9a-f]{64}")
SUFFIX = ".blob"
TEMP_PREFIX = ".tmp-"
NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}   # disk full, quota exceeded, file-size limit


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class BlobStore:
    """Files named by their SHA-256 under `root` (created on first write)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def path(self, digest: str) -> Path:
        if not isinstance(digest, str) or not DIGEST.fullmatch(digest):
            raise ValueError(f"not a SHA-256 hex digest: {digest!r}")
        return self.root / digest[:2] / f"{digest}{SUFFIX}"

    def put(self, data: bytes) -> str:
        """Store `data`; return its SHA-256 (hex). StoreFullError when the disk is full, with no
        partial file left behind."""
        digest = sha256_hex(data)
        path = self.path(digest)
        try:
            if path.exists():
                os.utime(path)                      # fresh again: collect() spares it (module docstring)
                return digest
            path.parent.mkdir(parents=True, exist_ok=True)
            _write_atomically(path, data)
        except OSError as exc:
            raise _write_error(exc, self.root) from None
        return digest

    def get(self, digest: str) -> bytes:
        """The bytes named `digest`; BlobError if the file is missing or damaged."""
        path = self.path(digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise BlobError(f"the file {path} is missing") from None
        except OSError as exc:
            raise BlobError(f"the file {path} cannot be read ({exc.strerror})") from None
        if sha256_hex(data) != digest:
            raise BlobError(f"the file {path} is damaged (its bytes no longer match their SHA-256)")
        return data

    def exists(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def digests(self) -> Iterator[str]:
        """Every stored digest (temporary files excluded)."""
        if not self.root.is_dir():
            return
        for path in self.root.glob(f"??/*{SUFFIX}"):
            name = path.name[:-len(SUFFIX)]
            if DIGEST.fullmatch(name):
                yield name

    def collect(self, keep: set[str], grace_s: float = 3600.0) -> tuple[int, int]:
        """Remove files not in `keep`, and temporary files left by killed writers, that are older than
        `grace_s` seconds. Returns (files removed, bytes freed)."""
        if not self.root.is_dir():
            return 0, 0
        cutoff = time.time() - grace_s
        removed = freed = 0
        candidates = [self.path(d) for d in self.digests() if d not in keep]
        candidates += list(self.root.glob(f"??/{TEMP_PREFIX}*"))
        for path in candidates:
            try:
                stat = path.stat()
                if stat.st_mtime <= cutoff:
                    path.unlink()
                    removed, freed = removed + 1, freed + stat.st_size
            except FileNotFoundError:
                continue                            # another process collected it first
        return removed, freed


def _write_atomically(path: Path, data: bytes) -> None:
    fd, temp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    fsync_folder(path.parent)


def fsync_folder(folder: Path) -> None:
    """Make a rename inside `folder` durable (POSIX; a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_error(exc: OSError, root: Path) -> StoreError:
    if exc.errno in NO_SPACE:
        return StoreFullError(f"The disk holding the workspace store ({root}) is full, "
                              f"so nothing was saved. Free some space (or delete variants you no longer "
                              f"need) and keep the variant again; everything stored before is intact.")
    return StoreError(f"Cannot write to the workspace store ({root}): {exc.strerror}. Check that the "
                      f"folder exists and is writable, or set PLAYGROUND_HOME to one that is.")
