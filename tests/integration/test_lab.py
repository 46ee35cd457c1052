"""The lab proves itself, without the proxy: the KDC does (and refuses)
S4U2Self + S4U2Proxy the way the proxy's tests expect, and the Exchange
stand-in authenticates the impersonated user, not the proxy."""

import base64
import hashlib
import json
import os
import socket
import time

import gssapi
import pytest

from lab import (Lab, LabError, DISABLED, EXCHANGE, EXPIRED, LOCKED, OTHER, PROXY,
                 PROXY_NOFWD, PROXY_NONE, PROXY_OTHERSPN, REALM, SENSITIVE,
                 UNKNOWN, parse_kdc_log, principal)
from lab_fixtures import lab, lab_session, private_lab  # noqa: F401

EAS = "/Microsoft-Server-ActiveSync"


def kinit_proxy(lab, proxy, name):
    """A ccache of its own holding `proxy`'s TGT (from its keytab)."""
    env = dict(lab.env, KRB5CCNAME="FILE:" + lab.path("cc-" + name))
    lab.run(["kinit", "-k", "-t", lab.keytab(proxy), proxy], env=env)
    return env


def kvno_s4u(lab, env, user, spn):
    """kvno -U user -P spn: exit status and output (kvno prints
    'kvno = N' even when it failed, so only the status counts)."""
    return lab.run_status(["kvno", "-U", user, "-P", spn], env=env)


def request(conn, method, path, headers=None, body=None, chunked=False):
    conn.request(method, path, body=body, headers=headers or {},
                 encode_chunked=chunked)
    resp = conn.getresponse()
    return resp, resp.read()


# ---------------------------------------------------------------- KDC ----

def test_kvno_s4u_chain_succeeds_for_alice(lab):
    before = lab.count_kdc_requests("S4U2PROXY", "alice", status="ISSUE")
    env = kinit_proxy(lab, PROXY, "kvno-alice")
    code, out = kvno_s4u(lab, env, "alice", EXCHANGE)
    assert code == 0, out
    after = lab.count_kdc_requests("S4U2PROXY", "alice", status="ISSUE")
    assert after == before + 1, lab.kdc_log_text()[-3000:]
    proxied = lab.kdc_requests("S4U2PROXY", "alice")[-1]
    assert proxied["client"] == principal(PROXY)
    assert proxied["server"] == principal(EXCHANGE)


def test_kvno_s4u2proxy_refused_for_spn_not_in_the_list(lab):
    env = kinit_proxy(lab, PROXY, "kvno-other")
    code, out = kvno_s4u(lab, env, "alice", OTHER)
    assert code != 0, out
    refused = [e for e in lab.kdc_requests("S4U2PROXY")
               if e["server"] == principal(OTHER) and
               e["client"] == principal(PROXY)]
    assert refused and refused[-1]["status"] != "ISSUE", refused


@pytest.mark.parametrize("user,message", [
    (DISABLED, "revoked"),
    (EXPIRED, "expired"),
    (LOCKED, "revoked"),
    (UNKNOWN, "not found"),
])
def test_kvno_refused_for_unusable_users(lab, user, message):
    env = kinit_proxy(lab, PROXY, "kvno-" + user)
    issued = lab.count_kdc_requests("S4U2PROXY", user, status="ISSUE")
    code, out = kvno_s4u(lab, env, user, EXCHANGE)
    assert code != 0, out
    assert message in out, out
    assert lab.count_kdc_requests("S4U2PROXY", user, status="ISSUE") == issued


def test_sensitive_user_gets_s4u2self_but_not_s4u2proxy(lab):
    env = kinit_proxy(lab, PROXY, "kvno-sensitive")
    code, out = kvno_s4u(lab, env, SENSITIVE, EXCHANGE)
    assert code != 0, out
    assert lab.count_kdc_requests("S4U2SELF", SENSITIVE, status="ISSUE") >= 1
    last = [e for e in lab.kdc_requests("S4U2PROXY")
            if e["client"] == principal(PROXY)][-1]
    assert last["status"] == "EVIDENCE_TKT_NOT_FORWARDABLE", last


