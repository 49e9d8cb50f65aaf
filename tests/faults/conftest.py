"""The fault matrix runs on the integration tests' broker and stacks (tests/integration/conftest.py)."""

from tests.integration.conftest import broker, cluster, stack  # noqa: F401 - fixtures, found by pytest by name
