"""The benchmark load generator (tests/bench/eas-loadgen.c) builds and works.

`make check` runs the sanitizer build from $EKP_TOOLS/eas_loadgen (the
Makefile builds tests/tools/eas_loadgen.c, which includes the bench source)
for about two seconds against a tiny TLS server written here: HTTP/1.1
keep-alive, client certificate required (device CA from tests/certs.py).
What is pinned down:

* rps mode reports requests and no errors, and never claims more answered
  requests than the server sent;
* every connection presents its own device's certificate and names that
  device's user in User=;
* handshake mode makes one full handshake per request (the server counts
  handshakes);
* any unexpected status (500) or a refused handshake is an error of a named
  kind and a non-zero exit.

Benchmarks themselves (timing) are `make bench`, never a test.
"""

import os
import re
import socket
import ssl
import subprocess
import sys
import threading
import urllib.parse

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import certs  # noqa: E402  (tests/certs.py)

TOOLS = os.environ.get("EKP_TOOLS") or os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    "build", "san", "tools")
LOADGEN = os.path.join(TOOLS, "eas_loadgen")
LAST_LINE = re.compile(r"^loadgen: mode=(\w+) (.*)$")


def loadgen_bin():
    if not os.access(LOADGEN, os.X_OK):
        raise AssertionError(f"no executable load generator at {LOADGEN}: build it "
                             f"(make san) or set EKP_TOOLS")
    return LOADGEN


class TinyTLSServer:
    """HTTP/1.1 over TLS with a required client certificate, one thread per
    connection. Answers every request with `status` and a small body, keeps
    the connection alive. Records per request the certificate's CN and the
    query's User=, and counts handshakes and responses sent."""

    def __init__(self, cert, key, ca, status=200):
        self.status = status
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)
        self.ctx.load_verify_locations(ca)
        self.ctx.verify_mode = ssl.CERT_REQUIRED
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.lock = threading.Lock()
        self.handshakes = 0
        self.refused = 0
        self.responses = 0
        self.seen = []          # (certificate CN, User=, Cmd=)
        self.bad = []           # what the server did not like
        self.stopping = False
        self.threads = []
        self.acceptor = threading.Thread(target=self._accept, daemon=True)
        self.acceptor.start()

    def _accept(self):
        while not self.stopping:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            with self.lock:
                self.threads.append(t)
            t.start()

    def _serve(self, raw):
        raw.settimeout(10)
        try:
            tls = self.ctx.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError):
            with self.lock:
                self.refused += 1
            raw.close()
            return
        with self.lock:
            self.handshakes += 1
        cn = dict(x[0] for x in tls.getpeercert()["subject"]).get("commonName")
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = tls.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                hdrs = {}
                for ln in lines[1:]:
                    k, _, v = ln.partition(":")
                    hdrs[k.strip().lower()] = v.strip()
                n = int(hdrs.get("content-length", "0"))
                while len(buf) < n:
                    data = tls.recv(65536)
                    if not data:
                        return
                    buf += data
                body, buf = buf[:n], buf[n:]
                q = urllib.parse.parse_qs(urllib.parse.urlsplit(target).query)
                with self.lock:
                    self.seen.append((cn, q.get("User", [None])[0], q.get("Cmd", [None])[0]))
                    if method != "POST" or not body.startswith(b"\x03\x01\x6a"):
                        self.bad.append(f"{method} with body {body[:8]!r}")
                reply = b"WBXML-ish answer"
                reason = "OK" if self.status == 200 else "Error"
                tls.sendall(f"HTTP/1.1 {self.status} {reason}\r\nContent-Length: {len(reply)}\r\n"
                            f"Content-Type: application/vnd.ms-sync.wbxml\r\n\r\n"
                            .encode() + reply)
                with self.lock:
                    self.responses += 1
        except (ssl.SSLError, OSError, ValueError):
            return
        finally:
            tls.close()

    def stop(self):
        self.stopping = True
        self.sock.close()
        with self.lock:
            threads = list(self.threads)
        for t in threads:
            t.join(15)


@pytest.fixture
def pki(tmp_path):
    """Device CA, a server certificate for the tiny server, a fleet of three
    devices (u1..u3, NAME.pem + NAME.key, CN = user) and one device issued
    by another CA."""
    ca = certs.device_ca(str(tmp_path / "ca"))
    sca = certs.server_ca(str(tmp_path / "ca"))
    server = certs.server_cert(str(tmp_path / "ca"), "server", sca, ["localhost"])
    fleet = tmp_path / "fleet"
    for u in ("u1", "u2", "u3"):
        certs.good_user(str(fleet), ca, u)
    stranger = certs.wrong_ca(str(tmp_path / "stranger"))
    return {"ca": ca, "server": server, "server_ca": sca, "fleet": str(fleet),
            "stranger": stranger}


