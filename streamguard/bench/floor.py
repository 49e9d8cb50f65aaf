"""The exactly-once floor of `streamguard bench`: a worker's transactions with no work in them.

One confluent-kafka process consumes the input topics and, for each poll,
runs one transaction shaped like a worker's: a small record per event on its
`verdicts.<type>` topic keyed by its `event_id`, one empty record on every
partition of the state changelog, and the consumed offsets. No validation, no
state, no rules. What an event waits here (produce -> verdict readable with
read_committed) is the least any processor that writes the contract's topics
exactly once can offer on this machine, whatever it computes. Runs until
SIGTERM:

    python -m streamguard.bench.floor --bootstrap B --prefix P --app-id A
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence

import orjson
from confluent_kafka import Consumer, Message, Producer, TopicPartition

from streamguard import kafka_config
from streamguard.settings import Settings
from streamguard.topics.names import TopicNames
from streamguard.topics.spec import load_specs

BATCH = 5000  # the worker's default STREAMGUARD_BATCH_MAX_EVENTS
TXN_TIMEOUT_S = 30.0
EMPTY_CHANGES = b"\x90"  # an empty msgpack list: a changelog record with no change in it


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--app-id", required=True)
    args = parser.parse_args(argv)
    stopping: list[bool] = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    names = TopicNames.resolve(load_specs(args.prefix, args.app_id), args.prefix, args.app_id)
    verdict_topic = {names.inputs[kind]: topic for kind, topic in names.verdicts.items()}
    settings = Settings(bootstrap=args.bootstrap, app_id=args.app_id)
    consumer = Consumer(kafka_config.floor_consumer(settings))
    producer = Producer(kafka_config.floor_producer(settings))
    producer.init_transactions(TXN_TIMEOUT_S)
    consumer.subscribe(list(names.inputs.values()))
    while not stopping:
        first = consumer.poll(0.1)
        if first is None:
            continue
        batch = [m for m in [first, *consumer.consume(BATCH - 1, 0)] if m.error() is None]
        if batch:
            _transact(consumer, producer, batch, verdict_topic, names)
    consumer.close()
    return 0


def _transact(
    consumer: Consumer, producer: Producer, batch: list[Message], verdict_topic: dict[str, str], names: TopicNames
) -> None:
    producer.begin_transaction()
    for message in batch:
        event_id = orjson.loads(message.value() or b"{}")["event_id"]
        verdict = orjson.dumps({"event_id": event_id})
        producer.produce(verdict_topic[message.topic() or ""], verdict, event_id.encode())
    for shard in range(names.shards):
        producer.produce(names.changelog, EMPTY_CHANGES, partition=shard)
    producer.send_offsets_to_transaction(_next_offsets(batch), consumer.consumer_group_metadata(), TXN_TIMEOUT_S)
    producer.commit_transaction(TXN_TIMEOUT_S)


def _next_offsets(batch: list[Message]) -> list[TopicPartition]:
    last: dict[tuple[str, int], int] = {}
    for message in batch:
        key = (message.topic() or "", message.partition() or 0)
        last[key] = max(last.get(key, -1), message.offset() or 0)
    return [TopicPartition(topic, partition, offset + 1) for (topic, partition), offset in last.items()]


if __name__ == "__main__":
    sys.exit(main())
