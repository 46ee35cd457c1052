"""Directory checks (src/directory.c) against a plain OpenLDAP slapd: the
LDAP code paths outside Active Directory. A private slapd (127.0.0.1, temp
dir, stopped by pid) carries a small schema with AD's attribute names but
none of AD's computed ones, so these tests pin down the fallbacks:
lockoutTime without msDS-User-Account-Control-Computed, group membership
from the memberof overlay (direct only: OpenLDAP has no
LDAP_MATCHING_RULE_IN_CHAIN), simple bind over StartTLS only (slapd, like
hardened AD, refuses simple binds without TLS), and the result of lookups
that find several or unusable entries.
"""

import base64
import os
import shutil
import struct
import subprocess
import tempfile

import pytest

from lab import free_port, spawn, stop_pid, wait_port
from test_directory import assert_denied, assert_ok, tool, Run
import certs

BASE = "dc=example,dc=test"
ADMIN = "cn=admin," + BASE
ADMIN_PW = "slapd-admin-pw"
PROXY_DN = "cn=proxy,ou=service," + BASE
PROXY_PW = "proxy-bind-pw"
REALM = "EXAMPLE.TEST"
DOMAIN = "example.test"

SCHEMA = """
attributetype ( 1.3.6.1.4.1.32473.1.1.1 NAME 'sAMAccountName'
  EQUALITY caseIgnoreMatch SUBSTR caseIgnoreSubstringsMatch
  SYNTAX 1.3.6.1.4.1.1466.115.121.1.15 SINGLE-VALUE )
attributetype ( 1.3.6.1.4.1.32473.1.1.2 NAME 'userPrincipalName'
  EQUALITY caseIgnoreMatch SUBSTR caseIgnoreSubstringsMatch
  SYNTAX 1.3.6.1.4.1.1466.115.121.1.15 SINGLE-VALUE )
attributetype ( 1.3.6.1.4.1.32473.1.1.3 NAME 'userAccountControl'
  EQUALITY integerMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.27 SINGLE-VALUE )
attributetype ( 1.3.6.1.4.1.32473.1.1.4 NAME 'lockoutTime'
  EQUALITY integerMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.27 SINGLE-VALUE )
attributetype ( 1.3.6.1.4.1.32473.1.1.5 NAME 'accountExpires'
  EQUALITY integerMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.27 SINGLE-VALUE )
attributetype ( 1.3.6.1.4.1.32473.1.1.6 NAME 'objectSid'
  EQUALITY octetStringMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.40 SINGLE-VALUE )
attributetype ( 1.3.6.1.4.1.32473.1.1.7 NAME 'altSecurityIdentities'
  EQUALITY caseIgnoreMatch SUBSTR caseIgnoreSubstringsMatch
  SYNTAX 1.3.6.1.4.1.1466.115.121.1.15 )
objectclass ( 1.3.6.1.4.1.32473.1.2.1 NAME 'adLiteUser' AUXILIARY
  MAY ( sAMAccountName $ userPrincipalName $ userAccountControl $ lockoutTime $
        accountExpires $ objectSid $ altSecurityIdentities ) )
"""

# user -> (sAMAccountName or None, UPN local part, extra LDIF lines, groups)
USERS = {
    "alice": ("alice", "alice", ["userAccountControl: 512", "objectSid:: {sid:1104}"],
              ["eas"]),
    "bob": ("bsmith", "bob.smith", ["userAccountControl: 512"], ["eas"]),
    "carol": ("carol", "carol", ["userAccountControl: 512"], ["sales"]),
    "locked": ("locked", "locked", ["userAccountControl: 512",
                                    "lockoutTime: 133000000000000000"], ["eas"]),
    "disabled": ("disabled", "disabled", ["userAccountControl: 514"], ["eas"]),
    "plain": ("plain", "plain", [], ["eas"]),             # no userAccountControl at all
    "noname": (None, "noname", ["userAccountControl: 512"], ["eas"]),
    "twin1": ("twin1", "twin", [], ["eas"]),
    "twin2": ("twin2", "twin", [], ["eas"]),
    "erin": ("erin", "erin", ["altSecurityIdentities: {altsec}"], ["eas"]),
}


def sid_bytes(rid):
    subs = (21, 1, 2, 3, rid)
    return bytes([1, len(subs)]) + (5).to_bytes(6, "big") + b"".join(
        struct.pack("<I", s) for s in subs)


