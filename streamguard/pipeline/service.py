"""The engine as a service of the Faust worker.

The engine's Kafka clients are blocking (librdkafka), so it runs on a thread
of its own; this service starts it with the worker, stops it (finishing the
open transaction) when the worker stops, and crashes the worker if the engine
dies, so that a supervisor restarts it instead of it idling without a loop.

It also watches for a transaction that never ends. librdkafka's
`send_offsets_to_transaction` can block forever, past its timeout, when the
group coordinator went away (confluentinc/librdkafka#5456 and #5511, open);
seen here when the broker restarts. A blocked C call cannot be interrupted,
so the worker then replaces itself with a fresh copy of its own process
(same PID, same arguments): the new one fences the old transactional id,
which aborts the stuck transaction, and carries on from committed offsets.
A fatal producer error (a transaction the broker timed out while it was
away) is recovered from the same way.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time

from confluent_kafka import KafkaException
from mode import Service

from streamguard.pipeline.engine import Engine

log = logging.getLogger(__name__)

STUCK_AFTER_S = 60.0  # twice the engine's own timeout for any transactional call


class EngineService(Service):
    def __init__(self, engine: Engine) -> None:
        super().__init__()
        self.engine = engine
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    async def on_start(self) -> None:
        loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, args=(loop,), name="streamguard-engine", daemon=True)
        self._thread.start()
        self.add_future(self._watch())

    async def _watch(self) -> None:
        while not self.should_stop:
            await asyncio.sleep(1.0)
            started = self.engine.transaction_started
            if started is not None and time.monotonic() - started > STUCK_AFTER_S:
                log.error("a transaction has been open for over %.0f s: restarting this worker in place", STUCK_AFTER_S)
                restart_in_place()

    def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            self.engine.run(self._stop)
        except BaseException as exc:  # noqa: BLE001 - the engine's death must not go unnoticed
            if isinstance(exc, KafkaException) and exc.args[0].fatal():
                # E.g. the broker timed out a transaction while it was away: this producer is
                # done for, and a fresh process recovers from the committed state.
                log.error("fatal Kafka error, restarting this worker in place: %s", exc.args[0])
                restart_in_place()
            log.exception("the engine stopped on an error")
            asyncio.run_coroutine_threadsafe(self.crash(exc), loop)

    async def on_stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join)


def restart_in_place() -> None:
    """Replace this process with a fresh run of the same command (descriptors close on exec)."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os.execv(sys.executable, [sys.executable, "-m", "streamguard.cli", *sys.argv[1:]])
