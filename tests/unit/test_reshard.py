"""Re-sharding without a broker: every state key goes to the shard its hash decides; the staging; at rest or not."""

from __future__ import annotations

from pathlib import Path

import pytest
from rocksdict import Cache

from streamguard.codec import DecideItem, shard_of
from streamguard.events import DeviceEvent, LoginEvent, RegistrationEvent
from streamguard.features.table import EntityFeatures
from streamguard.pipeline.shard import Result, ShardWork, target_shard
from streamguard.reshard.checks import busy
from streamguard.reshard.stage import SHARD_STATE, Manifest, Staging, read_manifest
from streamguard.state import keys
from streamguard.state.dedup import RecentIds
from streamguard.state.layout import adopt_state_dir
from streamguard.state.store import PartitionStore, StoreOptions
from tests.item_pipeline import LATENESS_MS, NAMES, PSEUDO, ItemPipeline

T0 = 1_790_000_000_000


def _sharded_state(tmp_path: Path, settle: bool) -> dict[int, dict[bytes, bytes]]:
    """Events through shard work with a store per shard, routed as the engine routes; each shard's keys.

    `settle` False stops after the decide step: the events stay parked, waiting for their entities.
    """
    local = ItemPipeline(tmp_path / "unused")
    cache = Cache(1 << 20)
    stores = {s: PartitionStore(tmp_path / f"shard-{s}", StoreOptions().to_options(cache)) for s in range(NAMES.shards)}
    recent = {s: RecentIds(store, 3_600_000) for s, store in stores.items()}
    features = EntityFeatures(local.specs, LATENESS_MS)
    work = ShardWork(NAMES, features, local.detector, PSEUDO, stores.__getitem__, recent.__getitem__, "features", 0.0)
    events = [
        DeviceEvent(event_id="d1", ts=T0, device_id="dev-1", fingerprint="hw-1", ip="10.0.0.1"),
        LoginEvent(event_id="l1", ts=T0 + 1, account_id="a1", ip="10.0.0.2", success=False, device_id="dev-1"),
        RegistrationEvent(event_id="r1", ts=T0 + 2, account_id="a2", ip="10.0.0.3", phone="+8613800138000"),
    ]
    wave = [
        (target_shard(item, NAMES.shards), item)
        for item in (DecideItem(PSEUDO.digest("event_id", e.event_id), e) for e in events)
    ]
    result = Result()
    while wave:
        for shard, item in wave:
            work.handle(shard, item, T0, result)
        wave = [(target_shard(new, NAMES.shards), new) for new in result.items] if settle else []
        result.items.clear()
    work.flush()
    found = {s: dict(store.take_changes()) for s, store in stores.items()}
    for store in stores.values():
        store.close()
    local.close()
    return {s: {k: v for k, v in changes.items() if v is not None} for s, changes in found.items()}


@pytest.mark.parametrize("settle", [True, False])
def test_every_state_key_belongs_to_the_shard_its_owner_hash_decides(tmp_path, settle):
    state = _sharded_state(tmp_path, settle)
    namespaces = {key[:1] for changes in state.values() for key in changes}
    expected = {keys.DEDUP, keys.DEDUP_BY_TIME, keys.PENDING} if not settle else {keys.DEDUP, keys.DEDUP_BY_TIME}
    assert expected <= namespaces
    if settle:
        assert {keys.FEATURE, keys.DEVICE_FINGERPRINT} <= namespaces
    for shard, changes in state.items():
        for key in changes.keys() - SHARD_STATE:
            assert shard_of(keys.owner_digest(key), NAMES.shards) == shard, key[:1]
    assert any(keys.DEDUP_WATERMARK in changes for changes in state.values()), "the one key a shard owns itself"


def test_a_key_of_no_shard_is_refused():
    with pytest.raises(ValueError, match="no shard"):
        keys.owner_digest(keys.CHECKPOINT)
    with pytest.raises(ValueError):
        keys.owner_digest(keys.DEDUP_BY_TIME + b"\x00" * 4)
    with pytest.raises(ValueError, match="the shard's own"):
        keys.owner_digest(keys.DEDUP_WATERMARK)