@pytest.fixture
def server_factory(pki):
    made = []

    def make(status=200):
        s = TinyTLSServer(pki["server"].cert, pki["server"].key, pki["ca"].cert, status)
        made.append(s)
        return s
    yield make
    for s in made:
        s.stop()


def run_loadgen(args, timeout=60):
    p = subprocess.run([loadgen_bin()] + args, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, timeout=timeout)
    lines = p.stdout.strip().splitlines()
    m = LAST_LINE.match(lines[-1]) if lines else None
    assert m, f"no machine-readable last line (exit {p.returncode})\n" \
              f"stdout:\n{p.stdout}\nstderr:\n{p.stderr}"
    fields = dict(kv.split("=", 1) for kv in m.group(2).split())
    fields["mode"] = m.group(1)
    return p, fields


def test_rps_reports_requests_and_no_errors(server_factory, pki):
    srv = server_factory()
    p, f = run_loadgen(["rps", "--port", str(srv.port), "--certs", pki["fleet"],
                        "--server-name", "localhost", "--ca", pki["server_ca"].cert,
                        "-c", "3", "-d", "2"])
    srv.stop()
    out = f"stdout:\n{p.stdout}\nstderr:\n{p.stderr}"
    assert p.returncode == 0, f"expected exit 0 against a 200 server\n{out}"
    assert f["mode"] == "rps"
    assert f["errors"] == "0", out
    requests = int(f["requests"])
    assert requests > 0, f"expected answered requests\n{out}"
    assert float(f["rps"]) > 0, out
    assert float(f["p50_ms"]) > 0 and float(f["p99_ms"]) >= float(f["p50_ms"]), out
    # the load generator never counts a response the server did not send;
    # at most one request per connection may be in flight at the end
    assert requests <= srv.responses <= requests + 3, \
        f"loadgen counted {requests}, server sent {srv.responses}\n{out}"
    assert not srv.bad, srv.bad
    # each of the three connections is its own device, naming itself
    assert {cn for cn, _, _ in srv.seen} == {"u1", "u2", "u3"}, srv.seen[:10]
    assert all(cn == user for cn, user, _ in srv.seen), \
        [s for s in srv.seen if s[0] != s[1]][:5]
    assert {cmd for _, _, cmd in srv.seen} == {"Sync"}
    # keep-alive: three handshakes served every request
    assert srv.handshakes == 3, f"{srv.handshakes} handshakes for 3 keep-alive connections"


def test_handshake_mode_makes_one_handshake_per_request(server_factory, pki):
    srv = server_factory()
    p, f = run_loadgen(["handshake", "--port", str(srv.port), "--certs", pki["fleet"],
                        "-c", "2", "-d", "2"])
    srv.stop()
    out = f"stdout:\n{p.stdout}\nstderr:\n{p.stderr}"
    assert p.returncode == 0, out
    assert f["errors"] == "0", out
    hs = int(f["requests"])
    assert hs > 0 and float(f["hps"]) > 0, out
    assert srv.handshakes >= hs, f"loadgen claims {hs}, server saw {srv.handshakes}"
    assert srv.responses == srv.handshakes or srv.responses + 2 >= srv.handshakes
    # connections rotate through the fleet
    assert {cn for cn, _, _ in srv.seen} == {"u1", "u2", "u3"}, srv.seen[:10]


def test_unexpected_status_is_an_error_and_exit_nonzero(server_factory, pki):
    srv = server_factory(status=500)
    p, f = run_loadgen(["rps", "--port", str(srv.port), "--certs", pki["fleet"],
                        "-c", "2", "-d", "1"])
    srv.stop()
    out = f"stdout:\n{p.stdout}\nstderr:\n{p.stderr}"
    assert p.returncode == 1, f"expected exit 1 when the server answers 500\n{out}"
    assert int(f["errors"]) > 0, out
    assert int(f.get("status_500", "0")) > 0, f"expected status_500=N in the last line\n{out}"
    assert f["requests"] == "0", out
    assert "status 500, expected 200" in p.stdout, out


def test_refused_certificate_is_a_tls_error(server_factory, pki):
    srv = server_factory()
    st = pki["stranger"]
    p, f = run_loadgen(["rps", "--port", str(srv.port), "--cert", st.cert, "--key", st.key,
                        "--user", "alice", "-c", "1", "-d", "1", "--requests", "1"])
    srv.stop()
    out = f"stdout:\n{p.stdout}\nstderr:\n{p.stderr}"
    assert p.returncode == 1, out
    assert int(f.get("err_tls_handshake", "0")) + int(f.get("err_tls_io", "0")) + \
        int(f.get("err_closed", "0")) > 0, out
    assert srv.responses == 0 and srv.refused > 0, out


def test_bad_usage_exits_2():
    p = subprocess.run([loadgen_bin(), "rps", "--port", "1"], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, timeout=30)
    assert p.returncode == 2
    assert "give either --certs DIR or --cert FILE --key FILE" in p.stderr
