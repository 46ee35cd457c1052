"""Directory checks (SPEC §7, src/directory.c) against a real Samba AD DC.

Each test writes a proxy configuration for the lab domain and runs the real
lookup code through $EKP_TOOLS/dircheck (the same directory_identify that
kcd calls), asserting on its outcome line: OK principal=…, DENIED name=…
(the device's 403 ldap_<name>), UNREACHABLE (503). The accounts and
certificates are described in samba_lab.py.
"""

import os
import re
import subprocess
import time

import pytest

from samba_fixtures import samba, samba_session  # noqa: F401  (fixtures)
import certs  # noqa: E402  (tests/certs.py, on the path through samba_lab)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FILES = os.path.join(ROOT, "tests", "conf", "files")


def tool():
    d = os.environ.get("EKP_TOOLS") or os.path.join(ROOT, "build", "san", "tools")
    path = os.path.join(d, "dircheck")
    if not os.access(path, os.X_OK):
        pytest.fail(f"{path} is missing: build it with `make san` (or set EKP_TOOLS)")
    return path


def write_conf(path, dc, identity=None, ldap=None, kerberos=None):
    """A complete proxy configuration for the lab domain; identity/ldap/
    kerberos: keys to add or override in those sections."""
    sections = {
        "server": {"user": "nobody"},
        "tls": {"certificate": f"{FILES}/server.pem", "key": f"{FILES}/server.key",
                "client_ca": f"{FILES}/device-ca.pem"},
        "identity": {"realm": dc.realm,
                     "suffix_realms": f"{dc.dns_domain}:{dc.realm}"},
        "kerberos": {"keytab": dc.keytab, "principal": f"{dc.proxy}@{dc.realm}",
                     "krb5_conf": dc.krb5_conf},
        "backend": {"servers": f"{dc.exchange_host}:443", "spn": dc.exchange_spn},
        "ldap": {"uri": dc.ldap_uri, "base_dn": dc.base_dn,
                 "require_group": dc.group_dn(dc.eas_group), "timeout": "5s"},
        "log": {"access_log": "off", "level": "info"},
    }
    for name, extra in (("identity", identity), ("ldap", ldap), ("kerberos", kerberos)):
        for k, v in (extra or {}).items():
            if v is None:
                sections[name].pop(k, None)
            else:
                sections[name][k] = v
    with open(path, "w") as f:
        for name, keys in sections.items():
            f.write(f"[{name}]\n")
            for k, v in keys.items():
                f.write(f"{k} = {v}\n")
    return str(path)


class Run:
    def __init__(self, p):
        self.rc = p.returncode
        self.out = p.stdout
        self.err = p.stderr
        self.lines = [ln for ln in p.stdout.splitlines()
                      if ln.split(" ", 1)[0] in ("OK", "DENIED", "UNREACHABLE", "UNMAPPED",
                                                 "ERROR", "CANCELLED")]
        m = re.search(r"^STATS (.*)$", p.stdout, re.M)
        self.stats = dict(kv.split("=") for kv in m.group(1).split()) if m else {}

    @property
    def line(self):
        assert self.lines, f"no outcome line:\n{self.out}\n{self.err}"
        return self.lines[-1]

    def field(self, name, line=None):
        m = re.search(r"\b" + name + r"=(\S*)", line or self.line)
        return m.group(1) if m else None

    def __repr__(self):
        return f"rc={self.rc} out={self.out!r} err={self.err[-2000:]!r}"


def dircheck(dc, conf, cert=None, principal=None, count=1, parallel=1):
    args = [tool(), "-c", conf]
    if cert is not None:
        args += ["-C", dc.cert(cert).cert if isinstance(cert, str) else cert.cert]
    if principal is not None:
        args += ["-p", principal]
    if count != 1:
        args += ["-n", str(count)]
    if parallel != 1:
        args += ["-P", str(parallel)]
    p = subprocess.run(args, env=dc.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True, timeout=60)
    return Run(p)


def assert_ok(r, principal, flags="-"):
    assert r.line.startswith("OK "), r
    assert r.field("principal") == principal, r
    assert r.field("flags") == flags, r
    assert r.rc == 0, r


def assert_denied(r, name):
    assert r.line.startswith("DENIED "), r
    assert r.field("name") == name, r
    assert r.rc == 1, r


@pytest.fixture
def conf(tmp_path, samba):
    def make(**kw):
        return write_conf(tmp_path / "proxy.conf", samba, **kw)
    return make


# ---- looking users up by the certificate's UPN ------------------------------------

