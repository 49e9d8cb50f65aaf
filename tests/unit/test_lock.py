"""One live worker per data directory: the lock is exclusive, dies with its process and survives an exec."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from streamguard.errors import DataDirInUse, StreamguardError
from streamguard.state import lock
from streamguard.state.lock import LOCK_FILE, lock_data_dir

TRY_LOCK = """
import sys
from pathlib import Path
from streamguard.errors import DataDirInUse
from streamguard.state.lock import lock_data_dir
try:
    lock_data_dir(Path(sys.argv[1]))
except DataDirInUse as exc:
    print(exc)
    sys.exit(1)
print("locked", flush=True)
"""


@pytest.fixture(autouse=True)
def _release():
    """Tests lock directories in this process too: release them afterwards, as the process's death would."""
    yield
    for fd in lock._held.values():
        os.close(fd)
    lock._held.clear()


def _try_lock(data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", TRY_LOCK, str(data_dir)], text=True, capture_output=True, timeout=60)


def _holding(data_dir: Path) -> subprocess.Popen[str]:
    """Another process that holds `data_dir` until it is killed."""
    script = TRY_LOCK + "sys.stdin.read()\n"
    child = subprocess.Popen(
        [sys.executable, "-c", script, str(data_dir)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None and child.stdout.readline() == "locked\n"
    return child


def test_a_second_process_is_refused_with_the_holders_pid(tmp_path):
    lock_data_dir(tmp_path / "w")
    result = _try_lock(tmp_path / "w")
    assert result.returncode == 1, result.stderr
    assert result.stdout.strip() == (
        f"data directory {tmp_path / 'w'} is in use by another worker (pid {os.getpid()}): "
        "give each worker its own --data-dir (STREAMGUARD_DATA_DIR)"
    )


def test_the_lock_is_an_flock_on_a_file_of_the_data_dir(tmp_path):
    lock_data_dir(tmp_path)
    assert (tmp_path / LOCK_FILE).read_text() == f"{os.getpid()}\n"
    fd = os.open(tmp_path / LOCK_FILE, os.O_RDWR)
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)


def test_holding_it_again_in_the_same_process_is_a_no_op(tmp_path):
    lock_data_dir(tmp_path / "w")
    lock_data_dir(tmp_path / "w")
    lock_data_dir(tmp_path / "w" / ".." / "w")
    assert len(lock._held) == 1


def test_other_directories_are_independent(tmp_path):
    lock_data_dir(tmp_path / "a")
    assert _try_lock(tmp_path / "b").returncode == 0


def test_it_is_released_when_the_holder_is_killed(tmp_path):
    child = _holding(tmp_path)
    with pytest.raises(DataDirInUse, match=rf"in use by another worker \(pid {child.pid}\)"):
        lock_data_dir(tmp_path)
    child.send_signal(signal.SIGKILL)
    child.communicate(timeout=30)  # and close the pipes
    lock_data_dir(tmp_path)  # no stale lock left behind


REEXEC = """
import os, sys
from pathlib import Path
from streamguard.state.lock import lock_data_dir
lock_data_dir(Path(sys.argv[1]))
if sys.argv[2:] != ["again"]:
    os.execv(sys.executable, [sys.executable, __file__, sys.argv[1], "again"])
print("locked again as", os.getpid())
"""


def test_a_process_that_execs_itself_takes_it_again(tmp_path):
    """As `service.restart_in_place` does: same PID, a new image, and the lock again (not held by a lost fd)."""
    (tmp_path / "reexec.py").write_text(REEXEC)
    child = subprocess.Popen(
        [sys.executable, str(tmp_path / "reexec.py"), str(tmp_path / "w")], stdout=subprocess.PIPE, text=True
    )
    out, _ = child.communicate(timeout=60)
    assert child.returncode == 0
    assert out == f"locked again as {child.pid}\n"


def test_it_is_a_streamguard_error_that_a_retry_can_cure():
    assert issubclass(DataDirInUse, StreamguardError) and DataDirInUse.retriable
