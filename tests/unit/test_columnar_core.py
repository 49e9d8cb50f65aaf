"""The batch core end to end, without Kafka: the same verdicts as the item-by-item pipeline it replaces."""

from __future__ import annotations

import json
import random
from pathlib import Path

import msgspec

from streamguard.bench.core import bench_core, demo_records
from streamguard.codec import decode_event, encode_verdict
from streamguard.columnar.core import BatchCore
from streamguard.columnar.hashing import ColumnHashes
from streamguard.demo.traffic import DemoTraffic
from streamguard.entities import EntityKind
from streamguard.errors import InvalidEvent
from streamguard.events import LoginEvent, SmsEvent, Verdict
from streamguard.features.spec import load_features
from streamguard.pipeline.records import Incoming
from streamguard.rules.program import Program
from streamguard.rules.spec import Condition, Decision, Rule, Ruleset, load_ruleset
from streamguard.settings import Settings
from streamguard.verdicts import Detector
from tests.item_pipeline import ItemPipeline
from tests.local import LATENESS_MS, NAMES

T0 = 1_790_000_000_000
HASHES = ColumnHashes(b"columnar-core-test-key")


SPECS = load_features(LATENESS_MS)


def _core(features_topic: str | None = None, detector: Detector | None = None) -> BatchCore:
    detector = detector or Detector(Program(load_ruleset(SPECS), SPECS), HASHES)
    return BatchCore(NAMES, SPECS, detector, HASHES, LATENESS_MS, 6 * 3_600_000, features_topic)


def _traffic(n: int) -> list[Incoming]:
    """Demo traffic (attacks, malformed and re-sent messages among it), one event every 20 ms of event time."""
    traffic = DemoTraffic(seed=5, run="core")
    records = []
    for i in range(n):
        message = traffic.next_message(T0 + 20 * i)
        records.append(Incoming(NAMES.inputs[message.topic.split(".")[-1]], i % 3, i, message.key, message.value))
    return records


def _decoded(outs: list) -> dict[str, dict]:
    return {json.loads(o.value)["event_id"]: json.loads(o.value) for o in outs if o.topic in NAMES.verdicts.values()}


def test_verdicts_equal_the_item_pipeline_on_demo_traffic(tmp_path: Path):
    records = _traffic(4000)
    now = T0 + 20 * len(records)
    core, got, dead = _core(), {}, 0
    rng = random.Random(1)
    i = 0
    while i < len(records):
        size = rng.choice([1, 40, 500, 2000])
        output = core.process(records[i : i + size], now)
        got |= _decoded(output.outs)
        dead += sum(1 for o in output.outs if o.topic == NAMES.deadletter)
        i += size
    pipeline = ItemPipeline(tmp_path, features_topic=False)
    expected = {}
    try:
        for record in records:
            try:
                event = decode_event(record.value, NAMES.input_type()[record.topic], now)
            except InvalidEvent:
                continue
            verdict = pipeline.run(event, now)
            if verdict:
                expected[event.event_id] = verdict
    finally:
        pipeline.close()
    assert set(got) == set(expected) and dead > 0
    flagged = 0
    for event_id, verdict in expected.items():
        mine = got[event_id]
        assert (mine["decision"], mine["score"]) == (verdict["decision"], verdict["score"]), event_id
        assert [r["code"] for r in mine["reasons"]] == [r["code"] for r in verdict["reasons"]], event_id
        flagged += mine["decision"] != "allow"
    assert flagged > 50


def test_an_allow_verdict_from_the_template_is_what_the_encoder_writes():
    core = _core()
    event = LoginEvent(event_id='quote"d', ts=T0, account_id="a", ip="10.0.0.1", success=True)
    (verdict,) = core.process([Incoming(NAMES.inputs["login"], 0, 0, None, msgspec.json.encode(event))], T0 + 5).outs
    label = load_ruleset(SPECS).label
    expected = Verdict(event_id=event.event_id, type="login", ts=event.ts, decision="allow", score=0, reasons=[],
                       ruleset=label, decided_at=T0 + 5)  # fmt: skip
    assert verdict.value == encode_verdict(expected) and verdict.key == b'quote"d'