def test_upn_prefix_differs_from_logon_name(samba, conf):
    """bob.smith@ad.example.test is the UPN; the ticket must be for bsmith."""
    c = conf()
    assert_ok(dircheck(samba, c, "bsmith"), "bsmith@" + samba.realm)
    assert_ok(dircheck(samba, c, "alice"), "alice@" + samba.realm)


def test_group_direct_nested_and_outside(samba, conf):
    c = conf()
    assert_ok(dircheck(samba, c, "alice"), "alice@" + samba.realm)
    assert_ok(dircheck(samba, c, "carol"), "carol@" + samba.realm)     # via Sales
    r = dircheck(samba, c, "dave")
    assert_denied(r, "not_in_group")
    assert "CN=dave,CN=Users" in r.line, r
    # without require_group dave is fine
    assert_ok(dircheck(samba, conf(ldap={"require_group": None}), "dave"),
              "dave@" + samba.realm)


def test_disabled_locked_expired_refused(samba, conf):
    c = conf()
    assert_denied(dircheck(samba, c, "disabled"), "disabled")
    assert_denied(dircheck(samba, c, "locked"), "locked")
    assert_denied(dircheck(samba, c, "expired"), "expired")
    # the refusal is logged with the account
    r = dircheck(samba, c, "disabled")
    assert re.search(r"disabled@AD\.EXAMPLE\.TEST refused: ldap_disabled: account "
                     r"CN=disabled,CN=Users", r.err), r


def test_unknown_user_not_found(samba, conf, tmp_path):
    nobody = certs.device(str(tmp_path), "nobody", samba.device_ca,
                          upns=["nobody@" + samba.dns_domain], cn="nobody")
    assert_denied(dircheck(samba, conf(), nobody), "not_found")


def test_hostile_values_are_escaped(samba, conf, tmp_path):
    """RFC 4515: a UPN or principal full of filter syntax finds nobody; it
    neither widens the search (ambiguous) nor breaks the filter (unreachable)."""
    c = conf(ldap={"require_group": None})
    for i, upn in enumerate(["*)(objectClass=*@" + samba.dns_domain,
                             "*@" + samba.dns_domain,
                             "alice)(|(sAMAccountName=*@" + samba.dns_domain]):
        dev = certs.device(str(tmp_path), f"hostile{i}", samba.device_ca, upns=[upn], cn="x")
        r = dircheck(samba, c, dev)
        assert_denied(r, "not_found")
        assert "\\2a" in r.line, r
    for p in ("*@" + samba.realm, "*)(sAMAccountName=*@" + samba.realm):
        assert_denied(dircheck(samba, c, principal=p), "not_found")
    # the same filter without escaping would have matched everyone
    out = samba.ldap_search(samba.base_dn, "(userPrincipalName=*@" + samba.dns_domain + ")",
                            "dn", scope="sub")
    assert out.count("dn: ") > 5


# ---- strong mapping (KB5014754) -----------------------------------------------------

def test_strong_mapping_enforce(samba, conf):
    c = conf(ldap={"strong_mapping": "enforce"})
    r = dircheck(samba, c, "alice")                      # no SID, no altSecurityIdentities
    assert_denied(r, "strong_mapping")
    assert_ok(dircheck(samba, c, "alice_sid"), "alice@" + samba.realm)
    r = dircheck(samba, c, "alice_badsid")
    assert_denied(r, "sid_mismatch")
    assert samba.sid("dave") in r.line and samba.sid("alice") in r.line, r
    assert_ok(dircheck(samba, c, "alice_sidurl"), "alice@" + samba.realm)
    assert_ok(dircheck(samba, c, "frank"), "frank@" + samba.realm)      # <SKI>
    assert_denied(dircheck(samba, c, "frank_rekeyed"), "strong_mapping")


def test_strong_mapping_audit_lets_pass_and_logs(samba, conf):
    c = conf(ldap={"strong_mapping": "audit"})
    r = dircheck(samba, c, "alice")
    assert_ok(r, "alice@" + samba.realm, flags="audit")
    assert r.field("audit") == "strong_mapping", r
    assert "strong_mapping audit: alice@AD.EXAMPLE.TEST" in r.err, r
    r = dircheck(samba, c, "alice_badsid")
    assert_ok(r, "alice@" + samba.realm, flags="audit")
    assert r.field("audit") == "sid_mismatch", r
    assert_ok(dircheck(samba, c, "alice_sid"), "alice@" + samba.realm)   # nothing to report
    assert "strong_mapping audit" not in dircheck(samba, c, "alice_sid").err


# ---- finding users by the certificate (identity source = ldap) ------------------------

