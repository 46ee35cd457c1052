"""kcd's Kerberos core (src/s4u.c) against the lab's KDC and Exchange
stand-in, through $EKP_TOOLS/s4u_token: the same pool, credential cache and
GSSAPI route the kcd process runs.

What is pinned down: the backend authenticates the impersonated user, never
the proxy or the default ccache's identity; KDC refusals map to the USER /
PROXY / UNREACHABLE classes with krb5 error names; one KDC exchange per
user however many requests arrive at once (single flight); refusals are
cached, an unreachable KDC is not; mutual authentication and channel
bindings work with real servers.
"""

import base64
import json
import os
import select
import subprocess

import pytest

from lab import (DISABLED, EXCHANGE, EXPIRED, LOCKED, OTHER, PROXY,
                 PROXY_NOFWD, PROXY_NONE, PROXY_OTHERSPN, REALM, SENSITIVE,
                 UNKNOWN, Lab, principal)
from lab_fixtures import lab, lab_session  # noqa: F401  (fixtures)

EAS = "/Microsoft-Server-ActiveSync"
SPN = "HTTP@exchange.example.test"
CB_PREFIX = b"tls-server-end-point:"


def tool():
    tools = os.environ.get("EKP_TOOLS") or os.path.join(
        os.path.dirname(__file__), "..", "..", "build", "san", "tools")
    path = os.path.join(tools, "s4u_token")
    assert os.access(path, os.X_OK), \
        f"{path} missing: build it with make san (EKP_TOOLS={tools})"
    return path


def run_tool(lab, user, proxy=PROXY, spn=SPN, extra=(), env=None,
             timeout=120):
    """One s4u_token run; returns (exit status, answer lines, stats dict)."""
    args = [tool(), "--keytab", lab.keytab(proxy), "--principal",
            principal(proxy), "--user", principal(user), "--spn", spn]
    args += list(extra)
    p = subprocess.run(args, env=env or lab.env, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, timeout=timeout)
    lines = p.stdout.splitlines()
    assert lines and lines[-1].startswith("stats "), (p.stdout, p.stderr)
    stats = dict(kv.split("=") for kv in lines[-1].split()[1:])
    return p.returncode, lines[:-1], {k: int(v) for k, v in stats.items()}


class Served:
    """s4u_token --serve: one long-lived s4u (its cache survives between
    commands), driven line by line."""

    def __init__(self, lab, proxy=PROXY, extra=(), env=None):
        args = [tool(), "--keytab", lab.keytab(proxy), "--principal",
                principal(proxy), "--serve"] + list(extra)
        self.p = subprocess.Popen(args, env=env or lab.env,
                                  stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)

    def cmd(self, line, timeout=60):
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()
        ready, _, _ = select.select([self.p.stdout], [], [], timeout)
        assert ready, f"s4u_token gave no answer to {line!r} in {timeout}s"
        out = self.p.stdout.readline().rstrip("\n")
        assert out, f"s4u_token exited: {self.p.stderr.read()}"
        return out

    def token(self, user, spn=SPN, cb=None, *opts):
        hexcb = cb.hex() if cb else "-"
        return self.cmd(" ".join(["token", principal(user), spn, hexcb] +
                                 list(opts)))

    def stats(self):
        line = self.cmd("stats")
        return {k: int(v) for k, v in
                (kv.split("=") for kv in line.split()[1:])}

    def close(self):
        self.p.stdin.close()
        try:
            rc = self.p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
            raise
        err = self.p.stderr.read()
        self.p.stderr.close()
        self.p.stdout.close()
        # a sanitizer report or leak makes the tool exit non-zero
        assert rc == 0, f"s4u_token --serve exited {rc}: {err}"


@pytest.fixture
def served(lab):
    s = Served(lab)
    yield s
    s.close()


def parse(line):
    """'token ID B64' -> ('token', id, b64); 'error CLASS NAME: text' ->
    ('error', CLASS, NAME, text)."""
    if line.startswith("token "):
        _, ctx, tok = line.split(" ", 2)
        return ("token", int(ctx), tok)
    assert line.startswith("error "), line
    head, _, text = line[len("error "):].partition(": ")
    cls, name = head.split(" ", 1)
    return ("error", cls, name, text)