@pytest.mark.parametrize("proxy,spn,ok,status", [
    (PROXY_NOFWD, EXCHANGE, False, "EVIDENCE_TKT_NOT_FORWARDABLE"),
    (PROXY_OTHERSPN, EXCHANGE, False, "UNSUPPORTED_S4U2PROXY_REQUEST"),
    (PROXY_OTHERSPN, OTHER, True, "ISSUE"),
    (PROXY_NONE, EXCHANGE, False, "UNSUPPORTED_S4U2PROXY_REQUEST"),
])
def test_proxy_principal_variants(lab, proxy, spn, ok, status):
    env = kinit_proxy(lab, proxy, "kvno-" + proxy.split("/")[1])
    code, out = kvno_s4u(lab, env, "carol", spn)
    assert (code == 0) == ok, out
    last = [e for e in lab.kdc_requests("S4U2PROXY")
            if e["client"] == principal(proxy) and
            e["server"] == principal(spn)][-1]
    assert last["status"] == status, last["line"]


def test_kadmin_local_reports_failures(lab):
    assert "Principal: alice@" + REALM in lab.kadmin_local("getprinc alice")
    with pytest.raises(LabError, match="does not exist"):
        lab.kadmin_local("getprinc " + UNKNOWN)


def test_unlock_and_lock_again(lab):
    env = kinit_proxy(lab, PROXY, "kvno-lock")
    lab.unlock_user(LOCKED)
    try:
        code, out = kvno_s4u(lab, env, LOCKED, EXCHANGE)
        assert code == 0, out
    finally:
        lab.lock_user(LOCKED)
    # a fresh ccache: the one above holds the ticket kvno just obtained
    env = kinit_proxy(lab, PROXY, "kvno-lock2")
    code, out = kvno_s4u(lab, env, LOCKED, EXCHANGE)
    assert code != 0 and "revoked" in out, out


def test_kdc_log_parser_on_known_lines():
    text = (
        "Nov 24 18:51:23 vm krb5kdc[1](info): TGS_REQ (2 etypes {aes256-cts"
        "-hmac-sha1-96(18), aes128-cts-hmac-sha1-96(17)}) 127.0.0.1: ISSUE: "
        "authtime 1, etypes {rep=aes256-cts-hmac-sha1-96(18)}, "
        "HTTP/p@R for HTTP/p@R\n"
        "Nov 24 18:51:23 vm krb5kdc[1](info): ... PROTOCOL-TRANSITION "
        "s4u-client=alice@R\n"
        "Nov 24 18:51:23 vm krb5kdc[1](info): AS_REQ (1 etypes {aes256-cts-"
        "hmac-sha1-96(18)}) 127.0.0.1: CLIENT LOCKED OUT: d@R for "
        "krbtgt/R@R, Client's credentials have been revoked\n"
        "Nov 24 18:51:23 vm krb5kdc[1](info): TGS_REQ (1 etypes {x(1)}) "
        "127.0.0.1: UNSUPPORTED_S4U2PROXY_REQUEST: authtime 0, etypes {x(1)}"
        " HTTP/p@R for HTTP/o@R, KDC can't fulfill requested option\n"
        "Nov 24 18:51:23 vm krb5kdc[1](info): ... CONSTRAINED-DELEGATION "
        "s4u-client=<unknown>\n")
    got = [(e["kind"], e["status"], e["client"], e["server"], e["user"])
           for e in parse_kdc_log(text)]
    assert got == [
        ("S4U2SELF", "ISSUE", "HTTP/p@R", "HTTP/p@R", "alice@R"),
        ("AS", "CLIENT LOCKED OUT", "d@R", "krbtgt/R@R", "d@R"),
        ("S4U2PROXY", "UNSUPPORTED_S4U2PROXY_REQUEST", "HTTP/p@R",
         "HTTP/o@R", None),
    ]