def test_source_ldap_strong_bindings(samba, conf):
    c = conf(identity={"source": "ldap"})
    for user in ("erin", "frank", "grace"):      # <I><SR>, <SKI>, <SHA1-PUKEY>
        assert_ok(dircheck(samba, c, user), f"{user}@{samba.realm}")
    for user in ("heidi", "ivan", "mallory", "frank_rekeyed"):
        assert_denied(dircheck(samba, c, user), "not_found")


def test_source_ldap_weak_bindings_only_when_allowed(samba, conf):
    c = conf(identity={"source": "ldap"}, ldap={"allow_weak_mapping": "yes"})
    assert_ok(dircheck(samba, c, "heidi"), "heidi@" + samba.realm)   # <I><S>
    assert_ok(dircheck(samba, c, "ivan"), "ivan@" + samba.realm)     # <S>
    assert_denied(dircheck(samba, c, "mallory"), "not_found")
    c = conf(identity={"source": "ldap"},
             ldap={"allow_weak_mapping": "yes", "strong_mapping": "enforce"})
    assert_denied(dircheck(samba, c, "heidi"), "strong_mapping")
    assert_ok(dircheck(samba, c, "erin"), "erin@" + samba.realm)


# ---- binding ------------------------------------------------------------------------------

def test_gssapi_bind_over_ldaps(samba, conf):
    c = conf(ldap={"uri": samba.ldaps_uri, "ca": samba.server_ca})
    assert_ok(dircheck(samba, c, "bsmith"), "bsmith@" + samba.realm)


def test_simple_bind_over_tls(samba, conf, tmp_path):
    pw = tmp_path / "ldap.pw"
    pw.write_text(samba.proxy_password() + "\n")
    os.chmod(pw, 0o600)
    simple = {"bind": "simple", "bind_dn": samba.user_dn(samba.proxy),
              "bind_password_file": str(pw), "ca": samba.server_ca}
    for uri in (samba.ldaps_uri, samba.ldap_uri):     # LDAPS, then ldap:// + StartTLS
        assert_ok(dircheck(samba, conf(ldap=dict(simple, uri=uri)), "bsmith"),
                  "bsmith@" + samba.realm)
    # a CA that did not issue the DC's certificate: the directory is unusable
    r = dircheck(samba, conf(ldap=dict(simple, uri=samba.ldaps_uri,
                                       ca=samba.device_ca.cert)), "alice")
    assert r.line.startswith("UNREACHABLE "), r
    assert r.rc == 3
    # a wrong password
    pw.write_text("wrong-password\n")
    r = dircheck(samba, conf(ldap=dict(simple, uri=samba.ldaps_uri)), "alice")
    assert r.line.startswith("UNREACHABLE "), r
    assert "Invalid credentials" in r.err, r


def test_cache_and_counters(samba, conf):
    r = dircheck(samba, conf(), "alice", count=3)
    assert [r.field("cached", ln) for ln in r.lines] == ["0", "1", "1"], r
    assert r.stats["lookups"] == "1" and r.stats["cache_hits"] == "2", r
    assert r.stats["ldap_lookups"] == "1" and r.stats["ldap_errors"] == "0", r
    # denials are cached too
    r = dircheck(samba, conf(), "disabled", count=2)
    assert [r.field("cached", ln) for ln in r.lines] == ["0", "1"], r
    r = dircheck(samba, conf(ldap={"cache_ttl": "0s"}), "alice", count=3)
    assert r.stats["lookups"] == "3" and r.stats["cache_hits"] == "0", r
    assert r.stats["connects"] == "1", r            # one connection, reused


def test_single_flight(samba, conf):
    """Simultaneous requests for one device share one lookup."""
    r = dircheck(samba, conf(), "bsmith", parallel=8)
    assert len(r.lines) == 8, r
    assert all(ln.startswith("OK principal=bsmith@") for ln in r.lines), r
    assert r.stats["lookups"] == "1" and r.stats["waits"] == "7", r


# ---- the directory going away --------------------------------------------------------

