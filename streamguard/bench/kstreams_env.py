"""The Kafka Streams peer's jar, built with Maven on first use (and again when its source changes), and its process.

The peer is a small Maven project in `bench/kstreams/` (Kafka Streams from
Maven Central). The bench builds it once with `mvn -B -q package` into a
directory of its own (`.run/bench/kstreams` by default: `peer.jar` and its
dependencies in `lib/`) and later runs reuse the jar while it is newer than
every file of the project. The peer runs on the JVM in `PATH`, reading the
same spec as the Quix peer (see `peer_spec`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from streamguard.bench.processes import Child, run_tool, start
from streamguard.errors import StreamguardError

PROJECT = Path(__file__).resolve().parents[2] / "bench" / "kstreams"
BUILD_TIMEOUT_S = 900.0
HEAP = "-Xmx1g"  # the record caches (10 MiB) and RocksDB's block cache (off heap) need little of it


def ensure_jar(build: Path) -> Path:
    """The peer's jar in `build`, built if missing or older than the project's files."""
    jar = build / "peer.jar"
    if not (PROJECT / "pom.xml").exists():
        raise StreamguardError(f"the Kafka Streams peer's project is not at {PROJECT} (a source checkout has it)")
    if jar.exists() and jar.stat().st_mtime >= _newest_source():
        return jar
    print(f"bench: building the Kafka Streams peer with Maven into {build} (once)", flush=True)
    mvn = [_tool("mvn"), "-B", "-q", "-Dstyle.color=never", "-f", str(PROJECT / "pom.xml")]
    run_tool([*mvn, f"-Dpeer.build={build.resolve()}", "package"], BUILD_TIMEOUT_S)
    if not jar.exists():
        raise StreamguardError(f"Maven built the Kafka Streams peer but {jar} is missing")
    return jar


def _newest_source() -> float:
    return max(p.stat().st_mtime for p in [PROJECT / "pom.xml", *(PROJECT / "src").rglob("*")] if p.is_file())


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise StreamguardError(f"the Kafka Streams peer needs `{name}` in PATH (Java 17 and Maven)")
    return found


def start_peer(jar: Path, spec: dict[str, object], workdir: Path) -> Child:
    """The peer, running on `spec` (see peer_spec.spec_document); its log in `workdir`."""
    spec_file = workdir / "kstreams-spec.json"
    spec_file.write_text(json.dumps(spec, indent=2))
    argv = [_tool("java"), HEAP, "-jar", str(jar), str(spec_file)]
    return start("the Kafka Streams peer", argv, workdir / "kstreams.log")
