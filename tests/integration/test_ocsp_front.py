"""[tls] ocsp through the daemon (issue 3): the device certificate's status
is asked of an OCSP responder before the first request. The responder is
OpenSSL's own (`openssl ocsp -index ... -reqin ... -respout ...` over a CA
index file) behind a tiny HTTP/1.0 front on 127.0.0.1 started by the test
(`openssl ocsp -port` would listen on every interface)."""
import http.server
import os
import subprocess
import tempfile
import threading

import pytest

from ekp import Proxy, access_records, wait_until
from test_front import request


class Responder:
    """POST /  (an OCSP request, DER) -> OpenSSL's answer from index.txt."""

    def __init__(self, ca, directory):
        self.ca = ca
        self.dir = directory
        self.index = os.path.join(directory, "index.txt")
        open(self.index, "w").close()
        self.requests = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                n = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(n)
                outer.requests += 1
                with tempfile.TemporaryDirectory(dir=outer.dir) as td:
                    req, resp = os.path.join(td, "req.der"), os.path.join(td, "resp.der")
                    with open(req, "wb") as f:
                        f.write(body)
                    subprocess.run(["openssl", "ocsp", "-index", outer.index, "-CA", outer.ca.cert,
                                    "-rsigner", outer.ca.cert, "-rkey", outer.ca.key,
                                    "-reqin", req, "-respout", resp, "-nmin", "10"],
                                   check=True, capture_output=True, timeout=30)
                    data = open(resp, "rb").read()
                self.send_response(200)
                self.send_header("Content-Type", "application/ocsp-response")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *a):
                pass

        self.httpd = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def add(self, issued, revoked=False):
        serial = format(issued.obj.serial_number, "X")
        if len(serial) % 2:
            serial = "0" + serial
        dn = "/" + "/".join(f"{a.oid._name}={a.value}" for a in issued.obj.subject)
        with open(self.index, "a") as f:
            if revoked:
                f.write(f"R\t351231235959Z\t240101000000Z,keyCompromise\t{serial}\tunknown\t{dn}\n")
            else:
                f.write(f"V\t351231235959Z\t\t{serial}\tunknown\t{dn}\n")

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def setup():
    """One device CA (from a proxy that is never started), its responder,
    and devices: alice good, bob revoked, carol unknown to the responder."""
    ca_owner = Proxy(workers=1)
    r = Responder(ca_owner.device_ca, ca_owner.path("pki"))
    good, bad = ca_owner.device_cert("alice"), ca_owner.device_cert("bob")
    unknown = ca_owner.device_cert("carol")
    r.add(good)
    r.add(bad, revoked=True)
    started = []

    def start(mode, port=None):
        p = Proxy(workers=1, files={"device-ca.pem": ca_owner.device_ca.cert})
        p.access_log = p.path("access.log")
        p.write_config(settings={
            "tls": {"ocsp": mode, "ocsp_responder": f"http://127.0.0.1:{port or r.port}/",
                    "ocsp_timeout": "2s"},
            "log": {"access_log": p.access_log, "access_format": "json"}})
        started.append(p)
        return p.start()

    yield start, r, good, bad, unknown
    for p in started:
        p.stop()
    ca_owner.cleanup()
    r.stop()


def test_required_good_passes_revoked_and_unknown_are_refused(setup):
    start, r, good, bad, unknown = setup
    p = start("required")
    status, text = request(p, good, path="/owa/")
    assert status == 404, text          # reached the request stage
    status, text = request(p, bad, path="/owa/")
    assert status == "refused", text
    wait_until(lambda: [x for x in access_records(p) if x["reason"] == "cert_revoked"], 10,
               "reason cert_revoked for the revoked device")
    p.wait_for_log(r"info ocsp: 127\.0\.0\.1 bob@EXAMPLE\.TEST: certificate refused: cert_revoked")
    status, text = request(p, unknown, path="/owa/")
    assert status == "refused", text
    wait_until(lambda: [x for x in access_records(p) if x["reason"] == "cert_ocsp_unavailable"],
               10, "reason cert_ocsp_unavailable for a certificate the responder does not know")
    assert r.requests >= 3


def test_answers_are_cached(setup):
    start, r, good, bad, unknown = setup
    p = start("on")
    request(p, good, path="/owa/")
    n = r.requests
    for _ in range(3):
        assert request(p, good, path="/owa/")[0] == 404
    assert r.requests == n, "a good answer is reused until nextUpdate"


def test_unreachable_responder_refuses_when_required_and_allows_when_on(setup):
    start, r, good, bad, unknown = setup
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    dead = s.getsockname()[1]
    s.close()
    p = start("on", port=dead)
    status, text = request(p, good, path="/owa/")
    assert status == 404, "ocsp = on: no answer is accepted"
    p = start("required", port=dead)
    status, text = request(p, good, path="/owa/")
    assert status == "refused", text
    wait_until(lambda: [x for x in access_records(p) if x["reason"] == "cert_ocsp_unavailable"],
               10, "reason cert_ocsp_unavailable with the responder down")
