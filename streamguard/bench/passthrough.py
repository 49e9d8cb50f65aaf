"""The raw pass-through of `streamguard bench`: the practical limit of one process on this machine.

One confluent-kafka consumer batch-consumes the input topics, decodes each
event with orjson and produces one small record per event (keyed by its id)
to the output topic: no validation, no state, no transactions. Whatever a
Python Kafka processor does per event, it cannot beat this. Runs until
SIGTERM, then delivers what it holds and exits:

    python -m streamguard.bench.passthrough --bootstrap B --group G --output T IN [IN ...]
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from typing import Any

import orjson
from confluent_kafka import Consumer, Producer

from streamguard import kafka_config
from streamguard.settings import Settings

BATCH = 10_000


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("inputs", nargs="+")
    args = parser.parse_args(argv)
    stopping: list[bool] = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    settings = Settings(bootstrap=args.bootstrap)
    consumer = Consumer(kafka_config.passthrough_consumer(settings, args.group))
    producer = Producer(kafka_config.passthrough_producer(settings))
    consumer.subscribe(args.inputs)
    while not stopping:
        _pass_batch(consumer.consume(BATCH, 0.1), producer, args.output)
    left = producer.flush(30)
    consumer.close()
    return 1 if left else 0


def _pass_batch(batch: list[Any], producer: Producer, output: str) -> None:
    for message in batch:
        if message.error():
            continue
        event = orjson.loads(message.value())
        event_id = event["event_id"].encode()
        _produce(producer, output, event_id, orjson.dumps({"event_id": event["event_id"]}))
    producer.poll(0)


def _produce(producer: Producer, topic: str, key: bytes, value: bytes) -> None:
    while True:
        try:
            producer.produce(topic, value, key)
            return
        except BufferError:  # the local queue is full: let librdkafka deliver some
            producer.poll(0.05)


if __name__ == "__main__":
    sys.exit(main())
