from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import ROOT, Broker, Stack


@pytest.fixture(scope="session")
def broker() -> Iterator[Broker]:
    """A real Kafka broker on its own port, started by deploy/kafka/kafka.sh; stopped if we started it."""
    port = int(os.environ.get("STREAMGUARD_TEST_KAFKA_PORT", "19092"))
    broker = Broker(port, ROOT / ".run" / "kafka-test")
    was_running = broker.script("status").returncode == 0
    started = broker.script("start")
    assert started.returncode == 0, started.stderr
    yield broker
    if not was_running:
        broker.script("stop")


@pytest.fixture
def stack(broker: Broker, tmp_path: Path) -> Iterator[Stack]:
    stack = Stack(broker, tmp_path)
    stack.create_topics()
    yield stack
    stack.stop()
