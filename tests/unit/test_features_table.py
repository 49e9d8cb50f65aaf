"""Entity features against brute force over the same events, in any order within the lateness."""

from __future__ import annotations

import gc
import math
import random
from pathlib import Path

import pytest
from rocksdict import Cache

from streamguard.events import LoginEvent, SmsEvent, TransactionEvent
from streamguard.features.compiled import CompiledFeature
from streamguard.features.spec import load_features
from streamguard.features.table import EntityFeatures, EntityWindows, WindowCache
from streamguard.privacy import Pseudonymizer
from streamguard.state import keys
from streamguard.state.store import PartitionStore, StoreOptions
from tests.naive import naive_feature

LATENESS = 300_000
PSEUDO = Pseudonymizer(b"feature-test-key" * 2)
T0 = 1_790_000_000_000


@pytest.fixture
def store(tmp_path: Path):
    store = PartitionStore(tmp_path / "s", StoreOptions().to_options(Cache(1 << 20)))
    yield store
    store.close()


def _stream(n: int, seed: int) -> list:
    """Logins, SMS and payments over 3 h on a few IPs, accounts and phones, delivered up to 4 min out of order."""
    rng = random.Random(seed)
    events = []
    for i in range(n):
        ts = T0 + rng.randrange(3 * 3_600_000)
        ip = f"10.0.{rng.randrange(3)}.{rng.randrange(1, 4)}"
        account = f"acct_{rng.randrange(6)}"
        roll = rng.random()
        if roll < 0.6:
            events.append(
                LoginEvent(
                    event_id=f"e{i}",
                    ts=ts,
                    account_id=account,
                    ip=ip,
                    success=rng.random() < 0.3,
                    failure_reason="no_such_account" if rng.random() < 0.3 else None,
                )
            )
        elif roll < 0.85:
            events.append(SmsEvent(event_id=f"e{i}", ts=ts, phone=f"+861380000{rng.randrange(40):04d}", ip=ip))
        else:
            events.append(
                TransactionEvent(
                    event_id=f"e{i}",
                    ts=ts,
                    account_id=account,
                    amount=rng.randrange(2000),
                    currency="CNY",
                    kind="payment",
                    instrument_id=f"card{rng.randrange(8)}",
                )
            )
    arrival = {e.event_id: e.ts + rng.randrange(240_000) for e in events}  # bounded disorder
    return sorted(events, key=lambda e: arrival[e.event_id])


def test_every_value_matches_brute_force(store):
    specs = [
        s
        for s in load_features(LATENESS)
        if s.entity not in ("fingerprint", "device_id") and s.aggregate in ("count", "distinct")
    ]
    table = EntityFeatures(specs, LATENESS)
    seen, checked = [], 0
    windows, rng = WindowCache(), random.Random(0)
    for event in _stream(700, seed=4):
        seen.append(event)
        for eid, digest in table.entities_of(event, None, PSEUDO).items():
            values = table.apply(store, eid, digest, event, None, windows)
            if rng.random() < 0.3:  # a transaction ends: the windows go to the store, and are read back
                windows.flush()
                store.apply(store.take_changes(), 0)
            for spec in (c.spec for c in table.by_entity[eid]):
                assert values[spec.name] == naive_feature(spec, seen, event), (spec.name, event.event_id)
                checked += 1
    assert checked > 2000


def test_since_last_is_the_gap_to_the_previous_event(store):
    (spec,) = [s for s in load_features(LATENESS) if s.aggregate == "since_last"]
    table = EntityFeatures([spec], LATENESS)
    gaps, windows = [], WindowCache()
    for i, ts in enumerate([T0, T0 + 30_000, T0 + 90_000, T0 + 100_000]):
        event = LoginEvent(event_id=f"l{i}", ts=ts, account_id="a", ip="10.0.0.1", success=True)
        ((eid, digest),) = table.entities_of(event, None, PSEUDO).items()
        gaps.append(table.apply(store, eid, digest, event, None, windows)[spec.name])
        if i == 1:  # a transaction ends between the second and the third
            windows.flush()
            store.apply(store.take_changes(), 0)
    assert math.isnan(gaps[0]) and gaps[1:] == [30.0, 60.0, 10.0]


def test_entities_are_pseudonymised_and_fingerprints_come_from_the_caller():
    table = EntityFeatures(load_features(LATENESS), LATENESS)
    event = LoginEvent(event_id="x", ts=T0, account_id="acct_9", ip="203.0.113.9", success=False, device_id="d1")
    entities = table.entities_of(event, "fp-1", PSEUDO)
    assert {"ip", "ip_network", "device_id", "fingerprint", "account_id", "global"} <= set(entities)
    assert "phone" not in entities
    assert all(b"203.0.113" not in d and b"acct_9" not in d for d in entities.values())
    assert "fingerprint" not in table.entities_of(event, None, PSEUDO)


