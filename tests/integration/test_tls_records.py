"""How the device's TLS records arrive never decides whether a request is
answered (src/stream.c, "Reading the device"). The proxy reads the device
with OpenSSL's read-ahead on, one read(2) per record or more: records read
ahead behind the one being served wait in OpenSSL's buffer, where epoll
cannot see them, and must be taken before the proxy waits on the socket
again. Here the device makes its TLS records itself (ssl.MemoryBIO), so a
test chooses what each record holds and how the records are cut into TCP
segments:

* two or three requests, each its own record, in one TCP segment;
* one request split across several records, in one segment or several;
* one record split across segments, in its 5-byte header and in its body,
  with the next request's record in the last segment;
* records that arrive while reading is paused: behind a slow request,
  more than a request head's worth (the proxy stops reading until the
  answer), and an upload to a backend that does not read for a while
  (back-pressure), with the next request's record right after the body.

Every answer must come, in order and on the same connection, within the
socket timeout; a proxy that leaves a record unread in OpenSSL's buffer
waits on a quiet socket and the test fails on that timeout.
"""
import hashlib
import json
import os
import socket
import ssl
import threading
import time

import pytest

from ekp import lab_proxy
from lab_fixtures import lab_session  # noqa: F401  (fixture)
from test_proxy_http import HOST, Device, eas_target, head, scripted_settings

EAS = "/Microsoft-Server-ActiveSync"
MB = 1024 * 1024
TIMEOUT = 15        # s: a stalled connection fails the test, not the run


