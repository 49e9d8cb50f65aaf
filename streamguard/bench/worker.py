"""One streamguard worker under test: started as a user would, watched through its stats page and its log.

It runs the full feature set and the default ruleset, with its own topic
prefix, app id and data directory, at log level INFO: that is the level at
which mode (Faust's service library) logs "Timer ... woke up too late, with a
drift of +S", its sign of an event loop that was blocked (for a 1 s timer,
a drift over 0.3 s).
"""

from __future__ import annotations

import json
import re
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamguard.bench.processes import Child, start
from streamguard.errors import StreamguardError

READY_TIMEOUT_S = 180.0
STALL_MS = 300.0
_LATE_TIMER = re.compile(r"woke up too late, with a drift of \+([0-9.]+)")
_RESTORED = re.compile(r"hold (\d+) entities after their restore in ([0-9.]+) s")


@dataclass
class Stalls:
    """The worker log's late-timer warnings, and the worker's own figure if its stats page has one."""

    late_timer_warnings: int
    over_limit: int  # warnings with a drift over STALL_MS
    max_drift_ms: float
    max_stall_ms: float | None  # `max_stall_ms` of /streamguard/stats/, when the worker reports it


@dataclass
class BenchWorker:
    child: Child
    web_port: int
    data_dir: Path

    def stats(self) -> dict[str, Any]:
        url = f"http://127.0.0.1:{self.web_port}/streamguard/stats/"
        with urllib.request.urlopen(url, timeout=5) as response:
            return dict(json.load(response))

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.child.check_alive()
            try:
                stats = self.stats()
                if stats.get("ready") and stats.get("shards"):
                    return
            except OSError:
                pass  # its web server is not up yet
            time.sleep(0.3)
        raise StreamguardError(f"worker not ready in {timeout_s:.0f} s; the end of {self.child.log}:\n{self.tail()}")

    def tail(self) -> str:
        return self.child.log_tail()

    def stalls(self, stats: dict[str, Any] | None) -> Stalls:
        drifts = [float(m[1]) * 1000 for m in _LATE_TIMER.finditer(self.child.log.read_text(errors="replace"))]
        reported = None if stats is None else stats.get("max_stall_ms")
        return Stalls(
            late_timer_warnings=len(drifts),
            over_limit=sum(1 for d in drifts if d > STALL_MS),
            max_drift_ms=max(drifts, default=0.0),
            max_stall_ms=None if reported is None else float(reported),
        )

    def restored(self) -> tuple[int, float]:
        """The entities its restores rebuilt and the seconds they took, from its log (the columnar engine's line)."""
        found = [(int(m[1]), float(m[2])) for m in _RESTORED.finditer(self.child.log.read_text(errors="replace"))]
        return sum(e for e, _ in found), sum(s for _, s in found)

    def state_bytes(self) -> int:
        """Bytes on disk of its RocksDB stores (`<data dir>/state`: the item engine's; none for the columnar one)."""
        return sum(p.stat().st_size for p in (self.data_dir / "state").rglob("*") if p.is_file())


def start_worker(env: dict[str, str], data_dir: Path, web_port: int, log: Path) -> BenchWorker:
    """A worker process with `env` (STREAMGUARD_* variables); ready when this returns."""
    argv = [sys.executable, "-m", "streamguard.cli", "worker", "--data-dir", str(data_dir), "--web-port", str(web_port)]
    child = start("the streamguard worker", argv, log, {**env, "STREAMGUARD_LOG_LEVEL": "INFO"})
    worker = BenchWorker(child, web_port, data_dir)
    try:
        worker.wait_ready()
    except BaseException:
        child.stop()
        raise
    return worker
