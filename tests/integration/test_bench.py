"""`streamguard bench` at smoke size against the test broker: the report is complete and consistent.

Benchmarks are not timed tests: nothing here asserts a speed, only that every
path wrote what it owed and that every figure of the report was measured.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.harness import ROOT, Broker

pytestmark = pytest.mark.integration

SMOKE = ["--events", "1500", "--raw-events", "3000", "--quix-events", "600", "--kstreams-events", "1500"]
SMOKE += ["--latency-seconds", "2"]


@pytest.mark.timeout(900)
def test_a_smoke_bench_measures_every_path_and_writes_the_report(broker: Broker, tmp_path: Path):
    out = tmp_path / "report.json"
    result = subprocess.run(
        [sys.executable, "-m", "streamguard.cli", "bench", *SMOKE, "--bootstrap", broker.bootstrap]
        + ["--out", str(out), "--workdir", str(tmp_path / "bench"), "--quix-venv", str(ROOT / ".run/bench/quix-venv")]
        + ["--kstreams-build", str(ROOT / ".run/bench/kstreams")],
        env={**os.environ, "STREAMGUARD_HASH_KEY": "integration-test-key-0123456789"},
        cwd=ROOT,
        text=True,
        capture_output=True,
        timeout=840,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())

    worker = report["paths"]["worker"]
    assert (worker["events"], worker["outputs_read"], worker["missing"], worker["extra"]) == (1500, 1500, 0, 0)
    assert report["paths"]["raw"]["events"] == 3000 and report["paths"]["quix"]["events"] == 600
    assert report["paths"]["kstreams"]["events"] == 1500
    for name, path in report["paths"].items():
        assert path["complete"], (name, path)
        assert path["events_per_s"] > 0 and path["peak_rss_bytes"] > 0, (name, path)

    for levels in (report["latency"], report["floor_latency"]):  # the worker, then the exactly-once floor
        assert [level["load"] for level in levels] == [0.25, 0.5, 0.75]
        for level in levels:
            assert level["verdicts"] == level["sent"] > 0, level
            assert 0 < level["p50_ms"] <= level["p99_ms"] <= level["p999_ms"] <= level["max_ms"], level

    two = report["paths"]["2 workers"]
    assert (two["events"], two["missing"], two["extra"]) == (1500, 0, 0)
    assert report["cpu_per_event_two_over_one"] > 0 and report["ratios"]["2 workers/worker"] > 0
    restart = report["restart"]
    assert restart["ready_s"] > 0 and restart["entities"] > 0 and restart["entities_per_s"] > 0, restart
    assert report["worker_peak_rss_bytes"] > 0
    assert report["state"]["bytes"] > 0 and report["state"]["entities"] > 0 and report["state"]["bytes_per_entity"] > 0
    assert all(report["ratios"][r] > 0 for r in ("worker/raw", "worker/quix", "worker/kstreams"))
    names = {t["name"] for t in report["targets"]}
    assert names >= {"worker / kstreams throughput", "p99 at 50% load / the floor's", "restore (entities/s)"}
    assert all(isinstance(t["passed"], bool) for t in report["targets"])
    assert all(text in result.stdout for text in ("worker/kstreams = ", "exactly-once floor", "targets:", "restarted"))
