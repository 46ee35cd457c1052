"""`eas-kcd-proxy doctor` (SPEC §2) against the lab: with good settings every
check is OK and the exit status 0; each broken setting makes its own check
FAIL with its hint and the exit status 1. Also: the daemon refuses a keytab
every user may read (-t, start, and a reload through kcd), with the message
doctor prints.

Doctor runs the real binary ($EKP_BIN) on a configuration written by
ekp.lab_proxy (the proxy is never started unless a test says so), so its
output is the one an admin sees. Lines look like
    OK   tgt         TGT for HTTP/proxy.example.test@EXAMPLE.TEST, forwardable, ...
    FAIL s4u2self    S4U2Self ticket ... is not forwardable ...; hint: set ...
"""

import datetime
import os
import re
import pwd
import shutil
import signal
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

import certs
from ekp import binary, free_port, lab_proxy, stop_all
from lab_fixtures import lab, lab_session  # noqa: F401  (fixtures)

LINE_RE = re.compile(r"^(OK|WARN|FAIL|SKIP) +(\S+) +(.*)$")
SUMMARY_RE = re.compile(r"^doctor: (\d+) OK, (\d+) WARN, (\d+) FAIL, (\d+) SKIP$", re.M)
EVERY_CHECK = ("config", "file", "keytab-mode", "keytab", "clock", "tgt", "tls-cert",
               "client-ca", "crl", "backend", "user", "ldap", "s4u2self", "s4u2proxy",
               "exchange")


class Doctor:
    """One doctor run: rc, the raw output, and its check lines."""

    def __init__(self, proc):
        self.rc = proc.returncode
        self.out = proc.stdout
        self.err = proc.stderr
        self.lines = []
        for ln in self.out.splitlines():
            m = LINE_RE.match(ln)
            if m:
                self.lines.append((m.group(1), m.group(2), m.group(3)))

    def __str__(self):
        return f"exit {self.rc}\nstdout:\n{self.out}\nstderr:\n{self.err[-3000:]}"

    def checks(self, name):
        return [(st, text) for st, n, text in self.lines if n == name]

    def one(self, name):
        found = self.checks(name)
        assert len(found) == 1, f"expected one '{name}' line, got {found}\n{self}"
        return found[0]

    def expect(self, name, status, *needles):
        """The one `name` line has `status` and contains every needle."""
        st, text = self.one(name)
        assert st == status, f"'{name}' is {st}, expected {status}: {text}\n{self}"
        for n in needles:
            assert n in text, f"'{name}' line lacks {n!r}: {text}\n{self}"
        return text

    def statuses(self):
        return {st for st, _, _ in self.lines}


def doctor(p, *args, expected_code=None):
    """Run `doctor -c p.conf ARGS` with p's environment (sanitizer logs go
    to p's directory and fail the test at teardown)."""
    proc = subprocess.run([binary(), "doctor", "-c", p.conf] + list(args),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=p.env(), timeout=120)
    d = Doctor(proc)
    m = SUMMARY_RE.search(d.out)
    assert m, f"no summary line\n{d}"
    counts = dict(zip(("OK", "WARN", "FAIL", "SKIP"), map(int, m.groups())))
    for st in counts:
        assert counts[st] == sum(1 for s, _, _ in d.lines if s == st), \
            f"summary does not add up: {m.group(0)}\n{d}"
    if expected_code is not None:
        assert d.rc == expected_code, f"expected exit {expected_code}\n{d}"
    return d


@pytest.fixture
def proxies():
    """lab_proxy() objects made by a test, removed (and their sanitizer
    logs checked) at teardown."""
    made = []

    def make(lab, settings=None, **kw):
        p = lab_proxy(lab, settings=settings, **kw)
        made.append(p)
        return p

    yield make
    stop_all(made)


def with_crl(p):
    """Give p a current CRL from its device CA (so the crl check runs)."""
    path = certs.crl(p.path("pki"), p.device_ca)
    p.write_config(settings={"tls": {"crl": path}})
    return path


def proxy_settings(lab, proxy):
    return {"kerberos": {"keytab": lab.keytab(proxy),
                         "principal": proxy + "@" + lab.realm}}


# ---- good settings -------------------------------------------------------------------

