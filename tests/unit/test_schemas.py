import json

from streamguard.schemas import schema_documents, write_schemas


def test_the_committed_schemas_match_the_structs():
    stale = write_schemas(check_only=True)
    assert stale == [], f"run `make schemas`: {stale}"


def test_the_login_schema_requires_the_contract_fields():
    doc = json.loads(schema_documents()["login.schema.json"])
    login = doc["$defs"]["LoginEvent"]
    assert {"event_id", "type", "ts", "account_id", "ip", "success"} <= set(login["required"])
