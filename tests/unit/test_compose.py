"""docker-compose.yml cannot run here (no Docker engine); check what can be checked."""

from pathlib import Path

import yaml

from streamguard.settings import load, unknown_env

ROOT = Path(__file__).resolve().parents[2]


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_it_parses_and_has_broker_topics_workers_and_demo():
    services = _compose()["services"]
    assert {"kafka", "topics", "worker-1", "worker-2", "demo"} <= set(services)
    assert services["kafka"]["image"].startswith("apache/kafka:4.")
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"


def test_every_streamguard_variable_it_sets_is_a_setting():
    for name, service in _compose()["services"].items():
        env = {k: str(v) for k, v in (service.get("environment") or {}).items()}
        ours = {
            k: v.replace("${STREAMGUARD_HASH_KEY:-", "").rstrip("}")
            for k, v in env.items()
            if k.startswith("STREAMGUARD_")
        }
        assert unknown_env(ours) == [], name
        load(ours)  # parses: no variable has a value of the wrong type


def test_the_worker_image_builds_from_files_that_exist():
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    for line in dockerfile.splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), source