def test_good_settings_every_check_is_ok(lab, proxies):
    p = proxies(lab)
    with_crl(p)
    d = doctor(p, "--user", "alice@EXAMPLE.TEST", expected_code=0)
    names = [n for _, n, _ in d.lines]
    for want in EVERY_CHECK:
        assert want in names, f"no '{want}' check\n{d}"
    # [ldap] is not configured in the MIT lab: the only line that is not OK
    bad = [(st, n, t) for st, n, t in d.lines if st != "OK" and n != "ldap"]
    assert not bad, f"lines that are not OK: {bad}\n{d}"
    d.expect("ldap", "SKIP", "[ldap] uri not set")
    assert len(d.checks("file")) >= 6, d      # certificate, key, client_ca, crl, keytab, ...
    d.expect("keytab", "OK", "aes256-cts-hmac-sha1-96")
    d.expect("keytab-mode", "OK", "mode 0600", "owner root")
    d.expect("clock", "OK", "authtime")
    d.expect("tgt", "OK", "forwardable")
    d.expect("tls-cert", "OK", "key matches", "verifies")
    d.expect("crl", "OK", "next update")
    d.expect("backend", "OK", "verified for exchange.example.test", "tls-server-end-point")
    d.expect("s4u2self", "OK", "alice@EXAMPLE.TEST", "forwardable")
    d.expect("s4u2proxy", "OK", "HTTP@exchange.example.test", "with channel bindings")
    d.expect("exchange", "OK", ": 200 from", "mutual authentication verified",
             "MS-ASProtocolVersions")
    # Exchange really saw alice, through Negotiate
    seen = [e for e in lab.apache_access() if e["method"] == "OPTIONS" and
            e["user"] == "alice@EXAMPLE.TEST" and e["auth_scheme"] == "Negotiate"]
    assert seen, f"Apache logged no OPTIONS as alice: {lab.apache_access()[-5:]}"


def test_without_user_the_user_checks_are_skipped_with_a_note(lab, proxies):
    d = doctor(proxies(lab), expected_code=0)
    d.expect("user", "SKIP", "--user")
    for name in ("s4u2self", "s4u2proxy", "exchange"):
        d.expect(name, "SKIP", "needs --user")
    d.expect("tgt", "OK")
    assert "FAIL" not in d.statuses() and "WARN" not in d.statuses(), d


# ---- Kerberos refusals ---------------------------------------------------------------

def test_proxy_without_ok_to_auth_as_delegate(lab, proxies):
    p = proxies(lab, settings=proxy_settings(lab, lab.PROXY_NOFWD))
    d = doctor(p, "--user", "alice", expected_code=1)
    d.expect("tgt", "OK")
    d.expect("s4u2self", "FAIL", "not forwardable",
             "hint: set ok_to_auth_as_delegate / AD: 'Trust this user for delegation to "
             "specified services only — Use any authentication protocol'")
    d.expect("s4u2proxy", "FAIL", "EVIDENCE_TKT_NOT_FORWARDABLE")
    d.expect("exchange", "SKIP")


def test_proxy_that_may_delegate_to_another_spn_only(lab, proxies):
    p = proxies(lab, settings=proxy_settings(lab, lab.PROXY_OTHERSPN))
    d = doctor(p, "--user", "alice", expected_code=1)
    d.expect("s4u2self", "OK", "forwardable")
    d.expect("s4u2proxy", "FAIL", "NOT_ALLOWED_TO_DELEGATE", "msDS-AllowedToDelegateTo")
    d.expect("exchange", "SKIP", "no service ticket")


def test_disabled_user_is_named_as_the_kdc_refusal(lab, proxies):
    d = doctor(proxies(lab), "--user", "disabled@EXAMPLE.TEST", expected_code=1)
    d.expect("user", "OK", "disabled@EXAMPLE.TEST")
    d.expect("s4u2self", "FAIL", "the KDC refuses user disabled@EXAMPLE.TEST",
             "CLIENT_REVOKED", "disabled or locked", "hint: a device of this user gets 403 "
             "kdc_CLIENT_REVOKED")
    d.expect("s4u2proxy", "SKIP")
    # the proxy itself is fine
    d.expect("tgt", "OK")


def test_unmapped_upn_fails_the_user_check(lab, proxies):
    d = doctor(proxies(lab), "--user", "mallory@unmapped.example", expected_code=1)
    d.expect("user", "FAIL", "suffix_unmapped", "hint:")
    d.expect("s4u2self", "SKIP")


