"""JSON Schemas of the events, generated from the Structs into `topics/schemas/`.

The Structs are the source of truth; the files are for the apps that produce
events. A test fails when they are stale (`streamguard schemas` rewrites them).
"""

from __future__ import annotations

import json
from pathlib import Path

import msgspec

from streamguard.events import EVENT_CLASSES, Verdict
from streamguard.topics.spec import default_dir


def schema_documents() -> dict[str, str]:
    """File name -> JSON text, for every event type and the verdict."""
    docs = {f"{kind}.schema.json": msgspec.json.schema(cls) for kind, cls in EVENT_CLASSES.items()}
    docs["verdict.schema.json"] = msgspec.json.schema(Verdict)
    return {name: json.dumps(doc, indent=2, sort_keys=True) + "\n" for name, doc in docs.items()}


def write_schemas(check_only: bool = False, directory: Path | None = None) -> list[Path]:
    """The files that differ from the Structs; rewritten unless `check_only`."""
    directory = directory or default_dir() / "schemas"
    stale = []
    for name, text in schema_documents().items():
        path = directory / name
        if not path.exists() or path.read_text() != text:
            stale.append(path)
            if not check_only:
                directory.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
    return stale
