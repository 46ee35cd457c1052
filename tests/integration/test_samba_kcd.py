"""Kerberos constrained delegation through a real AD KDC (Samba): the
proxy's service account easproxy (protocol transition, allowed to delegate
to Exchange's SPN) gets tokens through kcd's Kerberos core
($EKP_TOOLS/s4u_token: S4U2Self + S4U2Proxy, s4u.c) and Exchange (the lab's
Apache + mod_auth_gssapi, keyed from Samba) sees the user; the directory
checks ($EKP_TOOLS/dircheck) decide which principal that is.
"""

import json
import os
import subprocess

import pytest

from samba_fixtures import samba, samba_session  # noqa: F401  (fixtures)
from test_directory import assert_ok, dircheck, write_conf

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SPN = "HTTP@exchange.example.test"      # lab.BACKEND_HOST: the Apache stand-in


def s4u_tool():
    d = os.environ.get("EKP_TOOLS") or os.path.join(ROOT, "build", "san", "tools")
    path = os.path.join(d, "s4u_token")
    if not os.access(path, os.X_OK):
        pytest.fail(f"{path} is missing: build it with `make san` (or set EKP_TOOLS)")
    return path


class Kcd:
    """s4u_token --serve: one long-lived Kerberos core, like kcd's."""

    def __init__(self, dc):
        self.p = subprocess.Popen(
            [s4u_tool(), "--keytab", dc.keytab, "--principal", f"{dc.proxy}@{dc.realm}",
             "--krb5-conf", dc.krb5_conf, "--serve"],
            env=dc.env, text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE)

    def token(self, principal, spn=SPN):
        self.p.stdin.write(f"token {principal} {spn} -\n")
        self.p.stdin.flush()
        line = self.p.stdout.readline().strip()
        assert line, "s4u_token died: " + self.p.stderr.read()
        return line

    def close(self):
        self.p.stdin.close()
        rc = self.p.wait(timeout=30)
        err = self.p.stderr.read()
        assert rc == 0 and "Sanitizer" not in err, (rc, err[-3000:])


@pytest.fixture
def kcd(samba):
    k = Kcd(samba)
    yield k
    k.close()


@pytest.fixture
def exchange(samba):
    return samba.start_exchange()


def exchange_sees(exchange, line):
    """Send the token of an s4u_token 'token CTX BASE64' line to Exchange;
    returns REMOTE_USER."""
    assert line.startswith("token "), line
    tok = line.split()[2]
    c = exchange.backend_connection()
    try:
        c.request("GET", "/Microsoft-Server-ActiveSync?Cmd=Ping&User=x&DeviceId=D1"
                  "&DeviceType=Phone", headers={"Authorization": "Negotiate " + tok})
        r = c.getresponse()
        body = r.read()
    finally:
        c.close()
    assert r.status == 200, (r.status, body[:300])
    return json.loads(body)["remote_user"]


def test_exchange_sees_the_user_not_the_proxy(samba, kcd, exchange):
    for user in ("alice", "erin"):
        assert exchange_sees(exchange, kcd.token(f"{user}@{samba.realm}")) == \
            f"{user}@{samba.realm}"


def test_directory_principal_is_the_logon_name_exchange_sees(samba, kcd, exchange, tmp_path):
    """bob.smith@ad.example.test's logon name is bsmith: the directory maps
    the certificate to bsmith@AD.EXAMPLE.TEST and that is who Exchange sees.
    Built from the UPN prefix, the principal is another name for the same
    account (Samba's KDC resolves it), which Exchange then sees instead."""
    r = dircheck(samba, write_conf(tmp_path / "p.conf", samba), "bsmith")
    assert_ok(r, "bsmith@" + samba.realm)
    principal = r.field("principal")
    assert exchange_sees(exchange, kcd.token(principal)) == "bsmith@" + samba.realm
    naive = "bob.smith@" + samba.realm
    assert exchange_sees(exchange, kcd.token(naive)) == naive


def test_sensitive_user_cannot_be_delegated(samba, kcd, exchange):
    """'Account is sensitive and cannot be delegated': S4U2Self works, its
    ticket is not forwardable, S4U2Proxy is refused; kcd, having seen
    forwardable tickets for others, blames the user (403), not itself."""
    assert exchange_sees(exchange, kcd.token("alice@" + samba.realm))
    line = kcd.token("sensitive@" + samba.realm)
    assert line.startswith("error USER NOT_DELEGABLE"), line