def test_a_blocked_entity_gets_a_block_reason_and_a_re_sent_event_nothing():
    detector = Detector(Program(load_ruleset(SPECS), SPECS), HASHES)
    core = _core(detector=detector)
    detector.lists.apply(b"block:ip:10.6.6.6", b"", T0)  # the lists hash values as the features do
    event = LoginEvent(event_id="b1", ts=T0, account_id="a", ip="10.6.6.6", success=True)
    record = Incoming(NAMES.inputs["login"], 0, 0, None, msgspec.json.encode(event))
    (verdict,) = core.process([record], T0).outs
    assert [r["code"] for r in json.loads(verdict.value)["reasons"]] == ["list.block"]
    again = core.process([record], T0)
    assert again.outs == [] and again.duplicates == 1


def test_the_features_topic_gets_every_value_of_the_events_entities():
    core = _core("features")
    event = LoginEvent(event_id="f1", ts=T0, account_id="a", ip="10.0.0.1", success=False)
    outs = core.process([Incoming(NAMES.inputs["login"], 0, 0, None, msgspec.json.encode(event))], T0).outs
    (record,) = [json.loads(o.value) for o in outs if o.topic == "features"]
    assert record["features"]["login_failures_by_ip_10m"] == 1.0
    assert not any(name.endswith("_by_phone_10m") for name in record["features"])  # a login has no phone


def test_bench_core_measures_the_demo_mix_offline():
    settings = Settings(hash_key="bench-core-test-key-0123")
    records = demo_records(settings, 3000, 2, T0)
    figures = bench_core(settings, records, 500, T0)
    assert figures.records == 3000 and figures.verdicts + figures.dead_letters + figures.duplicates == 3000
    assert figures.dead_letters > 0 and figures.entities > 100
    assert figures.restore_entities_per_s > 0 and 0 < figures.packed_bytes_per_entity < figures.state_bytes_per_entity


def test_a_ruleset_put_in_force_reads_the_features_its_rules_need():
    detector = Detector(Program(load_ruleset(SPECS), SPECS), HASHES)
    core = _core(detector=detector)
    login = LoginEvent(event_id="r0", ts=T0, account_id="a", ip="10.0.0.1", success=False)
    core.process([Incoming(NAMES.inputs["login"], 0, 0, None, msgspec.json.encode(login))], T0)
    ruleset = Ruleset(
        name="strict", version=1, decision=Decision(100, 500, 900),
        rule=[Rule(code="sms.after_failures", events=["sms"], score=600,
                   when=[Condition("login_failures_by_ip_10m", ">=", 1)])],
    )  # fmt: skip
    detector.program = Program(ruleset, SPECS)
    sms = SmsEvent(event_id="r1", ts=T0 + 1000, phone="+8613800001234", ip="10.0.0.1")
    (verdict,) = core.process([Incoming(NAMES.inputs["sms"], 0, 1, None, msgspec.json.encode(sms))], T0).outs
    assert [r["code"] for r in json.loads(verdict.value)["reasons"]] == ["sms.after_failures"]


def test_an_event_whose_columns_raise_goes_to_the_dead_letters_and_the_others_on(monkeypatch):
    core = _core()
    good = LoginEvent(event_id="g", ts=T0, account_id="a", ip="10.0.0.1", success=True)
    bad = LoginEvent(event_id="b", ts=T0, account_id="a", ip="10.0.0.2", success=True)
    real = EntityKind.values

    def values(kind: EntityKind, events: list, sources: dict) -> list:
        if any(e.event_id == "b" for e in events):
            raise RuntimeError("a defect")
        return real(kind, events, sources)

    monkeypatch.setattr(EntityKind, "values", values)
    records = [Incoming(NAMES.inputs["login"], 0, i, None, msgspec.json.encode(e)) for i, e in enumerate([good, bad])]
    invalid = Incoming(NAMES.inputs["login"], 0, 2, None, b"{not json")
    output = core.process([*records, invalid], T0)
    assert output.processing_errors == 1
    (verdict,) = [o for o in output.outs if o.topic == NAMES.verdicts["login"]]
    dead = [o.value for o in output.outs if o.topic == NAMES.deadletter]
    assert json.loads(verdict.value)["event_id"] == "g" and sorted(dead) == sorted([records[1].value, invalid.value])