def backend_get(lab, token, port=None, body=None):
    conn = lab.backend_connection(port=port)
    try:
        conn.request("POST" if body is not None else "GET",
                     EAS + "?Cmd=Sync", body=body,
                     headers={"Authorization": "Negotiate " + token})
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, data, resp.getheader("WWW-Authenticate")
    finally:
        conn.close()


def refused_s4u(lab, kind, proxy, status):
    """Refused S4U requests of `kind` by `proxy` with KDC log `status` (the
    KDC does not name the user in a refusal)."""
    return sum(1 for e in lab.kdc_requests(kind)
               if e["client"] == principal(proxy) and e["status"] == status)


# ------------------------------------------------------------ the route ----

def test_token_authenticates_the_user_not_the_default_ccache(lab):
    # The identity trap: the default ccache holds bob's TGT. A token path
    # that let it leak in would show bob (or the proxy) to Exchange.
    lab.run(["kinit", principal("bob")], input=lab.password("bob") + "\n")
    self0 = lab.count_kdc_requests("S4U2SELF", "alice")
    proxy0 = lab.count_kdc_requests("S4U2PROXY", "alice")
    rc, lines, st = run_tool(lab, "alice")
    assert rc == 0, lines
    kind, ctx, tok = parse(lines[0])
    assert (kind, ctx) == ("token", 0)
    raw = base64.b64decode(tok, validate=True)
    # a raw krb5 token: RFC 2743 framing with the krb5 mech OID, no SPNEGO
    assert raw[0] == 0x60 and b"\x06\x09\x2a\x86\x48\x86\xf7\x12\x01\x02\x02" \
        in raw[:20], raw[:20].hex()
    status, body, _ = backend_get(lab, tok)
    assert status == 200, body
    assert json.loads(body)["remote_user"] == "alice@" + REALM
    assert lab.count_kdc_requests("S4U2SELF", "alice") == self0 + 1
    assert lab.count_kdc_requests("S4U2PROXY", "alice") == proxy0 + 1
    assert (st["s4u2self"], st["s4u2proxy"], st["tokens"]) == (1, 1, 1)


def test_second_user_and_cached_credentials(lab, served):
    before = lab.count_kdc_requests("S4U2SELF", "bob")
    toks = [parse(served.token("bob")) for _ in range(3)]
    assert all(t[0] == "token" for t in toks), toks
    assert len({t[2] for t in toks}) == 3      # a fresh authenticator each
    # one S4U2Self for three tokens: the credential is cached
    assert lab.count_kdc_requests("S4U2SELF", "bob") == before + 1
    st = served.stats()
    assert (st["s4u2self"], st["cache_hits"]) == (1, 2)
    for t in toks:                              # each one is accepted once
        status, body, _ = backend_get(lab, t[2])
        assert status == 200, body
        assert json.loads(body)["remote_user"] == "bob@" + REALM


def test_refresh_flag_asks_the_kdc_again(lab, served):
    assert parse(served.token("carol"))[0] == "token"
    before = lab.count_kdc_requests("S4U2SELF", "carol")
    assert parse(served.token("carol", SPN, None, "refresh"))[0] == "token"
    assert lab.count_kdc_requests("S4U2SELF", "carol") == before + 1
    assert served.stats()["s4u2self"] == 2


def test_mutual_authentication_with_the_backend(lab, served):
    kind, ctx, tok = parse(served.token("alice", SPN, None, "mutual"))
    assert kind == "token" and ctx != 0
    status, body, www = backend_get(lab, tok)
    assert status == 200, body
    assert www and www.startswith("Negotiate "), www
    reply = www.split(" ", 1)[1]
    assert served.cmd(f"mutual {ctx} {reply}") == "mutual ok"
    # the context is gone once used
    assert served.cmd(f"mutual {ctx} {reply}").startswith(
        "mutual error NO_CONTEXT:")
    # another context's reply does not verify
    kind, ctx2, _ = parse(served.token("alice", SPN, None, "mutual"))
    out = served.cmd(f"mutual {ctx2} {reply}")
    assert out.startswith("mutual error "), out
    assert "did not verify" in out, out
    # garbage is refused without touching GSSAPI
    kind, ctx3, _ = parse(served.token("alice", SPN, None, "mutual"))
    assert served.cmd(f"mutual {ctx3} not*base64").startswith(
        "mutual error BAD_TOKEN:")
    kind, ctx4, _ = parse(served.token("alice", SPN, None, "mutual"))
    assert served.cmd(f"release {ctx4}") == "released"
    assert served.stats()["contexts"] == 0


