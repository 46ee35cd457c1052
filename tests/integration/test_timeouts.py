"""The device-side timeouts (SPEC §3): a request head that does not arrive
within client_header_timeout is answered 408 header_timeout; a connection
with no request within idle_timeout (after its handshake, or between
keep-alive requests) is closed quietly.

request_timeout (SPEC §4, §5): a backend that does not answer within it
gets the device a 504 request_timeout, and the backend connection is closed,
never pooled. config.c refuses request_timeout <= 3540 s (the EAS
heartbeat; no lower value exists, for tests or otherwise), so the test runs
the real daemon with its default (3660 s) under libfaketime (Debian
libfaketime, LD_PRELOAD): once the request waits at a backend that never
answers, the test moves every process's clocks (monotonic ones included,
which libevent's timers follow) an hour and a bit ahead through
FAKETIME_TIMESTAMP_FILE. Nothing in the daemon knows about it; it only sees
an hour pass.
"""
import os
import re
import socket
import ssl
import threading
import time
import urllib.request

import pytest

from ekp import Proxy, access_records, lab_proxy, wait_until
from lab_fixtures import lab_session  # noqa: F401  (fixture)


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


# ---------------------------------------------------------------------------
# request_timeout

FAKETIME_LIB = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1"
REQUEST_TIMEOUT_S = 3660    # config.c's default, and no lower value is valid


class SilentBackend:
    """Plain HTTP on 127.0.0.1 that reads request heads and never answers.
    Each connection is numbered; heads[n] is what it got, closed[n] is set
    once the proxy closes it (EOF or reset)."""

    def __init__(self):
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(16)
        self.port = self.lsock.getsockname()[1]
        self.lock = threading.Lock()
        self.heads = {}
        self.closed = {}
        self.conns = []
        self.stopping = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while not self.stopping:
            try:
                c, _ = self.lsock.accept()
            except OSError:
                return
            with self.lock:
                n = len(self.conns) + 1
                self.conns.append(c)
                self.heads[n] = b""
                self.closed[n] = threading.Event()
            threading.Thread(target=self._serve, args=(c, n), daemon=True).start()

    def _serve(self, c, n):
        try:
            while True:
                d = c.recv(65536)
                if not d:
                    break
                with self.lock:
                    self.heads[n] += d
        except OSError:
            pass
        self.closed[n].set()

    def stop(self):
        self.stopping = True
        self.lsock.close()
        with self.lock:
            for c in self.conns:
                c.close()
        self.thread.join(5)


def metrics_text(p):
    with urllib.request.urlopen(f"http://127.0.0.1:{p.admin_port}/metrics",
                                timeout=10) as r:
        return r.read().decode()


def sample(text, name):
    """The value of sample name (with its labels, if any) in /metrics text;
    0 when absent (counters appear once they count something)."""
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0


@pytest.fixture
def timed_proxy(lab_session):
    """A lab proxy (real kcd tokens) in front of a SilentBackend, with the
    default request_timeout, its processes' clocks under the test's control
    (p.clock_file: libfaketime's offset, "+0" at start)."""
    if not os.access(FAKETIME_LIB, os.R_OK):
        raise AssertionError(f"{FAKETIME_LIB} missing: scripts/bootstrap installs "
                             f"libfaketime")
    be = SilentBackend()
    p = lab_proxy(lab_session, workers=1, settings={
        "server": {"request_timeout": None},
        "backend": {"servers": f"{lab_session.BACKEND_HOST}:{be.port}",
                    "connect_to": f"127.0.0.1:{be.port}", "tls": "off", "ca": None}})
    p.clock_file = p.path("faketime")
    with open(p.clock_file, "w") as f:
        f.write("+0\n")
    p.extra_env = {
        "LD_PRELOAD": FAKETIME_LIB,
        "FAKETIME_TIMESTAMP_FILE": p.clock_file,
        "FAKETIME_CACHE_DURATION": "1",     # re-read the offset every second
        # libfaketime is preloaded ahead of the ASan runtime (harmless here:
        # it only wraps clock functions)
        "ASAN_OPTIONS": "verify_asan_link_order=0",
    }
    p.backend = be
    try:
        p.start()
        yield p
        p.stop()
    finally:
        p.cleanup()
        be.stop()


def test_backend_silent_past_request_timeout_gets_504(timed_proxy):
    """A Ping whose backend never answers: nothing happens while the clocks
    stand still; an hour and a bit later (past request_timeout = 3660 s) the
    device gets 504 with Connection: close, the access log says
    request_timeout, the backend connection is closed rather than pooled,
    and /metrics counts the request."""
    p = timed_proxy
    assert "request_timeout" not in open(p.conf).read(), "the default is under test"
    s = connect(p)
    s.settimeout(60)
    body = b"\x03\x01\x6a\x00"
    s.sendall(b"POST /Microsoft-Server-ActiveSync?Cmd=Ping&User=alice&DeviceId=TMO1"
              b"&DeviceType=iPhone HTTP/1.1\r\nHost: proxy.example.test\r\n"
              b"Content-Type: application/vnd.ms-sync.wbxml\r\n"
              b"Content-Length: 4\r\n\r\n" + body)
    be = p.backend
    # the whole request reached the backend: the proxy now waits for it
    wait_until(lambda: any(h.endswith(b"\r\n\r\n" + body) and b"DeviceId=TMO1" in h
                           for h in be.heads.values()), 30, "the Ping at the backend")
    (n,) = [k for k, h in be.heads.items() if b"DeviceId=TMO1" in h]
    assert b"Authorization: Negotiate " in be.heads[n]
    m = metrics_text(p)
    assert sample(m, "eas_kcd_proxy_backend_connections_open") == 1, m
    # the wall clock has not moved past request_timeout: no answer yet
    s.settimeout(2.5)
    with pytest.raises(socket.timeout):
        s.recv(1)
    assert not be.closed[n].is_set()

    with open(p.clock_file, "w") as f:
        f.write(f"+{REQUEST_TIMEOUT_S + 60}\n")
    s.settimeout(60)
    data = read_all(s)
    s.close()
    assert data.startswith(b"HTTP/1.1 504 "), data
    assert b"Connection: close\r\n" in data and b"Content-Length: 0\r\n" in data, data

    rec = wait_until(lambda: [r for r in access_records(p) if r["device_id"] == "TMO1"],
                     15, "the Ping's access-log line")[-1]
    assert rec["reason"] == "request_timeout" and rec["status"] == 504, rec
    assert rec["username"] == "alice@EXAMPLE.TEST" and rec["eas_cmd"] == "Ping", rec
    p.wait_for_log(r"stream: 127\.0\.0\.1 alice@EXAMPLE\.TEST: 504 request_timeout")

    # the backend connection was closed, not kept in the pool for alice
    assert be.closed[n].wait(15), "the backend connection stayed open after the 504"
    m = metrics_text(p)
    assert sample(m, 'eas_kcd_proxy_requests_total{reason="request_timeout",status="5xx"}') == 1, m
    assert sample(m, "eas_kcd_proxy_backend_pool_idle") == 0, m
    assert sample(m, "eas_kcd_proxy_backend_connections_open") == 0, m
    assert len(be.heads) == 1, "one backend connection, no retry of the Ping"
