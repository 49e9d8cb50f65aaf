"""`streamguard verify` against a real broker and worker: it passes a clean run and catches what breaks one."""

from __future__ import annotations

import json
import time
import uuid

import pytest
from confluent_kafka import Producer

from streamguard.features.spec import load_features
from streamguard.settings import load
from streamguard.verify import verify
from tests.integration.harness import Stack, make_events
from tests.integration.test_worker import BAD
from tests.verify_features import check_probe_features

pytestmark = pytest.mark.integration

PROBE_READS = ("ip", "ip_network", "device_id", "account_id")  # what the probes have; the edge event has none of it


def _edge_event() -> bytes:
    """A login 5 min 3 s ahead when sent: too far ahead for a worker reading it at once, fine 3 s later."""
    ts = int(time.time() * 1000) + 303_000
    event = {"event_id": "edge-1", "type": "login", "ts": ts, "account_id": "edge", "ip": "192.0.2.99", "success": True}
    return json.dumps(event).encode()


def _probes(n: int) -> list[tuple[str, bytes, bytes, str]]:
    """Refunds (they count in no feature) on entities of `make_events`, sent once the history is decided."""
    out = []
    for i in range(n):
        event_id = f"probe-{i}"
        value = {"event_id": event_id, "type": "transaction", "ts": int(time.time() * 1000), "amount": 0,
                 "currency": "CNY", "kind": "refund", "account_id": f"acct_{i}", "device_id": f"dev_{i}",
                 "ip": f"10.{i % 7}.{i % 11}.{1 + i}"}  # fmt: skip
        out.append(("events.transaction", b"p", json.dumps(value).encode(), event_id))
    return out


def _run_clean(stack: Stack) -> tuple[list, list]:
    """300 events, the bad messages of test_worker, 15 re-sent events and an edge case through one worker."""
    events = make_events(300, "verify")
    stack.produce((t, k, v) for t, k, v, _ in events)
    stack.produce(("events.login", b"bad-%d" % i, raw) for i, (raw, _) in enumerate(BAD))
    stack.produce((t, k, v) for t, k, v, _ in events[:15])
    stack.produce([("events.login", b"edge", _edge_event())])
    worker = stack.start_worker()
    reader = stack.reader()
    reader.read_until(len(events), len(BAD))
    probes = _probes(8)  # stamped after every event of the history
    stack.produce((t, k, v) for t, k, v, _ in probes)
    reader.read_until(len(events) + len(probes), len(BAD))
    assert worker.terminate() == 0
    reader.close()
    return events, probes


def test_verify_passes_a_clean_run_and_fails_on_an_extra_verdict_and_an_open_transaction(feature_stack: Stack):
    stack = feature_stack
    events, probes = _run_clean(stack)
    settings = load(stack.env())

    report = verify(settings, [stack.workdir / "w1"])
    assert report.passed, report.format()
    assert [c.status for c in report.checks] == ["PASS"] * 6, report.format()
    v1, v2, v6 = report["V1"], report["V2"], report["V6"]
    assert v1.counts["valid records"] == len(events) + 15 + len(probes) and v1.counts["either"] == 1
    assert v1.counts["verdicts"] == v1.counts["distinct valid ids"] in (len(events) + len(probes) + i for i in (0, 1))
    assert v2.counts["invalid records"] == len(BAD) and v2.counts["dead letters"] in (len(BAD), len(BAD) + 1)
    assert v6.counts["shards"] == 6 and v6.counts["entities"] > 0
    specs = [s for s in load_features(settings.allowed_lateness_ms) if s.entity in PROBE_READS]
    v5 = check_probe_features(settings, [p[3] for p in probes], specs)
    assert v5.passed and v5.counts["values compared"] == len(probes) * len(specs), v5.format()

    fake = Producer({"bootstrap.servers": stack.broker.bootstrap})
    repeated = json.loads(events[1][2])["event_id"]  # a login
    for event_id in (repeated, "ghost-1"):
        verdict = {"event_id": event_id, "type": "login", "decision": "allow", "score": 0, "reasons": []}
        fake.produce(stack.topic("verdicts.login"), json.dumps(verdict).encode(), event_id.encode())
    assert fake.flush(30) == 0
    report = verify(settings, [stack.workdir / "w1"])
    assert report["V1"].status == "FAIL" and report["V3"].passed
    assert report["V1"].samples == {"repeated": [repeated], "unexpected": ["ghost-1"]}, report.format()

    txn = Producer({"bootstrap.servers": stack.broker.bootstrap, "transactional.id": f"verify-{uuid.uuid4()}"})
    txn.init_transactions(30)
    txn.begin_transaction()
    txn.produce(stack.topic("verdicts.sms"), b"{}", b"open", partition=2)
    assert txn.flush(30) == 0
    try:
        v3 = verify(settings)["V3"]
        assert v3.status == "FAIL" and v3.counts["open transactions"] == 1
        assert v3.samples["open transactions"][0].startswith(stack.topic("verdicts.sms") + "[2] stable ")
    finally:
        txn.abort_transaction(30)
    assert verify(settings)["V3"].passed


def test_verify_passes_after_two_workers_one_leaving_mid_stream(stack: Stack):
    """Shards records between workers end their partitions with commit markers (V4 allows them); V6 restores all."""
    events = make_events(2000, "verify2")
    one, two = stack.start_worker("w1"), stack.start_worker("w2")
    stack.produce((t, k, v) for t, k, v, _ in events[:1000])
    time.sleep(1.0)
    assert one.terminate() == 0  # its shards move to w2, whose stores replay them from the changelog
    stack.produce((t, k, v) for t, k, v, _ in events[1000:])
    reader = stack.reader()
    reader.read_until(len(events), settle=1)
    assert two.terminate() == 0
    report = verify(load(stack.env()), [stack.workdir / "w1", stack.workdir / "w2"])
    assert report.passed and report["V6"].counts["shards"] == 6, report.format()
    assert report["V4"].counts["partitions"] == 36