def test_kdc_refuses_what_the_directory_refuses(samba, kcd):
    """Without the directory checks the KDC is the last line: locked,
    expired and unknown users are refused by Samba's KDC through S4U2Self.
    (A disabled account comes back as KDC_ERR_POLICY from Samba, which does
    not say whose fault it is; the directory's ldap_disabled does.)"""
    assert kcd.token("locked@" + samba.realm).startswith("error USER CLIENT_REVOKED")
    assert kcd.token("expired@" + samba.realm).startswith("error USER NAME_EXP")
    assert kcd.token("nosuchuser@" + samba.realm).startswith("error USER C_PRINCIPAL_UNKNOWN")
    line = kcd.token("disabled@" + samba.realm)
    assert line.startswith("error ") and " POLICY:" in line, line


def test_only_the_delegation_target(samba, kcd):
    """easproxy may delegate to Exchange's SPNs only."""
    line = kcd.token("alice@" + samba.realm, "HTTP@" + samba.dns_domain)
    assert line.startswith("error "), line
    assert kcd.token("alice@" + samba.realm, "HTTP@" + samba.exchange_host).startswith("token ")


# ---- the daemon itself in front of the AD domain -----------------------------------

def samba_proxy(samba, exchange, make_proxy, ldap=None, identity=None, files=None):
    """A started one-worker daemon with the AD service account's keytab in
    front of the lab's Exchange, JSON access log at p.access_log."""
    settings = {
        "identity": {"realm": samba.realm,
                     "suffix_realms": f"{samba.dns_domain}:{samba.realm}"},
        "kerberos": {"keytab": samba.keytab, "principal": f"{samba.proxy}@{samba.realm}",
                     "krb5_conf": samba.krb5_conf},
        "backend": {"servers": f"exchange.example.test:{exchange.backend_port}",
                    "connect_to": f"127.0.0.1:{exchange.backend_port}",
                    "ca": exchange.backend_ca, "spn": "HTTP/exchange.example.test"},
    }
    if identity:
        settings["identity"].update(identity)
    if ldap:
        settings["ldap"] = dict({"uri": samba.ldap_uri, "bind": "gssapi",
                                 "base_dn": samba.base_dn}, **ldap)
    p = make_proxy(workers=1, files=files, settings=settings)
    p.access_log = p.path("access.log")
    p.write_config(settings={"log": {"access_log": p.access_log, "access_format": "json"}})
    return p.start()


def device_get(p, dev, query):
    """GET /Microsoft-Server-ActiveSync?QUERY as the device dev (certs.Issued);
    returns (status, body)."""
    import http.client
    import socket
    import ssl

    ctx = ssl.create_default_context(cafile=p.server_ca.cert)
    ctx.check_hostname = False
    ctx.load_cert_chain(dev.cert, dev.key)
    conn = http.client.HTTPSConnection("proxy.example.test", p.port, timeout=60, context=ctx)
    conn.sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", p.port), 60),
                                server_hostname="proxy.example.test")
    try:
        conn.request("GET", "/Microsoft-Server-ActiveSync?" + query,
                     headers={"MS-ASProtocolVersion": "14.1"})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def upn_device(p, samba, user, prefix):
    """A device certificate from p's own device CA with UPN user@<AD DNS domain>."""
    import certs
    return certs.device(p.path("pki"), prefix + user, p.device_ca,
                        upns=[f"{user}@{samba.dns_domain}"], cn=user)

def test_daemon_delegates_through_samba(samba, exchange, make_proxy):
    """eas-kcd-proxy (workers + kcd) with the AD service account's keytab:
    a device's request reaches Exchange as the certificate's user, and the
    KDC's refusals come back as 403 kdc_<NAME> (sensitive: NOT_DELEGABLE,
    once kcd has seen a forwardable ticket for someone else)."""
    from ekp import access_records, wait_until

    p = samba_proxy(samba, exchange, make_proxy)

    def request(user):
        return device_get(p, upn_device(p, samba, user, "dev-"),
                          f"Cmd=Sync&User={user}&DeviceId=SAMBA1&DeviceType=TestPhone")

    status, body = request("alice")
    assert status == 200, (status, body[:300], p.log_text()[-3000:])
    assert json.loads(body)["remote_user"] == "alice@" + samba.realm
    for user, name in (("sensitive", "NOT_DELEGABLE"), ("locked", "CLIENT_REVOKED"),
                       ("expired", "NAME_EXP")):
        status, body = request(user)
        assert status == 403 and body == b"", (user, status, body[:300])
        want = f"{user}@{samba.realm}"
        recs = wait_until(lambda: [r for r in access_records(p) if r["username"] == want],
                          10, f"an access-log line for {want}")
        assert (recs[-1]["status"], recs[-1]["reason"]) == (403, "kdc_" + name), recs[-1]


