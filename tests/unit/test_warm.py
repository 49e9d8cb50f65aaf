"""A worker's warm-up (`columnar.warm`): every path of the batch core has run once before the first event."""

from __future__ import annotations

from streamguard.columnar.warm import warm_up
from tests.local import NAMES
from tests.unit.test_columnar_cluster import _core


def test_the_warm_up_decides_exchanges_records_snapshots_and_restores_on_throwaway_cores():
    cluster = warm_up(_core, NAMES)
    verdicts = [out for out in cluster.outputs if out.topic in NAMES.verdicts.values()]
    assert len(verdicts) > 300 and any(out.topic == NAMES.deadletter for out in cluster.outputs)
    assert cluster.shards_topic(), "work went between the two simulated workers"
    assert all(any(is_snapshot for is_snapshot, _ in log) for log in cluster.changelog.values())
    restored = cluster.workers[0].core
    assert sum(restored.state.entity_counts().values()) > 0 and cluster.pending() == 0