def test_kdc_down_and_up_again(lab):
    env = kinit_proxy(lab, PROXY, "kvno-down")
    with lab.kdc_down():
        assert lab.kdc_pid is None
        code, out = kvno_s4u(lab, env, "bob", EXCHANGE)
        assert code != 0, out
        assert "contact" in out or "connect" in out.lower(), out
    code, out = kvno_s4u(lab, env, "bob", EXCHANGE)
    assert code == 0, out


# ------------------------------------------------ GSSAPI to "Exchange" ----

def negotiate(lab, user, **kw):
    with lab.environ():
        return lab.negotiate_header(user, **kw)


def test_backend_sees_impersonated_user_not_the_proxy(lab):
    # The identity trap: the default ccache holds the *proxy's* TGT; a
    # client that let it leak into the token path would authenticate as
    # HTTP/proxy and the assertion on remote_user would fail.
    lab.run(["kinit", "-k", "-t", lab.keytab(PROXY), PROXY])
    s4u_self = lab.count_kdc_requests("S4U2SELF", "alice")
    s4u_proxy = lab.count_kdc_requests("S4U2PROXY", "alice")

    hdr, ctx = negotiate(lab, "alice")
    conn = lab.backend_connection()
    resp, body = request(conn, "GET", EAS + "?Cmd=Sync&User=alice",
                         {"Authorization": hdr})
    assert resp.status == 200, body
    doc = json.loads(body)
    assert doc["remote_user"] == "alice@" + REALM
    assert doc["https"] is True
    # mutual authentication: the server's token completes our context
    www = resp.getheader("WWW-Authenticate")
    assert www and www.startswith("Negotiate "), resp.getheaders()
    with lab.environ():
        ctx.step(base64.b64decode(www.split(" ", 1)[1]))
    assert ctx.complete
    assert resp.getheader("Persistent-Auth") == "true"

    assert lab.count_kdc_requests("S4U2SELF", "alice") == s4u_self + 1
    assert lab.count_kdc_requests("S4U2PROXY", "alice") == s4u_proxy + 1
    conn.close()


def test_second_user_on_a_separate_connection(lab):
    hdr_a, _ = negotiate(lab, "alice")
    hdr_b, _ = negotiate(lab, "bob")
    ca, cb = lab.backend_connection(), lab.backend_connection()
    ra, ba = request(ca, "POST", EAS + "?Cmd=Ping", {"Authorization": hdr_a},
                     b"a")
    rb, bb = request(cb, "POST", EAS + "?Cmd=Ping", {"Authorization": hdr_b},
                     b"b")
    assert (ra.status, rb.status) == (200, 200), (ba, bb)
    assert json.loads(ba)["remote_user"] == "alice@" + REALM
    assert json.loads(bb)["remote_user"] == "bob@" + REALM
    assert json.loads(ba)["remote_port"] != json.loads(bb)["remote_port"]
    ca.close()
    cb.close()


def test_connection_bound_authentication_like_iis(lab):
    conn = lab.backend_connection()
    hdr, _ = negotiate(lab, "carol")
    r1, b1 = request(conn, "GET", EAS + "?Cmd=FolderSync",
                     {"Authorization": hdr})
    assert r1.status == 200, b1
    # no Authorization on the same connection: still carol (IIS
    # authPersistNonNTLM behaviour, which is why the proxy must never let
    # another user's request onto this connection)
    r2, b2 = request(conn, "GET", EAS + "?Cmd=Sync")
    assert r2.status == 200, b2
    assert json.loads(b2)["remote_user"] == "carol@" + REALM
    assert json.loads(b2)["remote_port"] == json.loads(b1)["remote_port"]
    conn.close()
    # a new connection without Authorization is challenged
    fresh = lab.backend_connection()
    r3, _ = request(fresh, "GET", EAS + "?Cmd=Sync")
    assert r3.status == 401
    offers = [v for k, v in r3.getheaders() if k == "WWW-Authenticate"]
    assert "Negotiate" in offers, offers
    fresh.close()

    log = [e for e in lab.apache_access()
           if e["remote_port"] == json.loads(b1)["remote_port"]]
    assert [(e["keepalive"], e["user"], e["auth_scheme"]) for e in log] == [
        (0, "carol@" + REALM, "Negotiate"), (1, "carol@" + REALM, "")]


