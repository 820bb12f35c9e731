"""Atomic file writes (temp file in the target folder, fsync, rename, fsync the folder) and sha256 checks."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

__all__ = [
    "atomic_copy",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "sha256_file",
    "verify_sha256",
    "write_with",
]


def _fsync_dir(path: Path) -> None:
    if os.name == "nt":  # directories cannot be opened for fsync on Windows
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; on success it is fsynced and renamed onto ``dest``.

    Readers see either the old file or the complete new one, never a partial write.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
        _fsync_dir(dest.parent)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(dest: str | os.PathLike[str], data: bytes) -> Path:
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)
    return Path(dest)


def atomic_write_text(dest: str | os.PathLike[str], text: str) -> Path:
    return atomic_write_bytes(dest, text.encode("utf-8"))


def atomic_copy(src: str | os.PathLike[str], dest: str | os.PathLike[str]) -> Path:
    with atomic_path(dest) as tmp:
        shutil.copyfile(src, tmp)
    return Path(dest)


def write_with(dest: str | os.PathLike[str], writer: Callable[[Path], None]) -> Path:
    """Atomically produce ``dest`` with ``writer(tmp_path)``."""
    with atomic_path(dest) as tmp:
        writer(tmp)
    return Path(dest)


_VERIFIED: set[tuple[str, int, int, str]] = set()  # (real path, size, mtime_ns, digest) verified in this process


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a regular file, read in 8 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            h.update(chunk)
    return h.hexdigest()


def verify_sha256(path: str | os.PathLike[str], expected: str, *, what: str | None = None, hint: str = "") -> None:
    """Raise :class:`mixerzoo.hub.CorruptCheckpointError` (one line, naming the file) unless ``path`` hashes to
    ``expected``. A file that passed once is not hashed again in this process while its size and mtime hold."""
    from mixerzoo.hub._config import CorruptCheckpointError

    path = Path(path)
    st = path.stat()
    want = str(expected).lower()
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns, want)
    if key in _VERIFIED:
        return
    got = sha256_file(path)
    if got != want:
        where = f"{what}: " if what else ""
        tail = f"; {hint}" if hint else ""
        raise CorruptCheckpointError(
            f"{where}{path} is corrupted (sha256 {got} does not match the recorded {want}: damaged after it was "
            f"written){tail}"
        )
    _VERIFIED.add(key)