def _der(tag, body):
    n = len(body)
    if n < 0x80:
        return bytes([tag, n]) + body
    lb = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(lb)]) + lb + body


def spnego_resp(token=None, state=0):
    """A SPNEGO NegTokenResp (RFC 4178) around a krb5 reply token."""
    krb5_oid = bytes.fromhex("2a864886f712010202")
    fields = _der(0xa0, _der(0x0a, bytes([state])))
    fields += _der(0xa1, _der(0x06, krb5_oid))
    if token is not None:
        fields += _der(0xa2, _der(0x04, token))
    return base64.b64encode(_der(0xa1, _der(0x30, fields))).decode()


def test_mutual_authentication_reply_wrapped_in_spnego(lab, served):
    # A backend may wrap its AP-REP in a SPNEGO NegTokenResp although the
    # proxy sent a raw krb5 token: the AP-REP inside is what is verified.
    kind, ctx, tok = parse(served.token("alice", SPN, None, "mutual"))
    status, body, www = backend_get(lab, tok)
    assert status == 200 and www and www.startswith("Negotiate "), (status, www)
    ap_rep = base64.b64decode(www.split(" ", 1)[1])
    assert served.cmd(f"mutual {ctx} {spnego_resp(ap_rep)}") == "mutual ok"
    # ... and only a reply that verifies
    for wrapped, name in ((spnego_resp(ap_rep[:-4] + b"\0\0\0\0"), None),
                          (spnego_resp(None), "NO_REPLY_TOKEN"),
                          (spnego_resp(ap_rep, state=2), "SPNEGO_REJECT"),
                          (spnego_resp(ap_rep)[:-8], "BAD_TOKEN")):
        kind, ctx, tok = parse(served.token("alice", SPN, None, "mutual"))
        backend_get(lab, tok)
        out = served.cmd(f"mutual {ctx} {wrapped}")
        assert out.startswith("mutual error " + (name or "")), out
    assert served.stats()["contexts"] == 0


def test_single_flight_for_fifty_concurrent_first_requests(lab):
    user = "carol"
    env = dict(lab.env)
    self0 = lab.count_kdc_requests("S4U2SELF", user)
    proxy0 = lab.count_kdc_requests("S4U2PROXY", user)
    rc, lines, st = run_tool(lab, user, extra=["--concurrent", "50"], env=env)
    assert rc == 0, lines
    toks = [parse(ln) for ln in lines]
    assert len(toks) == 50 and all(t[0] == "token" for t in toks)
    assert len({t[2] for t in toks}) == 50
    # at the KDC: exactly one S4U2Self and one S4U2Proxy for 50 tokens
    assert lab.count_kdc_requests("S4U2SELF", user) == self0 + 1
    assert lab.count_kdc_requests("S4U2PROXY", user) == proxy0 + 1
    assert (st["s4u2self"], st["waits"], st["tokens"]) == (1, 49, 50)
    for t in toks[:3]:
        status, body, _ = backend_get(lab, t[2])
        assert status == 200, body
        assert json.loads(body)["remote_user"] == principal(user)


# ------------------------------------------------------------ refusals ----

@pytest.mark.parametrize("user,name", [
    (DISABLED, "CLIENT_REVOKED"),
    (EXPIRED, "NAME_EXP"),
    (LOCKED, "CLIENT_REVOKED"),
    (UNKNOWN, "C_PRINCIPAL_UNKNOWN"),
])
def test_unusable_users_are_user_refusals(lab, user, name):
    rc, lines, st = run_tool(lab, user)
    assert rc == 2
    kind, cls, got, text = parse(lines[0])
    assert (kind, cls, got) == ("error", "USER", name), lines[0]
    assert principal(user) in text and "S4U2Self" in text, text
    assert "hint:" not in text          # nothing for the admin to fix
    assert st["errors_user"] == 1


