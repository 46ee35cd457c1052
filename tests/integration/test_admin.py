"""The admin listener (SPEC §3 admin_listen, §8): /metrics in Prometheus
text, /healthz, /readyz, nothing else — served by the workers from the
socket the parent bound."""
import re
import urllib.error
import urllib.request

import pytest

from ekp import Proxy, wait_until


@pytest.fixture(scope="module")
def proxy():
    p = Proxy(workers=2)
    p.start()
    yield p
    p.stop()


def get(p, path, method="GET"):
    req = urllib.request.Request(f"http://127.0.0.1:{p.admin_port}{path}", method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.headers, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read().decode()


def test_healthz_answers(proxy):
    status, _, body = get(proxy, "/healthz")
    assert (status, body) == (200, "ok\n")


def test_readyz_is_not_ready_while_kcd_has_no_tgt(proxy):
    # This proxy's keytab is a placeholder: kcd runs and the backend is not
    # known down, but kcd cannot get the proxy's TGT, so it is not ready and
    # says why (test_readyz.py has the ready case against the lab's KDC).
    prefix = "not ready: kcd: no TGT for HTTP/proxy.example.test@EXAMPLE.TEST: "
    status, _, body = wait_until(
        lambda: (lambda r: r if r[2].startswith(prefix) else None)(get(proxy, "/readyz")),
        30, "/readyz naming the missing TGT")
    assert status == 503, (status, body)
    assert re.search(r"^eas_kcd_proxy_kcd_tgt_valid 0$", get(proxy, "/metrics")[2], re.M)


def test_metrics_is_prometheus_text_with_help_and_type(proxy):
    status, headers, body = get(proxy, "/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    for name in ("eas_kcd_proxy_requests_total", "eas_kcd_proxy_tls_handshakes_total",
                 "eas_kcd_proxy_connections_open", "eas_kcd_proxy_kdc_latency_seconds",
                 "eas_kcd_proxy_kcd_cache_total", "eas_kcd_proxy_backend_pool_idle"):
        assert f"# TYPE {name} " in body, name
    assert re.search(r"^eas_kcd_proxy_workers 2$", body, re.M), body


def test_handshakes_and_refusals_are_counted(proxy):
    import test_front
    before = get(proxy, "/metrics")[2]
    m = re.search(r'^eas_kcd_proxy_tls_handshake_failures_total\{reason="cert_missing"\} (\d+)$',
                  before, re.M)
    n0 = int(m.group(1)) if m else 0
    status, _ = test_front.request(proxy, None)
    assert status == "refused"
    wait_until(lambda: re.search(
        rf'^eas_kcd_proxy_tls_handshake_failures_total\{{reason="cert_missing"\}} {n0 + 1}$',
        get(proxy, "/metrics")[2], re.M), 10, "cert_missing counted once more")


def test_anything_else_is_refused(proxy):
    assert get(proxy, "/")[0] == 404
    assert get(proxy, "/metrics/../etc")[0] == 404
    assert get(proxy, "/metrics", method="POST")[0] == 405
