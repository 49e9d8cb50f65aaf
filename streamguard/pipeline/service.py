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
away) is recovered from the same way. So is a broker that goes away while
the worker starts (`RestartingWorker`): Faust's own client gives up at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time

import faust
from aiokafka.errors import KafkaConnectionError
from confluent_kafka import KafkaException
from mode import Service

from streamguard.pipeline.control import ControlReader
from streamguard.pipeline.engine import Engine

log = logging.getLogger(__name__)

STUCK_AFTER_S = 60.0  # twice the engine's own timeout for any transactional call
STALL_WARNING_MS = 100.0
WATCH_EVERY_S = 0.1  # how often the watchdog looks (and how finely it times the event loop's stalls)
CONTROL_WAIT_S = 30.0  # how long the engine waits for the control topics before deciding anyway
START_AGAIN_AFTER_S = 1.0  # after the broker went away while the worker was starting


class EngineService(Service):
    def __init__(self, engine: Engine, control: ControlReader) -> None:
        super().__init__()
        self.engine = engine
        self.control = control
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.max_stall_ms = 0.0  # the longest the worker's event loop was late for a timer

    async def on_start(self) -> None:
        loop = asyncio.get_running_loop()
        self._threads = [
            threading.Thread(target=self._run_control, args=(loop,), name="streamguard-control", daemon=True),
            threading.Thread(target=self._run, args=(loop,), name="streamguard-engine", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        self.add_future(self._watch())

    async def _watch(self) -> None:
        while not self.should_stop:
            asleep = time.monotonic()
            await asyncio.sleep(WATCH_EVERY_S)
            late_ms = 1000 * (time.monotonic() - asleep - WATCH_EVERY_S)
            self.max_stall_ms = max(self.max_stall_ms, late_ms)  # the event loop woke up this late
            if late_ms > STALL_WARNING_MS:
                log.warning("the event loop woke up %.0f ms late (transaction open: %s)", late_ms,
                            self.engine.transaction_started is not None)  # fmt: skip
            started = self.engine.transaction_started
            if started is not None and time.monotonic() - started > STUCK_AFTER_S:
                log.error("a transaction has been open for over %.0f s: restarting this worker in place", STUCK_AFTER_S)
                restart_in_place()

    def _run_control(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            self.control.run(self._stop)
        except BaseException as exc:  # noqa: BLE001 - without it, rules and lists would silently freeze
            log.exception("the control reader stopped on an error")
            asyncio.run_coroutine_threadsafe(self.crash(exc), loop)

    def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self.control.caught_up.wait(CONTROL_WAIT_S):
            log.warning("control topics not read within %.0f s: deciding with the rules in force", CONTROL_WAIT_S)
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
        for thread in self._threads:
            await asyncio.get_running_loop().run_in_executor(None, thread.join)


class RestartingWorker(faust.Worker):
    """Faust's worker, started again in place when the broker went away while it was starting.

    Faust's client (aiokafka) gives up at the first refused connection. The
    broker answered a moment before (the worker read the cluster's identity
    from it), so it is restarting: the fresh process waits for it
    (`topics.admin.wait_for_broker`), and fails with a clear error if it
    stays away.
    """

    async def start(self) -> None:
        try:
            await super().start()
        except KafkaConnectionError as exc:
            log.warning("the broker went away while this worker was starting (%s): starting again", exc)
            await asyncio.sleep(START_AGAIN_AFTER_S)
            restart_in_place()


def restart_in_place() -> None:
    """Replace this process with a fresh run of the same command (descriptors close on exec)."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os.execv(sys.executable, [sys.executable, "-m", "streamguard.cli", *sys.argv[1:]])