def test_windows_past_use_and_of_undeclared_features_are_swept_a_bounded_amount_at_a_time(store):
    specs = [s for s in load_features(LATENESS) if s.name == "login_failures_by_ip_10m"]
    table, windows = EntityFeatures(specs, LATENESS), WindowCache()

    def login(i: int, ts: int) -> None:
        event = LoginEvent(event_id=f"s{i}", ts=ts, account_id="a", ip=f"10.1.{i // 250}.{1 + i % 250}", success=False)
        ((eid, digest),) = table.entities_of(event, None, PSEUDO).items()
        table.apply(store, eid, digest, event, None, windows)

    for i in range(30):
        login(i, T0)  # 30 IPs, then idle
    login(99, T0 + 3_600_000)  # an hour later: the 10 min windows of the others are past use
    store.put(b"\x03" + b"x" * 12, b"a record of an older layout")
    windows.flush()
    live = keys.entity_windows(PSEUDO.digest("ip", "10.1.0.100"))  # the IP seen an hour later
    parts = EntityWindows.parts_of(store.pending[live])
    store.put(live, EntityWindows.encode({**parts, b"\xee" * 6: b"a window of a feature no longer declared"}))
    store.apply(store.take_changes(), 0)

    def left() -> int:
        return len(store.items_from(b"\x03", b"\x04", 1000)[0])

    assert left() == 32
    cursor = table.sweep(store, windows, b"\x03", T0 + 3_600_000, limit=20)
    store.apply(store.take_changes(), 1)
    assert cursor != b"\x03" and 12 <= left() < 32
    cursor = table.sweep(store, windows, cursor, T0 + 3_600_000, limit=20)
    store.apply(store.take_changes(), 2)
    assert cursor == b"\x03", "the end was reached: the next sweep starts over"
    assert left() == 1  # only the IP seen an hour later
    assert EntityWindows.parts_of(store.get(live)) == parts, "without the undeclared feature's window"


def test_the_sweep_reads_the_newest_time_of_a_window_as_decoding_it_would():
    rng = random.Random(5)
    for spec in load_features(LATENESS):
        compiled = CompiledFeature.of(spec, LATENESS)
        for _ in range(20):
            window = compiled.window(None)
            for _ in range(rng.randrange(40)):
                window.add(T0 + rng.randrange(10**8), rng.randrange(1, 10**6))
            raw = window.to_bytes()
            assert compiled.newest_ts(raw) == compiled.window(raw).newest_ts(), spec.name


def test_decoded_windows_outlive_a_transaction_up_to_the_capacity_and_reflect_the_store(store):
    spec = next(s for s in load_features(LATENESS) if s.name == "login_failures_by_ip_10m")
    compiled, windows = CompiledFeature.of(spec, LATENESS), WindowCache(capacity=2)

    def count(key: bytes) -> None:
        entity = windows.get(store, key)
        entity.window(compiled).add(T0, 1)
        entity.changed[compiled.state_key] = None
        windows.changed(store, key)

    records = [b"\x03k1", b"\x03k2", b"\x03k3"]
    for i, key in enumerate(records):
        count(key)
        if i == 0:
            windows.flush()
    first = windows.get(store, records[0])
    windows.flush()  # writes k2 and k3; k1, written longest ago, is evicted
    store.apply(store.take_changes(), 0)
    assert windows.get(store, records[2]) is windows.get(store, records[2])
    again = windows.get(store, records[0])
    assert again is not first and again.window(compiled).value(T0) == 1.0, "read back from the store"
    store.delete(records[2])
    windows.forget(store, records[2])
    assert windows.get(store, records[2]).window(compiled).value(T0) == 0.0
    windows.clear()
    assert windows.get(store, records[1]).window(compiled).value(T0) == 1.0


def test_an_entity_is_one_record_and_keeps_the_bytes_of_windows_it_did_not_change(store):
    specs = [s for s in load_features(LATENESS) if s.entity == "ip"]
    table, windows = EntityFeatures(specs, LATENESS), WindowCache()
    login = LoginEvent(event_id="l", ts=T0, account_id="a", ip="10.0.0.1", success=False)
    sms = SmsEvent(event_id="s", ts=T0 + 1000, phone="+8613800000001", ip="10.0.0.1")
    ((eid, digest),) = table.entities_of(login, None, PSEUDO).items()
    table.apply(store, eid, digest, login, None, windows)
    windows.flush()
    store.apply(store.take_changes(), 0)
    (key,) = [k for k, _ in store.items_from(b"\x03", b"\x04", 10)[0]]
    before = EntityWindows.parts_of(store.get(key))
    windows.clear()  # read back from the store: the login windows are not decoded by an SMS
    values = table.apply(store, eid, digest, sms, None, windows)
    windows.flush()
    after = EntityWindows.parts_of(store.get(key))
    assert values["sms_phones_by_ip_10m"] == 1.0
    assert set(before) < set(after) and all(after[sk] == part for sk, part in before.items())


def test_cached_entities_are_invisible_to_the_garbage_collector(store):
    """A worker keeps tens of thousands of them: tracked, every full collection would walk them all."""
    table, windows = EntityFeatures(load_features(LATENESS), LATENESS), WindowCache()
    event = LoginEvent(event_id="g", ts=T0, account_id="a", ip="10.0.0.1", success=False, device_id="d")
    for eid, digest in table.entities_of(event, None, PSEUDO).items():
        table.apply(store, eid, digest, event, None, windows)
        entity = windows.get(store, keys.entity_windows(digest))
        assert entity.decoded and entity.changed
        assert not any(gc.is_tracked(x) for x in (entity, entity.parts, entity.decoded, entity.changed))
        assert not any(gc.is_tracked(w) for w in entity.decoded.values())
