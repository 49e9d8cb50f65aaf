"""Wiring: the Faust app of a worker, with the engine service and the web views.

No logic lives here; see `pipeline.engine` for the event path.
"""

from __future__ import annotations

import logging
import secrets
import time
from pathlib import Path
from typing import Any

import faust

from streamguard.columnar.core import core_for
from streamguard.columnar.hashing import ColumnHashes
from streamguard.columnar.warm import warm_up
from streamguard.features.spec import FeatureSpec, load_features
from streamguard.features.table import EntityFeatures
from streamguard.kernels import checks, window
from streamguard.pipeline.columnar_engine import ColumnarEngine
from streamguard.pipeline.control import ControlReader
from streamguard.pipeline.engine import Engine
from streamguard.pipeline.item_engine import ItemEngine
from streamguard.pipeline.restore import state_lifetimes
from streamguard.pipeline.service import EngineService
from streamguard.privacy import Pseudonymizer
from streamguard.rules.program import Program
from streamguard.rules.spec import load_ruleset
from streamguard.settings import Settings
from streamguard.state.layout import adopt_state_dir
from streamguard.state.lock import lock_data_dir
from streamguard.topics.identity import app_topics, join_cluster
from streamguard.topics.names import TopicNames
from streamguard.verdicts import Detector

log = logging.getLogger(__name__)


def worker_id(data_dir: Path) -> str:
    """A stable id for the worker that owns `data_dir`: a restart fences its own predecessor."""
    path = data_dir / "worker-id"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_hex(6))
    return path.read_text().strip()


def create_app(settings: Settings) -> tuple[faust.App, EngineService]:
    """The Faust app and the engine service, to be started side by side by a `faust.Worker`.

    Raises (and nothing has consumed yet) if another worker holds the data
    directory, or if this one would route events otherwise than its cluster.

    The engine is a service of the worker, not of the app: app services start
    only once Faust's own consumer group has settled, which after a SIGKILL
    means waiting out the dead member's session; the engine has its own group.
    """
    data_dir = Path(settings.data_dir)
    lock_data_dir(data_dir)  # first: the directory is this worker's identity (its transactional id)
    _, names = app_topics(settings)  # the app's shard count, from the broker
    key = settings.require_hash_key()
    cluster = join_cluster(settings, names, key)  # refuses a key or shard count the cluster does not route with
    adopt_state_dir(data_dir / "state", cluster.encode(), resharded=cluster.resharded_from is not None)
    specs = load_features(settings.allowed_lateness_ms)
    window.warm_up()  # compile (or load) the kernels now, not at the first event
    checks.warm_up()
    engine, detector = _engine(settings, names, specs, key, worker_id(data_dir))
    control = ControlReader(settings, names, detector, specs, worker_id(data_dir))
    app = faust.App(
        f"{settings.app_id}-worker",
        broker=f"kafka://{settings.bootstrap.split(',')[0]}",
        datadir=str(data_dir / "faust"),
        web_port=settings.web_port,
        web_bind=settings.web_host,
        web_host=settings.web_host,
        broker_session_timeout=10,
        broker_heartbeat_interval=1,
    )
    service = EngineService(engine, control)

    @app.page("/streamguard/stats/")
    async def stats(web: Any, request: Any) -> Any:
        stall = round(service.max_stall_ms, 1)
        return web.json({"ready": engine.ready.is_set(), **engine.stats.as_dict(), "max_stall_ms": stall})

    @app.page("/streamguard/rules/")
    async def rules(web: Any, request: Any) -> Any:
        return web.json(control.status())

    return app, service


def _engine(
    settings: Settings, names: TopicNames, specs: list[FeatureSpec], key: bytes, worker: str
) -> tuple[Engine, Detector]:
    """The engine `settings.engine` names, and the detector whose ruleset and lists the control topics replace."""
    features = EntityFeatures(specs, settings.allowed_lateness_ms)
    lifetimes = state_lifetimes(features, settings.dedup_retention_s * 1000)
    if settings.engine == "columnar":
        started = time.perf_counter()
        warm_up(lambda: core_for(settings, names), names)  # numba's compilations, before any event
        log.info("the batch core's kernels are ready (%.1f s)", time.perf_counter() - started)
        columnar = Detector(Program(load_ruleset(specs), specs), ColumnHashes(key))
        engine = ColumnarEngine(settings, names, lambda: core_for(settings, names, columnar), lifetimes, worker)
        return engine, columnar
    pseudonymizer = Pseudonymizer(key)
    detector = Detector(Program(load_ruleset(specs), specs), pseudonymizer)
    return ItemEngine(settings, names, pseudonymizer, features, detector, worker), detector
