"""Shard work with every shard local: fingerprints are learnt, followed from device ids, and forgotten."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rocksdict import Cache

from streamguard.codec import DecideItem
from streamguard.events import DeviceEvent, LoginEvent
from streamguard.features.spec import load_features
from streamguard.features.table import EntityFeatures
from streamguard.pipeline.shard import FINGERPRINT_MEMORY_MS, Result, ShardWork
from streamguard.privacy import Pseudonymizer
from streamguard.state.dedup import RecentIds
from streamguard.state.store import PartitionStore, StoreOptions
from streamguard.topics.names import TopicNames
from streamguard.topics.spec import load_specs

PSEUDO = Pseudonymizer(b"shard-work-test-key")
T0 = 1_790_000_000_000
NAMES = TopicNames.resolve(load_specs("", "sg"), "", "sg")


@pytest.fixture
def work(tmp_path: Path):
    store = PartitionStore(tmp_path / "s", StoreOptions().to_options(Cache(1 << 20)))
    recent = RecentIds(store, 3_600_000)
    features = EntityFeatures(load_features(300_000), 300_000)
    yield ShardWork(NAMES, features, PSEUDO, lambda _: store, lambda _: recent, "features"), store
    store.close()


def _decide(work: ShardWork, store: PartitionStore, event) -> dict:
    """Run the event through every shard (all local); its published feature values."""
    result, queue = Result(), [DecideItem(PSEUDO.digest("event_id", event.event_id), event)]
    while queue:
        work.handle(0, queue.pop(0), T0, result)
        queue += result.items
        result.items.clear()
    work.windows.flush()
    work.expire(0)
    store.apply(store.take_changes(), 0)
    (record,) = [json.loads(o.value) for o in result.outs if o.topic == "features"]
    return record["features"]


def _login(i: int, ts: int, device: str) -> LoginEvent:
    return LoginEvent(event_id=f"l{i}", ts=ts, account_id=f"a{i}", ip="10.0.0.1", success=False, device_id=device)


def test_a_fingerprint_is_learnt_followed_through_a_device_id_reset_and_forgotten(work):
    work, store = work
    for i, device in enumerate(["d1", "d2"]):  # one phone, its id reset once
        _decide(work, store, DeviceEvent(event_id=f"r{i}", ts=T0, device_id=device, fingerprint="hw-1"))
    _decide(work, store, _login(1, T0 + 60_000, "d1"))
    values = _decide(work, store, _login(2, T0 + 120_000, "d2"))
    assert values["login_accounts_by_fingerprint_1h"] == 2.0  # both device ids lead to one fingerprint
    assert values["login_accounts_by_device_1h"] == 1.0
    _decide(work, store, _login(3, T0 + FINGERPRINT_MEMORY_MS + 3_600_000, "d9"))  # a day later, elsewhere
    later = _decide(work, store, _login(4, T0 + FINGERPRINT_MEMORY_MS + 3_700_000, "d2"))
    assert "login_accounts_by_fingerprint_1h" not in later, "a link not reported for a day is forgotten"
    assert later["login_accounts_by_device_1h"] == 1.0
