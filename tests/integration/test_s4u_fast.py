"""Warm tokens (src/s4u.h, Warm tokens): once a user's impersonated
credential is cached, kcd makes each further token on its loop with
apreq.c's AP-REQ on the cached S4U2Proxy service ticket instead of
gss_init_sec_context on a pool thread. The first token (the S4U2Proxy)
still goes through GSSAPI.

What is pinned down, against real acceptors (Apache + mod_auth_gssapi, MIT's
GSS acceptor through python-gssapi with the service keytab, and the lab's
Extended Protection backend behind the daemon):
  * the tokens after the first come from the fast path (tokens_fast), each
    a fresh authenticator that the acceptors take, for the right user;
  * the channel bindings are bound in: the acceptor refuses a token whose
    bindings are not its own, and reports the context channel-bound when
    they are; the context flags are MIT's (mutual only when asked for);
  * mutual authentication verifies the acceptor's real AP-REP and refuses
    a forged one, another token's, a KRB-ERROR and a token of another kind;
  * krb5.conf's client_aware_channel_bindings (KERB_AP_OPTIONS_CBT) is
    honoured alike by both routes: MIT's acceptor then refuses a token
    without bindings when it has bindings of its own, and nothing else
    changes;
  * through the daemon, a long keep-alive run is accepted request after
    request by a backend that checks every token and its bindings, and
    /metrics says which route the tokens took (eas_kcd_proxy_kcd_tokens_total
    by route: the cold one by GSS, the warm ones fast) while the S4U and
    the proxy's own AS exchanges are counted apart.
"""

import base64
import http.client
import json
import re
import socket
import ssl
import urllib.request

import pytest

from ekp import lab_proxy
from lab import EXCHANGE, REALM, Lab, principal
from lab_fixtures import lab, lab_session  # noqa: F401  (fixtures)
from test_s4u import SPN, CB_PREFIX, Served, backend_get, parse, spnego_resp

GSS_C_MUTUAL_FLAG = 2
GSS_C_CHANNEL_BOUND_FLAG = 2048
KRB5_OID = bytes.fromhex("2a864886f712010202")


@pytest.fixture
def served(lab):
    s = Served(lab)
    yield s
    s.close()


def warm(served, user, cb=None):
    """The user's first token (GSS route, S4U2Proxy); returns the stats."""
    t = parse(served.token(user, SPN, cb))
    assert t[0] == "token", t
    return served.stats()


def _der(tag, body):
    n = len(body)
    if n < 0x80:
        return bytes([tag, n]) + body
    lb = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(lb)]) + lb + body


def frame(tok_id, msg):
    """RFC 2743 3.1 framing of a krb5 mechanism message."""
    return _der(0x60, _der(0x06, KRB5_OID) + tok_id + msg)


def unframe(tok):
    """-> (TOK_ID, message) of an RFC 2743 framed krb5 token."""
    assert tok[0] == 0x60, tok[:4].hex()
    i = 2 if tok[1] < 0x80 else 2 + (tok[1] & 0x7f)
    assert tok[i:i + 11] == _der(0x06, KRB5_OID)
    return tok[i + 11:i + 13], tok[i + 13:]


class Acceptor:
    """MIT's GSS acceptor with the Exchange keytab, in this process."""

    def __init__(self, lab):
        import gssapi
        self.gssapi = gssapi
        self.lab = lab
        with lab.environ():
            name = gssapi.Name("HTTP@exchange.example.test",
                               gssapi.NameType.hostbased_service)
            self.cred = gssapi.Credentials(
                name=name, usage="accept",
                store={"keytab": lab.keytab(EXCHANGE),
                       "rcache": "file2:" + lab.path("rcache", "fast_test.rc")})

    def accept(self, b64, cb_data=None):
        """-> (user, flags, reply token) or raises the GSS error."""
        g = self.gssapi
        cb = (g.raw.ChannelBindings(application_data=cb_data)
              if cb_data is not None else None)
        with self.lab.environ():
            res = g.raw.accept_sec_context(base64.b64decode(b64), self.cred,
                                           channel_bindings=cb)
            user = g.raw.display_name(res.initiator_name).name.decode()
        assert not res.more_steps
        return user, int(res.flags), res.token