def test_kdc_stopped(lab, proxies):
    p = proxies(lab)
    with lab.kdc_down():
        d = doctor(p, "--user", "alice", expected_code=1)
    d.expect("clock", "FAIL", "KDC unreachable", "hint:", "port 88")
    d.expect("tgt", "FAIL", "KDC unreachable")
    d.expect("s4u2self", "SKIP", "no TGT")
    d.expect("s4u2proxy", "SKIP", "no TGT")
    d.expect("backend", "OK")       # the rest is still checked


# ---- the keytab ------------------------------------------------------------------------

def test_wrong_keytab_path_fails_the_configuration(lab, proxies):
    p = proxies(lab, settings={"kerberos": {"keytab": "/nonexistent/proxy.keytab"}})
    d = doctor(p, "--user", "alice", expected_code=1)
    text = d.expect("config", "FAIL", "does not load", "hint:")
    assert "-t -c FILE" in text, d
    assert re.search(r"\.conf:\d+: cannot read keytab '/nonexistent/proxy.keytab': No such "
                     r"file or directory", d.out), d
    assert d.statuses() == {"FAIL"}, f"nothing can be checked without a config\n{d}"


def test_keytab_without_the_principal(lab, proxies):
    p = proxies(lab, settings={"kerberos": {"principal": "HTTP/nope.example.test@EXAMPLE.TEST"}})
    d = doctor(p, expected_code=1)
    d.expect("keytab", "FAIL", "holds no key for HTTP/nope.example.test@EXAMPLE.TEST",
             "the keytab holds: HTTP/proxy.example.test@EXAMPLE.TEST")
    d.expect("tgt", "FAIL", "KT_NOTFOUND")


def test_world_readable_keytab_is_refused_by_doctor_check_and_start(lab, proxies):
    p = proxies(lab, settings={"kerberos": {"keytab": "proxy.keytab"}},
                files={"proxy.keytab": lab.keytab(lab.PROXY)})
    kt = p.path("proxy.keytab")
    os.chmod(kt, 0o644)
    d = doctor(p, expected_code=1)
    msg = d.expect("keytab-mode", "FAIL", "is readable by every user (mode 0644)", "chmod 600",
                   "hint: the daemon refuses to start with it")
    msg = msg.split("; hint:")[0]
    # -t and the daemon refuse it with the same message
    t = p.run(["-t", "-c", p.conf], expected_code=1)
    assert msg in t.stderr and "configuration OK" not in t.stdout, t.stderr
    s = p.run(["-c", p.conf], expected_code=1, timeout=30)
    assert msg in s.stderr, s.stderr
    # group access is only a warning, mode 0600 is fine
    os.chmod(kt, 0o640)
    doctor(p, expected_code=0).expect("keytab-mode", "WARN", "readable by group")
    os.chmod(kt, 0o600)
    doctor(p, expected_code=0).expect("keytab-mode", "OK", "mode 0600")


def test_keytab_owned_by_the_worker_user_fails(lab, proxies):
    p = proxies(lab, settings={"kerberos": {"keytab": "proxy.keytab"}},
                files={"proxy.keytab": lab.keytab(lab.PROXY)})
    os.chown(p.path("proxy.keytab"), pwd.getpwnam("nobody").pw_uid, 0)
    d = doctor(p, expected_code=1)
    d.expect("keytab-mode", "FAIL", "owned by nobody, the [server] user", "chown root")


def test_kcd_refuses_a_keytab_opened_up_before_a_reload(lab, proxies):
    p = proxies(lab, settings={"kerberos": {"keytab": "proxy.keytab"}},
                files={"proxy.keytab": lab.keytab(lab.PROXY)}, workers=1)
    p.start()
    os.chmod(p.path("proxy.keytab"), 0o604)
    p.signal(signal.SIGHUP)
    p.wait_for_log(r"kcd: keytab '.*proxy\.keytab' is readable by every user \(mode 0604\)",
                   timeout=20)
    p.wait_for_log(r"reload failed: .*previous generation keeps serving", timeout=20)
    assert p.exited() is None, "the daemon must keep serving on the old generation"


# ---- Exchange ----------------------------------------------------------------------------

def test_backend_port_closed(lab, proxies):
    port = free_port()
    p = proxies(lab, settings={"backend": {"connect_to": f"127.0.0.1:{port}"}})
    d = doctor(p, "--user", "alice", expected_code=1)
    d.expect("backend", "FAIL", f"connect 127.0.0.1:{port}: Connection refused",
             "hint: is Exchange (or its load balancer) listening")
    d.expect("exchange", "SKIP", "no backend server answered")
    # S4U2Proxy still works, without channel bindings
    d.expect("s4u2proxy", "OK", "without channel bindings")


