"""The engine as a service of the Faust worker.

The engine's Kafka clients are blocking (librdkafka), so it runs on a thread
of its own; this service starts it with the worker, stops it (finishing the
open transaction) when the worker stops, and crashes the worker if the engine
dies, so that a supervisor restarts it instead of it idling without a loop.
"""

from __future__ import annotations

import asyncio
import logging
import threading

from mode import Service

from streamguard.pipeline.engine import Engine

log = logging.getLogger(__name__)


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

    def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            self.engine.run(self._stop)
        except BaseException as exc:  # noqa: BLE001 - any engine death must stop the worker
            log.exception("the engine stopped on an error")
            asyncio.run_coroutine_threadsafe(self.crash(exc), loop)

    async def on_stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join)
