"""`streamguard topics create` against the real broker: idempotent, and honest about drift."""

from __future__ import annotations

import subprocess
import sys

import pytest
from confluent_kafka.admin import NewTopic

from streamguard.topics import admin
from tests.integration.harness import Broker, Stack

pytestmark = pytest.mark.integration


def _cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**stack.env(), "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, "-m", "streamguard.cli", "topics", *args], env=env, text=True, capture_output=True, timeout=120
    )


def test_create_is_idempotent(stack: Stack):
    assert stack.create_topics() == []  # the fixture created them all already
    result = _cli(stack, "create")
    assert result.returncode == 0, result.stderr
    assert "created" not in result.stdout
    assert "16 topics match" in result.stdout


def test_drift_is_reported_and_not_fixed(broker: Broker, tmp_path):
    stack = Stack(broker, tmp_path)
    client = admin.admin_client(broker.bootstrap)
    wrong = NewTopic(stack.topic("events.sms"), 2, 1, config={"retention.ms": "1000"})
    client.create_topics([wrong])["" + stack.topic("events.sms")].result()
    result = _cli(stack, "create")
    assert result.returncode == 0, "drift is reported, not fatal: the other topics were created"
    assert f"{stack.topic('events.sms')}: 2 partitions, defined with 6" in result.stderr
    assert "retention.ms=1000, defined as 604800000" in result.stderr
    check = _cli(stack, "check")
    assert check.returncode == 1 and "events.sms" in check.stderr
