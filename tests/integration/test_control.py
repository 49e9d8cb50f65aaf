"""The control topics against the real broker: rulesets and lists change what workers decide, live."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable

import msgspec
import pytest

from streamguard.features.spec import load_features
from streamguard.rules.spec import default_path, load_ruleset
from tests.integration.harness import Stack, Worker

pytestmark = pytest.mark.integration


def _ruleset(version: int, **changes) -> bytes:
    doc = msgspec.to_builtins(load_ruleset(load_features(300_000)))
    return json.dumps({**doc, "version": version, **changes}).encode()


def _wait(check: Callable[[], bool], timeout: float = 15.0) -> float:
    """Seconds until `check()` holds."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if check():
            return time.monotonic() - started
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout} s")


def _cli(stack: Stack, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "streamguard.cli", *args], env={**os.environ, **stack.env()}, text=True,
        capture_output=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def _login(i: int, ip: str, run: str) -> tuple[str, bytes, bytes]:
    event = {"event_id": f"{run}-{i}", "type": "login", "ts": int(time.time() * 1000), "account_id": f"a{i}",
             "ip": ip, "success": True}  # fmt: skip
    return ("events.login", f"a{i}".encode(), json.dumps(event).encode())


def test_a_new_ruleset_reaches_every_worker_without_a_restart_and_a_bad_one_is_rejected(stack: Stack):
    workers = [stack.start_worker("w1"), stack.start_worker("w2")]
    stack.produce(_login(i, "36.0.0.1", "before") for i in range(30))
    reader = stack.reader()
    reader.read_until(30)
    assert {v["ruleset"] for v in reader.verdicts} == {"default@1"}

    toml = default_path().read_text().replace("version = 1\n", "version = 2\n")
    (stack.workdir / "v2.toml").write_text(toml)
    published = _cli(stack, "rules", "publish", str(stack.workdir / "v2.toml"))
    assert "default@2" in published
    for worker in workers:
        _wait(lambda w=worker: w.rules()["ruleset"] == "default@2")
    stack.produce([("control.rules", b"default", _ruleset(3, rule=[{"code": "x.y", "events": ["login"],
                   "score": 10, "when": [{"input": "no_such_feature", "op": ">=", "value": 1}]}])),
                   ("control.rules", b"default", _ruleset(2))])  # fmt: skip
    for worker in workers:
        _wait(lambda w=worker: len(w.rules()["rejected"]) == 2)
        status = worker.rules()
        assert status["ruleset"] == "default@2", "the ruleset in force stays"
        assert "no_such_feature" in status["rejected"][0]["error"]
        assert "not newer" in status["rejected"][1]["error"]
        assert "rejected" in worker.log.read_text()

    stack.produce(_login(i, "36.0.0.1", "after") for i in range(60))
    reader.read_until(90)
    after = [v for v in reader.verdicts if v["event_id"].startswith("after")]
    assert {v["ruleset"] for v in after} == {"default@2"}


def test_block_and_allow_entries_apply_within_seconds_and_can_be_removed(stack: Stack):
    worker: Worker = stack.start_worker()
    _cli(stack, "lists", "add", "block", "ip", "36.9.9.9", "--note", "ticket 42")
    stack.produce([("control.lists", b"block:galaxy:andromeda", b"")])
    _wait(lambda: worker.rules()["list_entries"] == 1 and len(worker.rules()["rejected"]) == 1)
    assert "<list>:<entity>:<value>" in worker.rules()["rejected"][0]["error"]

    stack.produce(_login(i, "36.9.9.9" if i % 2 else "36.9.9.8", "listed") for i in range(20))
    reader = stack.reader()
    reader.read_until(20)
    by_id = {v["event_id"]: v for v in reader.verdicts}
    for i in range(20):
        verdict = by_id[f"listed-{i}"]
        if i % 2:
            assert verdict["decision"] == "deny" and verdict["reasons"][0]["code"] == "list.block"
            assert "36.9.9.9" not in json.dumps(verdict)
        else:
            assert verdict["decision"] == "allow"

    stack.produce([("control.lists", b"block:ip:36.9.9.9", None)])
    _wait(lambda: worker.rules()["list_entries"] == 0)
    stack.produce(_login(i, "36.9.9.9", "unlisted") for i in range(5))
    reader.read_until(25)
    assert all(v["decision"] == "allow" for v in reader.verdicts if v["event_id"].startswith("unlisted"))
