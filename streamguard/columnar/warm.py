"""The batch core's kernels made ready before a worker reads anything.

numba compiles a kernel at its first call, or loads it from its cache
(`__pycache__`, written the first time): about 25 s for all of them on a
2-core machine the first time, a few hundred milliseconds once cached. A
worker that met that at its first batch held its first verdicts back by
that much, with events queueing behind. So a worker first plays a little
demo traffic through two simulated workers (`driver.Cluster`): every
kernel of deciding, of the work between shards, of the change records and
snapshots, and of a restore runs once, on state that is then thrown away.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from streamguard.columnar.core import BatchCore
from streamguard.columnar.driver import Cluster
from streamguard.demo.traffic import DemoTraffic
from streamguard.topics.names import TopicNames

EVENTS = 400
EVENT_EVERY_MS = 20


def warm_up(make_core: Callable[[], BatchCore], names: TopicNames) -> Cluster:
    """Run every kernel once on throwaway cores made by `make_core`; the simulated workers that ran them."""
    workers = min(2, names.shards)  # with two, events wait for the other's shards and their answers
    cluster = Cluster(names, make_core, workers, batch_max_events=100, snapshot_every=2)
    traffic = DemoTraffic(seed=0, run="warm-up")
    now = int(time.time() * 1000)
    for i in range(EVENTS):
        message = traffic.next_message(now - EVENT_EVERY_MS * (EVENTS - i))
        cluster.produce(message.topic.split(".")[-1], message.value, message.key, partition=i % cluster.partitions)
    cluster.now_ms = now
    cluster.run()
    cluster.crash(0)  # its shards restored from their snapshots and changes
    return cluster
