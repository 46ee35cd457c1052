"""[server] proxy_protocol = on behind a real HAProxy (Debian haproxy, mode
tcp), the documented scale-out path (docs/deployment.md): the device's TLS
passes through the balancer untouched and the PROXY v2 (send-proxy-v2) or
v1 (send-proxy) header tells the proxy who the device is.

The device connects from 127.0.0.2 (HAProxy from 127.0.0.1), so the access
log's c-ip, the error log and the X-Forwarded-For that Exchange sees can
only show 127.0.0.2 if the header was read and used. Direct connections,
which carry no header, come from 127.0.0.3 and must be refused with
bad_proxy_protocol.
"""
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time

import pytest

import device
from ekp import access_records, free_port, lab_proxy, listening_inodes, wait_until
from lab_fixtures import lab, lab_session  # noqa: F401  (fixtures)

DEVICE_IP = "127.0.0.2"
DIRECT_IP = "127.0.0.3"
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"


class HAProxy:
    """haproxy -db with its own config in a temp dir: one frontend per
    PROXY protocol version, each to the proxy's port; stopped by pid."""

    def __init__(self, target_port):
        self.dir = tempfile.mkdtemp(prefix="ekp-haproxy-")
        self.port_v2 = free_port()
        self.port_v1 = free_port()
        self.conf = os.path.join(self.dir, "haproxy.cfg")
        self.log = os.path.join(self.dir, "haproxy.log")
        with open(self.conf, "w") as f:
            f.write(f"""global
    maxconn 256

defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s

frontend devices_v2
    bind 127.0.0.1:{self.port_v2}
    default_backend eas_v2

backend eas_v2
    server ekp 127.0.0.1:{target_port} send-proxy-v2

frontend devices_v1
    bind 127.0.0.1:{self.port_v1}
    default_backend eas_v1

backend eas_v1
    server ekp 127.0.0.1:{target_port} send-proxy

# health checks as HAProxy makes them with check-send-proxy: connect, PROXY
# v2 LOCAL, reset
backend health
    server ekp 127.0.0.1:{target_port} send-proxy-v2 check check-send-proxy inter 300ms
""")
        self.proc = None

    def start(self):
        if not os.access(HAPROXY, os.X_OK):
            raise AssertionError(f"no haproxy at {HAPROXY}: run scripts/bootstrap")
        check = subprocess.run([HAPROXY, "-c", "-f", self.conf], capture_output=True, text=True)
        assert check.returncode == 0, f"haproxy -c: {check.stdout}{check.stderr}"
        self._fh = open(self.log, "ab")
        self.proc = subprocess.Popen([HAPROXY, "-db", "-f", self.conf],
                                     stdin=subprocess.DEVNULL, stdout=self._fh,
                                     stderr=subprocess.STDOUT)
        for port in (self.port_v2, self.port_v1):
            def up(port=port):
                if self.proc.poll() is not None:
                    raise AssertionError(f"haproxy exited {self.proc.returncode}: "
                                         f"{open(self.log).read()}")
                # no test connection: it would reach the proxy as a device
                return bool(listening_inodes(port))
            wait_until(up, 10, f"haproxy listening on {port}")
        return self

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, 15)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, 9)
                self.proc.wait(5)
        if self.proc is not None:
            self._fh.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def behind_haproxy(lab_session):  # noqa: F811
    p = lab_proxy(lab_session, workers=1,
                  settings={"server": {"proxy_protocol": "on",
                                       "client_header_timeout": "2s"}})
    p.start()
    h = HAProxy(p.port).start()
    try:
        yield p, h
    finally:
        h.stop()
        p.stop()
        if not os.environ.get("EKP_KEEP"):
            shutil.rmtree(p.dir, ignore_errors=True)


def record_for(p, pred, what):
    return wait_until(lambda: [r for r in access_records(p) if pred(r)], 10, what)[-1]


@pytest.mark.parametrize("version", [2, 1], ids=["send-proxy-v2", "send-proxy"])
def test_a_device_behind_haproxy_is_logged_and_forwarded_with_its_own_address(
        behind_haproxy, lab, version):  # noqa: F811
    p, h = behind_haproxy
    port = h.port_v2 if version == 2 else h.port_v1
    dev = f"PP{version}DEV"
    r = device.request(port, p.device_cert("alice"), p.server_ca.cert,
                       device.eas_target("Sync", device=dev), source=DEVICE_IP)
    assert r.status == 200, r.body[:500]
    seen = r.json()
    assert seen["remote_user"] == "alice@EXAMPLE.TEST", seen
    # Exchange is told the device's address, not the balancer's
    assert seen["headers"].get("x-forwarded-for") == DEVICE_IP, seen["headers"]
    rec = record_for(p, lambda x: x["device_id"] == dev, f"access record of {dev}")
    assert rec["c_ip"] == DEVICE_IP, rec
    assert rec["status"] == 200 and rec["reason"] == "ok", rec
    assert rec["username"] == "alice@EXAMPLE.TEST", rec
    # the device's own source port came through the header too
    p.wait_for_log(rf"PROXY v{version} header from 127\.0\.0\.1: client {re.escape(DEVICE_IP)} "
                   rf"port {r.local_port}$")


