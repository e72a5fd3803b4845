"""Fixtures of the Microsoft fake; a test module or conftest star-imports them."""

import pytest

from portal.integrations.microsoft_tokens import CACHE
from tests.fakes.microsoft import MicrosoftFake


@pytest.fixture(scope="session")
def microsoft_server():
    fake = MicrosoftFake().start()
    yield fake
    fake.stop()


@pytest.fixture
def microsoft_fake(microsoft_server):
    """The fake in its initial state, and no token cached from another test."""
    microsoft_server.reset()
    CACHE.clear()
    yield microsoft_server
    CACHE.clear()
