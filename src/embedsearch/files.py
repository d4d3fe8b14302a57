"""Files we write: a writability check made before long work, and atomic .npz writes that leave nothing behind."""

from __future__ import annotations

import itertools
import os
import socket
import tempfile
from pathlib import Path

import numpy as np

PARTIAL_SUFFIX = ".partial.npz"
# Temporaries are named <target>.<host>.<pid>.<n>.partial.npz: the host and pid say whose they are.
_HOST = socket.gethostname().replace(".", "_") or "host"
_WRITES = itertools.count()


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


def save_npz_atomically(path: str | Path, arrays: dict[str, object]) -> None:
    """Write `arrays` to `path` (.npz) so that readers see the old file or the whole new one, never half.

    The arrays go to a temporary file beside `path`, which then replaces it. A writer killed
    midway (SIGKILL) leaves its temporary behind: every save first removes those of writers on
    this host that are no longer running.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(path.parent)
    partial = path.with_name(f"{path.name}.{_HOST}.{os.getpid()}.{next(_WRITES)}{PARTIAL_SUFFIX}")
    try:
        np.savez(partial, **arrays)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def remove_stale_partials(folder: str | Path) -> list[Path]:
    """Remove the temporaries in `folder` left by dead writers on this host; return what was removed."""
    removed = []
    for partial in Path(folder).glob(f"*{PARTIAL_SUFFIX}"):
        fields = partial.name[:-len(PARTIAL_SUFFIX)].rsplit(".", 3)
        if len(fields) != 4 or fields[1] != _HOST or not fields[2].isdigit() or process_running(int(fields[2])):
            continue
        partial.unlink(missing_ok=True)
        removed.append(partial)
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
