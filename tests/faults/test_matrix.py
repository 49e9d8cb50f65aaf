"""The fault matrix: each scenario injects faults into real workers (and brokers), then verifies V1-V7.

Sized for a 2-core machine with the broker on it. `make faults` runs every
scenario; `make test` (and CI) runs those not marked `long_fault`.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from streamguard.events import TransactionEvent
from tests.faults import chaos, malformed
from tests.integration.harness import Broker, Cluster, Stack, make_events

pytestmark = pytest.mark.integration


def test_sigterm_and_sigkill_while_draining_a_backlog_with_bad_messages(stack: Stack):
    """Matrix 1: a rolling restart, and kills, during a catch-up (committed offsets must not pass held records)."""
    chaos.backlog(stack, 30_000, seed=11, rate=3.0)  # three hours of history: the merge holds records back
    worker = stack.start_worker("w1")
    for how in ("term", "term", "kill", "term", "kill"):
        time.sleep(2.0)
        worker = chaos.restart(stack, worker, "w1", how)
        worker.wait_ready()
    chaos.assert_exactly_once(chaos.settle_and_verify(stack))


def _kill_storm(stack: Stack, kills: int, fresh: bool, seconds: float) -> chaos.Played:
    names = ["w1", "w2"]
    workers = [stack.start_worker(n) for n in names]
    played = chaos.play(stack, rate=1000, seconds=seconds, seed=12)
    gap = seconds / (kills + 1)
    for i in range(kills):
        time.sleep(gap)
        n = i % 2
        workers[n] = chaos.restart(stack, workers[n], names[n], "kill", fresh=fresh)
        if i in (1, 4):  # killed again while it restores (before it is ready)
            time.sleep(1.0)
            workers[n] = chaos.restart(stack, workers[n], names[n], "kill", fresh=fresh)
    played.join()
    return played


def test_a_sigkill_storm_on_two_workers_at_1000_events_a_second(stack: Stack):
    """Matrix 2: eight kills (two of them while the worker restores), 1,000 events/s."""
    played = _kill_storm(stack, kills=6, fresh=False, seconds=50)
    chaos.assert_exactly_once(chaos.settle_and_verify(stack))
    print("detection under kills:", chaos.detection(stack, played))


@pytest.mark.long_fault
def test_a_sigkill_storm_restarting_on_fresh_data_directories(stack: Stack):
    """Matrix 3: the same, each restart on a new data directory (a lost volume): state comes from the changelog."""
    _kill_storm(stack, kills=6, fresh=True, seconds=50)
    chaos.assert_exactly_once(chaos.settle_and_verify(stack))


def test_a_frozen_worker_that_comes_back_after_its_partitions_moved(stack: Stack):
    """Matrix 4: SIGSTOP for 5, 12 and 25 s, then SIGCONT, at 1,000 events/s (a zombie must not commit stale state)."""
    one, _ = stack.start_worker("w1"), stack.start_worker("w2")
    played = chaos.play(stack, rate=1000, seconds=60, seed=13)
    for seconds in (5, 12, 25):
        time.sleep(3.0)
        chaos.freeze(one, seconds)
    played.join()
    chaos.assert_exactly_once(chaos.settle_and_verify(stack))


def test_scaling_up_and_down_during_a_skewed_backlog(stack: Stack):
    """Matrix 5: 1 -> 2 -> 3 -> 2 -> 1 workers over a backlog whose partitions the merge must pause."""
    chaos.backlog(stack, 20_000, seed=14)
    small_buffer = {"STREAMGUARD_PARTITION_BUFFER": "200"}  # so the merge pauses partitions, as a big backlog would
    workers = [stack.start_worker("w1", env=small_buffer)]
    for name in ("w2", "w3"):
        time.sleep(3.0)
        workers.append(stack.start_worker(name, env=small_buffer))
    for worker in (workers.pop(), workers.pop()):
        time.sleep(3.0)
        assert worker.terminate(120) == 0
    assert workers[0].stats()["pauses"] > 0, "the scenario is meant to pause partitions"
    chaos.assert_exactly_once(chaos.settle_and_verify(stack))


def test_the_broker_killed_and_restarted_five_times_under_two_workers(stack: Stack, broker: Broker):
    """Matrix 6: kill -9 of the broker mid-stream, five times."""
    stack.start_worker("w1")
    stack.start_worker("w2")
    played = chaos.play(stack, rate=500, seconds=60, seed=15)
    for _ in range(5):
        time.sleep(6.0)
        assert broker.script("kill").returncode == 0
        time.sleep(1.0)
        started = broker.script("start")
        assert started.returncode == 0, started.stderr
    played.join()
    chaos.assert_exactly_once(chaos.settle_and_verify(stack, timeout=400))


def test_three_brokers_one_killed_mid_run_then_brought_back(cluster: Cluster, tmp_path: Path):
    """Matrix 7: replication 3, min.insync.replicas 2; a broker dies under two workers and comes back."""
    stack = Stack(cluster, tmp_path, replication=3)  # type: ignore[arg-type]  # a Cluster is a broker to the stack
    stack.create_topics()
    try:
        stack.start_worker("w1")
        stack.start_worker("w2")
        played = chaos.play(stack, rate=500, seconds=45, seed=16)
        time.sleep(12.0)
        cluster.kill(2)
        time.sleep(15.0)
        cluster.start_node(2)
        played.join()
        chaos.assert_exactly_once(chaos.settle_and_verify(stack, timeout=300))
    finally:
        stack.stop()


def test_bad_input_of_every_kind_interleaved_with_valid_events(stack: Stack):
    """Matrix 11: 10,000 generated malformed messages among valid ones: each dead-lettered whole, none lost."""
    valid = [(t, k, v) for t, k, v, _ in make_events(3000, "bad-mix")]
    bad = list(malformed.messages(10_000, seed=17))
    mixed = valid + bad
    random.Random(17).shuffle(mixed)
    stack.produce(mixed)
    stack.start_worker("w1")
    chaos.assert_exactly_once(chaos.settle_and_verify(stack))


def test_duplicates_across_partitions_and_minutes_get_no_second_verdict_and_count_once(stack: Stack):
    """Matrix 12: the same event ids re-sent on other partitions, a minute apart, under two workers."""
    stack.features = True
    stack.create_topics()
    events = make_events(2000, "dups")
    stack.start_worker("w1")
    stack.start_worker("w2")
    stack.produce((t, k, v) for t, k, v, _ in events)
    time.sleep(5.0)
    for partition in (1, 4):
        stack.produce(((t, k, v) for t, k, v, _ in events[::3]), partition=partition)
        time.sleep(30.0)
    chaos.wait_decided(stack)
    now = int(time.time() * 1000) + 60_000
    probes = [TransactionEvent(event_id=f"probe-{k}", ts=now, account_id=f"acct_{k}", amount=1, currency="CNY",
                               kind="refund", ip=f"10.{k % 7}.{k % 11}.{1 + k % 250}") for k in range(12)]  # fmt: skip
    chaos.assert_counted_once(stack, probes)


def test_events_ahead_of_the_clock_in_a_replay_through_two_workers(stack: Stack):
    """Three hours of history flooded through two workers, with events 3.5 minutes ahead of the clock among them."""
    ahead = [(t, k, v) for t, k, v, _ in make_events(10, "ahead", ts=int(time.time() * 1000) + 210_000)]
    chaos.backlog(stack, 20_000, seed=18, rate=2.0)
    stack.produce(ahead)
    stack.start_worker("w1")
    stack.start_worker("w2")
    chaos.assert_exactly_once(chaos.settle_and_verify(stack))
