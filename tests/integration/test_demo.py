"""`streamguard demo` against a running worker: it sends, and every verdict and dead letter comes back."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.integration.harness import Stack

pytestmark = pytest.mark.integration


def test_the_demo_streams_traffic_and_sees_it_decided(stack: Stack):
    stack.start_worker()
    result = subprocess.run(
        [sys.executable, "-m", "streamguard.cli", "demo", "--rate", "300", "--seconds", "4"],
        env={**os.environ, **stack.env()},
        text=True,
        capture_output=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "sent 1200/1200" in result.stdout
    assert "by type and decision: " in result.stdout and "login allow" in result.stdout
    assert "make down" in result.stdout
