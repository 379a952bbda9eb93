"""Fixtures for the API tests: tokens, the tiny model registered by name, and one real Celery
worker shared by a module's live tests (starting one costs seconds on the build machines)."""

import pytest

from studio.services import token_create
from tests.conftest import Worker
from tests.gallery.conftest import make_image  # noqa: F401 (a fixture)


@pytest.fixture
def token():
    """A raw API token for a user."""
    return lambda user: token_create(user=user, name="test")[1]


@pytest.fixture
def tiny(settings, tiny):
    """The tiny test model, as the default: prompts of at most 22 characters, 32×32."""
    settings.STUDIO_DEFAULT_MODEL = tiny
    return tiny


@pytest.fixture(scope="module")
def module_worker(django_db_setup, django_db_blocker):
    """A real worker on the test database for every live test of a module. The database is
    emptied between tests; the worker only claims what each test queues."""
    worker = Worker()
    worker.start()
    yield worker
    worker.stop()