class Slapd:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="ekp-slapd-", dir="/tmp")
        self.proc = None
        self.out = None
        self.port = None

    def path(self, *p):
        return os.path.join(self.dir, *p)

    @property
    def uri(self):
        return f"ldap://127.0.0.1:{self.port}"

    def env(self):
        e = dict(os.environ)
        e.pop("LDAPNOINIT", None)
        e["LDAPTLS_CACERT"] = self.server_ca.cert
        e["LDAPTLS_REQCERT"] = "demand"
        return e

    def ldap(self, cmd, ldif):
        p = subprocess.run([cmd, "-x", "-ZZ", "-H", self.uri, "-D", ADMIN, "-w", ADMIN_PW],
                           input=ldif, text=True, env=self.env(), capture_output=True,
                           timeout=30)
        assert p.returncode == 0, f"{cmd}: {p.stdout}{p.stderr}\n{ldif}"

    def start(self):
        pki = self.path("pki")
        self.server_ca = certs.server_ca(pki)
        srv = certs.server_cert(pki, "slapd", self.server_ca, ["localhost"], ips=("127.0.0.1",))
        self.device_ca = certs.device_ca(pki)
        os.makedirs(self.path("db"))
        with open(self.path("adlite.schema"), "w") as f:
            f.write(SCHEMA)
        self.port = free_port()
        conf = self.path("slapd.conf")
        with open(conf, "w") as f:
            f.write(f"""include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
include {self.path("adlite.schema")}
pidfile {self.path("slapd.pid")}
argsfile {self.path("slapd.args")}
modulepath /usr/lib/ldap
moduleload back_mdb
moduleload memberof
loglevel none
TLSCACertificateFile {self.server_ca.cert}
TLSCertificateFile {srv.cert}
TLSCertificateKeyFile {srv.key}
security simple_bind=64

database mdb
maxsize 16777216
suffix "{BASE}"
rootdn "{ADMIN}"
rootpw {ADMIN_PW}
directory {self.path("db")}
overlay memberof
""")
        self.out = open(self.path("slapd.out"), "w")
        self.proc = spawn(["slapd", "-d", "0", "-f", conf, "-h", self.uri + "/"], self.out,
                          cwd=self.dir)
        wait_port(self.port, self.proc, "slapd")
        self._populate()
        return self

    def _populate(self):
        self.certs = {}
        for name in ("alice", "bob", "carol", "locked", "disabled", "plain", "noname", "twin1"):
            local = USERS[name][1]
            self.certs[name] = certs.device(self.path("pki"), name, self.device_ca,
                                            upns=[f"{local}@{DOMAIN}"], cn=name)
        self.certs["alice_sid"] = certs.device(
            self.path("pki"), "alice_sid", self.device_ca, upns=[f"alice@{DOMAIN}"], cn="alice",
            extra_extensions=[certs.sid_extension("S-1-5-21-1-2-3-1104")])
        self.certs["alice_badsid"] = certs.device(
            self.path("pki"), "alice_badsid", self.device_ca, upns=[f"alice@{DOMAIN}"],
            cn="alice", extra_extensions=[certs.sid_extension("S-1-5-21-1-2-3-1105")])
        self.certs["erin"] = certs.device(self.path("pki"), "erin", self.device_ca, cn="erin")
        from samba_lab import altsec_issuer_serial
        altsec = altsec_issuer_serial(self.certs["erin"].obj)
        ldif = [f"dn: {BASE}\nobjectClass: dcObject\nobjectClass: organization\ndc: example\n"
                "o: Example\n"]
        for ou in ("people", "groups", "service"):
            ldif.append(f"dn: ou={ou},{BASE}\nobjectClass: organizationalUnit\nou: {ou}\n")
        ldif.append(f"dn: {PROXY_DN}\nobjectClass: person\ncn: proxy\nsn: proxy\n"
                    f"userPassword: {PROXY_PW}\n")
        for name, (sam, local, extra, _groups) in USERS.items():
            lines = [f"dn: uid={name},ou=people,{BASE}", "objectClass: inetOrgPerson",
                     "objectClass: adLiteUser", f"uid: {name}", f"cn: {name}", "sn: Lab",
                     f"userPrincipalName: {local}@{DOMAIN}"]
            if sam:
                lines.append(f"sAMAccountName: {sam}")
            for ln in extra:
                if "{sid:" in ln:
                    rid = int(ln.split("{sid:")[1].rstrip("}"))
                    ln = "objectSid:: " + base64.b64encode(sid_bytes(rid)).decode()
                lines.append(ln.replace("{altsec}", altsec))
            ldif.append("\n".join(lines) + "\n")
        self.ldap("ldapadd", "\n".join(ldif))
        groups = {"sales": [f"uid=carol,ou=people,{BASE}"]}
        groups["eas"] = [f"uid={n},ou=people,{BASE}" for n, v in USERS.items() if "eas" in v[3]]
        groups["eas"].append(f"cn=sales,ou=groups,{BASE}")
        ldif = []
        for g in ("sales", "eas"):
            ldif.append(f"dn: cn={g},ou=groups,{BASE}\nobjectClass: groupOfNames\ncn: {g}\n" +
                        "".join(f"member: {m}\n" for m in groups[g]))
        self.ldap("ldapadd", "\n".join(ldif))

    def stop(self):
        stop_pid(self.proc, "slapd")
        if self.out:
            self.out.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def slapd():
    s = Slapd()
    try:
        yield s.start()
    finally:
        s.stop()