def test_the_staging_puts_each_key_under_its_new_shard_and_applies_deletes_in_order(tmp_path):
    digests = [PSEUDO.digest("ip", f"10.0.0.{i}") for i in range(200)]
    staging = Staging(tmp_path / "stage", 12)
    staging.add({keys.entity_windows(d): b"old" for d in digests}, 0)
    staging.add({keys.entity_windows(d): b"new" for d in digests[:100]}, 0)
    staging.add({keys.entity_windows(d): None for d in digests[150:]}, 0)
    staged = {s: [c for c in staging.chunks(s, 7)] for s in range(12)}
    assert all(len(chunk) <= 7 for chunks in staged.values() for chunk in chunks)
    by_shard = {s: {k: v for chunk in chunks for k, v in chunk.items()} for s, chunks in staged.items()}
    for d in digests:
        shard = shard_of(d, 12)
        want = b"new" if d in digests[:100] else None if d in digests[150:] else b"old"
        assert by_shard[shard].get(keys.entity_windows(d)) == want
    assert sum(map(len, by_shard.values())) == 150


def test_a_shards_own_state_goes_to_every_new_shard_with_the_lowest_old_value(tmp_path):
    """The newest event time of each old shard: each new shard's ids then expire no earlier than they would have."""
    staging = Staging(tmp_path / "stage", 4)
    for old, ts in [(0, 500), (1, 300), (0, 900), (2, 700)]:  # old shard 0 moved on from 500 to 900
        staging.add({keys.DEDUP_WATERMARK: keys.encode_u64(ts)}, old)
    for shard in range(4):
        (chunk,) = staging.chunks(shard, 10)
        assert chunk == {keys.DEDUP_WATERMARK: keys.encode_u64(300)}
    staging.close()


def test_a_complete_staging_has_a_manifest(tmp_path):
    staging = Staging(tmp_path / "stage", 12)
    manifest = Manifest(from_shards=6, to_shards=12, identity=None, records=3, keys=150)
    assert read_manifest(staging.directory) is None, "a staging without a manifest is not complete"
    staging.write_manifest(manifest)
    staging.close()
    assert read_manifest(staging.directory) == manifest


SHARDS = ("sg.shards", 0)
CHANGELOG = ("sg.state-changelog", 0)


def test_an_app_at_rest_is_not_busy():
    end = {SHARDS: 10, CHANGELOG: 4}
    assert busy("sg", 0, end, end, {SHARDS: 9}, {}) == []  # 9: the commit marker at 9 is no record


def test_running_workers_open_transactions_and_unconsumed_work_are_each_named():
    end = {SHARDS: 10, CHANGELOG: 4}
    problems = busy("sg", 2, {**end, CHANGELOG: 2}, end, {SHARDS: 5}, {SHARDS: 3})
    assert len(problems) == 3
    assert "'sg' has 2 members on this app's topics: stop every worker" in problems[0]
    assert "transactions are open (open transactions: sg.state-changelog[0] stable 2 < end 4)" in problems[1]
    assert "work between shards is not consumed" in problems[2] and "sg.shards[0] committed 5, 3 records" in problems[2]


def test_a_data_dir_of_another_cluster_identity_is_wiped_and_one_of_this_kept(tmp_path, caplog):
    state = tmp_path / "state"
    (state / "shard-3").mkdir(parents=True)
    assert not adopt_state_dir(state, b'{"shards":6}', resharded=False), "a directory from before the record: kept"
    assert (state / "shard-3").is_dir()
    assert not adopt_state_dir(state, b'{"shards":6}', resharded=True), "the same identity: kept"
    assert adopt_state_dir(state, b'{"shards":12}', resharded=True)
    assert not (state / "shard-3").exists()
    assert "were built for another cluster identity" in caplog.text
    assert (state / "CLUSTER").read_bytes() == b'{"shards":12}'


def test_a_data_dir_from_before_the_record_is_wiped_once_the_cluster_was_resharded(tmp_path):
    state = tmp_path / "state"
    (state / "shard-0").mkdir(parents=True)
    assert adopt_state_dir(state, b'{"shards":12}', resharded=True)
    assert not (state / "shard-0").exists()