def test_warm_tokens_come_from_the_fast_path_and_apache_takes_each(
        lab, served):
    cb = lab.channel_bindings()[len(CB_PREFIX):]
    st = warm(served, "bob", cb)
    assert (st["s4u2self"], st["tokens"], st["tokens_fast"]) == (1, 1, 0), st
    n = 120
    toks = []
    for i in range(n):
        t = parse(served.token("bob", SPN, cb, *(("mutual",) if i % 2 else ())))
        assert t[0] == "token", t
        toks.append(t)
    st = served.stats()
    assert (st["s4u2self"], st["s4u2proxy"]) == (1, 1), st
    assert (st["tokens_fast"], st["fast_fallbacks"]) == (n, 0), st
    assert st["contexts"] == n // 2, st          # one kept per mutual token
    assert len({t[2] for t in toks}) == n       # a fresh authenticator each
    for t in toks:
        status, body, www = backend_get(lab, t[2])
        assert status == 200, body
        assert json.loads(body)["remote_user"] == "bob@" + REALM
        if t[1]:                                 # mutual: Apache's AP-REP
            assert served.cmd(f"mutual {t[1]} {www.split(' ', 1)[1]}") == \
                "mutual ok"
    assert served.stats()["contexts"] == 0


def test_fast_tokens_bind_the_channel_and_carry_mits_flags(lab, served):
    acc = Acceptor(lab)
    good = bytes(range(32))
    other = bytes(range(1, 33))
    warm(served, "carol", good)
    # the right bindings: accepted, channel-bound, for carol, not mutual
    t = parse(served.token("carol", SPN, good))
    user, flags, reply = acc.accept(t[2], CB_PREFIX + good)
    assert user == principal("carol")
    assert flags & GSS_C_CHANNEL_BOUND_FLAG, hex(flags)
    assert not flags & GSS_C_MUTUAL_FLAG, hex(flags)
    assert not reply
    # mutual asked for: the acceptor sees the flag and answers an AP-REP
    t = parse(served.token("carol", SPN, good, "mutual"))
    user, flags, reply = acc.accept(t[2], CB_PREFIX + good)
    assert flags & GSS_C_MUTUAL_FLAG and reply, hex(flags)
    assert served.cmd(f"mutual {t[1]} {base64.b64encode(reply).decode()}") \
        == "mutual ok"
    # other bindings than the acceptor's: refused by the acceptor
    t = parse(served.token("carol", SPN, other))
    with pytest.raises(acc.gssapi.exceptions.BadChannelBindingsError):
        acc.accept(t[2], CB_PREFIX + good)
    # none (Bnd all zero): accepted, but not channel-bound
    t = parse(served.token("carol", SPN, None))
    user, flags, _ = acc.accept(t[2], CB_PREFIX + good)
    assert user == principal("carol")
    assert not flags & GSS_C_CHANNEL_BOUND_FLAG, hex(flags)
    st = served.stats()
    assert (st["tokens_fast"], st["fast_fallbacks"], st["s4u2self"]) == \
        (4, 0, 1), st