def test_directory_going_away(samba, conf, tmp_path):
    """on_failure = deny: 503 unreachable; allow: the mapped principal passes
    with directory_down; source = ldap cannot pass without the directory;
    one long-lived process reconnects (after its back-off) when the DC is back."""
    deny_conf = conf()
    p = subprocess.Popen([tool(), "-c", deny_conf, "-i"], env=samba.env, text=True,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    try:
        def ask(line):
            p.stdin.write(line + "\n")
            p.stdin.flush()
            return p.stdout.readline().strip()

        assert ask("- " + samba.cert("alice").cert).startswith("OK principal=alice@"), \
            "directory up"
        samba.stop_samba()
        r = ask("- " + samba.cert("carol").cert)
        assert r.startswith("UNREACHABLE name=unreachable"), r
        # what is cached stays valid for cache_ttl
        assert ask("- " + samba.cert("alice").cert).startswith("OK principal=alice@")

        allow = write_conf(tmp_path / "allow.conf", samba, ldap={"on_failure": "allow"})
        r = dircheck(samba, allow, "bsmith")
        assert_ok(r, "bob.smith@" + samba.realm, flags="directory_down")   # not mapped
        assert r.stats["ldap_errors"] == "1", r
        allow_ldap = write_conf(tmp_path / "allow-ldap.conf", samba,
                                identity={"source": "ldap"}, ldap={"on_failure": "allow"})
        r = dircheck(samba, allow_ldap, "erin")
        assert r.line.startswith("UNREACHABLE "), r
        # whatever principal a worker sends: only the directory knows the user
        r = dircheck(samba, allow_ldap, "erin", principal="alice@" + samba.realm)
        assert r.line.startswith("UNREACHABLE "), r
        r = dircheck(samba, deny_conf, "dave")
        assert r.line.startswith("UNREACHABLE ") and r.rc == 3, r

        samba.start_samba()
        deadline = time.monotonic() + 60
        while True:
            r = ask("- " + samba.cert("dave").cert)
            if not r.startswith("UNREACHABLE"):
                break
            assert time.monotonic() < deadline, "no reconnection after the DC came back"
            time.sleep(0.5)
        assert r.startswith("DENIED name=not_in_group"), r
        stats = ask("stats")
        assert re.search(r"connects=2\b", stats), stats
        assert not re.search(r"ldap_errors=0\b", stats), stats
    finally:
        p.stdin.close()
        p.wait(timeout=30)
    assert p.returncode in (0, 1), p.stderr.read()


def test_silent_or_closed_directory_is_unreachable(samba, conf, tmp_path):
    """A server that accepts and never answers is cut off by [ldap] timeout
    (the lookup deadline, or libldap's own operation timeout); a closed
    port fails at once. Both are 'unreachable', never a hang."""
    import socket
    import threading

    pw = tmp_path / "ldap.pw"
    pw.write_text("secret\n")
    os.chmod(pw, 0o600)
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    held = []
    stop = threading.Event()

    def accept():
        silent.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(silent.accept()[0])
            except OSError:
                pass
    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        simple = {"bind": "simple", "bind_dn": "CN=x", "bind_password_file": str(pw),
                  "timeout": "1s"}
        port = silent.getsockname()[1]
        r = dircheck(samba, conf(ldap=dict(simple, uri=f"ldap://127.0.0.1:{port}")), "alice")
        assert r.line.startswith("UNREACHABLE name=unreachable"), r
        assert re.search(r"timeout|timed out", r.line, re.I), r
        assert held, "the tool never connected to the silent server"
    finally:
        stop.set()
        t.join()
        for c in held:
            c.close()
        silent.close()
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    r = dircheck(samba, conf(ldap={"uri": f"ldap://127.0.0.1:{port}"}), "alice")
    assert r.line.startswith("UNREACHABLE name=unreachable"), r
    assert "Can't contact LDAP server" in r.line, r
    assert r.stats["ldap_errors"] == "1" and r.stats["ldap_lookups"] == "0", r


# ---- inside the daemon's kcd process ---------------------------------------------------

def test_kcd_runs_the_directory_checks(samba, make_proxy, tmp_path):
    """kcd sets the directory up when [ldap] uri is set (without contacting
    it: a DC that is down must not stop kcd) and releases it cleanly at
    shutdown (the sanitizer build reports any leak); a bind_password_file
    without a password keeps kcd from starting, with the reason logged."""
    settings = {
        "identity": {"realm": samba.realm,
                     "suffix_realms": f"{samba.dns_domain}:{samba.realm}"},
        "kerberos": {"keytab": samba.keytab, "principal": f"{samba.proxy}@{samba.realm}",
                     "krb5_conf": samba.krb5_conf},
        "ldap": {"uri": samba.ldap_uri, "base_dn": samba.base_dn,
                 "require_group": samba.group_dn(samba.eas_group)},
    }
    p = make_proxy(workers=1, settings=settings).start()
    p.wait_for_log(r"kcd.*generation 1 ready")
    assert "cannot start the directory checks" not in p.log_text()
    p.stop()

    empty = tmp_path / "empty.pw"
    empty.write_text("\n")
    os.chmod(empty, 0o600)
    bad = dict(settings, ldap=dict(settings["ldap"], bind="simple",
                                   bind_dn=samba.user_dn(samba.proxy),
                                   bind_password_file=str(empty)))
    q = make_proxy(workers=1, settings=bad).start(wait_ready=False)
    q.wait_for_log(r"cannot start the directory checks: bind_password_file .* holds no "
                   r"password", timeout=20)
