"""One live worker per data directory.

The data directory is a worker's identity: its transactional id comes from
`<data_dir>/worker-id`, and its RocksDB stores live there. Two workers on one
directory would fence each other's transactions in a loop (and share stores),
so a worker takes an exclusive lock on `<data_dir>/LOCK-worker` at start and
holds it for as long as its process lives; a second one is refused at once.

It is an `flock`, which the kernel releases when the process dies, however it
dies (SIGKILL included): no stale lock to clean up. The descriptor is closed
on exec, so a worker that replaces itself in place (`service.restart_in_place`,
same PID) releases the lock with its old image and takes it again at start.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Final

from streamguard.errors import DataDirInUse

LOCK_FILE: Final = "LOCK-worker"

_held: dict[Path, int] = {}  # data dir -> the locked descriptor, kept open for the process's lifetime


def lock_data_dir(data_dir: Path) -> None:
    """Hold `data_dir` for this process, or raise DataDirInUse naming the process that does.

    Holding it again in the same process is a no-op.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    if data_dir.resolve() in _held:
        return
    fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        raise DataDirInUse(
            f"data directory {data_dir} is in use by another worker (pid {holder}): "
            "give each worker its own --data-dir (STREAMGUARD_DATA_DIR)"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _held[data_dir.resolve()] = fd


def _holder(fd: int) -> str:
    """The PID the holder wrote into the lock file ("unknown" if it has not yet)."""
    written = os.pread(fd, 32, 0).decode(errors="replace").strip()
    return written if written.isdigit() else "unknown"