def test_refusal_is_cached_but_not_retried_at_the_kdc(lab, served):
    before = refused_s4u(lab, "S4U2SELF", PROXY, "CLIENT LOCKED OUT")
    first = parse(served.token(DISABLED))
    second = parse(served.token(DISABLED))
    assert first[:3] == second[:3] == ("error", "USER", "CLIENT_REVOKED")
    assert "cached refusal" in second[3]
    assert refused_s4u(lab, "S4U2SELF", PROXY, "CLIENT LOCKED OUT") == \
        before + 1
    st = served.stats()
    assert (st["s4u2self"], st["negative_hits"]) == (1, 1)


def test_sensitive_user_is_a_user_refusal_once_the_proxy_proved_itself(
        lab, served):
    assert parse(served.token("alice"))[0] == "token"
    kind, cls, name, text = parse(served.token(SENSITIVE))
    assert (cls, name) == ("USER", "NOT_DELEGABLE"), text
    last = [e for e in lab.kdc_requests("S4U2PROXY")
            if e["client"] == principal(PROXY)][-1]
    assert last["status"] == "EVIDENCE_TKT_NOT_FORWARDABLE", last["line"]


def test_sensitive_user_on_a_cold_start_is_blamed_on_the_proxy(lab):
    # Documented limit: MIT and AD answer BADOPTION both for a sensitive
    # user and for a proxy without protocol transition. Before any user
    # succeeded, s4u cannot tell them apart and reports the proxy (502),
    # with a hint that names both causes.
    rc, lines, _ = run_tool(lab, SENSITIVE)
    kind, cls, name, text = parse(lines[0])
    assert (cls, name) == ("PROXY", "EVIDENCE_TKT_NOT_FORWARDABLE"), text
    assert "sensitive" in text


def test_proxy_without_protocol_transition(lab):
    before = refused_s4u(lab, "S4U2PROXY", PROXY_NOFWD,
                         "EVIDENCE_TKT_NOT_FORWARDABLE")
    rc, lines, st = run_tool(lab, "alice", proxy=PROXY_NOFWD)
    kind, cls, name, text = parse(lines[0])
    assert (cls, name) == ("PROXY", "EVIDENCE_TKT_NOT_FORWARDABLE"), text
    assert "Use any authentication protocol" in text
    assert "ok_to_auth_as_delegate" in text
    assert refused_s4u(lab, "S4U2PROXY", PROXY_NOFWD,
                       "EVIDENCE_TKT_NOT_FORWARDABLE") == before + 1
    assert st["errors_proxy"] == 1


@pytest.mark.parametrize("proxy,spn", [
    (PROXY_OTHERSPN, SPN),               # may delegate elsewhere only
    (PROXY_NONE, SPN),                   # may delegate nowhere
    (PROXY, "HTTP@other.example.test"),  # target not in its list
])
def test_target_not_allowed_is_a_proxy_refusal(lab, proxy, spn):
    rc, lines, _ = run_tool(lab, "bob", proxy=proxy, spn=spn)
    kind, cls, name, text = parse(lines[0])
    assert (cls, name) == ("PROXY", "NOT_ALLOWED_TO_DELEGATE"), text
    assert "msDS-AllowedToDelegateTo" in text


def test_other_spn_works_for_the_proxy_allowed_to_it(lab):
    rc, lines, _ = run_tool(lab, "bob", proxy=PROXY_OTHERSPN,
                            spn="HTTP@" + OTHER.split("/")[1])
    assert rc == 0 and parse(lines[0])[0] == "token", lines


def test_unknown_spn_is_a_proxy_refusal(lab):
    rc, lines, _ = run_tool(lab, "bob", spn="HTTP@nosuch.example.test")
    kind, cls, name, text = parse(lines[0])
    assert (cls, name) == ("PROXY", "S_PRINCIPAL_UNKNOWN"), text
    assert "setspn" in text


def test_keytab_without_the_principal_is_a_proxy_refusal(lab):
    args = [tool(), "--keytab", lab.keytab(PROXY), "--principal",
            principal(PROXY_NONE), "--user", principal("bob"), "--spn", SPN]
    p = subprocess.run(args, env=lab.env, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, timeout=60)
    kind, cls, name, text = parse(p.stdout.splitlines()[0])
    assert cls == "PROXY", text
    assert lab.keytab(PROXY) in text and "klist -k" in text, text


