"""The Quix Streams peer's own virtualenv, made on first use, and the peer process in it.

quixstreams 3.28.1 pins confluent-kafka < 2.13 and streamguard needs 2.16, so
the peer cannot share the project's venv. The bench makes one with the
system's `python3 -m venv` and pip (once; later runs reuse it) and runs
`quix_peer.py` there as a plain script, which is why that file imports
nothing of streamguard.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from streamguard.bench.processes import Child, run_tool, start
from streamguard.errors import StreamguardError

QUIXSTREAMS = "quixstreams==3.28.1"
PEER_SCRIPT = Path(__file__).with_name("quix_peer.py")
INSTALL_TIMEOUT_S = 900.0


def ensure_venv(venv: Path, base_python: str = "python3") -> Path:
    """The venv's python, with quixstreams installed; made if missing."""
    python = venv / "bin" / "python"
    if _has_quixstreams(python):
        return python
    print(f"bench: installing {QUIXSTREAMS} into {venv} (once)", flush=True)
    run_tool([base_python, "-m", "venv", str(venv)], INSTALL_TIMEOUT_S)
    run_tool([str(python), "-m", "pip", "install", "--quiet", QUIXSTREAMS], INSTALL_TIMEOUT_S)
    if not _has_quixstreams(python):
        raise StreamguardError(f"{QUIXSTREAMS} was installed into {venv} but does not import")
    return python


def _has_quixstreams(python: Path) -> bool:
    if not python.exists():
        return False
    check = [str(python), "-c", "import quixstreams; print(quixstreams.__version__)"]
    found = subprocess.run(check, capture_output=True, text=True, timeout=120)
    return found.returncode == 0 and found.stdout.strip() == QUIXSTREAMS.split("==")[1]


def start_peer(python: Path, spec: dict[str, object], workdir: Path) -> Child:
    """The peer, running on `spec` (see peer_spec.spec_document); its log in `workdir`."""
    spec_file = workdir / "quix-spec.json"
    spec_file.write_text(json.dumps(spec, indent=2))
    return start("the Quix Streams peer", [str(python), str(PEER_SCRIPT), str(spec_file)], workdir / "quix.log")
