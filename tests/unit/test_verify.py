"""The verifier's checks on lists of fake records: no broker, no worker."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rocksdict import Cache

from streamguard import cli
from streamguard.errors import BrokerError
from streamguard.state import keys
from streamguard.state.store import PartitionStore, StoreOptions, encode_changes
from streamguard.verify import Check, Record, Report, classify
from streamguard.verify.offsets import check_group_offsets, check_open_transactions
from streamguard.verify.outputs import check_deadletters, check_verdicts, dead_letter_sources
from streamguard.verify.state import Replay, check_parked, check_stores, newest_store

NOW = 1_800_000_000_000
FIVE_MIN = 300_000
LOGIN, SMS = "p-events.login", "p-events.sms"
TYPE_OF = {LOGIN: "login", SMS: "sms"}
VERDICT_TYPE = {"p-verdicts.login": "login", "p-verdicts.sms": "sms"}


def login(event_id: str, ts: int = NOW) -> bytes:
    fields = {"event_id": event_id, "type": "login", "ts": ts, "account_id": "a", "ip": "10.0.0.1", "success": True}
    return json.dumps(fields).encode()


class Topic:
    """Appends records to one partition of a fake topic, offsets counting up."""

    def __init__(self, name: str, partition: int = 0) -> None:
        self.name, self.partition, self.records = name, partition, []

    def add(self, value: bytes | None, key: bytes | None = b"k", ts: int | None = NOW, headers=()) -> Record:
        record = Record(self.name, self.partition, len(self.records), key, value, ts, tuple(headers))
        self.records.append(record)
        return record


def verdict_for(event_id: str, topic: str = "p-verdicts.login", key: bytes | None = None) -> Record:
    value = json.dumps({"event_id": event_id, "type": "login", "decision": "allow"}).encode()
    return Record(topic, 0, 0, event_id.encode() if key is None else key, value)


def dead_letter_for(original: Record, value: bytes | None = None) -> Record:
    headers = (
        ("sg-error", b"schema"),
        ("sg-source-topic", original.topic.encode()),
        ("sg-source-partition", str(original.partition).encode()),
        ("sg-source-offset", str(original.offset).encode()),
    )
    return Record("p-deadletter", 0, 0, original.key, original.value if value is None else value, NOW, headers)


def run_v1_v2(inputs: list[Record], verdicts: list[Record], deadletters: list[Record], now: int = NOW):
    classified = classify(inputs, TYPE_OF, now)
    dead, unnamed = dead_letter_sources(deadletters)
    return check_verdicts(classified, verdicts, dead, VERDICT_TYPE), check_deadletters(classified, dead, unnamed)


# --- classification ---------------------------------------------------------


def test_records_are_classified_at_their_broker_time_and_now():
    topic = Topic(LOGIN)
    valid = topic.add(login("v"))
    bad = topic.add(b"{oops")
    edge = topic.add(login("edge", ts=NOW + FIVE_MIN + 1_000))  # too far ahead when sent, not a minute later
    unstamped = topic.add(login("u", ts=NOW + FIVE_MIN + 1_000), ts=None)  # judged at now only
    kinds = {c.record.offset: (c.kind, c.event_id) for c in classify(topic.records, TYPE_OF, NOW + 60_000)}
    assert kinds == {
        valid.offset: ("valid", "v"),
        bad.offset: ("invalid", None),
        edge.offset: ("either", "edge"),
        unstamped.offset: ("valid", "u"),
    }


# --- V1 and V2 --------------------------------------------------------------


def test_exactly_once_passes_with_duplicates_bad_input_and_a_tombstone():
    logins, sms = Topic(LOGIN), Topic(SMS)
    inputs = [logins.add(login("a")), logins.add(login("b")), logins.add(login("a"))]  # "a" is re-sent
    inputs += [sms.add(login("c"), key=None), logins.add(None), logins.add(b"", key=None)]  # mismatch, tombstones
    v1, v2 = run_v1_v2(inputs, [verdict_for("a"), verdict_for("b")], [dead_letter_for(r) for r in inputs[3:]])
    assert v1.passed and v2.passed, (v1.format(), v2.format())
    assert v1.counts["valid records"] == 3 and v1.counts["distinct valid ids"] == 2
    assert v2.counts["invalid records"] == 3 and v2.counts["dead letters"] == 3


def test_v1_reports_missing_repeated_unexpected_and_misplaced_verdicts():
    topic = Topic(LOGIN)
    inputs = [topic.add(login(i)) for i in ("a", "b", "c", "d")]
    verdicts = [verdict_for("a"), verdict_for("a"), verdict_for("b"), verdict_for("ghost")]
    verdicts += [verdict_for("c", key=b"other"), verdict_for("d", topic="p-verdicts.sms")]
    verdicts.append(Record("p-verdicts.login", 0, 9, b"x", b"not json"))
    v1, _ = run_v1_v2(inputs, verdicts, [])
    assert v1.status == "FAIL"
    assert v1.samples == {"repeated": ["a"], "unexpected": ["ghost"], "unreadable": ["p-verdicts.login[0]@9"],
                          "misplaced": ["c", "d"]}  # fmt: skip
    assert v1.counts["missing"] == 0
    v1, _ = run_v1_v2(inputs, [verdict_for("a")], [])
    assert v1.samples["missing"] == ["b", "c", "d"] and v1.counts["missing"] == 3


def test_an_edge_record_may_get_a_verdict_or_a_dead_letter_but_not_both_and_not_neither():
    topic = Topic(LOGIN)
    edge = topic.add(login("edge", ts=NOW + FIVE_MIN + 1_000))
    later = NOW + 60_000
    for verdicts, deadletters in (([verdict_for("edge")], []), ([], [dead_letter_for(edge)])):
        v1, v2 = run_v1_v2([edge], verdicts, deadletters, now=later)
        assert v1.passed and v2.passed and v1.counts["either"] == 1
    v1, _ = run_v1_v2([edge], [verdict_for("edge")], [dead_letter_for(edge)], now=later)
    assert v1.samples["unexpected"] == ["edge"]
    v1, _ = run_v1_v2([edge], [], [], now=later)
    assert v1.samples["missing"] == ["edge"]


def test_an_edge_copy_of_a_valid_event_owes_no_verdict_of_its_own():
    topic = Topic(LOGIN)
    inputs = [topic.add(login("x")), topic.add(login("x", ts=NOW + FIVE_MIN + 1_000))]
    for deadletters in ([], [dead_letter_for(inputs[1])]):
        v1, v2 = run_v1_v2(inputs, [verdict_for("x")], deadletters, now=NOW + 60_000)
        assert v1.passed and v2.passed


def test_v2_reports_missing_repeated_altered_unexpected_and_unattributable_dead_letters():
    topic = Topic(LOGIN)
    valid, bad1, bad2, bad3 = topic.add(login("v")), topic.add(b"{1"), topic.add(b"{2"), topic.add(b"{3")
    ghost = Record(LOGIN, 5, 77, b"k", b"{?")
    deadletters = [dead_letter_for(bad1), dead_letter_for(bad1), dead_letter_for(bad2, value=b"{changed")]
    deadletters += [dead_letter_for(valid), dead_letter_for(ghost), Record("p-deadletter", 0, 4, b"k", b"{3")]
    _, v2 = run_v1_v2([valid, bad1, bad2, bad3], [verdict_for("v")], deadletters)
    assert v2.status == "FAIL"
    assert v2.samples == {
        "missing": [f"{LOGIN}[0]@3"],
        "repeated": [f"{LOGIN}[0]@1"],
        "unexpected": [f"{LOGIN}[0]@0", f"{LOGIN}[5]@77"],
        "altered": [f"{LOGIN}[0]@2"],
        "no source headers": ["p-deadletter[0]@4"],
    }


def test_a_dead_letter_with_another_key_is_altered():
    topic = Topic(LOGIN)
    bad = topic.add(b"{1", key=b"original")
    letter = dead_letter_for(bad)
    _, v2 = run_v1_v2([bad], [], [Record(letter.topic, 0, 0, b"other", letter.value, None, letter.headers)])
    assert v2.samples == {"altered": [f"{LOGIN}[0]@0"]}


# --- V3 and V4 --------------------------------------------------------------


def test_v3_fails_where_the_stable_offset_is_behind_the_end():
    assert check_open_transactions({("v", 0): 10, ("v", 1): 0}, {("v", 0): 10, ("v", 1): 0}).passed
    check = check_open_transactions({("v", 0): 4, ("v", 1): 0}, {("v", 0): 10, ("v", 1): 0})
    assert check.status == "FAIL" and check.samples == {"open transactions": ["v[0] stable 4 < end 10"]}


def test_v4_allows_a_trailing_commit_marker_but_not_unread_records():
    end = {("in", 0): 10, ("in", 1): 0, ("shards", 0): 6, ("shards", 1): 3}
    committed: dict = {("in", 0): 10, ("in", 1): None, ("shards", 0): 5, ("shards", 1): None}
    check = check_group_offsets(committed, end, {})  # markers only after 5 and in shards[1]
    assert check.passed, check.format()
    check = check_group_offsets(committed | {("in", 0): 8}, end, {("in", 0): 2, ("shards", 1): 1})
    assert check.samples == {
        "behind": ["in[0] committed 8, 2 records unread"],
        "never committed": ["shards[1] nothing committed, 1 records unread"],
    }
    assert check_group_offsets({("in", 0): 11}, {("in", 0): 10}, {}).samples == {
        "ahead of the end": ["in[0] committed 11 > end 10"]
    }


# --- V6 and V7 --------------------------------------------------------------


def changes(**kv: bytes | None) -> bytes:
    return encode_changes({k.encode(): v for k, v in kv.items()}, 1 << 20)[0]


def replay(shard: int, checkpoint: int | None, records: list[tuple[int, bytes | None]], start: int = 0) -> Replay:
    rebuilt = Replay(shard, start, checkpoint)
    for offset, value in records:
        rebuilt.feed(offset, value)
    return rebuilt


@pytest.fixture
def make_store(tmp_path: Path):
    """A real shard store in `<data dir>/state/shard-N`, written the way a worker writes it."""
    opened: list[PartitionStore] = []
    cache = Cache(1 << 20)

    def make(data_dir: str, shard: int, writes: dict[bytes, bytes | None], checkpoint: int) -> Path:
        store = PartitionStore(tmp_path / data_dir / "state" / f"shard-{shard}", StoreOptions().to_options(cache))
        store.apply(writes, checkpoint)
        store.close()
        opened.append(store)
        return tmp_path / data_dir

    return make


def test_replay_keeps_the_state_as_of_the_checkpoint_and_applies_deletes():
    records = [(0, changes(a=b"1", b=b"2")), (2, changes(a=None)), (4, None), (5, changes(c=b"3"))]
    rebuilt = replay(0, 2, records)
    assert rebuilt.at_checkpoint == {b"b": b"2"}
    assert rebuilt.state == {b"b": b"2", b"c": b"3"} and rebuilt.last_offset == 5 and rebuilt.records == 4
    assert replay(0, None, records).at_checkpoint == {}


def test_v6_compares_the_newest_store_with_the_replay(make_store):
    old = make_store("w1", 0, {b"a": b"1"}, 0)  # the shard moved from w1 to w2
    new = make_store("w2", 0, {b"a": b"1", b"b": b"2"}, 2)
    make_store("w2", 1, {b"x": b"9"}, 0)
    store0, store1 = newest_store([old, new], 0), newest_store([old, new], 1)
    assert store0 is not None and store0.path.parent.parent == new and store0.checkpoint == 2
    assert store0.contents == {b"a": b"1", b"b": b"2"}, "the checkpoint key is left out"
    shard0 = [(0, changes(a=b"1")), (2, changes(b=b"2"))]
    good = check_stores([replay(0, 2, shard0), replay(1, 0, [(0, changes(x=b"9"))])], {0: store0, 1: store1})
    assert good.passed and good.counts["compared"] == 2 and not good.notes, good.format()
    bad = check_stores([replay(0, 2, shard0[:1] + [(2, changes(b=b"3"))])], {0: store0})
    assert bad.samples == {"differing keys": [f"shard 0: {b'b'.hex()} (value)"]}
    lost = check_stores([replay(0, 2, [shard0[0], (1, changes(c=b"4")), shard0[1]])], {0: store0})
    assert lost.samples == {"differing keys": [f"shard 0: {b'c'.hex()} (not in the store)"]}


def test_v6_notes_a_store_behind_and_fails_one_ahead_or_missing(make_store):
    store = newest_store([make_store("w1", 0, {b"a": b"1"}, 0)], 0)
    records = [(0, changes(a=b"1")), (2, changes(b=b"2"))]
    behind = check_stores([replay(0, 0, records)], {0: store})
    assert behind.passed and "behind its changelog" in behind.notes[0]
    ahead = check_stores([replay(0, 0, [])], {0: store})
    assert ahead.samples["checkpoint ahead"] == ["shard 0: checkpoint 0, last committed record None"]
    missing = check_stores([replay(0, None, records), replay(1, None, [])], {0: None, 1: None})
    assert missing.samples == {"no store": ["shard 0: 2 changelog records"]}
    skipped = check_stores([replay(0, None, [], start=100)], {0: None})
    assert skipped.passed and "skipped" in skipped.notes[0]


def test_v7_fails_on_a_parked_event_in_the_rebuilt_state():
    parked = keys.pending(b"\x01" * 16)
    assert check_parked([replay(0, None, [(0, changes(a=b"1"))])]).passed
    value = encode_changes({parked: b"event", b"\x03e": b"w"}, 1 << 20)[0]
    check = check_parked([replay(0, None, [(0, value)]), replay(1, None, [], start=3)])
    assert check.samples == {"parked events": [f"shard 0: {parked[:16].hex()}"]} and "skipped" in check.notes[0]


# --- the report and the command ---------------------------------------------


def test_the_report_prints_each_check_and_fails_if_one_does():
    ok = Check.of("V1", "one verdict per valid event", {"verdicts": 3}, {"missing": []})
    bad = Check.of("V3", "no transaction left open", {}, {"open transactions": ["v[0] stable 1 < end 2"]})
    report = Report([ok, Check.skipped("V6", "state", "no data directory given"), bad])
    assert not report.passed and report["V6"].passed and report["V3"].status == "FAIL"
    text = report.format()
    assert "PASS  V1 one verdict per valid event\n      verdicts 3, missing 0" in text
    assert "FAIL  V3" in text and "open transactions: v[0] stable 1 < end 2" in text
    assert text.endswith("FAILED: V3")


def test_the_verify_command_exits_1_on_a_failed_check_and_prints_one_line_on_a_broker_error(monkeypatch, capsys):
    import streamguard.verify as verify_module

    report = Report([Check.of("V1", "t", {}, {"missing": ["a"]})])
    monkeypatch.setattr(verify_module, "verify", lambda settings, data_dirs: report)
    assert cli.main(["verify", "--data-dir", "."]) == 1
    assert "FAIL  V1 t" in capsys.readouterr().out
    monkeypatch.setattr(verify_module, "verify", lambda settings, data_dirs: Report([]))
    assert cli.main(["verify"]) == 0

    def unreachable(settings, data_dirs):
        raise BrokerError("cannot reach the Kafka broker at 127.0.0.1:1")

    monkeypatch.setattr(verify_module, "verify", unreachable)
    assert cli.main(["verify", "--bootstrap", "127.0.0.1:1"]) == 1
    assert capsys.readouterr().err == "streamguard: cannot reach the Kafka broker at 127.0.0.1:1\n"


def _letter(original: Record, code: str, value: bytes | None, extra: tuple = ()) -> Record:
    headers = (
        ("sg-error", code.encode()),
        ("sg-source-topic", original.topic.encode()),
        ("sg-source-partition", str(original.partition).encode()),
        ("sg-source-offset", str(original.offset).encode()),
        *extra,
    )
    return Record("p-deadletter", 0, 0, original.key, value, NOW, headers)


def test_a_processing_error_dead_letter_stands_for_the_verdict_of_its_valid_event():
    topic = Topic(LOGIN)
    original = topic.add(login("boom"))
    letter = _letter(original, "processing_error", b'{"event_id": "boom"}')
    inputs = classify(topic.records, TYPE_OF, NOW)
    dead, unnamed = dead_letter_sources([letter])
    assert check_verdicts(inputs, [], dead, VERDICT_TYPE).passed
    assert check_deadletters(inputs, dead, unnamed).passed
    assert not check_verdicts(inputs, [verdict_for("boom")], dead, VERDICT_TYPE).passed  # and not both


def test_a_truncated_dead_letter_keeps_the_start_and_says_the_length():
    topic = Topic(LOGIN)
    original = topic.add(b"{not json" + b"x" * 100)
    length = (("sg-truncated", str(len(original.value)).encode()),)
    inputs = classify(topic.records, TYPE_OF, NOW)
    kept = _letter(original, "invalid_json", original.value[:20], length)
    wrong = _letter(original, "invalid_json", b"x" * 20, length)
    assert check_deadletters(inputs, *dead_letter_sources([kept])).passed
    assert not check_deadletters(inputs, *dead_letter_sources([wrong])).passed
