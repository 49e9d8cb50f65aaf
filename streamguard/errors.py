"""The one error hierarchy of streamguard.

Every error says whether retrying can help (`retriable`), as aiokafka's do, so
callers decide between backing off and giving up without parsing messages.
"""

from __future__ import annotations


class StreamguardError(Exception):
    """Root of every error streamguard raises on purpose."""

    retriable = False


class ConfigError(StreamguardError):
    """A setting, topic or feature definition is wrong; fix it and restart."""


class ClusterMismatch(ConfigError):
    """This worker would route events differently from its cluster (another hash key or shard count)."""


class DataDirInUse(StreamguardError):
    """Another live process holds this worker's data directory (its identity); retry once it has exited."""

    retriable = True


class InvalidEvent(StreamguardError):
    """A message is not a valid event; it goes to the dead-letter topic.

    `code` is the short machine-readable reason (the `sg-error` header) and
    `detail` the human text with the JSON path where there is one.
    """

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


class BrokerError(StreamguardError):
    """Kafka refused or did not answer; usually worth retrying."""

    retriable = True


class AppBusy(StreamguardError):
    """An offline operation (re-sharding) found workers running or work in flight; retry once they have finished."""

    retriable = True
