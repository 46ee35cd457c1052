"""The device-facing front door (SPEC §5): every case of the certificate
matrix through a real TLS connection to the real daemon, asserted on what
the device sees and on the reason in the access and error logs."""
import json
import os
import socket
import ssl

import pytest

import certs
from ekp import Proxy, wait_until

EAS = "/Microsoft-Server-ActiveSync?Cmd=Sync&User={user}&DeviceId=DEV1&DeviceType=iPhone"


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    return certs.make_matrix(str(tmp_path_factory.mktemp("matrix")))


@pytest.fixture(scope="module")
def front(matrix):
    p = Proxy(workers=1, files={"device-ca.pem": matrix["device_ca"].cert},
              settings={"tls": {"crl": matrix["crl"]},
                        "log": {"access_log": "ACCESS", "access_format": "json"}})
    p.write_config(settings={"log": {"access_log": p.path("access.log")}})
    p.start()
    yield p
    p.stop()


def access_records(p):
    try:
        with open(p.path("access.log")) as f:
            return [json.loads(line) for line in f if line.startswith("{")]
    except FileNotFoundError:
        return []


def wait_record(p, pred, what):
    return wait_until(lambda: [r for r in access_records(p) if pred(r)], 10, what)[-1]


def request(p, cert=None, path=EAS.format(user="alice"), method="GET"):
    """One request over a fresh TLS connection. Returns (status, raw head)
    or ("refused", error text) when the handshake or the first read fails."""
    ctx = ssl.create_default_context(cafile=p.server_ca.cert)
    ctx.check_hostname = False
    if cert is not None:
        ctx.load_cert_chain(cert.cert, cert.key)
    raw = socket.create_connection(("127.0.0.1", p.port), timeout=10)
    try:
        s = ctx.wrap_socket(raw, server_hostname="proxy.example.test")
        s.sendall(f"{method} {path} HTTP/1.1\r\nHost: proxy.example.test\r\n"
                  f"User-Agent: test-device/1.0\r\nContent-Length: 0\r\n\r\n".encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError) as e:
        return "refused", str(e)
    finally:
        raw.close()
    if not data:
        return "refused", "connection closed without an answer"
    return int(data.split(b" ", 2)[1]), data.decode("latin-1")


@pytest.mark.parametrize("name,token", [
    ("expired", "cert_expired"),
    ("not_yet_valid", "cert_not_yet_valid"),
    ("wrong_ca", "cert_untrusted"),
    ("impostor", "cert_untrusted"),
    ("revoked", "cert_revoked"),
    ("no_client_eku", "cert_bad_eku"),
])
def test_bad_certificates_are_refused_in_the_handshake(front, matrix, name, token):
    before = len([r for r in access_records(front) if r["reason"] == token])
    status, text = request(front, matrix[name])
    assert status == "refused", f"{name}: expected a refused handshake, got {status}: {text}"
    wait_until(lambda: len([r for r in access_records(front) if r["reason"] == token]) > before,
               10, f"an access-log line with reason {token}")
    front.wait_for_log(rf"info tls: 127\.0\.0\.1: handshake refused: {token}")


def test_no_certificate_is_refused(front):
    status, text = request(front, None)
    assert status == "refused", text
    wait_record(front, lambda r: r["reason"] == "cert_missing", "reason cert_missing")


@pytest.mark.parametrize("name,detail", [
    ("no_upn", "no_upn"),
    ("two_upns", "two_upns"),
    ("upn_nul", "nul_byte"),
    ("unmapped_suffix", "suffix_unmapped"),
    ("ia5_upn", "ia5_upn_not_allowed"),
])
def test_certificates_that_map_to_no_user_get_403(front, matrix, name, detail):
    status, text = request(front, matrix[name])
    assert status == 403, f"{name}: {text}"
    assert "identity" not in text.lower() and "upn" not in text.lower(), \
        "the device must not learn why"
    wait_record(front, lambda r: r["status"] == 403 and r["reason"] == "identity_unmapped",
                "a 403 identity_unmapped line")
    front.wait_for_log(rf"info identity: 127\.0\.0\.1: .*")


def test_good_certificate_reaches_the_request_stage_as_user_at_realm(front, matrix):
    status, text = request(front, matrix["alice"])
    assert status not in ("refused", 400, 403, 404), text
    rec = wait_record(front, lambda r: r["username"] == "alice@EXAMPLE.TEST",
                      "a request logged as alice@EXAMPLE.TEST")
    assert rec["device_id"] == "DEV1" and rec["device_type"] == "iPhone"
    assert rec["eas_cmd"] == "Sync"
    assert rec["user_agent"] == "test-device/1.0"


def test_user_param_naming_someone_else_is_403(front, matrix):
    status, text = request(front, matrix["alice"], path=EAS.format(user="bob"))
    assert status == 403, text
    wait_record(front, lambda r: r["reason"] == "user_mismatch", "reason user_mismatch")


def test_paths_outside_the_allow_list_are_404(front, matrix):
    for path in ("/owa/", "/Microsoft-Server-ActiveSyncX", "/ecp/../owa"):
        status, text = request(front, matrix["alice"], path=path)
        assert status in (404, 400), f"{path}: {text}"
    wait_record(front, lambda r: r["reason"] == "path_denied" and r["uri_stem"] == "/owa/",
                "reason path_denied for /owa/")
    wait_record(front, lambda r: r["reason"] == "bad_request_dot_segment",
                "reason bad_request_dot_segment for /ecp/../owa")
