"""What more shards cost: a worker's transaction, throughput and latency at several shard counts, on one broker.

    python -m streamguard.bench.shards --shards 6,24,48

For each count, on topics of its own (deleted at the end):

- **txn**: back-to-back transactions shaped like those of one worker that owns
  every shard and is busy enough to touch them all: a few verdicts, one
  changelog record on every shard, the offsets of every input and every
  shards partition (`Engine._offsets_to_commit`). Then the same without the
  changelog records (`offsets only`: a worker whose batches touch few shards).
  Kafka only, no worker: what the layout costs.
- **worker**: one worker drains pre-produced demo traffic (events/s between
  10% and 90% of the verdicts), then takes paced traffic at `--rate` for
  `--seconds` (produce -> verdict readable, p50 and p99); its transaction time
  sampled from its stats page (`last_commit_ms`) while paced; its peak RSS.
"""

from __future__ import annotations

import argparse
import os
import secrets
import socket
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition

from streamguard import kafka_config
from streamguard.bench import latency, outputs, topics, traffic
from streamguard.bench.worker import start_worker
from streamguard.settings import Settings, load
from streamguard.topics import admin
from streamguard.topics.names import TopicNames
from streamguard.topics.spec import load_specs

VERDICTS_PER_TXN = 20  # about what a transaction holds at 1,000 events/s
CHANGES_BYTES = 2000  # a changelog record of a few entities' windows
TXN_TIMEOUT_S = 30.0
WARMUP = 10  # transactions not counted: the first ones look partition leaders up


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shards", default="6,24,48", help="comma-separated shard counts")
    parser.add_argument("--transactions", type=int, default=200, help="transactions per shape and count")
    parser.add_argument("--events", type=int, default=30_000, help="events of the worker's drain")
    parser.add_argument("--rate", type=float, default=1000.0, help="events/s of the paced run")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the paced run")
    parser.add_argument("--no-worker", action="store_true", help="transactions only")
    parser.add_argument("--workdir", type=Path, default=Path(".run/bench-shards"))
    args = parser.parse_args(argv)
    settings = load(None)
    rows = []
    for shards in [int(n) for n in args.shards.split(",")]:
        run_id = f"s{secrets.token_hex(3)}"
        try:
            row = {"shards": shards, **_transactions(settings, run_id, shards, args.transactions)}
            if not args.no_worker:
                row |= _worker(settings, run_id, shards, args, args.workdir / run_id)
        finally:
            topics.delete_run_topics(admin.admin_client(settings), run_id)
        print(_format(row), flush=True)
        rows.append(row)
    print("\n".join(["", _header(), *map(_format, rows)]))
    return 0


def _transactions(settings: Settings, run_id: str, shards: int, count: int) -> dict[str, float]:
    prefix, app_id = f"{run_id}-", f"{run_id}a"
    admin.create_missing(admin.admin_client(settings), load_specs(prefix, app_id, shards=shards))
    names = TopicNames.resolve(load_specs(prefix, app_id, shards=shards), prefix, app_id)
    consumer = Consumer({**kafka_config.floor_consumer(settings), "group.id": app_id})
    consumer.subscribe([*names.inputs.values(), names.shard_topic])
    while not consumer.assignment():  # the group metadata is only good once the group has formed
        consumer.poll(0.2)
    producer = Producer({**kafka_config.floor_producer(settings), "transactional.id": f"{app_id}-txn"})
    producer.init_transactions(TXN_TIMEOUT_S)
    offsets = [TopicPartition(tp.topic, tp.partition, 0) for tp in consumer.assignment()]
    shapes = {"all_shards": shards, "offsets_only": 0}
    times: dict[str, list[float]] = {shape: [] for shape in shapes}
    for i in range(WARMUP + count):  # the shapes in turn, so that both see the same broker load
        for shape, touched in shapes.items():
            took = _transaction(producer, consumer, names, touched, offsets)
            if i >= WARMUP:
                times[shape].append(took)
    consumer.close()
    found = {}
    for shape, taken in times.items():
        taken.sort()
        found[f"{shape}_p50_ms"] = round(statistics.median(taken), 1)
        found[f"{shape}_p90_ms"] = round(latency.percentile(taken, 0.9), 1)
    return found


