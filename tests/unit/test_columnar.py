"""The columnar state against the window implementation it replaces, and against brute force.

Random streams, out of order within and beyond the lateness, in batches of
random sizes: every feature value of every event must equal what
`EntityFeatures` (one window object per entity and feature) gives, and
brute force where the lateness is respected; the pool and HyperLogLog tiers
of distinct counts, expiry, growth and de-duplication included.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import msgspec
import numpy as np
import pytest
from rocksdict import Cache

from streamguard.columnar.changes import (
    LayoutMismatch,
    apply_records,
    decode,
    encode,
    layout_fingerprint,
    snapshots,
    take_changes,
)
from streamguard.columnar.columns import columns_of
from streamguard.columnar.hashing import ColumnHashes, hash_column, hash_one
from streamguard.columnar.layout import Layout
from streamguard.columnar.state import ColumnarState, load, packed
from streamguard.entities import EntityKind
from streamguard.events import AnyEvent, DeviceEvent, LoginEvent, SmsEvent, TransactionEvent
from streamguard.features.spec import FeatureSpec, load_features
from streamguard.features.table import EntityFeatures, WindowCache, entity_id
from streamguard.privacy import Pseudonymizer
from streamguard.state.store import PartitionStore, StoreOptions
from tests.naive import naive_feature, naive_hll_estimate

LATENESS = 300_000
T0 = 1_790_000_000_000
HASHES = ColumnHashes(b"columnar-test-key" * 2)
PSEUDO = Pseudonymizer(b"columnar-test-key" * 2)
EXTRA = [  # what the shipped features do not use: sums and extremes, small distinct caps (pool, HyperLogLog)
    {"name": "paid_by_account_1h", "events": ["transaction"], "entity": "account_id", "aggregate": "sum",
     "field": "amount", "window": "1h", "resolution": "2m"},
    {"name": "max_paid_by_account_1h", "events": ["transaction"], "entity": "account_id", "aggregate": "max",
     "field": "amount", "window": "1h", "resolution": "2m"},
    {"name": "min_paid_by_ip_10m", "events": ["transaction"], "entity": "ip", "aggregate": "min",
     "field": "amount", "window": "10m", "resolution": "30s"},
    {"name": "accounts_by_ip_30m_cap64", "events": ["login"], "entity": "ip", "aggregate": "distinct",
     "field": "account_id", "window": "30m", "resolution": "1m", "distinct_cap": 64},
    {"name": "accounts_by_ip_30m_cap4", "events": ["login"], "entity": "ip", "aggregate": "distinct",
     "field": "account_id", "window": "30m", "resolution": "1m", "distinct_cap": 4},
    {"name": "logins_by_ip_10m_coarse", "events": ["login"], "entity": "ip", "aggregate": "count",
     "window": "10m", "resolution": "10m"},  # a ring of 2 slots: fewer than a compact ring's
]  # fmt: skip


def _specs() -> list[FeatureSpec]:
    shipped = [s for s in load_features(LATENESS) if s.entity not in ("fingerprint",)]
    return shipped + [msgspec.convert(extra, FeatureSpec) for extra in EXTRA]


def _stream(n: int, seed: int, disorder_ms: int, accounts: int = 30) -> list[AnyEvent]:
    """Logins, SMS, payments and device reports over 3 h on a few IPs, delivered up to `disorder_ms` out of order."""
    rng = random.Random(seed)
    events: list[AnyEvent] = []
    for i in range(n):
        ts = T0 + rng.randrange(3 * 3_600_000)
        ip = f"10.0.{rng.randrange(3)}.{rng.randrange(1, 4)}"
        account = f"acct_{rng.randrange(accounts)}"
        device = f"dev_{rng.randrange(10)}"
        roll = rng.random()
        if roll < 0.5:
            events.append(LoginEvent(event_id=f"e{i}", ts=ts, account_id=account, ip=ip, device_id=device,
                                     success=rng.random() < 0.3,
                                     failure_reason="no_such_account" if rng.random() < 0.3 else None))  # fmt: skip
        elif roll < 0.7:
            events.append(SmsEvent(event_id=f"e{i}", ts=ts, phone=f"+861380000{rng.randrange(40):04d}", ip=ip))
        elif roll < 0.9:
            events.append(TransactionEvent(event_id=f"e{i}", ts=ts, account_id=account, amount=rng.randrange(2000),
                                           currency="CNY", kind="payment", ip=ip,
                                           instrument_id=f"card{rng.randrange(8)}"))  # fmt: skip
        else:
            events.append(DeviceEvent(event_id=f"e{i}", ts=ts, device_id=device, ip=ip,
                                      is_emulator=rng.random() < 0.2))  # fmt: skip
    arrival = {e.event_id: e.ts + rng.randrange(disorder_ms) for e in events}
    return sorted(events, key=lambda e: arrival[e.event_id])


def _batches(events: list[AnyEvent], seed: int) -> list[list[AnyEvent]]:
    rng, out, i = random.Random(seed), [], 0
    while i < len(events):
        size = rng.choice([1, 2, 7, 50, 300])
        out.append(events[i : i + size])
        i += size
    return out


def _count(state: ColumnarState, layout: Layout, batch: list[AnyEvent]) -> tuple[np.ndarray, np.ndarray]:
    columns = columns_of(batch, layout, HASHES)
    order = np.argsort(columns.ts, kind="stable")
    result = state.count(order, columns.ts, columns.etype, columns.flags, columns.numbers, columns.hashes)
    return result.values, columns.hashes


@pytest.fixture
def store(tmp_path: Path):
    store = PartitionStore(tmp_path / "s", StoreOptions().to_options(Cache(1 << 20)))
    yield store
    store.close()


@pytest.mark.parametrize("disorder_ms", [240_000, 1_800_000])
def test_every_value_equals_the_window_objects(store, disorder_ms):
    """Within the lateness and far beyond it (events refused by the ring, read at the entity's newest - lateness)."""
    specs = _specs()
    layout = Layout(specs, LATENESS)
    state = ColumnarState(layout, 6 * 3_600_000, reserved=64)  # small: the kernel stops and grows many times
    old, windows = EntityFeatures(specs, LATENESS), WindowCache()
    checked = 0
    for batch in _batches(_stream(1500, seed=1, disorder_ms=disorder_ms), seed=2):
        values, _ = _count(state, layout, sorted(batch, key=lambda e: e.ts))  # noqa: B023
        for i, event in enumerate(sorted(batch, key=lambda e: e.ts)):
            for eid, digest in old.entities_of(event, None, PSEUDO).items():
                for name, expected in old.apply(store, eid, digest, event, None, windows).items():
                    if name.endswith("_cap4"):
                        continue  # an estimate over other hashes: see the HyperLogLog test
                    got = values[i, layout.index[name]]
                    assert got == expected or (math.isnan(got) and math.isnan(expected)), (name, event)
                    checked += 1
    assert checked > 20_000


def test_within_the_lateness_every_value_equals_brute_force():
    specs = [s for s in _specs() if "cap4" not in s.name]  # the estimated one: see the HyperLogLog test
    layout = Layout(specs, LATENESS)
    state = ColumnarState(layout, 6 * 3_600_000)
    seen: list[AnyEvent] = []
    checked = 0
    for batch in _batches(_stream(600, seed=3, disorder_ms=240_000), seed=4):
        batch = sorted(batch, key=lambda e: e.ts)
        values, hashes = _count(state, layout, batch)
        for i, event in enumerate(batch):
            seen.append(event)
            for f, spec in enumerate(specs):
                if hashes[i, layout.arrays.kind[f]] == 0 or spec.aggregate == "since_last":
                    continue  # since_last out of order: see the test against the window objects
                expected = naive_feature(spec, seen, event)
                got = values[i, f]
                assert (expected is None and math.isnan(got)) or got == expected, (spec.name, event)
                checked += 1
    assert checked > 5_000


def test_past_the_cap_a_distinct_count_is_the_hyperloglog_of_the_window():
    (spec,) = [s for s in _specs() if s.name == "accounts_by_ip_30m_cap4"]
    layout = Layout([spec], LATENESS)
    state = ColumnarState(layout, 6 * 3_600_000)
    events = [LoginEvent(event_id=f"h{i}", ts=T0 + 1000 * i, account_id=f"a{i % 300}", ip="10.9.9.9", success=True)
              for i in range(3000)]  # fmt: skip
    values, _ = _count(state, layout, events)
    keys = HASHES.keys("account_id")
    assert values[3, 0] == 4  # exact up to the cap
    for i in (10, 400, 2999):
        window = [e for e in events if (e.ts // 60_000) > (events[i].ts // 60_000) - 30 and e.ts <= events[i].ts]
        expected = naive_hll_estimate(
            [hash_one(e.account_id, keys) for e in {e.account_id: e for e in window}.values()]
        )
        assert values[i, 0] == pytest.approx(expected), i
    assert state.pool.counters[2] == 1  # one entity-feature went to registers


def test_expiry_frees_entities_past_use_and_reuses_their_room():
    (spec,) = [s for s in load_features(LATENESS) if s.name.startswith("login_failures_by_ip")][:1]
    layout = Layout([spec], LATENESS)
    state = ColumnarState(layout, 3_600_000)
    day = 24 * 3_600_000
    for hour in range(48):  # 200 fresh IPs an hour: without expiry, 9,600 entities
        batch = [LoginEvent(event_id=f"x{hour}-{i}", ts=T0 + hour * 3_600_000 + i, account_id="a",
                            ip=f"10.{hour}.{i // 250}.{i % 250}", success=False) for i in range(200)]  # fmt: skip
        _count(state, layout, batch)
        for _ in range(10):
            state.expire()
    live = sum(state.entity_counts().values())
    assert live <= 200 * (1 + spec.window_ms // 3_600_000 + 1)
    assert int(state.entities.counters[2]) < 2_000  # ids reused
    assert state.ids.counters[0] <= 200 * 2  # event ids remembered for the retention only
    assert day  # the stream spanned two days


def test_a_re_sent_event_is_counted_once_across_batches():
    specs = [s for s in load_features(LATENESS) if s.name == "logins_by_ip_10m"] or load_features(LATENESS)[:1]
    layout = Layout(specs, LATENESS)
    state = ColumnarState(layout, 3_600_000)
    event = LoginEvent(event_id="same", ts=T0, account_id="a", ip="10.0.0.1", success=True)
    columns = columns_of([event, event], layout, HASHES)
    first = state.count(np.arange(2), columns.ts, columns.etype, columns.flags, columns.numbers, columns.hashes)
    columns = columns_of([event], layout, HASHES)
    again = state.count(np.arange(1), columns.ts, columns.etype, columns.flags, columns.numbers, columns.hashes)
    assert first.duplicate.tolist() == [False, True] and again.duplicate.tolist() == [True]


def test_a_device_report_teaches_the_fingerprint_to_later_events_of_the_device():
    specs = [s for s in load_features(LATENESS) if s.entity == "fingerprint"]
    layout = Layout(specs, LATENESS)
    state = ColumnarState(layout, 3_600_000)
    report = DeviceEvent(event_id="d", ts=T0, device_id="dev", fingerprint="fp1")
    login = LoginEvent(event_id="l", ts=T0 + 1000, account_id="a", ip="10.0.0.1", success=True, device_id="dev")
    stranger = LoginEvent(event_id="s", ts=T0 + 2000, account_id="a", ip="10.0.0.1", success=True, device_id="x")
    _, hashes = _count(state, layout, [report, login, stranger])
    column = layout.hash_columns.index("fingerprint")
    assert hashes[1, column] == hashes[0, column] != 0 and hashes[2, column] == 0
    late = LoginEvent(event_id="m", ts=T0 + 25 * 3_600_000, account_id="a", ip="10.0.0.1", success=True,
                      device_id="dev")  # fmt: skip
    _, hashes = _count(state, layout, [late])
    assert hashes[0, column] == 0  # a day after the last report, the device's fingerprint is forgotten


def test_hashes_are_keyed_per_column_and_a_nul_inside_a_value_takes_the_slow_path():
    keys = HASHES.keys("ip")
    values = ["10.0.0.1", None, "a\x00b", "10.0.0.1"]
    out = hash_column(values, keys)
    assert out[0] == out[3] == hash_one("10.0.0.1", keys) and out[1] == 0 and out[2] == hash_one("a\x00b", keys)
    assert hash_one("10.0.0.1", HASHES.keys("account_id")) != out[0]
    assert hash_column(["x", "y"], keys).tolist() == [hash_one("x", keys), hash_one("y", keys)]
    assert ColumnHashes(b"another-key-0123456789").digest("ip", "10.0.0.1") != HASHES.digest("ip", "10.0.0.1")


def test_every_entity_kind_reads_what_the_features_count_per():
    event = SmsEvent(event_id="k", ts=T0, ip="2001:db8::7", phone="+8613800001234")
    kinds = {entity_id(s) for s in load_features(LATENESS)}
    values = {kind: EntityKind(kind).value(event) for kind in kinds}
    assert values["ip_network"] == "2001:db8::/64" and values["global"] == "global"
    assert values["phone_block/10"] == "8613800001" and values["fingerprint"] is None
    assert values["account_id"] is None and values["phone"] == "+8613800001234"
    sources: dict[str, list] = {}
    assert {kind: EntityKind(kind).values([event], sources)[0] for kind in kinds} == values


def test_entities_packed_and_loaded_into_fresh_state_count_on_alike():
    """What a changelog record or a snapshot carries is the whole state: the pool and HyperLogLog tiers included."""
    specs = _specs()
    layout = Layout(specs, LATENESS)
    stream = _stream(1200, seed=9, disorder_ms=240_000, accounts=80)
    first, rest = stream[:800], stream[800:]
    original = ColumnarState(layout, 6 * 3_600_000)
    _count(original, layout, sorted(first, key=lambda e: e.ts))
    ids = np.flatnonzero(original.entities.key[: int(original.entities.counters[2])] > 1)
    words, ends = packed(original, ids)
    assert ends.shape[0] == ids.shape[0] and ends[-1] == words.shape[0]
    copy = ColumnarState(layout, 6 * 3_600_000, reserved=16)  # loading grows it
    load(copy, words)
    copy.ids = type(original.ids)(*(a.copy() for a in original.ids))  # event ids and fingerprints travel apart
    copy.links = type(original.links)(*(a.copy() for a in original.links))
    assert copy.entity_counts() == original.entity_counts()
    for batch in _batches(rest, seed=10):
        batch = sorted(batch, key=lambda e: e.ts)
        expected, _ = _count(original, layout, batch)
        got, _ = _count(copy, layout, batch)
        np.testing.assert_array_equal(got, expected)
    assert original.pool.counters[2] > 0 and original.pool.counters[0] > 0  # both tiers were carried


def test_a_replica_fed_each_batchs_change_records_holds_the_same_state():
    """The records of every batch, applied in order, rebuild the state: what changed, and what expired."""
    specs = _specs()
    layout = Layout(specs, LATENESS)
    primary, replica = ColumnarState(layout, 3_600_000), ColumnarState(layout, 3_600_000, reserved=64)
    rng, expired_in_all = random.Random(11), 0
    fingerprint, nothing = layout_fingerprint(layout, HASHES), np.empty(0, np.uint64)
    stream = sorted(_stream(2000, seed=12, disorder_ms=240_000), key=lambda e: e.ts)
    for day, shift in enumerate((0, 30 * 3_600_000)):  # a second day: the first day's entities expire
        batch_events = [msgspec.structs.replace(e, event_id=f"{e.event_id}-{day}", ts=e.ts + shift) for e in stream]
        for batch in _batches(batch_events, seed=13 + day):
            _count(primary, layout, batch)
            expired = np.concatenate(
                [primary.expire() for _ in range(rng.choice([0, 1, 3]))] or [np.empty(0, np.uint64)]
            )
            expired_in_all += expired.size
            for records in take_changes(primary, fingerprint, expired, nothing, nothing, shards=6).values():
                apply_records(replica, [decode(encode(record), fingerprint) for record in records], shards=6)
            assert replica.entity_counts() == primary.entity_counts()
    assert expired_in_all > 50
    probe = sorted(_stream(300, seed=14, disorder_ms=240_000), key=lambda e: e.ts)
    probe = [msgspec.structs.replace(e, event_id=f"p{e.event_id}", ts=e.ts + 30 * 3_600_000 + 60_000) for e in probe]
    np.testing.assert_array_equal(_count(replica, layout, probe)[0], _count(primary, layout, probe)[0])


def test_a_shards_records_applied_together_hold_what_applied_one_batch_at_a_time_holds():
    """Each entity is loaded once, from its newest copy; an expiry after it wins; the replay starts at a snapshot."""
    specs = _specs()
    layout = Layout(specs, LATENESS)
    primary, together = ColumnarState(layout, 3_600_000), ColumnarState(layout, 3_600_000, reserved=64)
    fingerprint, nothing = layout_fingerprint(layout, HASHES), np.empty(0, np.uint64)
    logs: dict[int, list] = {shard: [] for shard in range(6)}
    expired_in_all = 0
    stream = sorted(_stream(2000, seed=16, disorder_ms=240_000), key=lambda e: e.ts)
    for day, shift in enumerate((0, 30 * 3_600_000)):  # a second day: the first day's entities expire
        batch_events = [msgspec.structs.replace(e, event_id=f"{e.event_id}-{day}", ts=e.ts + shift) for e in stream]
        for batch in _batches(batch_events, seed=17 + day):
            _count(primary, layout, batch)
            expired = primary.expire()
            expired_in_all += expired.size
            for shard, records in take_changes(primary, fingerprint, expired, nothing, nothing, 6).items():
                logs[shard] += records
        if day == 0:  # shards 0-2 written whole: their replay starts there
            for shard, records in snapshots(primary, fingerprint, 6, [0, 1, 2]).items():
                logs[shard] += records
    assert all(len(log) > 20 for log in logs.values()) and expired_in_all > 50
    for log in logs.values():
        apply_records(together, [decode(encode(record), fingerprint) for record in log], shards=6)
    assert together.entity_counts() == primary.entity_counts()
    probe = sorted(_stream(300, seed=18, disorder_ms=240_000), key=lambda e: e.ts)
    probe = [msgspec.structs.replace(e, event_id=f"p{e.event_id}", ts=e.ts + 30 * 3_600_000 + 60_000) for e in probe]
    np.testing.assert_array_equal(_count(together, layout, probe)[0], _count(primary, layout, probe)[0])


def test_a_record_of_another_layout_is_refused():
    specs = _specs()
    state = ColumnarState(Layout(specs, LATENESS), 3_600_000)
    other = ColumnarState(Layout(specs[:-1], LATENESS), 3_600_000)
    _count(other, other.layout, _stream(20, seed=15, disorder_ms=1000))
    nothing = np.empty(0, np.uint64)
    theirs = layout_fingerprint(other.layout, HASHES)
    ((record,),) = take_changes(other, theirs, nothing, nothing, nothing, shards=1).values()
    with pytest.raises(LayoutMismatch, match="another layout"):
        decode(encode(record), layout_fingerprint(state.layout, HASHES))
    item_changes = msgspec.msgpack.encode([[b"key", b"value"]])  # what the item engine's changelog holds
    with pytest.raises(LayoutMismatch, match="no columnar state"):
        decode(item_changes, layout_fingerprint(state.layout, HASHES))
    ours = layout_fingerprint(state.layout, HASHES)
    assert ours != layout_fingerprint(state.layout, ColumnHashes(b"another-hash-key-0123"))
    same_layout = ColumnarState(state.layout, 3_600_000)
    _count(same_layout, same_layout.layout, _stream(20, seed=15, disorder_ms=1000))
    ((record,),) = take_changes(same_layout, ours, nothing, nothing, nothing, shards=1).values()
    apply_records(state, [decode(encode(record), ours)], shards=1)
    assert state.entity_counts() == same_layout.entity_counts()


def test_a_type_or_filter_listed_twice_counts_once_and_numbers_and_empty_text_are_values():
    twice = msgspec.convert(
        {"name": "failures_by_ip", "events": ["login", "login"], "entity": "ip", "aggregate": "count",
         "where": [{"field": "success", "op": "==", "value": False}] * 2, "window": "10m", "resolution": "1m"},
        FeatureSpec,
    )  # fmt: skip
    amounts = msgspec.convert(
        {"name": "amounts_by_account", "events": ["transaction"], "entity": "account_id", "aggregate": "distinct",
         "field": "amount", "window": "10m", "resolution": "1m"},
        FeatureSpec,
    )  # fmt: skip
    models = msgspec.convert(
        {"name": "models_by_device", "events": ["device"], "entity": "device_id", "aggregate": "distinct",
         "field": "model", "window": "10m", "resolution": "1m"},
        FeatureSpec,
    )  # fmt: skip
    layout = Layout([twice, amounts, models], LATENESS)
    state = ColumnarState(layout, 3_600_000, reserved=9)  # a table of 16 slots: it grows as it fills
    events: list[AnyEvent] = [LoginEvent(event_id=f"l{i}", ts=T0 + i, account_id="a", ip=f"10.0.0.{i}", success=False)
                              for i in range(20)]  # fmt: skip
    events += [TransactionEvent(event_id=f"t{i}", ts=T0 + 100 + i, account_id="a", amount=i % 3, currency="CNY",
                                kind="payment") for i in range(6)]  # fmt: skip
    events += [
        DeviceEvent(event_id=f"d{i}", ts=T0 + 200 + i, device_id="dev", model=m) for i, m in enumerate(["", "x"])
    ]
    values, _ = _count(state, layout, events)
    assert values[:20, 0].tolist() == [1.0] * 20
    assert values[20:26, 1].tolist() == [1.0, 2.0, 3.0, 3.0, 3.0, 3.0]
    assert values[26:, 2].tolist() == [1.0, 2.0]