def test_a_direct_tls_connection_without_header_is_refused(behind_haproxy, lab):  # noqa: F811
    p, h = behind_haproxy
    with pytest.raises(device.Refused):
        device.request(p.port, p.device_cert("alice"), p.server_ca.cert,
                       device.eas_target(device="DIRECT"), source=DIRECT_IP)
    rec = record_for(p, lambda x: x["c_ip"] == DIRECT_IP, "an access record for the direct client")
    assert rec["reason"] == "bad_proxy_protocol", rec
    assert rec["status"] == 0 and rec["username"] is None, rec
    p.wait_for_log(rf"{re.escape(DIRECT_IP)}: PROXY protocol header refused: no PROXY header: "
                   r"the connection starts with a TLS handshake")


def raw(p, data, source):
    """Send data on a plain TCP connection; return what came back before
    the proxy closed it (a close with unread bytes is a reset)."""
    s = socket.create_connection(("127.0.0.1", p.port), timeout=15, source_address=(source, 0))
    got = b""
    try:
        if data:
            s.sendall(data)
        while True:
            b = s.recv(4096)
            if not b:
                return got
            got += b
    except ConnectionResetError:
        return got
    finally:
        s.close()


@pytest.mark.parametrize("data,why,source", [
    (b"PROXY TCP4 10.1.2.3 127.0.0.1 5000\r\n", "v1: expected 4 fields after the protocol, got 3",
     "127.0.0.4"),
    (b"PROXY TCP4 10.1.2.3 127.0.0.1 5000 443\n", "v1: control or non-ASCII byte 0x0a", "127.0.0.5"),
    (b"\r\n\r\n\x00\r\nQUIT\n\x21\x12\x00\x0c" + bytes(12), "v2: UDP", "127.0.0.6"),
    (b"PROXY TCP4 10.1.2", "connection closed after 17 bytes of a PROXY header", "127.0.0.7"),
    (b"", "no complete PROXY header within client_header_timeout", "127.0.0.8"),
], ids=["v1-3-fields", "v1-bare-lf", "v2-udp", "truncated", "silent"])
def test_malformed_or_missing_headers_are_refused_with_their_cause(behind_haproxy, data, why,
                                                                  source):
    p, h = behind_haproxy
    if data.startswith(b"PROXY TCP4 10.1.2") and not data.endswith(b"\n"):
        # truncated: half a header, then the client hangs up
        s = socket.create_connection(("127.0.0.1", p.port), timeout=15,
                                     source_address=(source, 0))
        s.sendall(data)
        time.sleep(0.2)
        s.shutdown(socket.SHUT_WR)
        assert s.recv(100) == b""
        s.close()
    else:
        assert raw(p, data, source) == b"", "the proxy answered a connection it must refuse"
    rec = record_for(p, lambda x: x["c_ip"] == source, f"an access record for {source}")
    assert rec["reason"] == "bad_proxy_protocol", rec
    p.wait_for_log(rf"{re.escape(source)}: PROXY protocol header refused: {re.escape(why)}")


def test_a_health_check_that_connects_and_leaves_is_not_logged(behind_haproxy):
    p, h = behind_haproxy
    src = "127.0.0.9"
    s = socket.create_connection(("127.0.0.1", p.port), timeout=5, source_address=(src, 0))
    s.close()
    # a later refused connection from the same address proves the log is
    # written up to here
    raw(p, b"GET / HTTP/1.0\r\n\r\n", src)
    recs = wait_until(lambda: [r for r in access_records(p) if r["c_ip"] == src], 10,
                      "the refused request's record")
    assert len(recs) == 1 and recs[0]["reason"] == "bad_proxy_protocol", recs


def test_proxy_protocol_off_treats_a_header_as_a_bad_handshake(lab):  # noqa: F811
    p = lab_proxy(lab, workers=1)
    try:
        p.start()
        raw(p, b"PROXY TCP4 10.1.2.3 127.0.0.1 5000 443\r\n", "127.0.0.10")
        rec = record_for(p, lambda x: x["c_ip"] == "127.0.0.10", "a record for the header")
        assert rec["reason"] == "tls_handshake_failed", rec
        # and a device straight to the port is served as always
        r = device.request(p.port, p.device_cert("alice"), p.server_ca.cert,
                           device.eas_target(device="NOPP"), source=DEVICE_IP)
        assert r.status == 200
        assert r.json()["headers"].get("x-forwarded-for") == DEVICE_IP
    finally:
        p.stop()
        if not os.environ.get("EKP_KEEP"):
            shutil.rmtree(p.dir, ignore_errors=True)


def test_haproxy_health_checks_with_a_local_header_are_not_logged_as_devices(behind_haproxy):
    """check-send-proxy: HAProxy connects, sends PROXY v2 LOCAL and resets.
    That is no device and no failed handshake: no access line, no error."""
    p, h = behind_haproxy
    p.wait_for_log(r"127\.0\.0\.1: PROXY v2 header without a client address", count=3)
    # a refused connection afterwards: once its line is in the log, every
    # line before it (the worker's buffer is in order) is there too
    raw(p, b"GET / HTTP/1.0\r\n\r\n", "127.0.0.11")
    record_for(p, lambda x: x["c_ip"] == "127.0.0.11", "the sentinel record")
    from_haproxy = [r for r in access_records(p) if r["c_ip"] == "127.0.0.1"]
    assert from_haproxy == [], from_haproxy[:3]
    assert not re.search(r"127\.0\.0\.1: handshake refused", p.log_text())
