"""Session resumption (issue 3): a device that resumes its TLS session gets
the same identity without a full handshake, whichever worker accepts it —
the workers of one generation share their ticket keys."""
import socket
import ssl

from ekp import Proxy


def one_request(p, ctx, session=None):
    raw = socket.create_connection(("127.0.0.1", p.port), timeout=10)
    with ctx.wrap_socket(raw, server_hostname="proxy.example.test", session=session) as s:
        s.sendall(b"GET /owa/ HTTP/1.1\r\nHost: proxy.example.test\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        return int(data.split(b" ", 2)[1]), s.session, s.session_reused


def test_resumed_sessions_keep_the_identity_on_every_worker():
    p = Proxy(workers=2, settings={"log": {"access_log": None}})
    p.write_config(settings={"log": {"access_log": p.path("access.log"),
                                     "access_format": "json"}})
    p.start()
    try:
        dev = p.device_cert("alice")
        ctx = ssl.create_default_context(cafile=p.server_ca.cert)
        ctx.check_hostname = False
        ctx.load_cert_chain(dev.cert, dev.key)
        status, session, reused = one_request(p, ctx)
        assert status == 404 and not reused
        reused_count = 0
        for _ in range(12):
            status, _, reused = one_request(p, ctx, session)
            assert status == 404, "a resumed session must still map to a user"
            reused_count += reused
        assert reused_count == 12, f"only {reused_count} of 12 connections resumed"
        import json, time
        time.sleep(1.5)   # the access log is flushed every second
        recs = [json.loads(l) for l in open(p.path("access.log")) if l.startswith("{")]
        assert len(recs) >= 13
        assert all(r["username"] == "alice@EXAMPLE.TEST" for r in recs), recs
        assert {r["reason"] for r in recs} == {"path_denied"}
    finally:
        p.stop()