def krb_error(code):
    """A KRB-ERROR (RFC 4120 5.9.1) with error-code `code`."""
    def i(n):
        return _der(0x02, n.to_bytes(max(1, (n.bit_length() + 8) // 8), "big"))
    sname = _der(0x30, _der(0xa0, i(2)) + _der(0xa1, _der(
        0x30, _der(0x1b, b"HTTP") + _der(0x1b, b"exchange.example.test"))))
    body = (_der(0xa0, i(5)) + _der(0xa1, i(30)) +
            _der(0xa4, _der(0x18, b"20261124000000Z")) + _der(0xa5, i(0)) +
            _der(0xa6, i(code)) + _der(0xa9, _der(0x1b, REALM.encode())) +
            _der(0xaa, sname))
    return _der(0x7e, _der(0x30, body))


def test_fast_mutual_authentication_refuses_what_is_not_the_reply(lab, served):
    acc = Acceptor(lab)
    warm(served, "alice")

    def mutual_token():
        t = parse(served.token("alice", SPN, None, "mutual"))
        assert t[0] == "token" and t[1] != 0, t
        return t[1], t[2]

    def verify(ctx, raw):
        return served.cmd(f"mutual {ctx} {base64.b64encode(raw).decode()}")

    # the acceptor's real reply verifies
    ctx, tok = mutual_token()
    _, _, reply = acc.accept(tok)
    assert unframe(reply)[0] == b"\x02\x00"
    assert verify(ctx, reply) == "mutual ok"
    # ... also inside a SPNEGO NegTokenResp (a backend that wraps it)
    ctx, tok = mutual_token()
    _, _, reply = acc.accept(tok)
    assert served.cmd(f"mutual {ctx} {spnego_resp(reply)}") == "mutual ok"
    # a reply with its encrypted part altered (integrity check fails)
    ctx, tok = mutual_token()
    _, _, reply = acc.accept(tok)
    forged = bytearray(reply)
    forged[-6] ^= 0x01
    out = verify(ctx, bytes(forged))
    assert out.startswith("mutual error ") and "did not verify" in out, out
    # another token's reply: decrypts (same ticket, same session key) but
    # is not for this authenticator
    ctx_a, tok_a = mutual_token()
    ctx_b, tok_b = mutual_token()
    _, _, reply_a = acc.accept(tok_a)
    acc.accept(tok_b)
    out = verify(ctx_b, reply_a)
    assert out.startswith("mutual error MUTUAL_FAILED:"), out
    assert verify(ctx_a, reply_a) == "mutual ok"
    # a KRB-ERROR in place of the reply: its error is reported
    ctx, tok = mutual_token()
    out = verify(ctx, frame(b"\x03\x00", krb_error(41)))
    assert out.startswith("mutual error MODIFIED:"), out
    # our own AP-REQ echoed back, or an AP-REP without the framing
    ctx, tok = mutual_token()
    out = verify(ctx, base64.b64decode(tok))
    assert out.startswith("mutual error DEFECTIVE_TOKEN:"), out
    ctx, tok = mutual_token()
    _, _, reply = acc.accept(tok)
    out = verify(ctx, unframe(reply)[1])
    assert out.startswith("mutual error DEFECTIVE_TOKEN:"), out
    st = served.stats()
    assert st["contexts"] == 0, st
    assert (st["tokens_fast"], st["fast_fallbacks"]) == (8, 0), st


# ------------------------------------------------------------ the daemon ----

@pytest.fixture(scope="module")
def cb_world():
    """A lab whose Exchange (cb_backend.py) accepts every Authorization it
    gets with MIT's acceptor and requires channel bindings."""
    world = Lab(require_cb=True)
    world.start()
    try:
        yield world
    finally:
        world.stop()


def metrics(p):
    """/metrics as {'name{labels}': value} (every sample line)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{p.admin_port}/metrics",
                                timeout=10) as r:
        body = r.read().decode()
    return {m.group(1): float(m.group(2))
            for m in re.finditer(r"^([a-z_]+(?:\{[^}]*\})?) (\S+)$", body, re.M)}


FAST = 'eas_kcd_proxy_kcd_tokens_total{route="fast"}'
GSS = 'eas_kcd_proxy_kcd_tokens_total{route="gss"}'
FALLBACKS = "eas_kcd_proxy_kcd_fast_fallbacks_total"
S4U_EXCHANGES = "eas_kcd_proxy_kdc_requests_total"
TGT_OK = 'eas_kcd_proxy_kcd_tgt_acquisitions_total{result="ok"}'
TGT_ERR = 'eas_kcd_proxy_kcd_tgt_acquisitions_total{result="error"}'


def test_keep_alive_run_through_the_daemon_every_token_checked(cb_world):
    p = lab_proxy(cb_world, workers=1, settings={
        "kerberos": {"channel_bindings": "on"},
        "backend": {
            "servers": f"exchange.example.test:{cb_world.cb_backend_port}",
            "connect_to": f"127.0.0.1:{cb_world.cb_backend_port}"}})
    p.start()
    conn = None
    try:
        cert = p.device_cert("alice")
        ctx = ssl.create_default_context(cafile=p.server_ca.cert)
        ctx.check_hostname = False
        ctx.load_cert_chain(cert.cert, cert.key)
        conn = http.client.HTTPSConnection("proxy.example.test", p.port,
                                           timeout=60, context=ctx)
        sock = socket.create_connection(("127.0.0.1", p.port), 60)
        conn.sock = ctx.wrap_socket(sock, server_hostname="proxy.example.test")
        n0 = len(cb_world.cb_backend_requests())
        m0 = metrics(p)
        n = 200
        for i in range(n):
            path = ("/Microsoft-Server-ActiveSync?Cmd=Sync&User=alice"
                    f"&DeviceId=FAST{i % 3}&DeviceType=TestPhone")
            conn.request("POST", path, body=b"\x03\x01\x6a\x00",
                         headers={"MS-ASProtocolVersion": "14.1",
                                  "Content-Type":
                                  "application/vnd.ms-sync.wbxml"})
            resp = conn.getresponse()
            body = resp.read()
            assert resp.status == 200, (i, resp.status, body[:300],
                                        p.log_text()[-2000:])
            assert json.loads(body)["remote_user"] == principal("alice")
            assert not resp.will_close, f"connection closed after {i + 1}"
        logged = cb_world.cb_backend_requests()[n0:]
        # every request carried a token of its own, accepted with the
        # backend's bindings (a replayed or unbound one would be 401)
        assert [e["cb"] for e in logged] == ["bound"] * n, \
            sorted({e["cb"] for e in logged})
        assert {e["user"] for e in logged} == {principal("alice")}
        # alice's first token is the cold one (S4U2Self + S4U2Proxy through
        # GSSAPI); the 199 after it are warm, made by the fast path
        m1 = metrics(p)
        d = {k: m1[k] - m0[k] for k in (FAST, GSS, FALLBACKS, S4U_EXCHANGES)}
        assert d[FAST] >= n - 1 and d[GSS] == 1, d
        # one token per request, plus at most the one the worker asked for
        # ahead for this kept-alive connection's next request (stream.c,
        # struct ahead), not used yet
        assert n <= d[FAST] + d[GSS] <= n + 1, d
        assert d[FALLBACKS] == 0, d
        # one S4U exchange (the cold token); the proxy's TGT, acquired once
        # by kcd at start or by that first request, is not one of them
        assert d[S4U_EXCHANGES] == 1, d
        assert (m1[TGT_OK], m1[TGT_ERR]) == (1, 0), m1
    finally:
        if conn is not None:
            conn.close()
        p.stop()


# ------------------------------------- client_aware_channel_bindings ----

def aware_krb5_conf(lab, tmp_path):
    """The lab's krb5.conf with client_aware_channel_bindings = true, for
    kcd only (the acceptor keeps the lab's)."""
    text = open(lab.krb5_conf).read()
    assert "[libdefaults]\n" in text and "client_aware" not in text
    conf = tmp_path / "krb5-cbt-aware.conf"
    conf.write_text(text.replace(
        "[libdefaults]\n",
        "[libdefaults]\n  client_aware_channel_bindings = true\n", 1))
    return str(conf)


CB_GOOD = bytes(range(32))
CB_OTHER = bytes(range(1, 33))
# (the token's bindings, the acceptor's): every combination that MIT's
# acceptor (accept_sec_context.c, check_cbt / process_checksum) tells apart
CBT_CASES = (("good", "good"), ("good", None), (None, None), (None, "good"),
             ("other", "good"))
CBS = {"good": CB_GOOD, "other": CB_OTHER, None: None}


def cbt_outcome(acc, tok, acc_cb, user):
    """'bound', 'unbound' (accepted, not channel-bound) or 'refused'
    (GSS_S_BAD_BINDINGS) for one token at MIT's acceptor."""
    try:
        who, flags, _ = acc.accept(
            tok, None if acc_cb is None else CB_PREFIX + acc_cb)
    except acc.gssapi.exceptions.BadChannelBindingsError:
        return "refused"
    assert who == principal(user)
    return "bound" if flags & GSS_C_CHANNEL_BOUND_FLAG else "unbound"


def cbt_matrix(acc, served, user, route):
    """The acceptor's answer to a token of `route` ('gss': each one a
    fresh S4U2Proxy through gss_init_sec_context, asked with refresh;
    'fast': apreq on the cached ticket) for each of CBT_CASES."""
    st0 = served.stats()
    out = {}
    for tok_cb, acc_cb in CBT_CASES:
        opts = ("refresh",) if route == "gss" else ()
        t = parse(served.token(user, SPN, CBS[tok_cb], *opts))
        assert t[0] == "token", t
        out[(tok_cb, acc_cb)] = cbt_outcome(acc, t[2], CBS[acc_cb], user)
    st = served.stats()
    fast = st["tokens_fast"] - st0["tokens_fast"]
    exchanges = st["s4u2proxy"] - st0["s4u2proxy"]
    n = len(CBT_CASES)
    assert (fast, exchanges) == ((0, n) if route == "gss" else (n, 0)), \
        (route, st0, st)
    assert st["fast_fallbacks"] == st0["fast_fallbacks"], (st0, st)
    return out


def test_client_aware_channel_bindings_the_gss_route_and_fast_path_agree(
        lab, tmp_path):
    # krb5.conf's client_aware_channel_bindings makes MIT's initiator put
    # AD-IF-RELEVANT { AD-AP-OPTIONS KERB_AP_OPTIONS_CBT } into the
    # authenticator; apreq.c does the same on the fast path when kcd's
    # krb5.conf says so (read once at s4u_new). MIT's acceptor (1.19+)
    # then refuses a token without bindings when it has bindings of its
    # own (without the option such a token is accepted, not channel-bound);
    # with no bindings of its own it accepts the token either way. Both
    # routes of kcd, with and without the option, against MIT's acceptor:
    acc = Acceptor(lab)
    want_plain = {("good", "good"): "bound", ("good", None): "unbound",
                  (None, None): "unbound", (None, "good"): "unbound",
                  ("other", "good"): "refused"}
    want_aware = dict(want_plain)
    want_aware[(None, "good")] = "refused"
    for conf, want in ((None, want_plain),
                       (aware_krb5_conf(lab, tmp_path), want_aware)):
        s = Served(lab, extra=["--krb5-conf", conf] if conf else [])
        try:
            gss = cbt_matrix(acc, s, "alice", "gss")
            fast = cbt_matrix(acc, s, "alice", "fast")
        finally:
            s.close()
        assert gss == want, (conf, gss)
        assert fast == want, (conf, fast)
