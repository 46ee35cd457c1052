"""pytest fixtures shared by the integration tests.

* make_proxy(**kw): builds ekp.Proxy objects (not started); every one made is
  stopped at teardown (SIGTERM, bounded wait, SIGKILL by pid), its sanitizer
  logs checked and its directory removed (kept when EKP_KEEP=1).
* started_proxy: a started Proxy with two workers, for tests that only look.

The lab (KDC, slapd, Apache) has its own fixtures in lab_fixtures.py; these
do not depend on it.
"""

import pytest

from ekp import Proxy, stop_all


@pytest.fixture
def make_proxy():
    made = []

    def make(**kw):
        p = Proxy(**kw)
        made.append(p)
        return p

    yield make
    stop_all(made)


@pytest.fixture
def started_proxy(make_proxy):
    return make_proxy(workers=2).start()


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: a long real-time test, skipped unless EKP_SLOW=1")
