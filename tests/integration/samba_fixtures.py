"""pytest fixtures for the Samba AD lab (see samba_lab.py).

Use them from a test file with
    from samba_fixtures import samba, samba_session   # noqa: F401  (fixtures)

* samba_session: one SambaLab for the whole pytest session (provisioned
  once, about 10 s), stopped by pid at the end, also after failures.
* samba: that same lab, running: a test that stopped the DC (the directory
  "going away") gets it started again before the next test uses it.
"""

import pytest

from samba_lab import SambaLab


@pytest.fixture(scope="session")
def samba_session():
    dc = SambaLab()
    dc.start()
    try:
        yield dc
    finally:
        dc.stop()


@pytest.fixture
def samba(samba_session):
    samba_session.start_samba()
    return samba_session
