"""`streamguard topics create` against the real broker: idempotent, and honest about drift."""

from __future__ import annotations

import subprocess
import sys

import pytest
from confluent_kafka.admin import NewTopic

from streamguard.settings import DEFAULT_SHARDS, Settings, load
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
    client = admin.admin_client(Settings(bootstrap=broker.bootstrap))
    wrong = NewTopic(stack.topic("events.sms"), 2, 1, config={"retention.ms": "1000"})
    client.create_topics([wrong])["" + stack.topic("events.sms")].result()
    result = _cli(stack, "create")
    assert result.returncode == 0, "drift is reported, not fatal: the other topics were created"
    assert f"{stack.topic('events.sms')}: 2 partitions, defined with 6" in result.stderr
    assert "retention.ms=1000, defined as 604800000" in result.stderr
    check = _cli(stack, "check")
    assert check.returncode == 1 and "events.sms" in check.stderr


def _partitions(stack: Stack, name: str) -> int:
    return len(admin.admin_client(load(stack.env())).list_topics(timeout=30).topics[stack.topic(name)].partitions)


def test_a_new_app_gets_the_shard_count_asked_for_and_keeps_it(broker: Broker, tmp_path):
    stack = Stack(broker, tmp_path)
    created = _cli(stack, "create", "--shards", "12")
    assert created.returncode == 0, created.stderr
    assert _partitions(stack, "sg.shards") == _partitions(stack, "sg.state-changelog") == 12
    again = _cli(stack, "create")  # STREAMGUARD_SHARDS=6 now: the app keeps its 12
    assert again.returncode == 0 and "drift" not in again.stderr, again.stderr
    assert "this app has 12 shards" in again.stdout and "16 topics match" in again.stdout
    assert _cli(stack, "check").returncode == 0


def test_without_a_count_a_new_app_gets_the_default(broker: Broker, tmp_path):
    stack = Stack(broker, tmp_path)
    env = {k: v for k, v in stack.env().items() if k != "STREAMGUARD_SHARDS"}
    result = subprocess.run(
        [sys.executable, "-m", "streamguard.cli", "topics", "create"],
        env={**env, "PATH": "/usr/bin:/bin"},
        text=True,
        capture_output=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert _partitions(stack, "sg.shards") == _partitions(stack, "sg.state-changelog") == DEFAULT_SHARDS


def test_a_shard_count_out_of_range_is_one_line(broker: Broker, tmp_path):
    result = _cli(Stack(broker, tmp_path), "create", "--shards", "0")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "streamguard: the shard count (STREAMGUARD_SHARDS) must be from 1 to 512, not 0"
    ]
