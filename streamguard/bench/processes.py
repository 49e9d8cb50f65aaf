"""The processes a bench run starts: each with its own log, stopped by its own PID, never left behind.

A process that dies while the bench waits on it is an error that quotes the
end of its log, so a broken peer or worker says why instead of hanging the run.
`run_tool` runs a one-off command (an install, a build) to its end.
"""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from streamguard.errors import StreamguardError

LOG_TAIL = 3000


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def check_alive(self) -> None:
        """Raise, with the end of its log, if the process has exited."""
        code = self.process.poll()
        if code is not None:
            raise StreamguardError(f"{self.name} exited with {code}; the end of {self.log}:\n{self.log_tail()}")

    def log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-LOG_TAIL:]
        except OSError:
            return ""

    def peak_rss_bytes(self) -> int:
        """The high-water mark of its resident memory (VmHWM), while it still runs."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise StreamguardError(f"no VmHWM in /proc/{self.process.pid}/status")

    def cpu_seconds(self) -> float:
        """The CPU time it has used so far, user and system (`/proc/<pid>/stat`), while it still runs."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime: fields 14-15

    def stop(self, timeout_s: float = 60.0) -> int:
        """SIGTERM, wait; SIGKILL if it does not go in time. Its exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait(30)


def start(name: str, argv: list[str], log: Path, env: dict[str, str] | None = None) -> Child:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen(
            argv,
            env={**os.environ, **(env or {})},
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    return Child(name, process, log)


def run_tool(argv: list[str], timeout_s: float) -> None:
    """Run `argv` to its end; an error with the end of its output if it fails or takes over `timeout_s`."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        raise StreamguardError(f"{' '.join(argv)} took over {timeout_s:.0f} s") from exc
    if done.returncode != 0:
        output = (done.stdout + done.stderr)[-LOG_TAIL:]
        raise StreamguardError(f"{' '.join(argv)} failed ({done.returncode}):\n{output}")