class RecordDevice(Device):
    """A device whose TLS records are made here: records(*parts) gives the
    bytes of one record per part (parts up to 16 KiB), raw(data) sends
    bytes as they are. Answers are read and parsed as Device does."""

    def __init__(self, proxy, cert, timeout=TIMEOUT):
        ctx = ssl.create_default_context(cafile=proxy.server_ca.cert)
        ctx.load_cert_chain(cert.cert, cert.key)
        self.inc = ssl.MemoryBIO()
        self.out = ssl.MemoryBIO()
        self.tls = ctx.wrap_bio(self.inc, self.out, server_hostname=HOST)
        self.sock = socket.create_connection(("127.0.0.1", proxy.port), timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.eof = False
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self.sock.sendall(self.out.read())
                d = self.sock.recv(65536)
                if not d:
                    raise ConnectionError("the proxy closed during the handshake")
                self.inc.write(d)
        self.sock.sendall(self.out.read())

    def records(self, *parts):
        out = []
        for p in parts:
            assert 0 < len(p) <= 16384
            self.tls.write(p)
            out.append(self.out.read())
        return b"".join(out)

    def raw(self, data):
        self.sock.sendall(data)

    def send(self, data):
        """data in records of up to 16 KiB (Device.request uses it)."""
        self.raw(self.records(*[data[i:i + 16384] for i in range(0, len(data), 16384)]))

    def _fill(self):
        while True:
            try:
                d = self.tls.read(256 * 1024)
            except ssl.SSLWantReadError:
                d = None
            except ssl.SSLZeroReturnError:
                d = b""
            if d:
                self.buf += d
                return
            if d == b"":
                self.eof = True
                raise ConnectionError("the proxy closed the connection")
            try:
                raw = self.sock.recv(256 * 1024)
            except (socket.timeout, TimeoutError):
                raise AssertionError(f"no answer within {TIMEOUT} s: a record "
                                     "left unread?") from None
            if not raw:
                self.eof = True
                raise ConnectionError("the proxy closed the connection")
            self.inc.write(raw)


@pytest.fixture(scope="module")
def proxy(lab_session):
    p = lab_proxy(lab_session, workers=1)
    p.alice = p.device_cert("alice")
    p.start()
    yield p
    p.stop()
    p.cleanup()


def get(device):
    return head("GET", eas_target(device=device))


def answered(d, *devices):
    """The next answers are the echoes of requests from devices, in order."""
    for dev in devices:
        r = d.read_response("GET")
        assert r.status == 200, f"{dev}: {r.status}"
        assert f"DeviceId={dev}" in r.json()["query"], f"{dev}: {r.json()['query']}"
        assert not r.closed


def still_serving(d, tag):
    """The same connection answers one more request, sent plainly."""
    assert d.request("GET", eas_target(device=f"{tag}Z")).status == 200


def test_requests_each_in_a_record_in_one_segment(proxy):
    with RecordDevice(proxy, proxy.alice) as d:
        d.raw(d.records(get("SEG2A"), get("SEG2B")))
        answered(d, "SEG2A", "SEG2B")
        d.raw(d.records(get("SEG3A"), get("SEG3B"), get("SEG3C")))
        answered(d, "SEG3A", "SEG3B", "SEG3C")
        still_serving(d, "SEG")


@pytest.mark.parametrize("segments", ["one", "each"])
def test_request_split_across_records(proxy, segments):
    """A head cut in four records (one cut inside the final CRLF CRLF),
    alone; then a POST whose head and body are in records of their own,
    and a GET. In one segment each, or a segment per record."""
    tag = f"SPL{segments}"
    h = get(f"{tag}A")
    cuts = [0, 7, len(h) // 2, len(h) - 3, len(h)]
    body = os.urandom(30000)
    post = head("POST", eas_target("SendMail", device=f"{tag}B"), body_len=len(body))
    first = [h[a:b] for a, b in zip(cuts, cuts[1:])]
    then = [post, body[:10000], body[10000:25000], body[25000:], get(f"{tag}C")]
    with RecordDevice(proxy, proxy.alice) as d:
        for parts in (first, then):
            if segments == "one":
                d.raw(d.records(*parts))
            else:
                for p in parts:
                    d.raw(d.records(p))
                    time.sleep(0.05)
            if parts is first:
                answered(d, f"{tag}A")
        r = d.read_response("POST")
        assert r.status == 200
        assert r.json()["body_sha256"] == hashlib.sha256(body).hexdigest()
        answered(d, f"{tag}C")
        still_serving(d, tag)


@pytest.mark.parametrize("cut", [2, 5, 40])
def test_record_split_across_segments(proxy, cut):
    """One request's record in three segments (the first cut inside the
    record header for 2, right after it for 5, in the body for 40), the
    next request's whole record in the last segment with the tail."""
    tag = f"CUT{cut}"
    with RecordDevice(proxy, proxy.alice) as d:
        rec = d.records(get(f"{tag}A"))
        nxt = d.records(get(f"{tag}B"))
        d.raw(rec[:cut])
        time.sleep(0.2)
        d.raw(rec[cut:len(rec) - 10])
        time.sleep(0.2)
        d.raw(rec[len(rec) - 10:] + nxt)
        answered(d, f"{tag}A", f"{tag}B")
        still_serving(d, tag)


def test_records_behind_a_slow_request_while_reading_is_paused(proxy):
    """A request the backend answers after 1 s, and in the same segment
    behind it a POST with a 100 KB body in 1,000-byte records and a GET:
    more than max_header_size (32 KiB) waits, so the proxy stops reading
    the device until the first answer, then takes the rest."""
    body = os.urandom(100000)
    slow = head("GET", f"{EAS}/sleep?seconds=1&DeviceId=PAUSE1")
    post = head("POST", eas_target("SendMail", device="PAUSE2"), body_len=len(body))
    parts = [slow, post] + [body[i:i + 1000] for i in range(0, len(body), 1000)] + \
        [get("PAUSE3")]
    with RecordDevice(proxy, proxy.alice) as d:
        d.raw(d.records(*parts))
        answered(d, "PAUSE1")
        r = d.read_response("POST")
        assert r.status == 200
        assert r.json()["body_length"] == len(body)
        assert r.json()["body_sha256"] == hashlib.sha256(body).hexdigest()
        answered(d, "PAUSE3")
        still_serving(d, "PAUSE")


class LateReader:
    """A plain HTTP/1.1 backend (keep-alive) that waits `delay` seconds
    after each request head before it reads the body, then answers with the
    body's length and SHA-256 as JSON, and the query."""

    def __init__(self, delay):
        self.delay = delay
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(16)
        self.port = self.lsock.getsockname()[1]
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def stop(self):
        self.lsock.close()
        self.thread.join(5)

    def _accept(self):
        while True:
            try:
                c, _ = self.lsock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        buf = bytearray()
        c.settimeout(60)
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    d = c.recv(65536)
                    if not d:
                        return
                    buf += d
                i = buf.index(b"\r\n\r\n")
                lines = bytes(buf[:i]).decode("latin-1").split("\r\n")
                del buf[:i + 4]
                n = 0
                for ln in lines[1:]:
                    k, _, v = ln.partition(":")
                    if k.strip().lower() == "content-length":
                        n = int(v)
                if n:
                    time.sleep(self.delay)
                h = hashlib.sha256()
                left = n
                while left:
                    if not buf:
                        d = c.recv(256 * 1024)
                        if not d:
                            return
                        buf += d
                    k = min(left, len(buf))
                    h.update(buf[:k])
                    del buf[:k]
                    left -= k
                query = lines[0].split(" ")[1].partition("?")[2]
                doc = json.dumps({"body_length": n, "body_sha256": h.hexdigest(),
                                  "query": query}).encode()
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                          b"Content-Length: %d\r\n\r\n" % len(doc) + doc)
        except OSError:
            return
        finally:
            c.close()


@pytest.fixture(scope="module")
def late(lab_session):
    be = LateReader(delay=1.5)
    p = lab_proxy(lab_session, workers=1, settings=scripted_settings(lab_session, be))
    p.alice = p.device_cert("alice")
    p.start()
    try:
        yield p
        p.stop()
    finally:
        p.cleanup()
        be.stop()


@pytest.mark.parametrize("record", [16384, 3000])
def test_upload_paused_by_back_pressure_then_resumed(late, record):
    """A 24 MiB body in records of `record` bytes to a backend that reads
    nothing for 1.5 s: the proxy stops reading the device (back-pressure)
    and resumes when the backend drains; the next request's record comes
    right behind the body's last one, in the same segment."""
    tag = f"BP{record}"
    body = os.urandom(24 * MB)
    with RecordDevice(late, late.alice, timeout=60) as d:
        first = head("POST", eas_target("SendMail", device=f"{tag}A"), body_len=len(body))
        d.raw(d.records(first))
        end = len(body) - 1000
        for i in range(0, end, 64 * record):
            stop = min(i + 64 * record, end)
            d.raw(d.records(*[body[k:min(k + record, stop)]
                              for k in range(i, stop, record)]))
        d.raw(d.records(body[end:], get(f"{tag}B")))
        r = d.read_response("POST")
        assert r.status == 200
        assert r.json()["body_length"] == len(body)
        assert r.json()["body_sha256"] == hashlib.sha256(body).hexdigest()
        answered(d, f"{tag}B")
