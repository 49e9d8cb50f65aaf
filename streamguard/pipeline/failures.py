"""When processing one message or event raises: what is said about it, in the log and in its dead letter.

Bad input never stops the stream (guarantee 4): an exception while decoding,
deciding, counting or merging one event sends that event to the dead letters
(`sg-error: processing_error`) and the rest of the batch goes on. The log line
names the exception type and where it was raised, never its message or a field
of the event (they may hold raw identifiers); the dead letter's
`sg-error-detail` has the message.
"""

from __future__ import annotations

import logging
import traceback
from typing import Final

from streamguard.events import DeadLetterHeader as H
from streamguard.pipeline.records import Headers

log = logging.getLogger(__name__)


MAX_DETAIL_CHARS: Final = 1000


def describe(exc: BaseException) -> str:
    """The exception's type and message (its start): the `sg-error-detail` of its dead letter."""
    message = str(exc)
    if len(message) > MAX_DETAIL_CHARS:
        message = message[:MAX_DETAIL_CHARS] + "..."
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def log_failure(what: str, exc: BaseException) -> None:
    """Log an exception once, at ERROR: its type and traceback frames, without its message."""
    frames = "".join(traceback.format_tb(exc.__traceback__))
    log.error("%s raised %s; the event goes to the dead letters, the stream goes on:\n%s", what, type(exc).__name__,
              frames.rstrip())  # fmt: skip


def dead_letter_headers(code: str, detail: str, topic: str, partition: int, offset: int) -> Headers:
    """The `sg-*` headers of a dead letter for the input record at `topic` [`partition`] `offset`."""
    return [
        (H.ERROR, code.encode()),
        (H.DETAIL, detail.encode(errors="replace")),
        (H.SOURCE_TOPIC, topic.encode()),
        (H.SOURCE_PARTITION, str(partition).encode()),
        (H.SOURCE_OFFSET, str(offset).encode()),
    ]
