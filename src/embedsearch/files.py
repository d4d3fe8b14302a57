"""Files we write: a writability check made before long work, and atomic writes that leave nothing behind."""

from __future__ import annotations

import os
import secrets
import socket
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

import numpy as np

TEMPORARY_SUFFIX = ".tmp"
# A temporary is named .<target>.<host>.<pid>.<random>.tmp beside its target: hidden, matched by no
# reader's pattern (*.json, part-*.npz), and its host and pid say whose it is.
_HOST = socket.gethostname().replace(".", "_") or "host"


def check_writable(path: str | Path, name: str, directory: bool = False) -> Path:
    """Return `path` when a file (or, with `directory`, a folder's files) can be written there, else raise ValueError.

    Missing parent folders count as creatable. Writing is tried with a temporary file in the
    nearest existing folder, which is removed again, so the check holds for read-only file systems too.
    """
    path = Path(path)
    if path.exists() and path.is_dir() != directory:
        expected = "a folder" if directory else "a file path"
        raise ValueError(f"{name}={str(path)!r} {'is not' if directory else 'is'} a directory: expected {expected}")
    existing = path if directory else path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{name}={str(path)!r}: {str(existing)!r} is a file, so no folder can be created there")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise ValueError(f"{name}={str(path)!r}: cannot write in {str(existing)!r} ({error.strerror})") from None
    if not directory and path.exists() and not os.access(path, os.W_OK):
        raise ValueError(f"{name}={str(path)!r}: the file exists and is not writable")
    return path


def write_atomically(path: str | Path, write: Callable[[BinaryIO], None], *, exclusive: bool = False) -> Path:
    """Write `path` with what `write(stream)` writes, so that readers see the old file (or none) or the whole new one.

    The bytes go to a temporary file beside `path` (same file system), flushed and fsynced, which then
    replaces `path`; with `exclusive` it is hard-linked as `path` instead, which raises FileExistsError
    rather than overwrite. A writer killed midway (SIGKILL) leaves its temporary behind: every write
    first removes those of writers on this host that no longer run. Returns `path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent)
    while True:
        temporary = path.with_name(f".{path.name}.{_HOST}.{os.getpid()}.{secrets.token_hex(4)}{TEMPORARY_SUFFIX}")
        try:  # the mode an ordinary open() gives (0o666 less the umask)
            descriptor = os.open(temporary, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
            break
        except FileExistsError:
            continue
    published = False
    try:
        with os.fdopen(descriptor, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        if exclusive:
            os.link(temporary, path)
        else:
            os.replace(temporary, path)
            published = True
    finally:
        if not published:
            temporary.unlink(missing_ok=True)
    return path


def save_npz_atomically(path: str | Path, arrays: dict[str, object]) -> Path:
    """Write `arrays` to `path` as .npz with `write_atomically`; return `path`."""
    return write_atomically(path, lambda stream: np.savez(stream, **arrays))


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Remove the temporaries in `folder` left by dead writers on this host; return what was removed."""
    removed = []
    for temporary in Path(folder).glob(f".*{TEMPORARY_SUFFIX}"):
        fields = temporary.name[1:-len(TEMPORARY_SUFFIX)].rsplit(".", 3)
        if len(fields) != 4 or fields[1] != _HOST or not fields[2].isdigit() or process_running(int(fields[2])):
            continue
        temporary.unlink(missing_ok=True)
        removed.append(temporary)
    return removed


def process_running(pid: int) -> bool:
    """Whether a process with this pid runs on this host (any user's)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a process of another user
        return True
    return True
