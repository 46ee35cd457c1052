"""pytest fixtures for the integration lab (see lab.py).

Use them from a test file with
    from lab_fixtures import lab, lab_session   # noqa: F401  (fixtures)
(pytest puts tests/integration on sys.path: the directory has no
__init__.py, so the default "prepend" import mode applies.)

* lab_session: one Lab for the whole pytest session, stopped (by pid) at
  the end of the session, also when tests failed or were interrupted.
* lab: that same Lab, checked before each test: a KDC a previous test left
  stopped is started again, a dead slapd/apache2 fails the test loudly.
* private_lab: a Lab of its own for one test (about a second to build), for
  tests that change the world in ways others must not see.
"""

import pytest

from lab import Lab


@pytest.fixture(scope="session")
def lab_session():
    world = Lab()
    world.start()
    try:
        yield world
    finally:
        world.stop()


@pytest.fixture
def lab(lab_session):
    lab_session.start_kdc()
    lab_session.check_alive()
    return lab_session


@pytest.fixture
def private_lab():
    world = Lab()
    world.start()
    try:
        yield world
    finally:
        world.stop()
