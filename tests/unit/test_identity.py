"""The cluster identity: the key's fingerprint, the record and the one-line refusals (no broker)."""

from __future__ import annotations

import hashlib
import hmac
import json
import re

import msgspec
import pytest

from streamguard.errors import ConfigError
from streamguard.privacy import Pseudonymizer
from streamguard.topics.identity import ClusterIdentity, decode, fingerprint, mismatch, topology_mismatch
from streamguard.topics.names import TopicNames
from streamguard.topics.spec import load_specs

KEY = b"a-secret-of-at-least-16-chars"
TOPIC = "p-app.cluster"
NAMES = TopicNames.resolve(load_specs("p-", "app", shards=6), "p-", "app")


def _identity(key: bytes = KEY, shards: int = 6) -> ClusterIdentity:
    return ClusterIdentity(hash_key_fingerprint=fingerprint(key), shards=shards, created_at=1_700_000_000_000)


def test_the_fingerprint_is_16_hex_stable_and_tells_keys_apart():
    assert re.fullmatch(r"[0-9a-f]{16}", fingerprint(KEY))
    assert fingerprint(KEY) == fingerprint(bytes(KEY))
    assert fingerprint(KEY) != fingerprint(KEY + b"x")
    assert fingerprint(KEY) != fingerprint(KEY[:-1])


def test_the_fingerprint_is_an_hmac_of_a_label_and_reveals_neither_the_key_nor_a_pseudonym():
    label = b"streamguard hash key fingerprint v1"
    assert fingerprint(KEY) == hmac.new(KEY, label, hashlib.sha256).hexdigest()[:16]
    assert KEY.hex()[:16] != fingerprint(KEY) and hashlib.sha256(KEY).hexdigest()[:16] != fingerprint(KEY)
    assert fingerprint(KEY) not in Pseudonymizer(KEY).token("ip", label.decode())


def test_the_cluster_topic_is_resolved_with_one_partition_and_compacted_forever():
    specs = {s.name: s for s in load_specs("p-", "app")}
    assert NAMES.cluster == TOPIC
    assert (specs[TOPIC].partitions, specs[TOPIC].cleanup, specs[TOPIC].retention_ms) == (1, "compact", -1)


def test_a_cluster_topic_of_several_partitions_is_a_config_error():
    specs = [msgspec.structs.replace(s, partitions=2) if s.name == TOPIC else s for s in load_specs("p-", "app")]
    with pytest.raises(ConfigError, match="cluster must have 1 partition"):
        TopicNames.resolve(specs, "p-", "app")


def test_the_record_is_small_json_and_each_has_a_key_of_its_own():
    identity = _identity()
    assert json.loads(identity.encode()) == {
        "hash_key_fingerprint": fingerprint(KEY),
        "shards": 6,
        "created_at": 1_700_000_000_000,
    }
    assert decode(identity.encode(), TOPIC) == identity
    assert identity.record_key() != identity.record_key(), "compaction never removes the first record"
    assert identity.record_key().startswith(f"{fingerprint(KEY)}.6.".encode())


def test_a_record_with_fields_of_a_later_version_still_decodes():
    raw = json.dumps({"hash_key_fingerprint": "ab" * 8, "shards": 3, "created_at": 5, "region": "x"}).encode()
    assert decode(raw, TOPIC).shards == 3


@pytest.mark.parametrize(
    "raw", [None, b"", b"{not json", b'{"shards": 6}', b'{"hash_key_fingerprint": 1, "shards": 6}']
)
def test_a_first_record_that_is_no_identity_is_a_config_error(raw):
    with pytest.raises(ConfigError, match=f"the first record of {TOPIC} is not a cluster identity"):
        decode(raw, TOPIC)


def test_the_same_identity_is_no_mismatch_whenever_it_was_recorded():
    assert (
        mismatch(_identity(), ClusterIdentity(**{**json.loads(_identity().encode()), "created_at": 1}), TOPIC) is None
    )


def test_another_key_is_named_by_fingerprints_never_by_key():
    problem = mismatch(_identity(b"another-key-0123456789"), _identity(), TOPIC)
    assert problem is not None and "\n" not in problem
    assert "STREAMGUARD_HASH_KEY is not the cluster's key" in problem
    assert f"{fingerprint(b'another-key-0123456789')} here, {fingerprint(KEY)} in {TOPIC}" in problem
    assert "another-key" not in problem and KEY.decode() not in problem
    assert "shard count" not in problem


def test_another_shard_count_is_named_with_both_counts_and_the_fix():
    problem = mismatch(_identity(shards=6), _identity(shards=4), TOPIC)
    assert problem is not None and "\n" not in problem
    assert "6 here, 4 in the cluster" in problem
    assert "recreate them with 4" in problem and "streamguard reshard" in problem
    assert "HASH_KEY" not in problem


def test_both_differences_are_named():
    problem = mismatch(_identity(b"another-key-0123456789", shards=6), _identity(shards=4), TOPIC)
    assert problem is not None and "HASH_KEY" in problem and "6 here, 4 in the cluster" in problem


def test_the_shards_and_changelog_topics_must_have_as_many_partitions():
    right = {NAMES.shard_topic: 6, NAMES.changelog: 6, NAMES.cluster: 1}
    assert topology_mismatch(NAMES, right, None) is None
    assert topology_mismatch(NAMES, right, _identity(shards=6)) is None
    problem = topology_mismatch(NAMES, {**right, NAMES.changelog: 3}, None)
    assert problem is not None and "\n" not in problem
    assert problem.startswith("p-app.shards has 6 partitions on the broker and p-app.state-changelog 3")
    assert topology_mismatch(NAMES, {NAMES.changelog: 6, NAMES.cluster: 1}, None) == (
        "p-app.shards is missing on the broker: run `streamguard topics create`"
    )


def test_the_topics_must_have_the_clusters_shard_count():
    """E.g. the shard topics were recreated by hand with other partitions while the cluster kept its identity."""
    problem = topology_mismatch(
        NAMES, {NAMES.shard_topic: 6, NAMES.changelog: 6, NAMES.cluster: 1}, _identity(shards=4)
    )
    assert problem is not None and "\n" not in problem
    assert "have 6 partitions on the broker, but the cluster routes with 4 shards (as p-app.cluster records)" in problem


def test_a_resharded_identity_says_so_and_an_older_one_has_no_such_field():
    assert "resharded_from" not in json.loads(_identity().encode())
    resharded = msgspec.structs.replace(_identity(shards=12), resharded_from=6)
    assert decode(resharded.encode(), TOPIC).resharded_from == 6
