"""The event-time merge of input partitions (pure logic; the engine's use of it runs on a broker)."""

from __future__ import annotations

import json
import random
import time

from streamguard.pipeline.align import Aligner, event_ts
from streamguard.pipeline.records import Incoming, first_offsets

NOW = int(time.time() * 1000)
INPUTS = {"events.login", "events.device"}


def _record(topic: str, partition: int, offset: int, ts: int) -> Incoming:
    return Incoming(topic, partition, offset, None, json.dumps({"ts": ts}).encode())


def _partitions(n_events: int, seed: int) -> dict[tuple[str, int], list[Incoming]]:
    rng = random.Random(seed)
    parts: dict[tuple[str, int], list[Incoming]] = {}
    for ts in range(NOW - n_events * 1000, NOW, 1000):
        key = (rng.choice(sorted(INPUTS)), rng.randrange(3))
        parts.setdefault(key, []).append(_record(*key, len(parts.get(key, [])), ts))
    return parts


def test_partitions_fetched_unevenly_come_out_in_event_time_and_as_prefixes():
    parts = _partitions(3000, seed=1)
    fetched = dict.fromkeys(parts, 0)
    aligner = Aligner(INPUTS, lambda p: fetched[p] < len(parts[p]), idle_ms=10_000, burst_hold_ms=0)
    aligner.assign(list(parts))
    rng, out = random.Random(2), []
    while any(fetched[p] < len(parts[p]) for p in parts) or len(aligner):
        p = rng.choice(list(parts))
        chunk = parts[p][fetched[p] : fetched[p] + rng.randrange(1, 300)]
        fetched[p] += len(chunk)
        aligner.add(chunk)
        out += aligner.release(500, 10**12)
    times = [event_ts(r.value, NOW) for r in out]
    assert times == sorted(times) and len(out) == 3000
    for p, records in parts.items():
        assert [r.offset for r in out if (r.topic, r.partition) == p] == [r.offset for r in records]


def test_a_lagging_partition_holds_the_merge_back_only_for_a_while():
    lagging = {("events.login", 0)}
    aligner = Aligner(INPUTS, lambda p: p in lagging, idle_ms=200, burst_hold_ms=0)
    aligner.assign([("events.login", 0), ("events.device", 0)])
    started = time.monotonic()
    aligner.add([_record("events.device", 0, 0, NOW - 5000)])
    released = aligner.release(100, 10**12)
    while not released:  # the engine's loop: poll (nothing from the lagging partition), release
        time.sleep(0.02)
        aligner.add([])
        released = aligner.release(100, 10**12)
    assert 0.2 <= time.monotonic() - started < 1.0


def test_records_without_a_usable_ts_at_the_head_and_internal_records_pass_at_once():
    aligner = Aligner(INPUTS, lambda p: True, idle_ms=10_000, burst_hold_ms=0)
    aligner.assign([("events.login", 0)])
    odd = [
        Incoming("events.login", 0, 0, None, b"{not json"),
        Incoming("events.login", 0, 1, None, json.dumps({"ts": NOW + 86_400_000}).encode()),  # far future: invalid
        Incoming("sg.shards", 0, 0, None, b"\x93"),
    ]
    aligner.add(odd)
    assert sorted(aligner.release(100, 10**12), key=lambda r: r.topic) == odd


def test_after_a_quiet_spell_the_merge_waits_for_the_first_fetches():
    aligner = Aligner(INPUTS, lambda p: False, idle_ms=0, burst_hold_ms=50)
    aligner.assign([("events.login", 0)])
    aligner.add([_record("events.login", 0, 0, NOW - 1000)])
    assert aligner.release(10, 10**12) == []
    time.sleep(0.06)
    assert len(aligner.release(10, 10**12)) == 1


def test_after_a_quiet_spell_the_merge_waits_only_until_every_partition_end_is_known():
    known = {("events.login", 0): True, ("events.device", 0): False}
    aligner = Aligner(INPUTS, lambda p: False, idle_ms=0, burst_hold_ms=10_000, end_known=lambda p: known[p])
    aligner.assign(list(known))
    aligner.add([_record("events.login", 0, 0, NOW - 1000)])
    assert aligner.release(10, 10**12) == [], "the device partition's end is not known yet"
    known[("events.device", 0)] = True  # its first fetch answered: nothing there
    assert len(aligner.release(10, 10**12)) == 1
    time.sleep(1.1)  # another quiet spell, every end known: no wait at all
    aligner.add([_record("events.login", 0, 1, NOW - 900)])
    assert len(aligner.release(10, 10**12)) == 1


def test_unreleased_records_are_given_back_and_forgotten():
    aligner = Aligner(INPUTS, lambda p: True, idle_ms=10_000, burst_hold_ms=0)
    aligner.assign([("events.login", 0), ("events.device", 1)])
    aligner.add([_record("events.login", 0, 7, NOW - 10), _record("events.login", 0, 8, NOW - 5)])
    aligner.add([_record("events.device", 1, 3, NOW - 1)])
    assert first_offsets(aligner.unreleased()) == {("events.login", 0): 7, ("events.device", 1): 3}
    assert len(aligner) == 0