def test_token_for_another_service_is_refused(lab):
    hdr, _ = negotiate(lab, "alice", proxy=PROXY_OTHERSPN,
                       target="HTTP@other.example.test")
    conn = lab.backend_connection()
    resp, body = request(conn, "GET", EAS, {"Authorization": hdr})
    assert resp.status == 401, body
    conn.close()


def test_replayed_token_is_refused(lab):
    hdr, _ = negotiate(lab, "alice")
    c1, c2 = lab.backend_connection(), lab.backend_connection()
    r1, _ = request(c1, "GET", EAS, {"Authorization": hdr})
    r2, _ = request(c2, "GET", EAS, {"Authorization": hdr})
    assert (r1.status, r2.status) == (200, 401)
    c1.close()
    c2.close()


@pytest.mark.parametrize("user,status", [
    (DISABLED, "CLIENT LOCKED OUT"),
    (EXPIRED, "CLIENT EXPIRED"),
    (LOCKED, "LOCKED_OUT"),
    (UNKNOWN, "UNKNOWN_S4U2SELF_PRINCIPAL"),
])
def test_gss_impersonation_refused_for_unusable_users(lab, user, status):
    issued = lab.count_kdc_requests("S4U2PROXY", user, status="ISSUE")
    with lab.environ(), pytest.raises(gssapi.exceptions.GSSError):
        lab.negotiate_header(user)
    assert lab.count_kdc_requests("S4U2PROXY", user, status="ISSUE") == issued
    # the KDC refused the S4U2Self (it does not name the user then)
    last = [e for e in lab.kdc_requests("S4U2SELF")
            if e["client"] == principal(PROXY)][-1]
    assert (last["status"], last["user"]) == (status, None), last["line"]


def test_gss_s4u2proxy_refused_for_sensitive_user(lab):
    with lab.environ(), pytest.raises(gssapi.exceptions.GSSError):
        lab.negotiate_header(SENSITIVE)
    last = [e for e in lab.kdc_requests("S4U2PROXY")
            if e["client"] == principal(PROXY)][-1]
    assert last["status"] == "EVIDENCE_TKT_NOT_FORWARDABLE", last["line"]


def test_gss_with_channel_bindings_is_accepted(lab):
    # mod_auth_gssapi 1.6.4 passes no bindings to the acceptor, so correct
    # bindings are accepted (and wrong ones would be too: see lab.py).
    hdr, _ = negotiate(lab, "bob", channel_bindings=lab.channel_bindings())
    conn = lab.backend_connection()
    resp, body = request(conn, "GET", EAS, {"Authorization": hdr})
    assert resp.status == 200, body
    assert json.loads(body)["remote_user"] == "bob@" + REALM
    conn.close()


# ------------------------------------------------ Exchange handlers ----

@pytest.fixture
def alice_conn(lab):
    conn = lab.backend_connection()
    hdr, _ = negotiate(lab, "alice")
    resp, body = request(conn, "GET", EAS + "?Cmd=Settings",
                         {"Authorization": hdr})
    assert resp.status == 200, body
    yield conn
    conn.close()


def test_options_answers_eas_headers(alice_conn):
    resp, body = request(alice_conn, "OPTIONS", EAS)
    assert resp.status == 200, body
    assert "14.1" in resp.getheader("MS-ASProtocolVersions").split(",")
    assert "Sync" in resp.getheader("MS-ASProtocolCommands").split(",")
    assert resp.getheader("MS-Server-ActiveSync")
    assert resp.getheader("X-Lab-Remote-User") == "alice@" + REALM


