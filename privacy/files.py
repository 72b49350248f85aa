"""Crash-safe file writes for everything the public tier publishes or keeps secret.

A release file, a public report or a ledger anchor is either the old complete file or the
new complete file, never a torn one: the bytes go to a temporary file in the same folder,
are flushed to disk (``fsync``), and the temporary file is renamed over the target
(``os.replace`` is atomic on POSIX), then the folder itself is synced so the rename
survives a power cut. Secret files are created with mode 0600 from the first byte
(``O_CREAT | O_EXCL``), never created world-readable and chmod-ed afterwards.

This module imports only the standard library.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
from pathlib import Path


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # some filesystems cannot open a folder
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_atomic(path: Path | str, data: bytes | str, *, mode: int = 0o644) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file, fsync, rename, fsync folder).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "a.json"
    >>> _ = write_atomic(p, '{"x": 1}'); p.read_text()
    '{"x": 1}'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def create_secret_file(path: Path | str, nbytes: int = 32) -> bytes:
    """Create ``path`` with mode 0600 holding ``nbytes`` random bytes as hex; return the hex.

    The key is written to a temporary file created 0600 (``O_CREAT | O_EXCL``) in the same
    folder, flushed, and then hard-linked to ``path``: the link fails when ``path`` exists, so
    a key is never overwritten, and a concurrent reader never sees a half-written key (the
    name appears only with its full contents).

    Raises ``FileExistsError`` when the file exists (never overwrites a key).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = secrets.token_hex(nbytes).encode("ascii")
    tmp = path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            os.write(fd, text + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        os.link(tmp, path)  # atomic; FileExistsError when another process won
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    _fsync_dir(path.parent)
    return text
