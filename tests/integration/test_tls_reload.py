"""SIGHUP re-reads certificates, keys and CRLs (issue 3): a new generation
serves the new material; a bad new file keeps the old generation serving
and the error log says which file and why."""
import shutil
import signal
import socket
import ssl

import pytest

import certs
from ekp import Proxy, wait_until
from test_front import request


def served_cert(p):
    ctx = ssl.create_default_context(cafile=p.server_ca.cert)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", p.port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="proxy.example.test") as s:
            return s.getpeercert(binary_form=True)


@pytest.fixture
def proxy(tmp_path):
    p = Proxy(workers=1)
    p.write_config(settings={"tls": {"crl": p.path("device-ca.crl.pem")}})
    # an empty CRL first: nobody is revoked
    certs.crl(p.path("pki"), p.device_ca, revoked=[], name="empty")
    shutil.copyfile(p.path("pki", "empty.pem"), p.path("device-ca.crl.pem"))
    p.start()
    yield p
    p.stop()


def test_a_bad_new_certificate_keeps_the_old_one_serving(proxy):
    p = proxy
    before = served_cert(p)
    old_workers = {c["pid"] for c in p.children() if c["comm"].startswith("ekp-worker")}
    with open(p.path("server.pem"), "w") as f:
        f.write("-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n")
    p.signal(signal.SIGHUP)
    p.wait_for_log(r"error front: worker 0: certificate \S+server\.pem: cannot load", timeout=15)
    p.wait_for_log(r"reload failed: .* the previous generation keeps serving", timeout=15)
    assert served_cert(p) == before, "the old certificate must still be served"
    now = {c["pid"] for c in p.children() if c["comm"].startswith("ekp-worker")}
    assert old_workers <= now, "the old generation's workers must still run"
    status, text = request(p, p.device_cert("alice"), path="/owa/")
    assert status == 404, text


def test_a_good_new_certificate_is_served_after_sighup(proxy):
    p = proxy
    before = served_cert(p)
    srv = certs.server_cert(p.path("pki"), "proxy-server-2", p.server_ca,
                            ["proxy.example.test", "localhost"])
    with open(p.path("server.pem"), "wb") as out:
        for f in (srv.cert, p.server_ca.cert):
            out.write(open(f, "rb").read())
    shutil.copyfile(srv.key, p.path("server.key"))
    p.signal(signal.SIGHUP)
    p.wait_ready(2, timeout=20)
    after = wait_until(lambda: (lambda c: c if c != before else None)(served_cert(p)), 10,
                       "the new certificate served")
    from cryptography.hazmat.primitives.serialization import Encoding
    assert after == srv.obj.public_bytes(Encoding.DER), "not the certificate just installed"


def test_a_new_crl_revokes_after_sighup(proxy):
    p = proxy
    alice = p.device_cert("alice")
    assert request(p, alice, path="/owa/")[0] == 404
    certs.crl(p.path("pki"), p.device_ca, revoked=[alice], name="revoking")
    shutil.copyfile(p.path("pki", "revoking.pem"), p.path("device-ca.crl.pem"))
    p.signal(signal.SIGHUP)
    p.wait_ready(2, timeout=20)
    wait_until(lambda: request(p, alice, path="/owa/")[0] == "refused", 10,
               "alice refused once her certificate is on the CRL")
    p.wait_for_log(r"handshake refused: cert_revoked")