@pytest.mark.parametrize("chunked", [False, True])
def test_post_body_is_hashed(alice_conn, chunked):
    data = os.urandom(300000)
    body = [data[i:i + 65536] for i in range(0, len(data), 65536)] \
        if chunked else data
    resp, out = request(alice_conn, "POST", EAS + "?Cmd=SendMail",
                        {"Content-Type": "application/vnd.ms-sync.wbxml",
                         "MS-ASProtocolVersion": "14.1"}, body, chunked)
    assert resp.status == 200, out
    doc = json.loads(out)
    assert doc["body_length"] == len(data)
    assert doc["body_sha256"] == hashlib.sha256(data).hexdigest()
    assert doc["headers"]["ms-asprotocolversion"] == "14.1"
    assert doc["remote_user"] == "alice@" + REALM


@pytest.mark.parametrize("size,chunked", [(0, False), (1, False),
                                          (3000000, False), (70000, True)])
def test_download_streams_deterministic_bytes(alice_conn, size, chunked):
    q = f"?size={size}" + ("&chunked=1" if chunked else "")
    resp, data = request(alice_conn, "GET", EAS + "/download" + q)
    assert resp.status == 200
    if chunked:
        assert resp.getheader("Content-Length") is None
    else:
        assert resp.getheader("Content-Length") == str(size)
    assert len(data) == size
    expect = (bytes(range(256)) * (size // 256 + 1))[:size]
    assert data == expect


def test_451_points_at_the_internal_host(lab, alice_conn):
    resp, body = request(alice_conn, "POST", EAS + "/moved?Cmd=Sync", {},
                         b"x")
    assert resp.status == 451, body
    assert resp.getheader("X-MS-Location") == \
        f"https://{Lab.BACKEND_HOST}:{lab.backend_port}{EAS}"
    resp, body = request(alice_conn, "POST",
                         EAS + "/moved?loc=https://mbx2.example.test/x",
                         {}, b"x")
    assert resp.getheader("X-MS-Location") == "https://mbx2.example.test/x"


def test_sleep_answers_after_waiting(alice_conn):
    resp, body = request(alice_conn, "POST", EAS + "/sleep?seconds=1&Cmd=Ping",
                         {}, b"ping")
    assert resp.status == 200, body
    doc = json.loads(body)
    assert doc["path_info"] == "/sleep" and doc["body_length"] == 4


def test_status_route(alice_conn):
    resp, body = request(alice_conn, "GET", EAS + "/status?code=503")
    assert resp.status == 503


def test_status_401_looks_like_a_refused_ticket(alice_conn):
    resp, _ = request(alice_conn, "POST", EAS + "/status?code=401", {}, b"x")
    assert resp.status == 401
    assert resp.getheader("WWW-Authenticate") == "Negotiate"


def test_rotated_exchange_key_refuses_cached_tickets(private_lab):
    world = private_lab
    with world.environ():
        creds = world.impersonate("alice")
        _, tok = world.init_context(creds)
        old_hdr = "Negotiate " + base64.b64encode(tok).decode()
        kvno = world.rotate_exchange_key()
        # the impersonated credential still holds the old-key ticket
        _, tok = world.init_context(creds)
        stale_hdr = "Negotiate " + base64.b64encode(tok).decode()
        fresh_hdr, _ = world.negotiate_header("alice")
    assert kvno >= 3
    statuses = []
    for hdr in (old_hdr, stale_hdr, fresh_hdr):
        conn = world.backend_connection()
        resp, _ = request(conn, "GET", EAS, {"Authorization": hdr})
        statuses.append(resp.status)
        conn.close()
    assert statuses == [401, 401, 200]


def test_plain_http_port(lab):
    conn = lab.backend_connection(tls=False)
    hdr, _ = negotiate(lab, "bob")
    resp, body = request(conn, "GET", "/autodiscover/autodiscover.xml",
                         {"Authorization": hdr})
    assert resp.status == 200, body
    doc = json.loads(body)
    assert doc["remote_user"] == "bob@" + REALM and doc["https"] is False
    conn.close()


def test_unknown_path_is_not_served(lab):
    conn = lab.backend_connection()
    resp, _ = request(conn, "GET", "/owa/")
    assert resp.status in (403, 404)
    conn.close()


# ------------------------------------------------------- lifecycle ----

def port_open(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def test_stop_leaves_nothing_behind(private_lab):
    world = private_lab
    pids = world.pids
    assert set(pids) == {"slapd", "krb5kdc", "apache2"}
    ports = [world.ldap_port, world.kdc_port, world.backend_port,
             world.backend_http_port]
    assert all(port_open(p) for p in ports)
    # listening on 127.0.0.1 only
    for p in ports:
        ss = open("/proc/net/tcp").read() + open("/proc/net/tcp6").read()
        listeners = [ln.split()[1] for ln in ss.splitlines()[1:]
                     if ln.split()[3] == "0A" and
                     ln.split()[1].endswith(":%04X" % p)]
        assert listeners and all(a.startswith("0100007F:") for a in
                                 listeners), (p, listeners)
    world.stop()
    for pid in pids.values():
        assert not os.path.exists(f"/proc/{pid}") or \
            open(f"/proc/{pid}/stat").read().split()[2] == "Z", pid
    # no process of any kind (Apache's children and cgid included) left
    # running from the lab directory
    left = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                cmd = open(f"/proc/{d}/cmdline", "rb").read()
            except OSError:
                continue
            if world.dir.encode() in cmd:
                left.append((d, cmd))
    assert not left, left
    deadline = time.monotonic() + 5
    while any(port_open(p) for p in ports) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(port_open(p) for p in ports)
    assert not os.path.exists(world.dir)


# ------------------------------------- channel bindings (cb_backend.py) ----

@pytest.mark.parametrize("require", [True, False])
def test_cb_backend_checks_channel_bindings(require):
    world = Lab(require_cb=require)
    world.start()
    try:
        good = world.channel_bindings()
        wrong = b"tls-server-end-point:" + bytes(32)
        results = {}
        for label, cb in (("good", good), ("wrong", wrong), ("none", None)):
            with world.environ():
                hdr, _ = world.negotiate_header("alice", channel_bindings=cb)
            conn = world.backend_connection(port=world.cb_backend_port)
            resp, body = request(conn, "POST", EAS + "?Cmd=Sync",
                                 {"Authorization": hdr}, b"abc")
            results[label] = resp.status
            if resp.status == 200:
                doc = json.loads(body)
                assert doc["remote_user"] == "alice@" + REALM
                assert doc["body_sha256"] == hashlib.sha256(b"abc").hexdigest()
                # authentication persists on the connection, like IIS
                resp2, body2 = request(conn, "GET", EAS + "?Cmd=Ping")
                assert resp2.status == 200
                assert json.loads(body2)["remote_user"] == "alice@" + REALM
            conn.close()
        assert results == {"good": 200, "wrong": 401,
                           "none": 401 if require else 200}
        logged = [(e["status"], e["cb"]) for e in world.cb_backend_requests()
                  if e["method"] == "POST"]
        assert logged == [(200, "bound"), (401, "cb_mismatch"),
                          (401, "cb_missing") if require else (200, "absent")]
    finally:
        world.stop()


def test_port_taken_before_bind_is_retried(monkeypatch):
    import lab as labmod
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen(1)
    taken = squatter.getsockname()[1]
    real = labmod.free_port
    handed = []

    def first_taken(udp_too=False):
        port = taken if not handed else real(udp_too)
        handed.append(port)
        return port
    monkeypatch.setattr(labmod, "free_port", first_taken)
    world = Lab()
    try:
        world.start()
        assert handed[0] == taken and world.ldap_port != taken
        world.check_alive()
    finally:
        world.stop()
        squatter.close()