def conf(slapd, tmp_path, identity=None, ldap=None):
    pw = tmp_path / "bind.pw"
    pw.write_text(PROXY_PW + "\n")
    os.chmod(pw, 0o600)
    files = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         "conf", "files")
    sections = {
        "server": {"user": "nobody"},
        "tls": {"certificate": f"{files}/server.pem", "key": f"{files}/server.key",
                "client_ca": f"{files}/device-ca.pem"},
        "identity": {"realm": REALM},
        "kerberos": {"keytab": f"{files}/proxy.keytab",
                     "principal": "HTTP/proxy.example.test@" + REALM},
        "backend": {"servers": "exchange.example.test:443", "spn": "HTTP/exchange.example.test"},
        "ldap": {"uri": slapd.uri, "bind": "simple", "bind_dn": PROXY_DN,
                 "bind_password_file": str(pw), "ca": slapd.server_ca.cert,
                 "base_dn": BASE, "require_group": f"cn=eas,ou=groups,{BASE}",
                 "timeout": "5s"},
        "log": {"access_log": "off", "level": "info"},
    }
    for name, extra in (("identity", identity), ("ldap", ldap)):
        for k, v in (extra or {}).items():
            if v is None:
                sections[name].pop(k, None)
            else:
                sections[name][k] = v
    path = tmp_path / "proxy.conf"
    with open(path, "w") as f:
        for name, keys in sections.items():
            f.write(f"[{name}]\n" + "".join(f"{k} = {v}\n" for k, v in keys.items()))
    return str(path)


def check(slapd, c, cert=None, principal=None):
    args = [tool(), "-c", c]
    if cert:
        args += ["-C", slapd.certs[cert].cert]
    if principal:
        args += ["-p", principal]
    env = dict(os.environ, LDAPNOINIT="1")
    return Run(subprocess.run(args, env=env, capture_output=True, text=True, timeout=60))


def test_generic_ldap_account_checks(slapd, tmp_path):
    c = conf(slapd, tmp_path)
    assert_ok(check(slapd, c, "alice"), "alice@" + REALM)
    assert_ok(check(slapd, c, "bob"), "bsmith@" + REALM)
    assert_ok(check(slapd, c, "plain"), "plain@" + REALM)     # no userAccountControl: enabled
    assert_denied(check(slapd, c, "disabled"), "disabled")
    # no msDS-User-Account-Control-Computed outside AD: lockoutTime decides
    assert_denied(check(slapd, c, "locked"), "locked")
    assert_denied(check(slapd, c, "noname"), "bad_account")
    assert_denied(check(slapd, c, "twin1"), "ambiguous")
    assert_denied(check(slapd, c, principal="nobody@" + REALM), "not_found")


def test_generic_ldap_groups_are_direct_only(slapd, tmp_path):
    """memberOf from the overlay names direct groups; OpenLDAP has no
    in-chain matching rule, so a nested member is refused, not an error."""
    c = conf(slapd, tmp_path)
    assert_denied(check(slapd, c, "carol"), "not_in_group")
    assert_ok(check(slapd, conf(slapd, tmp_path, ldap={"require_group":
                                                       f"cn=sales,ou=groups,{BASE}"}),
                    "carol"), "carol@" + REALM)


def test_generic_ldap_strong_mapping_and_certificate_lookup(slapd, tmp_path):
    c = conf(slapd, tmp_path, ldap={"strong_mapping": "enforce"})
    assert_ok(check(slapd, c, "alice_sid"), "alice@" + REALM)
    assert_denied(check(slapd, c, "alice_badsid"), "sid_mismatch")
    assert_denied(check(slapd, c, "alice"), "strong_mapping")
    c = conf(slapd, tmp_path, identity={"source": "ldap"})
    assert_ok(check(slapd, c, "erin"), "erin@" + REALM)
    assert_denied(check(slapd, c, "alice"), "not_found")


def test_generic_ldap_bind_failures_are_unreachable(slapd, tmp_path):
    c = conf(slapd, tmp_path)
    with open(tmp_path / "bind.pw", "w") as f:
        f.write("wrong\n")
    r = check(slapd, c, "alice")
    assert r.line.startswith("UNREACHABLE ") and "Invalid credentials" in r.line, r
    # a CA that did not issue slapd's certificate: StartTLS fails
    r = check(slapd, conf(slapd, tmp_path, ldap={"ca": slapd.device_ca.cert}), "alice")
    assert r.line.startswith("UNREACHABLE ") and "StartTLS" in r.line, r