def test_kdc_down_is_unreachable_and_never_cached(lab, served):
    assert parse(served.token("alice"))[0] == "token"
    with lab.kdc_down():
        # a user whose credential (and service ticket) is cached goes on
        kind, _, tok = parse(served.token("alice"))
        assert kind == "token"
        status, body, _ = backend_get(lab, tok)
        assert status == 200, body
        assert json.loads(body)["remote_user"] == "alice@" + REALM
        kind, cls, name, text = parse(served.token("bob"))
        assert (cls, name) == ("UNREACHABLE", "KDC_UNREACH"), text
        again = parse(served.token("bob"))
        assert again[1:3] == ("UNREACHABLE", "KDC_UNREACH")
        assert "cached" not in again[3]
    # the KDC is back: the same process gets a token at once
    assert parse(served.token("bob"))[0] == "token"
    st = served.stats()
    assert (st["negative_hits"], st["errors_unreachable"]) == (0, 2)


# ----------------------------------------------------- channel bindings ----

def test_channel_bindings_accepted_by_apache(lab, served):
    cb = lab.channel_bindings()
    assert cb.startswith(CB_PREFIX)
    kind, _, tok = parse(served.token("alice", SPN, cb[len(CB_PREFIX):]))
    status, body, _ = backend_get(lab, tok)
    assert status == 200, body
    assert json.loads(body)["remote_user"] == "alice@" + REALM


@pytest.mark.parametrize("require", [True, False])
def test_channel_bindings_checked_by_an_extended_protection_backend(
        require):
    # mod_auth_gssapi cannot check bindings; cb_backend.py (the lab's
    # Exchange with Extended Protection) does.
    world = Lab(require_cb=require)
    world.start()
    s = None
    try:
        s = Served(world)
        good = world.channel_bindings()[len(CB_PREFIX):]
        results = {}
        for label, cb in (("good", good), ("wrong", bytes(len(good))),
                          ("none", None)):
            kind, _, tok = parse(s.token("alice", SPN, cb))
            status, body, _ = backend_get(world, tok,
                                          port=world.cb_backend_port,
                                          body=b"x")
            results[label] = status
            if status == 200:
                assert json.loads(body)["remote_user"] == "alice@" + REALM
        assert results == {"good": 200, "wrong": 401,
                           "none": 401 if require else 200}
        logged = [(e["status"], e["cb"]) for e in world.cb_backend_requests()
                  if e["method"] == "POST"]
        assert logged == [(200, "bound"), (401, "cb_mismatch"),
                          (401, "cb_missing") if require else (200, "absent")]
    finally:
        if s is not None:
            s.close()
        world.stop()


# ------------------------------------------------- the proxy's credential ----

@pytest.mark.parametrize("lifetime,acquisitions", [("10h", 1), ("4m", 2)])
def test_proxy_credential_is_acquired_again_near_its_end(lab, tmp_path,
                                                         lifetime,
                                                         acquisitions):
    # kcd renews the proxy's TGT when less than 5 minutes of it are left:
    # with 4-minute tickets every new user's S4U2Self starts with a fresh
    # AS exchange; with 10-hour tickets one serves them all. (Also checks
    # that --krb5-conf, i.e. [kerberos] krb5_conf, is honoured.)
    text = open(lab.krb5_conf).read()
    assert "ticket_lifetime = 10h" in text
    conf = tmp_path / "krb5.conf"
    conf.write_text(text.replace("ticket_lifetime = 10h",
                                 "ticket_lifetime = " + lifetime))
    before = lab.count_kdc_requests("AS", PROXY, status="ISSUE")
    s = Served(lab, extra=["--krb5-conf", str(conf)])
    try:
        for user in ("alice", "bob"):
            kind, _, tok = parse(s.token(user))
            assert kind == "token"
            status, body, _ = backend_get(lab, tok)
            assert status == 200, body
            assert json.loads(body)["remote_user"] == principal(user)
        assert s.stats()["proxy_acquired"] == acquisitions
    finally:
        s.close()
    assert lab.count_kdc_requests("AS", PROXY, status="ISSUE") == \
        before + acquisitions