def test_caught_up_means_nothing_buffered_and_nothing_more_at_the_broker():
    more = {("events.login", 0): True}
    aligner = Aligner(INPUTS, lambda p: more[p], idle_ms=0, burst_hold_ms=0)
    aligner.assign([("events.login", 0)])
    assert not aligner.caught_up()
    more[("events.login", 0)] = False
    aligner.add([_record("events.login", 0, 0, NOW - 1000)])
    assert not aligner.caught_up()
    aligner.release(10, 10**12)
    assert aligner.caught_up() and aligner.released_ts == NOW - 1000


def test_a_record_ahead_of_its_partition_goes_where_it_arrived_instead_of_holding_the_partition_back():
    aligner = Aligner(INPUTS, lambda p: False, idle_ms=10_000, burst_hold_ms=0)
    aligner.assign([("events.login", 0), ("events.device", 0)])
    start = NOW - 3_600_000
    skewed = _record("events.login", 0, 0, NOW)  # a clock an hour ahead, or a made-up time
    logins = [_record("events.login", 0, i, start + i * 1000) for i in range(1, 4)]
    devices = [_record("events.device", 0, i, start + i * 1000 + 500) for i in range(3)]
    aligner.add([skewed, *logins, *devices])
    out = aligner.release(100, 60_000)
    assert out[0] is skewed, "released at once, where it arrived"
    assert [event_ts(r.value, NOW) for r in out[1:]] == sorted(event_ts(r.value, NOW) for r in [*logins, *devices])


def test_a_late_record_does_not_let_the_records_before_it_jump_ahead():
    aligner = Aligner(INPUTS, lambda p: False, idle_ms=10_000, burst_hold_ms=0)
    aligner.assign([("events.login", 0), ("events.device", 0)])
    start = NOW - 3_600_000
    logins = [_record("events.login", 0, 0, start + 10_000), _record("events.login", 0, 1, start - 600_000),
              _record("events.login", 0, 2, start + 11_000)]  # fmt: skip
    devices = [_record("events.device", 0, i, start + i * 1000) for i in range(1, 12)]
    aligner.add([*logins, *devices])
    out = aligner.release(100, 60_000)
    position = {id(r): i for i, r in enumerate(out)}
    assert position[id(logins[0])] > position[id(devices[8])], "its ts comes after the device reports before it"
    assert position[id(logins[1])] == position[id(logins[0])] + 1, "the late one goes right after, at once"


def test_an_invalid_record_waits_behind_the_held_records_of_its_partition():
    """Released offsets stay a prefix per partition, so a commit never passes a record still held."""
    lagging = {("events.device", 0)}
    aligner = Aligner(INPUTS, lambda p: p in lagging, idle_ms=10_000, burst_hold_ms=0)
    aligner.assign([("events.login", 0), ("events.device", 0)])
    aligner.add([_record("events.device", 0, 0, NOW - 9000)])
    assert aligner.release(100, 10**12)  # the device partition gave its first record, and lags
    held = _record("events.login", 0, 0, NOW - 5000)  # newer than what the lagging partition gave
    invalid = Incoming("events.login", 0, 1, None, b"{not json")
    far_ahead = _record("events.login", 0, 2, NOW + 3_600_000)
    aligner.add([held, invalid, far_ahead])
    assert aligner.release(100, 10**12) == []
    assert first_offsets(aligner.unreleased()) == {("events.login", 0): 0}


def test_an_invalid_record_at_the_head_of_its_partition_goes_at_once():
    aligner = Aligner(INPUTS, lambda p: False, idle_ms=10_000, burst_hold_ms=0)
    aligner.assign([("events.login", 0)])
    invalid = Incoming("events.login", 0, 0, None, b"{not json")
    aligner.add([invalid, _record("events.login", 0, 1, NOW - 5000)])
    assert [r.offset for r in aligner.release(100, 10**12)] == [0, 1]


def test_a_worker_holding_only_records_far_ahead_has_read_to_their_time():
    """Two workers each holding a record far ahead must not wait for each other for ever."""
    aligner = Aligner(INPUTS, lambda p: False, idle_ms=10_000, burst_hold_ms=0)
    aligner.assign([("events.login", 0), ("events.device", 0)])
    assert aligner.read_to() == 0
    aligner.add([_record("events.login", 0, 0, NOW - 10_000), _record("events.device", 0, 0, NOW + 200_000)])
    horizon = NOW  # how far a peer lets this worker go
    assert [r.offset for r in aligner.release(100, 60_000, horizon)] == [0]
    assert aligner.released_ts == NOW - 10_000
    assert aligner.read_to() == NOW + 200_000  # what it holds, told to peers
    # The peer, holding its own record at NOW + 150_000, tells that; this worker may go up to it plus the span.
    assert [r.offset for r in aligner.release(100, 60_000, NOW + 150_000 + 60_000)] == [0]
    assert aligner.read_to() == NOW + 200_000 and aligner.caught_up()


def test_a_late_record_held_does_not_take_what_a_worker_has_read_to_back():
    aligner = Aligner(INPUTS, lambda p: False, idle_ms=10_000, burst_hold_ms=0)
    aligner.assign([("events.login", 0)])
    aligner.add([_record("events.login", 0, 0, NOW)])
    aligner.release(100, 60_000)
    aligner.add([_record("events.login", 0, 1, NOW - 50_000)])
    assert aligner.read_to() == NOW


def test_json_nested_too_deeply_has_no_ts_and_does_not_crash_the_merge():
    assert event_ts(b'{"ts": 5, "pad": ' + b"[" * 5000 + b"]" * 5000 + b"}", NOW) == -1