def test_backend_ca_wrong(lab, proxies):
    p = proxies(lab)
    p.write_config(settings={"backend": {"ca": p.path("device-ca.pem")}})
    d = doctor(p, "--user", "alice", expected_code=1)
    d.expect("backend", "FAIL", "does not verify for exchange.example.test",
             "unable to get local issuer certificate", "hint: set [backend] ca")
    d.expect("exchange", "SKIP")


def test_backend_name_not_in_its_certificate(lab, proxies):
    p = proxies(lab, settings={"backend": {
        "servers": f"mail.example.test:{lab.backend_port}",
        "host_header": "exchange.example.test"}})
    d = doctor(p, expected_code=1)
    d.expect("backend", "FAIL", "does not verify for mail.example.test", "subjectAltName")


# ---- the proxy's certificate, device CAs, CRLs -----------------------------------------------

def replace_proxy_cert(p, **validity):
    """A new proxy certificate (leaf + server CA chain) in server.pem/.key."""
    leaf = certs.leaf(p.path("pki"), "proxy-dated", p.server_ca, "proxy.example.test",
                      san=[x509.DNSName("proxy.example.test")],
                      eku=(ExtendedKeyUsageOID.SERVER_AUTH,), org="Example Lab", **validity)
    with open(p.path("server.pem"), "wb") as out:
        for f in (leaf.cert, p.server_ca.cert):
            with open(f, "rb") as src:
                out.write(src.read())
    shutil.copyfile(leaf.key, p.path("server.key"))
    os.chmod(p.path("server.key"), 0o600)


def test_expired_proxy_certificate(lab, proxies):
    p = proxies(lab)
    now = datetime.datetime.now(datetime.timezone.utc)
    replace_proxy_cert(p, not_before=now - datetime.timedelta(days=30),
                       not_after=now - datetime.timedelta(days=1))
    d = doctor(p, expected_code=1)
    d.expect("tls-cert", "FAIL", "the proxy's certificate CN=proxy.example.test", "expired on",
             "hint: devices refuse it")


def test_proxy_certificate_near_expiry_is_a_warning(lab, proxies):
    p = proxies(lab)
    now = datetime.datetime.now(datetime.timezone.utc)
    replace_proxy_cert(p, not_after=now + datetime.timedelta(days=10, hours=1))
    d = doctor(p, expected_code=0)
    d.expect("tls-cert", "WARN", "expires on", "in 10 days", "hint: renew it")


def test_proxy_certificate_without_its_chain_is_a_warning(lab, proxies):
    p = proxies(lab)
    with open(p.path("server.pem"), "rb") as f:
        leaf = f.read().split(b"-----END CERTIFICATE-----")[0] + b"-----END CERTIFICATE-----\n"
    with open(p.path("server.pem"), "wb") as f:
        f.write(leaf)
    d = doctor(p, expected_code=0)
    d.expect("tls-cert", "WARN", "the chain does not verify: unable to get local issuer "
             "certificate", "hint: put the leaf first, then the intermediate CA")


def test_expired_crl_fails_closed(lab, proxies):
    p = proxies(lab)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca = p.device_ca
    crl = (x509.CertificateRevocationListBuilder()
           .issuer_name(ca.obj.subject)
           .last_update(now - datetime.timedelta(days=8))
           .next_update(now - datetime.timedelta(days=1))
           .sign(ca.key_obj, hashes.SHA256()))
    path = p.path("pki", "old.crl.pem")
    with open(path, "wb") as f:
        f.write(crl.public_bytes(serialization.Encoding.PEM))
    p.write_config(settings={"tls": {"crl": path}})
    d = doctor(p, expected_code=1)
    d.expect("crl", "FAIL", "the CRL of CN=EAS Device CA", "expired on", "fail closed")


def test_device_ca_without_a_crl_is_a_warning(lab, proxies):
    p = proxies(lab)
    other = certs.ca(p.path("pki"), "other-ca", "Other Device CA")
    with open(p.path("device-ca.pem"), "ab") as out, open(other.cert, "rb") as src:
        out.write(src.read())
    with_crl(p)
    d = doctor(p, expected_code=0)
    d.expect("client-ca", "OK", "2 CAs")
    d.expect("crl", "WARN", "no CRL from CN=Other Device CA")