def test_daemon_applies_the_directory_checks(samba, exchange, make_proxy):
    """[ldap] through the daemon (SPEC §7): kcd looks the certificate's user
    up in AD (GSSAPI bind as the proxy) before any ticket is asked for.
    The principal becomes sAMAccountName@REALM (bob.smith's UPN prefix is not
    his logon name: Exchange must see bsmith), a nested group member passes,
    and disabled accounts and users outside require_group get 403
    ldap_<name> without a KDC exchange."""
    from ekp import access_records, wait_until

    p = samba_proxy(samba, exchange, make_proxy,
                    ldap={"require_group": samba.group_dn("EAS Users")})

    def request(cert_user, query_user):
        return device_get(p, upn_device(p, samba, cert_user, "dir-"),
                          f"Cmd=Sync&User={query_user}&DeviceId=SAMBA2&DeviceType=TestPhone")

    status, body = request("bob.smith", "bsmith")
    assert status == 200, (status, body[:300], p.log_text()[-3000:])
    assert json.loads(body)["remote_user"] == "bsmith@" + samba.realm
    status, body = request("carol", "carol")
    assert status == 200, (status, body[:300])
    assert json.loads(body)["remote_user"] == "carol@" + samba.realm
    for user, reason in (("disabled", "ldap_disabled"), ("dave", "ldap_not_in_group")):
        status, body = request(user, user)
        assert status == 403 and body == b"", (user, status, body[:300])
        wait_until(lambda: [r for r in access_records(p) if r["reason"] == reason], 10,
                   f"an access-log line with {reason}")
    p.wait_for_log(r"info directory: 127\.0\.0\.1 disabled@" + samba.realm)


def test_daemon_enforces_strong_certificate_mapping(samba, exchange, make_proxy):
    """strong_mapping = enforce through the daemon (KB5014754): a certificate
    whose SID extension names alice passes; one carrying another account's
    SID, and one with no strong binding at all, get 403 ldap_<name>."""
    from ekp import access_records, wait_until

    p = samba_proxy(samba, exchange, make_proxy, ldap={"strong_mapping": "enforce"},
                    files={"device-ca.pem": samba.device_ca.cert})

    def request(name):
        return device_get(p, samba.cert(name),
                          "Cmd=Sync&User=alice&DeviceId=SAMBA3&DeviceType=TestPhone")

    status, body = request("alice_sid")
    assert status == 200, (status, body[:300], p.log_text()[-3000:])
    assert json.loads(body)["remote_user"] == "alice@" + samba.realm
    for name in ("alice_badsid", "alice"):
        status, body = request(name)
        assert status == 403 and body == b"", (name, status, body[:300])
    recs = wait_until(lambda: [r for r in access_records(p)
                               if r["status"] == 403 and r["reason"].startswith("ldap_")],
                      10, "two ldap_ refusals")
    assert len(recs) >= 2, recs


def test_daemon_finds_the_user_by_certificate_and_honours_on_failure(samba, exchange, make_proxy):
    """[identity] source = ldap through the daemon: a certificate without a
    UPN (erin, bound by altSecurityIdentities X509:<I>..<SR>..) reaches
    Exchange as the account that names it; mallory (bound to nobody) gets
    403. With the directory gone, on_failure = deny answers 503
    ldap_unreachable."""
    from ekp import access_records, wait_until

    p = samba_proxy(samba, exchange, make_proxy,
                    identity={"source": "ldap", "check_user_param": "no"},
                    ldap={"on_failure": "deny", "cache_ttl": "1s", "timeout": "2s"},
                    files={"device-ca.pem": samba.device_ca.cert})

    def request(name):
        return device_get(p, samba.cert(name), "Cmd=Sync&DeviceId=SAMBA4&DeviceType=TestPhone")

    status, body = request("erin")
    assert status == 200, (status, body[:300], p.log_text()[-3000:])
    assert json.loads(body)["remote_user"] == "erin@" + samba.realm
    status, body = request("mallory")
    assert status == 403, (status, body[:300])
    wait_until(lambda: [r for r in access_records(p)
                        if r["status"] == 403 and r["reason"].startswith("ldap_")],
               10, "mallory refused with an ldap_ reason")
    samba.stop_samba()
    try:
        import time
        time.sleep(1.5)          # past cache_ttl
        status, body = request("erin")
        assert status == 503, (status, body[:300])
        wait_until(lambda: [r for r in access_records(p) if r["reason"] == "ldap_unreachable"],
                   10, "reason ldap_unreachable with the directory gone")
    finally:
        samba.start_samba()