def _transaction(
    producer: Producer, consumer: Consumer, names: TopicNames, touched: int, offsets: list[TopicPartition]
) -> float:
    started = time.perf_counter()
    producer.begin_transaction()
    verdicts = list(names.verdicts.values())
    for i in range(VERDICTS_PER_TXN):
        producer.produce(verdicts[i % len(verdicts)], b"v" * 300, secrets.token_hex(8).encode())
    for shard in range(touched):
        producer.produce(names.changelog, b"c" * CHANGES_BYTES, partition=shard)
    producer.send_offsets_to_transaction(offsets, consumer.consumer_group_metadata(), TXN_TIMEOUT_S)
    producer.flush(TXN_TIMEOUT_S)
    producer.commit_transaction(TXN_TIMEOUT_S)
    return 1000 * (time.perf_counter() - started)


def _worker(settings: Settings, run_id: str, shards: int, args: argparse.Namespace, workdir: Path) -> dict[str, float]:
    prefix, app_id = f"{run_id}w-", f"{run_id}w"
    admin.create_missing(admin.admin_client(settings), load_specs(prefix, app_id, shards=shards))
    mix = traffic.traffic_for(args.events, 1, f"{run_id}e")
    sent = traffic.produce_all(settings, prefix, traffic.stamped(mix, args.events, 2000.0))
    reader = outputs.reader(settings, topics.verdict_topics(prefix), f"{prefix}reader")
    env = {
        "STREAMGUARD_BOOTSTRAP": settings.bootstrap,
        "STREAMGUARD_TOPIC_PREFIX": prefix,
        "STREAMGUARD_APP_ID": app_id,
        "STREAMGUARD_HASH_KEY": settings.hash_key or secrets.token_hex(16),
        "STREAMGUARD_SHARDS": str(shards),
        "PATH": os.environ.get("PATH", ""),
    }
    worker = start_worker(env, workdir / "worker", _free_port(), workdir / "worker.log")
    try:
        drained = outputs.drain(reader, sent.owed, worker.child.check_alive, 120.0)
        reader.close()
        clock = latency.VerdictClock(settings, topics.verdict_topics(prefix), f"{prefix}clock")
        send, done = latency.sender(settings, prefix, traffic.traffic_for(10_000, 2, f"{run_id}p"), lambda _: 0)
        commits: list[float] = []
        stop = threading.Event()
        sampler = threading.Thread(target=_sample_commits, args=(worker.stats, commits, stop), daemon=True)
        sampler.start()
        paced = latency.measure(clock, send, 1.0, args.rate, args.seconds, worker.child.check_alive)
        stop.set()
        sampler.join()
        done()
        clock.close()
        rss = worker.child.peak_rss_bytes()
    finally:
        worker.child.stop()
    commits.sort()
    return {
        "drain_events_per_s": round(drained.steady_rate()),
        "paced_p50_ms": paced.p50_ms,
        "paced_p99_ms": paced.p99_ms,
        "worker_txn_p50_ms": round(statistics.median(commits), 1) if commits else 0.0,
        "worker_txn_p90_ms": round(latency.percentile(commits, 0.9), 1) if commits else 0.0,
        "rss_mib": round(rss / 2**20),
    }


def _sample_commits(stats: Callable[[], dict[str, Any]], commits: list[float], stop: threading.Event) -> None:
    """`last_commit_ms` of the worker's stats page, every 50 ms, whenever its transaction count moved."""
    seen = -1
    while not stop.wait(0.05):
        page = stats()
        if page["transactions"] != seen:
            seen = page["transactions"]
            commits.append(float(page["last_commit_ms"]))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


COLUMNS = (
    ("shards", "shards"),
    ("all_shards_p50_ms", "txn p50"),
    ("all_shards_p90_ms", "txn p90"),
    ("offsets_only_p50_ms", "offs p50"),
    ("offsets_only_p90_ms", "offs p90"),
    ("drain_events_per_s", "drain ev/s"),
    ("paced_p50_ms", "paced p50"),
    ("paced_p99_ms", "paced p99"),
    ("worker_txn_p50_ms", "wtxn p50"),
    ("worker_txn_p90_ms", "wtxn p90"),
    ("rss_mib", "RSS MiB"),
)


def _header() -> str:
    return " ".join(f"{title:>10}" for _, title in COLUMNS)


def _format(row: dict[str, float]) -> str:
    return " ".join(f"{row[key]:>10}" if key in row else f"{'-':>10}" for key, _ in COLUMNS)


if __name__ == "__main__":
    sys.exit(main())
