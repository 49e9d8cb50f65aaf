"""What the verifier reads: Kafka records as plain values, so the checks run on lists in tests."""

from __future__ import annotations

from dataclasses import dataclass

TP = tuple[str, int]  # (topic, partition)
Source = tuple[str, int, int]  # (topic, partition, offset): where an input record sits


@dataclass(frozen=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int | None = None  # the broker's timestamp (CreateTime unless the topic says otherwise)
    headers: tuple[tuple[str, bytes], ...] = ()

    @property
    def source(self) -> Source:
        return (self.topic, self.partition, self.offset)

    def header(self, name: str) -> str | None:
        """The last value of header `name`, as text, or None."""
        found = [value for key, value in self.headers if key == name]
        return found[-1].decode(errors="replace") if found else None


def where(source: Source) -> str:
    """A source as an operator reads it: `topic[partition]@offset`."""
    return f"{source[0]}[{source[1]}]@{source[2]}"
