"""The device-side timeouts (SPEC §3): a request head that does not arrive
within client_header_timeout is answered 408 header_timeout; a connection
with no request within idle_timeout (after its handshake, or between
keep-alive requests) is closed quietly. request_timeout (the backend's
answer, > 3540 s by the config's rule so a Ping's heartbeat fits) is covered
by the parked-request tests of test_proxy_http.py."""
import socket
import ssl
import time

import pytest

from ekp import Proxy, access_records, wait_until


@pytest.fixture(scope="module")
def proxy():
    p = Proxy(workers=1)
    p.access_log = p.path("access.log")
    p.write_config(settings={"server": {"client_header_timeout": "2s", "idle_timeout": "2s"},
                             "log": {"access_log": p.access_log, "access_format": "json"}})
    p.start()
    yield p
    p.stop()


def connect(p):
    dev = p.device_cert("alice")
    ctx = ssl.create_default_context(cafile=p.server_ca.cert)
    ctx.check_hostname = False
    ctx.load_cert_chain(dev.cert, dev.key)
    raw = socket.create_connection(("127.0.0.1", p.port), timeout=15)
    return ctx.wrap_socket(raw, server_hostname="proxy.example.test")


def read_all(s):
    data = b""
    while True:
        try:
            chunk = s.recv(4096)
        except (ssl.SSLError, ConnectionResetError):
            break
        if not chunk:
            break
        data += chunk
    return data


def test_slow_request_head_gets_408(proxy):
    s = connect(proxy)
    t0 = time.monotonic()
    s.sendall(b"GET /Microsoft-Server-ActiveSync?Cmd=Ping HTTP/1.1\r\nHost: proxy.exa")
    data = read_all(s)
    waited = time.monotonic() - t0
    s.close()
    assert data.startswith(b"HTTP/1.1 408 "), data
    assert b"Connection: close" in data
    assert waited < 12, "the header timeout must end the wait"
    rec = wait_until(lambda: [r for r in access_records(proxy) if r["reason"] == "header_timeout"],
                     10, "an access-log line with header_timeout")[-1]
    assert rec["status"] == 408 and rec["username"] == "alice@EXAMPLE.TEST"


def test_connection_without_a_request_is_closed_after_idle_timeout(proxy):
    before = len(access_records(proxy))
    s = connect(proxy)
    t0 = time.monotonic()
    data = read_all(s)
    waited = time.monotonic() - t0
    s.close()
    assert data == b"", "an idle connection gets no answer, just a close"
    assert 1.0 < waited < 12, waited
    proxy.wait_for_log(r"connection closed: idle_timeout")
    time.sleep(1.2)     # the access log is flushed every second
    assert len(access_records(proxy)) == before, "no request, so no access-log line"
